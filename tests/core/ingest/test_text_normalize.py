from dataplatform.core.ingest.text_normalize import normalize_text


def test_nfc_and_whitespace():
    decomposed = "Cafe\u0301  au\tlait\n\n on a\u00a0table "
    assert normalize_text(decomposed) == ("Café au lait on a table", False)


def test_control_and_format_characters_dropped():
    assert normalize_text("a\x00b\u200bc\x07d") == ("a bc d", False)


def test_cap_is_applied_and_flagged():
    assert normalize_text("word " * 10, max_chars=12) == ("word word wo", True)


def test_none_is_empty():
    assert normalize_text(None) == ("", False)
