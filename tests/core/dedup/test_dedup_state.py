import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup import dedup_state
from dataplatform.core.dedup.dedup_state import (
    MANIFEST,
    DayRecord,
    StateError,
    StateStore,
    key_of_hex,
    key_of_text,
    stale_dates,
)

SCHEMA = pa.schema([("pair_id", pa.string()), ("date", pa.string()), ("value", pa.string())])
DAYS = [f"2025-01-{d:02d}" for d in range(1, 21)]


def day_rows(date: str, n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    # Few distinct values, so that keys repeat across days and within a day.
    values = [f"{v:016x}" for v in rng.integers(0, 50, n)]
    return pa.table(
        {"pair_id": [f"{date}-{i}" for i in range(n)], "date": [date] * n, "value": values},
        schema=SCHEMA,
    )


def record(store: StateStore, date: str, rows: pa.Table, commit: str = "c") -> None:
    store.record_day(date, key_of_hex(rows.column("value").to_pylist()), rows, commit)


def brute(days: dict[str, pa.Table], queries: list[str], before: str) -> set[tuple[int, str]]:
    found = set()
    for date, rows in days.items():
        if date >= before:
            continue
        for pair_id, value in zip(
            rows["pair_id"].to_pylist(), rows["value"].to_pylist(), strict=True
        ):
            for q, wanted in enumerate(queries):
                if value == wanted:
                    found.add((q, pair_id))
    return found


def found(store: StateStore, queries: list[str], before: str) -> set[tuple[int, str]]:
    hits = store.find_equal(key_of_hex(queries), before)
    return set(zip(hits.query.tolist(), hits.rows["pair_id"].to_pylist(), strict=True))


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path, "test", SCHEMA)


def test_history_before_each_day_is_exact_through_compactions(store):
    days = {}
    for k, date in enumerate(DAYS):
        days[date] = day_rows(date, 5 + 7 * (k % 3), seed=k)
        record(store, date, days[date])
    # 20 one-day segments were merged by size tiers.
    assert len([s for s in store.manifest() if s.name]) < 10
    queries = [f"{v:016x}" for v in range(0, 60, 3)]
    for before in [DAYS[0], DAYS[1], DAYS[7], DAYS[19], "2025-02-01"]:
        assert found(store, queries, before) == brute(days, queries, before)
    assert store.rows_before("2025-02-01") == sum(t.num_rows for t in days.values())


def test_backfill_order_does_not_matter(tmp_path):
    forward = StateStore(tmp_path / "a", "s", SCHEMA)
    backward = StateStore(tmp_path / "b", "s", SCHEMA)
    days = {d: day_rows(d, 9, seed=i) for i, d in enumerate(DAYS[:10])}
    for d in DAYS[:10]:
        record(forward, d, days[d])
    for d in reversed(DAYS[:10]):
        record(backward, d, days[d])
    queries = [f"{v:016x}" for v in range(50)]
    for before in DAYS[:10]:
        assert found(forward, queries, before) == found(backward, queries, before)


def test_rerunning_a_day_replaces_its_rows_even_inside_a_merged_segment(store):
    days = {d: day_rows(d, 10, seed=i) for i, d in enumerate(DAYS[:8])}
    for d in DAYS[:8]:
        record(store, d, days[d])
    days[DAYS[2]] = day_rows(DAYS[2], 4, seed=99)
    record(store, DAYS[2], days[DAYS[2]], commit="new")
    queries = [f"{v:016x}" for v in range(50)]
    assert found(store, queries, "2025-02-01") == brute(days, queries, "2025-02-01")
    assert store.dates()[DAYS[2]] == DayRecord(4, "new")


def test_empty_day_is_recorded(store):
    record(store, DAYS[0], SCHEMA.empty_table())
    assert store.dates() == {DAYS[0]: DayRecord(0, "c")}
    assert found(store, ["0" * 16], DAYS[1]) == set()


