"""A review sheet reads the days it shows, not the history: the raw_pairs partitions that hold
its rows (found through the ingested-ids state) and the ledgers of those days.

Each test compares against the sheet rendered with no state at all, where every earlier day is
read, so the output must be the same one the whole history gives.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dataplatform.core.dedup.dedup_state import END_OF_TIME
from dataplatform.core.dedup.history_state import INGESTED_IDS, state_root, sync
from dataplatform.core.records import review_rows
from dataplatform.core.records.review_rows import load_sheet, review_dates_showing
from dataplatform.core.records.review_sheet import render_review_sheet
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import RAW_PAIR_SCHEMA, ledger_table
from dataplatform.core.store.warehouse import read_partition, write_ledger, write_partition
from tests.core.records.test_review_sheet import (
    DAY1,
    DAY2,
    Page,
    _ledger,
    _raw,
    build_review_warehouse,
)

DAY0, DAY3 = "2024-12-31", "2025-01-03"
STAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


def _unrelated_day(home: Home, date: str, ids: list[str]) -> None:
    rows = [_raw(p, date, "rocket.jpg", f"unrelated {p}", (10, 10)) for p in ids]
    write_partition(home, "raw_pairs", date, pa.Table.from_pylist(rows, RAW_PAIR_SCHEMA))
    write_ledger(
        home, "raw_pairs", date, ledger_table([_ledger(f"r-{date}", date, "raw_pairs", "x")])
    )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """The review warehouse with an unrelated earlier day and a later day that reuses a1."""
    home = Home(tmp_path / "home")
    build_review_warehouse(home)
    _unrelated_day(home, DAY0, ["old-1", "old-2"])
    _unrelated_day(home, DAY3, ["a1", "new-1"])
    return home


def _html(home: Home, stage: str, date: str) -> str:
    return STAMP.sub("<stamp>", render_review_sheet(home, stage, date).read_text())


def _no_state(home: Home) -> None:
    shutil.rmtree(state_root(home), ignore_errors=True)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every file a sheet hands to DuckDB."""
    seen: list[str] = []
    real = review_rows._read_parquet

    def spy(paths):
        seen.extend(str(p) for p in ([paths] if isinstance(paths, str | Path) else paths))
        return real(paths)

    monkeypatch.setattr(review_rows, "_read_parquet", spy)
    return seen


def _days(files: list[str], folder: str) -> set[str]:
    """The dates of the files of ``folder`` (a table, or a ledger stage) among ``files``."""
    return {Path(f).parent.name.removeprefix("date=") for f in files if f"/{folder}/date=" in f}


def test_a_sheet_reads_only_the_days_of_its_rows_and_shows_what_the_history_gives(home, reads):
    stages = ("phash_deduped", "clip_scored", "raw_pairs")
    whole = {stage: _html(home, stage, DAY2) for stage in stages}
    # With no state every raw_pairs day before the sheet's is read, and the sheet says so.
    assert load_sheet(home, "phash_deduped", DAY2).raw_days_scanned == [DAY0, DAY1]

    sync(home, INGESTED_IDS, END_OF_TIME)
    reads.clear()
    sheet = load_sheet(home, "phash_deduped", DAY2)
    assert sheet.raw_days_scanned == []
    assert "*" not in "".join(reads)  # named files, never a glob over the table
    # The copies are of DAY2, their originals a1, b1, t1 of DAY1 (a1 reused on DAY3: not it).
    assert _days(reads, "raw_pairs") == {DAY1, DAY2}
    assert {Path(f).parent.parent.name for f in reads if "/rejections/" in f} == {
        "stage=raw_pairs",
        "stage=phash_deduped",
        "stage=clip_scored",
        "stage=takedown",
    }
    ledger_days = {Path(f).parent.name for f in reads if "/rejections/" in f}
    assert ledger_days == {f"date={DAY1}", f"date={DAY2}"}
    assert {c.original.pair_id: c.original.date for c in sheet.clusters} == {
        "a1": DAY1,
        "b1": DAY1,
        "t1": DAY1,
    }
    for stage in stages:
        assert _html(home, stage, DAY2) == whole[stage], stage


