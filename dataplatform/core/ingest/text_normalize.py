"""Caption normalisation: the same caption always becomes the same string."""

from __future__ import annotations

import re
import unicodedata

DEFAULT_MAX_TEXT_CHARS = 2000
# How many raw characters per kept character normalisation may look at (see normalize_text).
RAW_CAP_FACTOR = 8

_WHITESPACE = re.compile(r"\s+")


def raw_text_cap(max_chars: int) -> int:
    """How many raw characters are ever looked at for a caption kept at ``max_chars``."""
    return max_chars * RAW_CAP_FACTOR


def normalize_text(text: str | None, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> tuple[str, bool]:
    """NFC, control characters dropped, whitespace runs collapsed, capped at ``max_chars``.

    Returns the text and whether it was truncated. NFC first, so that a caption typed with
    combining accents and one typed precomposed compare equal downstream (text dedup, CLIP).
    """
    if text is None:
        return "", False
    text = str(text)
    # Cap before the per-character work: a 50 MB caption must cost what a long one does.
    # Normalisation only ever shortens (NFC composes, controls go, whitespace collapses) by a
    # bounded factor for real text, so this many raw characters always covers the kept prefix.
    raw_cap = raw_text_cap(max_chars)
    precut = len(text) > raw_cap
    if precut:
        text = text[:raw_cap]
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
        if unicodedata.category(ch) not in ("Cf", "Co", "Cs") or ch == "\u200d"
    )
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > max_chars:
        return text[:max_chars].rstrip(), True
    return text, precut