def test_remove_pairs(store):
    days = {d: day_rows(d, 10, seed=i) for i, d in enumerate(DAYS[:5])}
    for d in DAYS[:5]:
        record(store, d, days[d])
    gone = [f"{DAYS[1]}-3", f"{DAYS[4]}-0", "not-there"]
    assert store.remove_pairs(gone) == 2
    for d in days:
        days[d] = days[d].filter(
            pa.compute.invert(pa.compute.is_in(days[d]["pair_id"], pa.array(gone)))
        )
    queries = [f"{v:016x}" for v in range(50)]
    assert found(store, queries, "2025-02-01") == brute(days, queries, "2025-02-01")
    assert store.dates()[DAYS[1]].rows == 9


def test_a_crash_mid_write_leaves_the_old_state_and_is_cleaned(store):
    rows = day_rows(DAYS[0], 10, seed=0)
    record(store, DAYS[0], rows)
    before = found(store, [f"{v:016x}" for v in range(50)], DAYS[1])
    # What a writer killed before its manifest replace leaves behind.
    (store.folder / ".tmp-seg-dead").mkdir()
    (store.folder / "seg-orphan").mkdir()
    (store.folder / f".{MANIFEST}.half").write_text("{")
    assert found(store, [f"{v:016x}" for v in range(50)], DAYS[1]) == before
    record(store, DAYS[1], day_rows(DAYS[1], 3, seed=1))
    names = {p.name for p in store.folder.iterdir()}
    assert not {".tmp-seg-dead", "seg-orphan", f".{MANIFEST}.half"} & names


def test_damaged_state_is_an_error_naming_the_fix(store):
    record(store, DAYS[0], day_rows(DAYS[0], 10, seed=0))
    segment = next(s for s in store.manifest() if s.name)
    keys = store.folder / segment.name / "keys.npy"
    keys.write_bytes(keys.read_bytes()[:-8])
    with pytest.raises(StateError, match="rebuild-state"):
        found(store, ["0" * 16], DAYS[1])
    (store.folder / MANIFEST).write_text("{not json")
    with pytest.raises(StateError, match="rebuild-state"):
        store.manifest()
    (store.folder / MANIFEST).write_text(json.dumps({"format": 999, "segments": []}))
    with pytest.raises(StateError, match="format 999"):
        store.manifest()


def test_stale_dates():
    recorded = {
        "2025-01-01": DayRecord(3, "a"),
        "2025-01-02": DayRecord(1, "b"),
        "2025-01-04": DayRecord(1, "x"),
    }
    warehouse = {"2025-01-01": "a", "2025-01-02": "B", "2025-01-03": "c", "2025-01-05": "e"}
    assert stale_dates(recorded, warehouse, "2025-01-05") == (
        ["2025-01-02", "2025-01-03"],
        ["2025-01-04"],
    )


def test_keys():
    assert key_of_hex(["ffffffffffffffff" + "0" * 48]).tolist() == [2**64 - 1]
    a, b = key_of_text(["p1", "p2"]).tolist()
    assert a != b and key_of_text(["p1"]).tolist() == [a]


