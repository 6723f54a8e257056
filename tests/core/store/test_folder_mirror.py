"""The dedup state beside an object-store warehouse, shared by two machines (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup import dedup_state
from dataplatform.core.dedup.dedup_state import StateStore, key_of_text
from dataplatform.core.dedup.history_state import (
    INGESTED_IDS,
    MIRROR_FOLDER,
    ingested_before,
    state_mirror_url,
)
from dataplatform.core.store import folder_mirror
from dataplatform.core.store.folder_mirror import FolderMirror
from dataplatform.core.store.home import Home
from dataplatform.core.store.object_store import open_store
from dataplatform.core.store.warehouse import warehouse_tables, write_partition
from tests.core.store.test_object_store import (  # noqa: F401 - the moto fixtures
    BUCKET,
    s3_endpoint,
    s3_home,
)

SCHEMA = pa.schema([("pair_id", pa.string()), ("date", pa.string())])


def _day(date: str, ids: list[str]) -> tuple[np.ndarray, pa.Table]:
    return key_of_text(ids), pa.table({"pair_id": ids, "date": [date] * len(ids)}, schema=SCHEMA)


def _machine(root: Path, url: str) -> StateStore:
    return StateStore(root, "ids", SCHEMA, mirror_url=url)


def _second_machine(tmp_path: Path, prefix: str) -> FolderMirror:
    """A remote state of one day written by machine a, and machine b's mirror of it."""
    url = f"s3://{BUCKET}/{prefix}/_state/ids"
    _machine(tmp_path / "a", url).record_day("2024-01-01", *_day("2024-01-01", ["p1"]), "c1")
    return FolderMirror(tmp_path / "b" / "ids", url)


def _found(store: StateStore, ids: list[str], before: str) -> set[tuple[str, str]]:
    hits = store.find_equal(key_of_text(ids), before)
    return set(zip(hits.rows["pair_id"].to_pylist(), hits.rows["date"].to_pylist(), strict=True))


def test_two_machines_share_the_state_through_the_object_store(
    s3_endpoint: str,  # noqa: F811 - the fixture
    tmp_path: Path,
):
    url = f"s3://{BUCKET}/two-machines/_state/ids"
    a, b = _machine(tmp_path / "a", url), _machine(tmp_path / "b", url)
    a.record_day("2024-01-01", *_day("2024-01-01", ["p1", "p2"]), "c1")
    a.record_day("2024-01-02", *_day("2024-01-02", ["p3"]), "c2")

    assert b.dates() == {}  # nothing local yet
    b.refresh()
    assert set(b.dates()) == {"2024-01-01", "2024-01-02"}
    assert _found(b, ["p1", "p3", "zz"], "2024-01-03") == {
        ("p1", "2024-01-01"),
        ("p3", "2024-01-02"),
    }

    # B writes a day; A's next write starts from it instead of overwriting it.
    b.record_day("2024-01-03", *_day("2024-01-03", ["p4"]), "c3")
    a.record_day("2024-01-04", *_day("2024-01-04", ["p5"]), "c4")
    b.refresh()
    assert set(b.dates()) == {"2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"}
    assert _found(b, ["p4", "p5"], "2024-01-05") == {("p4", "2024-01-03"), ("p5", "2024-01-04")}