def test_an_earlier_day_the_state_lacks_or_holds_from_another_commit_is_read(home, caplog):
    sync(home, INGESTED_IDS, END_OF_TIME)
    # After the state: DAY1 rewritten (b1 now 300x200) and a1 ingested on a new, earlier day.
    day1 = read_partition(home, "raw_pairs", DAY1)
    width = pc.if_else(pc.equal(day1["pair_id"], "b1"), 300, day1["width"]).cast(pa.int32())
    height = pc.if_else(pc.equal(day1["pair_id"], "b1"), 200, day1["height"]).cast(pa.int32())
    day1 = day1.set_column(day1.schema.get_field_index("width"), "width", width)
    day1 = day1.set_column(day1.schema.get_field_index("height"), "height", height)
    write_partition(home, "raw_pairs", DAY1, day1)
    first = _raw("a1", "2024-12-30", "astronaut.jpg", "a1, first seen", (64, 64))
    write_partition(home, "raw_pairs", "2024-12-30", pa.Table.from_pylist([first], RAW_PAIR_SCHEMA))

    with caplog.at_level(logging.WARNING, logger=review_rows.__name__):
        sheet = load_sheet(home, "phash_deduped", DAY2)
    assert sheet.raw_days_scanned == ["2024-12-30", DAY1]
    assert "ingested_ids state lacks 2 raw_pairs day(s)" in caplog.text
    originals = {c.original.pair_id: c.original for c in sheet.clusters}
    assert originals["a1"].date == "2024-12-30"  # the earliest raw row of the id
    assert (originals["b1"].width, originals["b1"].height) == (300, 200)
    html = _html(home, "phash_deduped", DAY2)
    _no_state(home)
    assert _html(home, "phash_deduped", DAY2) == html


def test_an_unreadable_state_means_reading_every_earlier_day(home, caplog):
    expected = _html(home, "phash_deduped", DAY2)
    manifest = state_root(home) / INGESTED_IDS.name / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger=review_rows.__name__):
        assert load_sheet(home, "phash_deduped", DAY2).raw_days_scanned == [DAY0, DAY1]
    assert "state unreadable" in caplog.text
    assert _html(home, "phash_deduped", DAY2) == expected


def test_an_original_taken_down_and_gone_from_raw_pairs_still_shows_as_taken_down(home):
    """A takedown removes the original's raw row: its date is then known only to the takedown
    ledger, which the sheet reads on every date it has."""
    sync(home, INGESTED_IDS, END_OF_TIME)
    day1 = read_partition(home, "raw_pairs", DAY1)
    write_partition(home, "raw_pairs", DAY1, day1.filter(pc.not_equal(day1["pair_id"], "t1")))
    sync(home, INGESTED_IDS, END_OF_TIME)
    sheet = load_sheet(home, "phash_deduped", DAY2)
    (t1,) = [c.original for c in sheet.clusters if c.original.pair_id == "t1"]
    assert t1.date == ""
    assert "t1" in sheet.taken_down
    p = Page(_html(home, "phash_deduped", DAY2))
    assert [c.attrs["data-pair-id"] for c in p.find("figure", cls="taken-down")] == ["t1"]


def test_dates_showing_a_pair_use_the_state_for_raw_pairs(home, reads):
    expected = {p: review_dates_showing(home, [p]) for p in ("t1", "a1", "old-2", "nobody")}
    assert expected == {"t1": [DAY1, DAY2], "a1": [DAY1, DAY2, DAY3], "old-2": [DAY0], "nobody": []}
    sync(home, INGESTED_IDS, END_OF_TIME)
    reads.clear()
    assert {p: review_dates_showing(home, [p]) for p in expected} == expected
    assert _days(reads, "raw_pairs") == set()