# A child records DAYS[1] into a state that holds DAYS[0], and SIGKILLs itself just before the
# nth call of `call` (the segment's rename, or the manifest's replace).
_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from tests.core.dedup.test_dedup_state import SCHEMA, day_rows, record
    from dataplatform.core.dedup.dedup_state import StateStore

    spec = json.loads(sys.argv[1])
    real = getattr(os, spec["call"])
    seen = [0]

    def killing(*args, **kwargs):
        seen[0] += 1
        if seen[0] == spec["nth"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, spec["call"], killing)
    store = StateStore(spec["root"], "test", SCHEMA)
    record(store, spec["date"], day_rows(spec["date"], 12, seed=1))
    """
)


@pytest.mark.parametrize(("call", "nth"), [("rename", 1), ("replace", 1)])
def test_a_sigkill_during_an_update_leaves_the_old_state(tmp_path, call, nth):
    store = StateStore(tmp_path, "test", SCHEMA)
    old = day_rows(DAYS[0], 10, seed=0)
    record(store, DAYS[0], old)
    queries = [f"{v:016x}" for v in range(50)]
    before = found(store, queries, "2025-02-01")
    spec = {"root": str(tmp_path), "date": DAYS[1], "call": call, "nth": nth}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec), str(Path(__file__).parents[3])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert found(store, queries, "2025-02-01") == before
    assert set(store.dates()) == {DAYS[0]}
    # The next update works and leaves nothing behind.
    new = day_rows(DAYS[1], 12, seed=1)
    record(store, DAYS[1], new)
    assert found(store, queries, "2025-02-01") == brute(
        {DAYS[0]: old, DAYS[1]: new}, queries, "2025-02-01"
    )
    assert sorted(p.name for p in store.folder.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_reader_of_an_older_manifest_still_opens_its_segments(store, monkeypatch):
    days = {d: day_rows(d, 10, seed=i) for i, d in enumerate(DAYS[:3])}
    for d in DAYS[:3]:
        record(store, d, days[d])
    queries = [f"{v:016x}" for v in range(50)]
    stale = store.manifest()  # what a concurrent reader read before the next write
    record(store, DAYS[3], day_rows(DAYS[3], 10, seed=3))  # four one-day segments merge
    assert {s.name for s in stale} - {s.name for s in store.manifest()}  # replaced
    monkeypatch.setattr(store, "manifest", lambda: stale)
    assert found(store, queries, DAYS[3]) == brute(days, queries, DAYS[3])
    monkeypatch.undo()
    # Past the grace period the next write removes them; a reader that still holds the old
    # manifest then rereads it (SegmentGone is retried) instead of failing.
    monkeypatch.setattr("dataplatform.core.dedup.dedup_state.RETIRED_GRACE_S", 0.0)
    record(store, DAYS[4], day_rows(DAYS[4], 2, seed=4))
    on_disk = {p.name for p in store.folder.iterdir() if p.name.startswith("seg-")}
    assert on_disk == {s.name for s in store.manifest() if s.name}
    calls = iter([stale, None])

    def first_stale():
        current = next(calls, None)
        return current if current is not None else StateStore.manifest(store)

    monkeypatch.setattr(store, "manifest", first_stale)
    days[DAYS[3]] = day_rows(DAYS[3], 10, seed=3)
    assert found(store, queries, DAYS[4]) == brute(days, queries, DAYS[4])


def test_rebuild_swaps_in_the_new_state_at_the_end(store):
    old = {d: day_rows(d, 10, seed=i) for i, d in enumerate(DAYS[:3])}
    for d, rows in old.items():
        record(store, d, rows)
    queries = [f"{v:016x}" for v in range(50)]
    new = {d: day_rows(d, 6, seed=10 + i) for i, d in enumerate(DAYS[:5])}
    seen_meanwhile = []

    def days():
        for d, rows in new.items():
            seen_meanwhile.append(found(store, queries, "2025-02-01"))
            yield d, key_of_hex(rows["value"].to_pylist()), rows, "r"

    assert store.rebuild(days()) == 5
    assert all(s == brute(old, queries, "2025-02-01") for s in seen_meanwhile)
    assert found(store, queries, "2025-02-01") == brute(new, queries, "2025-02-01")
    assert sorted(store.dates()) == DAYS[:5]


def test_a_lookup_reads_only_the_batches_of_its_hits(store, monkeypatch):
    """Opening a segment reads no batch (its starts are stored), and ``take`` reads the one
    batch its rows are in: a day's lookups cost what the day hits, not the segment's size."""
    rows = 3 * dedup_state._BATCH_ROWS + 5
    record(store, DAYS[0], day_rows(DAYS[0], rows, seed=1))
    (segment,) = [s for s in store.manifest() if s.name]
    starts = np.load(store.segment_folder(segment) / dedup_state.BATCHES_FILE)
    assert starts.tolist() == [0, *(k * dedup_state._BATCH_ROWS for k in (1, 2, 3)), rows]
    read = []
    original = pa.ipc.RecordBatchFileReader.get_batch
    monkeypatch.setattr(
        pa.ipc.RecordBatchFileReader,
        "get_batch",
        lambda self, i: read.append(i) or original(self, i),
    )
    taken = store.take(segment, np.array([rows - 1, rows - 2]))
    assert read == [3]
    assert taken.num_rows == 2
    wanted = f"{7:016x}"
    hits = store.find_equal(key_of_hex([wanted]), DAYS[1])
    assert len(hits.query) and hits.rows["value"].to_pylist() == [wanted] * len(hits.query)


def test_a_segment_without_batch_starts_is_still_read(store):
    """Segments written before batches.npy existed have their batches counted instead."""
    days = {DAYS[0]: day_rows(DAYS[0], 40, seed=2)}
    record(store, DAYS[0], days[DAYS[0]])
    (segment,) = [s for s in store.manifest() if s.name]
    (store.segment_folder(segment) / dedup_state.BATCHES_FILE).unlink()
    queries = [f"{v:016x}" for v in range(50)]
    assert found(store, queries, DAYS[1]) == brute(days, queries, DAYS[1])


def test_batch_starts_that_disagree_with_the_manifest_are_an_error(store):
    record(store, DAYS[0], day_rows(DAYS[0], 40, seed=3))
    (segment,) = [s for s in store.manifest() if s.name]
    np.save(store.segment_folder(segment) / dedup_state.BATCHES_FILE, np.array([0, 2], np.int64))
    with pytest.raises(StateError, match="rebuild-state"):
        store.take(segment, np.array([0]))


def test_merges_stream_in_chunks_and_give_the_whole_merge(tmp_path, monkeypatch):
    """Merged a few rows at a time (chunks of 3, batches of 4, keys tied across chunk ends),
    the segments hold exactly what merging them whole gives: live rows in key order, ties in
    segment then row order; and every lookup still equals brute force."""
    monkeypatch.setattr(dedup_state, "_MERGE_CHUNK", 3)
    monkeypatch.setattr(dedup_state, "_BATCH_ROWS", 4)
    store = StateStore(tmp_path, "test", SCHEMA)
    days = {}
    for k, date in enumerate(DAYS[:12]):
        days[date] = day_rows(date, 5 + 3 * (k % 4), seed=100 + k)
        record(store, date, days[date])
    # A re-run day leaves rows of its old segment dead; a later merge must drop them.
    days[DAYS[2]] = day_rows(DAYS[2], 4, seed=999)
    record(store, DAYS[2], days[DAYS[2]])
    for k, date in enumerate(DAYS[12:17]):
        days[date] = day_rows(date, 6, seed=200 + k)
        record(store, date, days[date])
    segments = [s for s in store.manifest() if s.name]
    assert any(len(s.dates) >= 4 for s in segments)  # merges happened
    for segment in segments:
        keys = np.asarray(store._keys(segment))
        rows = store._rows(segment)
        assert np.all(keys[1:] >= keys[:-1])
        assert rows.num_rows == len(keys) == segment.rows
        expected = sorted(
            (int(key_of_hex([v])[0]), p)
            for d in segment.dates
            for p, v in zip(
                days[d]["pair_id"].to_pylist(), days[d]["value"].to_pylist(), strict=True
            )
        )
        got = list(zip(keys.tolist(), rows["pair_id"].to_pylist(), strict=True))
        assert sorted(got) == expected
    queries = [f"{v:016x}" for v in range(50)]
    for before in [DAYS[3], DAYS[10], "2025-02-01"]:
        assert found(store, queries, before) == brute(days, queries, before)


def test_a_capped_state_stops_merging_large_segments(tmp_path):
    """With ``max_merged_rows`` no compaction builds a segment past it."""
    store = StateStore(tmp_path, "test", SCHEMA, max_merged_rows=40)
    for k, date in enumerate(DAYS):
        record(store, date, day_rows(date, 10, seed=k))
    segments = [s for s in store.manifest() if s.name]
    assert max(s.rows for s in segments) <= 40
    assert sum(s.rows for s in segments) == 10 * len(DAYS)
