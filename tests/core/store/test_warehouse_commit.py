"""commit_stage and recover: a stage's partition and ledger are replaced together, crash or not.

A crash is simulated by copying the warehouse as it is on disk just before each step of the
protocol (a temp file write, a rename, the record's delete): each copy is what a process killed
at that instant leaves behind. A reader of every copy must see the old pair or the new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataplatform.core.records.funnel import commit_mismatches, warehouse_funnel
from dataplatform.core.store import warehouse
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import (
    COMMITS_FOLDER,
    CorruptPartitionError,
    commit_id,
    commit_stage,
    connect,
    ledger_file,
    partition_dates,
    partition_file,
    read_ledger,
    read_partition,
    recover,
    warehouse_tables,
    write_ledger,
    write_partition,
)

D = "2025-01-01"
STAGE = "s"
SIDE = "embeddings"  # a declared side table (of clip_scored), written in the same commit


def _kept(ids: list[str]) -> pa.Table:
    return pa.table({"pair_id": pa.array(ids, pa.string()), "date": [D] * len(ids)})


def _ledger(ids: list[str]) -> pa.Table:
    return ledger_table(
        [ledger_row({"pair_id": i, "date": D, "text": i}, STAGE, "why", "because") for i in ids]
    )


OLD = {"kept": ["a", "b"], "ledger": ["c"], "side": ["a"]}
NEW = {"kept": ["a", "d", "e"], "ledger": ["b", "c"], "side": ["d", "e", "f"]}


def _commit(home: Home, version: dict) -> str:
    return commit_stage(
        home,
        D,
        {STAGE: _kept(version["kept"]), SIDE: _kept(version["side"])},
        {STAGE: _ledger(version["ledger"])},
    )


def _state(home: Home) -> tuple[dict, str | None, str | None]:
    """What a reader sees: the ids of the pair, and the commit of each of its files."""
    seen = {
        "kept": sorted(read_partition(home, STAGE, D).column("pair_id").to_pylist()),
        "ledger": sorted(read_ledger(home, STAGE, D).column("pair_id").to_pylist()),
        "side": sorted(read_partition(home, SIDE, D).column("pair_id").to_pylist()),
    }
    return (
        seen,
        commit_id(partition_file(home, STAGE, D)),
        commit_id(ledger_file(home, STAGE, D)),
    )


def _leftovers(home: Home) -> list[str]:
    """Temp files and commit records anywhere under the warehouse."""
    root = Path(home.warehouse)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".tmp") or (p.parent.name == COMMITS_FOLDER and p.suffix == ".json")
    )


def _crash_images(home: Home, tmp_path: Path, monkeypatch, write) -> list[tuple[str, Home]]:
    """Run ``write`` and copy the home before each step of its commit: (step, copy) pairs."""
    images: list[tuple[str, Home]] = []
    root = Path(home.warehouse)

    def snapshot(step: str) -> None:
        copy = Home(tmp_path / f"crash{len(images):02d}")
        shutil.copytree(home.root, copy.root)
        images.append((step, copy))

    def watched(name: str, real):
        def call(*args, **kwargs):
            target = str(args[1] if name == "replace" else args[0])
            if target.startswith(str(root)):
                snapshot(f"before {name} {Path(target).relative_to(root)}")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(pq, "write_table", _wrap_write(pq.write_table, snapshot, root))
    monkeypatch.setattr(os, "replace", watched("replace", os.replace))
    monkeypatch.setattr(os, "unlink", watched("unlink", os.unlink))
    write()
    monkeypatch.undo()
    snapshot("after the commit")
    return images


def _wrap_write(real, snapshot, root: Path):
    def call(table, where, *args, **kwargs):
        if str(where).startswith(str(root)):
            snapshot(f"before writing {Path(where).relative_to(root)}")
        return real(table, where, *args, **kwargs)

    return call


def test_commit_stamps_every_file_and_leaves_nothing_behind(tmp_path: Path):
    home = Home(tmp_path)
    commit = _commit(home, OLD)
    assert _state(home) == (OLD, commit, commit)
    assert commit_id(partition_file(home, SIDE, D)) == commit
    assert pq.read_metadata(partition_file(home, STAGE, D)).metadata[b"dataplatform.commit"] == (
        commit.encode()
    )
    assert _leftovers(home) == []
    # Bookkeeping folders never become tables, and the DESIGN.md paths are kept.
    assert warehouse_tables(home) == [SIDE, "rejections", STAGE]
    assert partition_file(home, STAGE, D) == tmp_path / "warehouse" / STAGE / f"date={D}" / (
        "part-0.parquet"
    )
    assert ledger_file(home, STAGE, D) == (
        tmp_path / "warehouse" / "rejections" / f"stage={STAGE}" / f"date={D}" / "part-0.parquet"
    )


def test_a_file_committed_alone_carries_its_counterpart_along(tmp_path: Path):
    home = Home(tmp_path)
    write_partition(home, STAGE, D, _kept(["a"]))
    write_ledger(home, STAGE, D, _ledger(["b"]))
    first = commit_id(ledger_file(home, STAGE, D))
    assert commit_id(partition_file(home, STAGE, D)) == first
    write_partition(home, STAGE, D, _kept(["x"]))
    second = commit_id(partition_file(home, STAGE, D))
    assert second != first and commit_id(ledger_file(home, STAGE, D)) == second
    assert read_ledger(home, STAGE, D).column("pair_id").to_pylist() == ["b"]
    assert commit_mismatches(home, [STAGE]) == []


def test_a_crash_at_any_step_leaves_the_old_pair_or_the_new_one(tmp_path: Path, monkeypatch):
    home = Home(tmp_path / "home")
    old = _commit(home, OLD)
    new: list[str] = []
    images = _crash_images(home, tmp_path, monkeypatch, lambda: new.append(_commit(home, NEW)))
    steps = [step for step, _ in images]
    # Three temp files, the record's rename (the commit point), three renames, the record's
    # delete: every step of the protocol is a crash point.
    assert steps == [
        f"before writing {STAGE}/date={D}/.part-0.parquet.{new[0]}.tmp",
        f"before writing embeddings/date={D}/.part-0.parquet.{new[0]}.tmp",
        f"before writing rejections/stage={STAGE}/date={D}/.part-0.parquet.{new[0]}.tmp",
        f"before replace _commits/{new[0]}.json",
        f"before replace {STAGE}/date={D}/part-0.parquet",
        f"before replace embeddings/date={D}/part-0.parquet",
        f"before replace rejections/stage={STAGE}/date={D}/part-0.parquet",
        f"before unlink _commits/{new[0]}.json",
        "after the commit",
    ]
    outcomes = []
    for step, image in images:
        if step == f"before replace rejections/stage={STAGE}/date={D}/part-0.parquet":
            # On disk the partition is new and the ledger old: only the record can mend it.
            raw = (
                pq.read_metadata(partition_file(image, STAGE, D)).metadata[warehouse.COMMIT_KEY],
                pq.read_metadata(ledger_file(image, STAGE, D)).metadata[warehouse.COMMIT_KEY],
            )
            assert raw == (new[0].encode(), old.encode())
        seen, partition_commit, ledger_commit = _state(image)  # readers recover first
        assert partition_commit == ledger_commit, step
        assert (seen, partition_commit) in [(OLD, old), (NEW, new[0])], step
        assert commit_mismatches(image, [STAGE]) == []
        outcomes.append("new" if partition_commit == new[0] else "old")
        # The next write leaves no temp file and no record behind, whatever was interrupted.
        third = _commit(image, OLD)
        assert _state(image) == (OLD, third, third)
        assert _leftovers(image) == [], step
    # Before the record's rename the old pair stands; from it on, the new one.
    assert outcomes == ["old"] * 4 + ["new"] * 5


def test_interrupted_writes_leave_temp_files_until_the_next_write(tmp_path: Path, monkeypatch):
    home = Home(tmp_path / "home")
    _commit(home, OLD)
    images = _crash_images(home, tmp_path, monkeypatch, lambda: _commit(home, NEW))
    _, image = images[3]  # every temp file written, the record not yet renamed into place
    temps = [f for f in _leftovers(image) if Path(f).name.startswith(".part-0.parquet.")]
    assert len(temps) == 3
    assert recover(image) == []  # no record: nothing to roll forward, temps stay unnamed
    assert _state(image)[0] == OLD
    # Readers never delete them; the next write of those partitions does.
    connect(image).close()
    assert len(_leftovers(image)) == 4  # the three temp files and the record's own temp
    _commit(image, NEW)
    assert _leftovers(image) == []


@pytest.mark.parametrize("failing_call", range(1, 6))
def test_a_failing_rename_raises_and_a_reader_still_sees_one_pair(
    tmp_path: Path, monkeypatch, failing_call: int
):
    """os.replace raising at its Nth call: 1 the record (nothing committed), 2-4 a file."""
    home = Home(tmp_path)
    old = _commit(home, OLD)
    calls = []
    real = os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError(f"disk went away at rename {failing_call}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    if failing_call <= 4:
        with pytest.raises(OSError, match="disk went away"):
            _commit(home, NEW)
    else:
        new = _commit(home, NEW)  # four renames in all: a fifth call never comes
        assert _state(home) == (NEW, new, new)
    monkeypatch.undo()
    seen, partition_commit, ledger_commit = _state(home)
    assert partition_commit == ledger_commit
    if failing_call == 1:
        # The record never landed: the old pair, and the temp files are already gone.
        assert (seen, partition_commit) == (OLD, old)
        assert _leftovers(home) == []
    else:
        assert seen == NEW
    _commit(home, NEW)
    assert _leftovers(home) == []


def test_recover_is_idempotent_and_cheap_when_idle(tmp_path: Path, monkeypatch):
    home = Home(tmp_path / "home")
    _commit(home, OLD)
    images = _crash_images(home, tmp_path, monkeypatch, lambda: _commit(home, NEW))
    _, image = images[5]  # the record is in place, one of three files renamed
    (record,) = (Path(image.warehouse) / COMMITS_FOLDER).glob("*.json")
    assert recover(image) == [record.stem]
    assert recover(image) == []
    assert _state(image)[0] == NEW
    listed: list[str] = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(str(p)) or real(p))
    recover(image)
    assert listed == [str(Path(image.warehouse) / COMMITS_FOLDER)]


def test_an_unreadable_file_is_named_with_what_rewrites_it(tmp_path: Path):
    home = Home(tmp_path)
    _commit(home, OLD)
    path = partition_file(home, STAGE, D)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptPartitionError) as caught:
        read_partition(home, STAGE, D)
    assert str(path) in str(caught.value)
    assert f"materialize {STAGE} for {D}" in str(caught.value)
    # A side table names the stage that writes it.
    side = partition_file(home, SIDE, D)
    side.write_bytes(b"not parquet")
    with pytest.raises(CorruptPartitionError, match=f"materialize clip_scored for {D}"):
        read_partition(home, SIDE, D)
    # Through DuckDB too: the funnel and every connection name the file instead of failing.
    with pytest.raises(CorruptPartitionError, match="cannot read .*/part-0.parquet"):
        warehouse_funnel(home, [STAGE])
    # Rewriting it is the cure.
    _commit(home, NEW)
    assert _state(home)[0] == NEW
    assert partition_dates(home, STAGE) == [D]


def test_a_flipped_byte_inside_a_page_is_caught_on_read(tmp_path: Path):
    home = Home(tmp_path)
    ids = [f"pair{i:05d}" for i in range(5000)]
    commit_stage(home, D, {STAGE: _kept(ids)}, {STAGE: _ledger([])})
    path = partition_file(home, STAGE, D)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the first data page; the footer is intact
    path.write_bytes(bytes(data))
    commit_id(path)  # the footer still reads
    with pytest.raises(CorruptPartitionError, match=f"materialize {STAGE} for {D}"):
        read_partition(home, STAGE, D)


def test_funnel_reports_a_partition_and_ledger_from_different_commits(tmp_path: Path):
    home = Home(tmp_path)
    _commit(home, OLD)
    # What the old two-call write left after a crash: a new partition beside the old ledger.
    stray = tmp_path / "stray.parquet"
    pq.write_table(
        _kept(NEW["kept"]).replace_schema_metadata({warehouse.COMMIT_KEY: b"other"}), stray
    )
    os.replace(stray, partition_file(home, STAGE, D))
    (funnel,) = warehouse_funnel(home, [STAGE], D)
    assert not funnel.consistent
    (mismatch,) = funnel.mismatches
    assert (mismatch.stage, mismatch.date, mismatch.partition_commit) == (STAGE, D, "other")
    assert mismatch.ledger_commit == commit_id(ledger_file(home, STAGE, D))
    assert f"materialize {STAGE} for {D}" in mismatch.describe()


def test_writers_of_one_partition_take_turns_and_never_lose_a_temp_file(tmp_path: Path):
    """Two processes' worth of writers (threads here): the clean-up of one never deletes a temp
    file the other is still writing, and the last commit wins whole."""
    from concurrent.futures import ThreadPoolExecutor

    home = Home(tmp_path)

    def write(k: int) -> str:
        return _commit(home, OLD if k % 2 else NEW)

    with ThreadPoolExecutor(4) as pool:
        commits = list(pool.map(write, range(24)))
    seen, partition_commit, ledger_commit = _state(home)
    assert partition_commit == ledger_commit == max(commits)  # ids sort in commit order
    assert seen in (OLD, NEW)
    assert _leftovers(home) == []