def test_segments_retired_locally_leave_the_object_store_too(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Compaction merges one-day segments; once their grace is over they go from both sides,
    so the object store holds what the manifest names and nothing that grows without end."""
    monkeypatch.setattr(dedup_state, "RETIRED_GRACE_S", 0.0)
    monkeypatch.setattr(folder_mirror, "DELETE_GRACE_S", 0.0)
    url = f"s3://{BUCKET}/retired/_state/ids"
    store = _machine(tmp_path / "a", url)
    for k in range(1, 6):
        date = f"2024-01-0{k}"
        store.record_day(date, *_day(date, [f"p{k}"]), f"c{k}")
    live = {s.name for s in store.manifest() if s.name}
    objects = open_store(url).listing(url)
    segments = {o[len(url) + 1 :].split("/")[0] for o in objects} - {"manifest.json"}
    assert segments == live
    assert len(live) < 5  # merged


def test_a_segment_another_machine_just_uploaded_is_not_deleted(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
):
    """Between another writer's segment upload and its manifest, this machine's push sees a
    segment it does not have; only files past ``DELETE_GRACE_S`` are taken for retired ones."""
    url = f"s3://{BUCKET}/foreign/_state/ids"
    store = _machine(tmp_path / "a", url)
    store.record_day("2024-01-01", *_day("2024-01-01", ["p1"]), "c1")
    foreign = f"{url}/seg-from-another-machine/keys.npy"
    open_store(url).put(foreign, b"not yet named by any manifest")
    store.record_day("2024-01-02", *_day("2024-01-02", ["p2"]), "c2")
    assert open_store(url).is_file(foreign)


def test_pull_replaces_the_manifest_last(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A reader of the local copy never sees a manifest that names files it does not have."""
    mirror = _second_machine(tmp_path, "order")
    written: list[str] = []
    replace = folder_mirror.os.replace

    def spy(source, target) -> None:
        written.append(Path(target).relative_to(mirror.local).as_posix())
        replace(source, target)

    monkeypatch.setattr(folder_mirror.os, "replace", spy)
    assert mirror.pull() == len(written) > 2
    assert written[-1] == "manifest.json"
    assert all(w.startswith("seg-") for w in written[:-1])
    assert mirror.pull() == 0  # unchanged: one GET, nothing fetched


def test_the_warehouse_keeps_the_state_beside_it(s3_home: Home, tmp_path: Path):  # noqa: F811
    """With an s3:// warehouse the state is mirrored under ``<warehouse>/_state/``, which no
    table listing mistakes for a table, and a second home on another machine reads it."""
    assert state_mirror_url(s3_home, "ingested_ids") == (
        f"{s3_home.warehouse_url}/{MIRROR_FOLDER}/ingested_ids"
    )
    assert state_mirror_url(Home(tmp_path / "local"), "ingested_ids") is None
    rows = pa.table({"pair_id": ["a", "b"], "date": ["2024-01-01"] * 2})
    write_partition(s3_home, "raw_pairs", "2024-01-01", rows)
    INGESTED_IDS.store(s3_home).record_day("2024-01-01", key_of_text(["a", "b"]), rows, "c1")
    assert warehouse_tables(s3_home) == ["raw_pairs"]
    other = Home(tmp_path / "other-machine", s3_home.warehouse_url)
    INGESTED_IDS.store(other).refresh()
    found = ingested_before(other, pa.table({"pair_id": ["b", "c"]}), "2024-01-02")
    assert found.to_pylist() == [{"pair_id": "b", "date": "2024-01-01"}]


def test_the_semantic_state_is_shared_the_same_way(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
):
    """Its segments (versioned folders with their own manifest) and quantizers travel too: a
    second machine finds exactly what the first recorded."""
    from dataplatform.core.dedup.semantic_history import SemanticStore
    from tests.core.dedup.test_semantic_history import brute, day, found

    url = f"s3://{BUCKET}/semantic/_state/semantic_deduped"
    a = SemanticStore(tmp_path / "a", url)
    days = {d: day(d, 60, seed=k) for k, d in enumerate(["2024-01-01", "2024-01-02"])}
    for d, (vectors, ids) in days.items():
        a.record_day(d, vectors, ids, f"c-{d}")
    b = SemanticStore(tmp_path / "b", url)
    b.refresh()
    queries = day("2024-01-03", 30, seed=9)[0]
    assert b.quantizer().fingerprint == a.quantizer().fingerprint
    assert found(b, queries, "2024-01-03") == brute(days, queries, "2024-01-03")
    assert found(b, queries, "2024-01-03")  # the data hold copies: not vacuous


def test_a_takedown_leaves_the_object_store_and_other_caches_at_once(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
):
    """Within the hour that ordinary retired files wait, a takedown's purged segment is
    deleted from the object store, and another machine's next refresh drops it from its
    cache: the pair leaves every disk, not only the one that ran the takedown."""
    url = f"s3://{BUCKET}/takedown/_state/ids"
    a, b = _machine(tmp_path / "a", url), _machine(tmp_path / "b", url)
    a.record_day("2024-01-01", *_day("2024-01-01", ["secret", "p2"]), "c1")
    b.refresh()
    (old,) = [s.name for s in b.manifest() if s.name]
    assert (b.folder / old).is_dir()
    assert a.remove_pairs(["secret"]) == 1
    objects = open_store(url).listing(url)
    assert not [o for o in objects if f"/{old}/" in o]
    b.refresh()
    assert not (b.folder / old).exists()
    assert _found(b, ["secret", "p2"], "2024-01-02") == {("p2", "2024-01-01")}
    leftovers = [p for p in b.folder.rglob("*") if p.is_file() and b"secret" in p.read_bytes()]
    assert leftovers == []


def test_a_file_that_vanishes_mid_pull_restarts_it(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    mirror = _second_machine(tmp_path, "vanish")
    download = mirror.store.download
    failures = []

    def flaky(source: str, path) -> None:
        if not failures:
            failures.append(source)
            raise FileNotFoundError(source)
        download(source, path)

    monkeypatch.setattr(mirror.store, "download", flaky)
    assert mirror.pull() > 1
    assert failures and (mirror.local / "manifest.json").is_file()
    assert StateStore(tmp_path / "b", "ids", SCHEMA).dates().keys() == {"2024-01-01"}
