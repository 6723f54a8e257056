"""What the CLI prints from the data is terminal-safe: control and bidi characters escaped.

The warehouse is written directly (ingest itself refuses such ids), as an older version or
another tool could have left it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from dataplatform.core.records.audit import terminal_safe
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import commit_stage
from tests.e2e.cli_runner import run_cli

DAY = "2025-01-01"
EVIL = "id\x1b[2J\rgood\u202eevil"
CAPTION = "a cat\x1b[31m\x07 \r\u202ereversed\u200b\u2066\x7f\x9b"
REASON = "odd\x1b[2Jreason"
# What may reach a terminal: printable text, newlines between lines.
UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def test_terminal_safe_escapes_controls_and_bidi_characters():
    assert terminal_safe(EVIL) == "id\\x1b[2J\\rgood\\u202eevil"
    assert terminal_safe(CAPTION) == (
        "a cat\\x1b[31m\\x07 \\r\\u202ereversed\\u200b\\u2066\\x7f\\x9b"
    )
    assert terminal_safe("line\nnext\ttab\b") == "line\\nnext\\ttab\\x08"
    assert terminal_safe("ünïcode, 日本, emoji 🐈 stay") == "ünïcode, 日本, emoji 🐈 stay"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")

    def pair(pair_id: str) -> dict:
        return {
            "pair_id": pair_id,
            "date": DAY,
            "text": CAPTION,
            "url": f"https://example.com/{pair_id}",
            "license": "CC0-1.0",
            "image_uri": "img/cat.jpg",
            "image_sha256": "0" * 64,
            "source": "pairs.jsonl",
            "source_locator": "line 1",
        }

    raw = pa.Table.from_pylist([pair(EVIL), pair("copy1")])
    commit_stage(
        home,
        DAY,
        {"raw_pairs": raw},
        {"raw_pairs": ledger_table([ledger_row(pair("bad1"), "raw_pairs", REASON, CAPTION)])},
    )
    commit_stage(
        home,
        DAY,
        {"exact_deduped": raw.slice(0, 1)},
        {
            "exact_deduped": ledger_table(
                [
                    ledger_row(
                        pair("copy1"),
                        "exact_deduped",
                        "exact_duplicate",
                        f"same SHA-256 as {EVIL}",
                        duplicate_of=EVIL,
                        distance=0.0,
                    )
                ]
            )
        },
    )
    return home


@pytest.mark.parametrize(
    "args",
    [
        ["explain", EVIL],
        ["explain", "copy1"],
        ["explain", "--duplicates-of", EVIL],
        ["funnel"],
        ["sql", "SELECT pair_id, text FROM raw_pairs ORDER BY pair_id"],
    ],
    ids=["explain", "explain-chain", "duplicates-of", "funnel", "sql"],
)
def test_cli_text_output_escapes_what_the_data_holds(home: Home, args: list[str]):
    done = run_cli(home, *args)
    assert done.returncode == 0, done.stderr
    assert UNSAFE.findall(done.stdout) == []
    assert UNSAFE.findall(done.stderr) == []
    if args[0] == "funnel":
        assert "odd\\x1b[2Jreason 1" in done.stdout
    elif args[0] == "sql":
        assert "id\\x1b[2J\\rgood\\u202eevil" in done.stdout
    else:
        assert "id\\x1b[2J\\rgood\\u202eevil" in done.stdout
        if args[1] != "--duplicates-of":
            assert "a cat\\x1b[31m\\x07 \\r\\u202ereversed\\u200b\\u2066\\x7f\\x9b" in done.stdout


def test_an_unknown_id_is_escaped_on_stderr(home: Home):
    done = run_cli(home, "explain", "id\x1b[2J")
    assert done.returncode == 2
    assert UNSAFE.findall(done.stderr) == []
    assert "id\\x1b[2J" in done.stderr  # the id asked about, and the similar one found
    assert "id\\x1b[2J\\rgood\\u202eevil" in done.stderr


def test_json_output_stays_json_with_the_real_characters(home: Home):
    done = run_cli(home, "explain", EVIL, "--json")
    assert done.returncode == 0, done.stderr
    assert UNSAFE.findall(done.stdout) == []  # json.dumps escapes them (ensure_ascii)
    data = json.loads(done.stdout)
    assert data["pair_id"] == EVIL
    assert data["arrivals"][0]["origin"]["text"] == CAPTION
