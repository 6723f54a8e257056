"""Takedown matching streams raw_pairs: a batch at a time gives the one-table matches, in the
same order with the same ``also``, and never holds more than a batch."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.records import takedown_requests
from dataplatform.core.records.takedown_apply import apply_takedowns
from dataplatform.core.records.takedown_requests import (
    MATCH_COLUMNS,
    TakedownRequest,
    match_pairs,
    normalize_url,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import partition_dates, read_partition, write_partition

DAYS = ("2025-01-01", "2025-01-02", "2025-01-03")
ROWS_A_DAY = 20
BATCH = 7  # prime to the day size: batches straddle days, and matches fall in many batches


def _phash(k: int) -> str:
    # Hashes 0, 1, 3, 7, ... bits away from 0: a distance request takes a known prefix of them.
    return f"{(1 << (k % 12)) - 1:016x}"


def _day(date: str, d: int) -> pa.Table:
    ids = [f"p{d}-{k:02d}" for k in range(ROWS_A_DAY)]
    return pa.table(
        {
            "pair_id": ids,
            "date": [date] * ROWS_A_DAY,
            "text": [f"caption {i}" for i in ids],
            # Every fifth pair shares an image and a url with the first pair of its day.
            "url": [f"https://cdn.example.com/{d}/{k % 5 and k}.jpg" for k in range(ROWS_A_DAY)],
            "image_sha256": [
                hashlib.sha256(f"{d}-{k % 5 and k}".encode()).hexdigest() for k in range(ROWS_A_DAY)
            ],
            "phash": [_phash(k + d) for k in range(ROWS_A_DAY)],
            "source": ["pairs.jsonl"] * ROWS_A_DAY,
        }
    )


def _request(n: int, kind: str, value: str, max_distance: int | None = None) -> TakedownRequest:
    return TakedownRequest(
        request_id=f"R{n}",
        kind=kind,
        value=value,
        filed="2025-02-01",
        reason="test",
        origin=f"requests.jsonl:{n}",
        max_distance=max_distance,
        phash=value if kind == "phash" else None,
    )


REQUESTS = [
    # p1-00 is named three times: by its url (any case, a fragment), its pair_id, its pHash.
    _request(1, "url", "HTTPS://CDN.Example.com/1/0.jpg#frag"),
    _request(2, "pair_id", "p1-00"),
    _request(3, "phash", "0000000000000000", max_distance=2),
    _request(4, "image_sha256", hashlib.sha256(b"2-0").hexdigest()),
    _request(5, "pair_id", "p0-19"),
]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    for d, date in enumerate(DAYS):
        write_partition(home, "raw_pairs", date, _day(date, d))
    return home


def _one_table(home: Home) -> pa.Table:
    return pa.concat_tables(
        [read_partition(home, "raw_pairs", d).select(MATCH_COLUMNS) for d in DAYS]
    )


def _removed(report) -> list[tuple[str, str, str, int | None, tuple[str, ...]]]:
    return [(m.pair_id, m.date, m.request.request_id, m.distance, m.also) for m in report.matches]


def test_matching_in_batches_gives_the_one_table_matches_in_order(home, tmp_path, monkeypatch):
    table = _one_table(home)
    expected = match_pairs(table, REQUESTS)
    # The case is a real one: matches in every day and in many batches, one pair named thrice.
    rows = table.column("pair_id").to_pylist()
    assert len({m.date for m in expected}) == 3
    assert len({rows.index(m.pair_id) // BATCH for m in expected}) >= 6
    assert [(m.request.request_id, m.also) for m in expected if m.pair_id == "p1-00"] == [
        ("R1", ("R2", "R3"))
    ]

    seen: list[int] = []
    real = takedown_requests.match_pairs

    def spy(pairs, requests):
        seen.append(pairs.num_rows)
        return real(pairs, requests)

    monkeypatch.setattr(takedown_requests, "match_pairs", spy)
    shutil.copytree(home.root, tmp_path / "copy")
    report = apply_takedowns(home, REQUESTS, batch_rows=BATCH)

    assert _removed(report) == [
        (m.pair_id, m.date, m.request.request_id, m.distance, m.also) for m in expected
    ]
    # Memory is one batch: no call saw more rows than that, and together they saw every row.
    assert max(seen) <= BATCH
    assert sum(seen) == ROWS_A_DAY * len(DAYS)
    assert len(seen) >= ROWS_A_DAY * len(DAYS) // BATCH
    assert report.verified

    whole = apply_takedowns(Home(tmp_path / "copy"), REQUESTS, batch_rows=10**6)
    assert _removed(whole) == _removed(report)
    receipt = json.loads(Path(report.receipt).read_text())
    assert [r["also"] for r in receipt["removed"]] == [list(m.also) for m in expected]


def test_a_batch_size_below_one_is_refused(home):
    with pytest.raises(ValueError, match="batch_rows must be at least 1"):
        apply_takedowns(home, REQUESTS, batch_rows=0)
    assert partition_dates(home, "raw_pairs") == list(DAYS)


URLS = [
    "https://cdn.example.com/a/b.jpg?x=1#top",
    "HTTPS://CDN.EXAMPLE.COM/a/b.jpg?x=1",
    " https://cdn.example.com/a/b.jpg?x=1 ",
    "https://cdn.example.com/a/\tb.jpg?x=1",  # urlsplit removes the tab
    "https://cdn.example.com/a/b.jpg?x=2",
    "https://cdn.example.com/A/b.jpg?x=1",  # the path keeps its case
    "https://other.example.com/a/b.jpg?x=1",
    "https://cdn.example.com/a/b.jpg?",
    "https://cdn.example.com/a/b.jpg",
    "https://bücher.example/a/b.jpg",
    "https://BÜCHER.example/a/b.jpg#x",
    "HTTPS://CDN.example.com#x",
    "",
    None,
]


@pytest.mark.parametrize(
    "wanted",
    [
        "https://cdn.example.com/a/b.jpg?x=1",
        "https://cdn.example.com/a/b.jpg",
        "https://bücher.example/a/b.jpg",
        "https://cdn.example.com",
    ],
)
def test_url_matching_finds_exactly_the_urls_that_normalize_alike(wanted):
    pairs = pa.table(
        {
            "pair_id": [f"u{k}" for k in range(len(URLS))],
            "date": ["2025-01-01"] * len(URLS),
            "url": pa.array(URLS, pa.string()),
            "image_sha256": [None] * len(URLS),
            "phash": [None] * len(URLS),
        }
    )
    got = [m.pair_id for m in match_pairs(pairs, [_request(1, "url", wanted)])]
    target = normalize_url(wanted)
    assert got == [f"u{k}" for k, u in enumerate(URLS) if u and normalize_url(u) == target]
    assert got  # every wanted url above is in the table in some form


def test_phashes_are_parsed_like_from_hex_and_a_bad_one_is_named():
    values = ["00000000000000ff", "FFFFFFFFFFFFFFFF", None, "", "0123456789abcdef"]
    pairs = pa.table(
        {
            "pair_id": [f"h{k}" for k in range(len(values))],
            "date": ["2025-01-01"] * len(values),
            "url": [None] * len(values),
            "image_sha256": [None] * len(values),
            "phash": pa.array(values, pa.string()),
        }
    )
    request = _request(1, "phash", "0000000000000000", max_distance=64)
    matches = match_pairs(pairs, [request])
    assert [(m.pair_id, m.distance) for m in matches] == [
        (f"h{k}", bin(from_hex(v)).count("1")) for k, v in enumerate(values) if v
    ]
    bad = pairs.set_column(4, "phash", pa.array(["00000000000000ff", "xyz", None, "", None]))
    with pytest.raises(ValueError, match="'xyz'"):
        match_pairs(bad, [request])
