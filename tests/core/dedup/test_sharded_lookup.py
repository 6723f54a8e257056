"""The global dedup lookups sharded by key over a real Ray cluster find what the step finds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup.history_state import (
    EXACT_KEPT,
    INGESTED_IDS,
    PHASH_KEPT,
    Lookups,
    ingested_before,
    kept_phash_near,
    kept_sha_before,
    record,
)
from dataplatform.core.dedup.phash_index import stored_search_bands
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.store.home import Home

DAYS = ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"]
HISTORY_PER_DAY = 12_000
DAY = 3_000


def _hex(values: np.ndarray, digits: int) -> list[str]:
    return [format(int(v), f"0{digits}x") for v in values]


def _history(home: Home, rng: np.random.Generator) -> np.ndarray:
    """Three days recorded in all three states; their pHashes, for near copies to be made of."""
    hashes = []
    for d, date in enumerate(DAYS[:-1]):
        h = rng.integers(0, 2**63, HISTORY_PER_DAY, dtype=np.int64).astype(np.uint64) * 2 + 1
        shas = [rng.bytes(32).hex() for _ in range(HISTORY_PER_DAY)]
        rows = pa.table(
            {
                "pair_id": [f"p{d}-{i}" for i in range(HISTORY_PER_DAY)],
                "date": [date] * HISTORY_PER_DAY,
                "image_sha256": shas,
                "phash": _hex(h, 16),
            }
        )
        for spec in (INGESTED_IDS, EXACT_KEPT, PHASH_KEPT):
            record(home, spec, date, rows, commit=f"c{d}")
        hashes.append(h)
    return np.concatenate(hashes)


def _day(history_hashes: np.ndarray, history_shas: list[str], rng: np.random.Generator) -> pa.Table:
    near = history_hashes[rng.choice(len(history_hashes), DAY // 3, replace=False)]
    flips = rng.integers(0, 64, (len(near), 3))
    for col in range(3):  # up to three flipped bits: within the 8-bit threshold
        near ^= np.uint64(1) << flips[:, col].astype(np.uint64)
    fresh = rng.integers(0, 2**63, DAY - len(near), dtype=np.int64).astype(np.uint64)
    hashes = np.concatenate([near, fresh])
    shas = [history_shas[int(i)] for i in rng.choice(len(history_shas), DAY // 4)]
    shas += [rng.bytes(32).hex() for _ in range(DAY - len(shas))]
    ids = [f"p0-{i}" for i in range(DAY // 5)] + [f"new-{i}" for i in range(DAY - DAY // 5)]
    return pa.table(
        {
            "pair_id": ids,
            "date": [DAYS[-1]] * DAY,
            "image_sha256": shas,
            "phash": _hex(hashes, 16),
        }
    )


def _sorted(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["date"], r["pair_id"]))


@pytest.mark.timeout(300)
def test_sharded_lookups_equal_the_steps_own(tmp_path: Path, ray_cluster):
    rng = np.random.default_rng(7)
    home = Home(tmp_path / "home")
    history_hashes = _history(home, rng)
    shas = (
        EXACT_KEPT.store(home)
        .take(EXACT_KEPT.store(home).segments_for(DAYS[-1])[0], np.arange(200))
        .column("image_sha256")
        .to_pylist()
    )
    day = _day(history_hashes, shas, rng)
    date = DAYS[-1]
    lookups = Lookups(EngineSpec(kind="ray", address=ray_cluster.address))

    near_local = kept_phash_near(home, day, date, 8)
    near_ray = kept_phash_near(home, day, date, 8, lookups)
    assert near_local.num_rows >= DAY // 3  # every near copy finds its original
    # Same rows in the same order: the greedy decision's ties follow the history's order.
    assert near_ray.to_pylist() == near_local.to_pylist()

    sha_ray = kept_sha_before(home, day, date, lookups)
    assert sha_ray.num_rows == DAY // 4
    assert _sorted(sha_ray) == _sorted(kept_sha_before(home, day, date))
    ids_ray = ingested_before(home, day, date, lookups)
    assert ids_ray.num_rows == DAY // 5
    assert _sorted(ids_ray) == _sorted(ingested_before(home, day, date))

    # The pHash search ran banded, one (segment, band) per task; the others by key prefix.
    store = PHASH_KEPT.store(home)
    segments = store.segments_for(date)
    bands = sum(stored_search_bands(DAY, store.segment_folder(s), s.rows, 8) for s in segments)
    assert bands > len(segments)
    phash_run, sha_run, ids_run = lookups.runs
    assert phash_run.engine == "ray" and phash_run.chunks == bands
    assert sha_run.chunks == ids_run.chunks == 16
    assert phash_run.workers == ray_cluster.worker_nodes


def test_lookups_stay_in_the_step_unless_sharding_is_on():
    assert not Lookups().sharded
    assert not Lookups(EngineSpec(kind="ray", shard_dedup=False)).sharded
    assert Lookups(EngineSpec(kind="ray")).sharded


@pytest.mark.timeout(300)
def test_semantic_nearest_split_by_index_cell_equals_the_steps_own(tmp_path: Path, ray_cluster):
    from dataplatform.core.dedup.semantic_history import CELL_SHARDS, SemanticStore
    from tests.core.dedup.test_semantic_history import DAYS as SEMANTIC_DAYS
    from tests.core.dedup.test_semantic_history import THRESHOLD, day

    store = SemanticStore(tmp_path / "state")
    days = {d: day(d, 300, seed=k) for k, d in enumerate(SEMANTIC_DAYS[:5])}
    days[SEMANTIC_DAYS[5]] = (days[SEMANTIC_DAYS[1]][0].copy(), day(SEMANTIC_DAYS[5], 300, 0)[1])
    for d, (vectors, ids) in days.items():
        store.record_day(d, vectors, ids, "c")
    queries = np.concatenate([day("2025-02-01", 200, seed=96)[0], days[SEMANTIC_DAYS[1]][0][:50]])
    local = store.nearest(queries, THRESHOLD, "2025-02-01")
    engine = EngineSpec(kind="ray", address=ray_cluster.address)
    sharded, run = store.nearest_on_engine(queries, THRESHOLD, "2025-02-01", engine)
    assert len(local.query) > 50  # copies found, exact ties among them
    np.testing.assert_array_equal(sharded.query, local.query)
    np.testing.assert_array_equal(sharded.row, local.row)
    np.testing.assert_array_equal(sharded.similarity, local.similarity)
    assert sharded.history.to_pylist() == local.history.to_pylist()
    assert run.chunks == min(CELL_SHARDS, store.quantizer().nlist) > 1
