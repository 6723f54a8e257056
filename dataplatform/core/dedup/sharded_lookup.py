"""The global dedup stages' history lookups, sharded by key over the engine's workers.

A day's lookups against the persistent state split cleanly: an exact lookup by the key's
prefix (the first hex digit of a SHA-256, or of a pair_id's BLAKE2b key), a pHash search by
segment and hash band (multi-index hashing: a pair is reported by the first band that finds
it, so the bands' searches are disjoint and together complete). Each worker opens the state
read-only where the step synced it and returns only its hits: the candidate rows, a small graph
beside the history, come back to the step, where "earlier wins, best of the cluster" decides
exactly as on one machine. The state's folder must be on a volume every node mounts at the same
path (the shipped compose and KubeRay files mount the home on every Ray node); a worker that
does not find it fails naming the folder and the setting that keeps these lookups in the step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataplatform.core.dedup.dedup_state import Hits, Segment, StateError, StateStore
from dataplatform.core.dedup.phash_index import find_near_stored, stored_search_bands
from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec

# 16 prefix shards: enough to spread a day over a few dozen workers' CPU, few enough that each
# shard's probe of every segment is still a batch, not a handful of keys.
PREFIX_BITS = 4


def _reader(root: Path, name: str, schema: pa.Schema) -> StateStore:
    store = StateStore(root, name, schema)
    if not store.folder.is_dir():
        raise StateError(
            f"the dedup state {store.folder} is not on this Ray node: mount DATAPLATFORM_HOME "
            "on every node at the same path, or set the engine's shard_dedup to false to "
            "keep the global dedup lookups in the Dagster step"
        )
    return store


class _EqualLookup:
    """A worker: equal-key hits of one prefix shard of the day's keys."""

    def __init__(self, root: Path, name: str, schema: pa.Schema, before: str) -> None:
        self._store = _reader(root, name, schema)
        self._before = before

    def __call__(self, shard: tuple[np.ndarray, np.ndarray]) -> Hits:
        where, keys = shard
        hits = self._store.find_equal(keys, self._before)
        return Hits(where[hits.query], hits.rows)


def find_equal_on_engine(
    store: StateStore,
    keys: np.ndarray,
    before: str,
    engine: EngineSpec,
    log: Callable[[str], None] | None = None,
) -> tuple[Hits, ChunkRun]:
    """``store.find_equal(keys, before)``, its queries split by key prefix over the workers.

    The hits are the same rows with the same query indices, in shard order."""
    keys = np.asarray(keys, dtype=np.uint64)
    if not store.segments_for(before):  # no history yet: nothing for a worker to read
        return Hits(np.zeros(0, np.int64), store.schema.empty_table()), ChunkRun("ray", 0, 0, 0.0)
    prefix = keys >> np.uint64(64 - PREFIX_BITS)
    shards = []
    for p in range(1 << PREFIX_BITS):
        where = np.flatnonzero(prefix == p)
        if where.size:
            shards.append((where.astype(np.int64), keys[where]))
    worker = partial(_EqualLookup, store.folder.parent, store.name, store.schema, before)
    parts, run = map_chunks(engine, worker, shards, log=log)
    if not parts:
        return Hits(np.zeros(0, np.int64), store.schema.empty_table()), run
    return (
        Hits(np.concatenate([h.query for h in parts]), pa.concat_tables([h.rows for h in parts])),
        run,
    )


class _BandSearch:
    """A worker: the history rows one band of one segment finds near the day's hashes."""

    def __init__(
        self, root: Path, name: str, schema: pa.Schema, hashes: np.ndarray, threshold: int
    ) -> None:
        self._store = _reader(root, name, schema)
        self._hashes = hashes
        self._threshold = threshold

    def __call__(self, task: tuple[Segment, int]) -> np.ndarray:
        segment, band = task
        folder = self._store.segment_folder(segment)
        keys = self._store.keys_of(segment)
        _, ref, _ = find_near_stored(self._hashes, folder, keys, self._threshold, bands=(band,))
        return np.unique(ref)


def near_rows_on_engine(
    store: StateStore,
    hashes: np.ndarray,
    before: str,
    threshold: int,
    engine: EngineSpec,
    log: Callable[[str], None] | None = None,
) -> tuple[list[pa.Table], ChunkRun]:
    """Per segment, its live rows within ``threshold`` bits of a day hash, searched one
    (segment, band) per task; the rows the step's own search of every band would give."""
    segments = store.segments_for(before)
    tasks = [
        (segment, band)
        for segment in segments
        for band in range(
            stored_search_bands(len(hashes), store.segment_folder(segment), segment.rows, threshold)
        )
    ]
    worker = partial(_BandSearch, store.folder.parent, store.name, store.schema, hashes, threshold)
    found, run = map_chunks(engine, worker, tasks, log=log)
    by_segment: dict[str, list[np.ndarray]] = {}
    for (segment, _), rows in zip(tasks, found, strict=True):
        by_segment.setdefault(segment.name, []).append(rows)
    tables = []
    for segment in segments:
        rows = np.unique(np.concatenate(by_segment.get(segment.name, [np.zeros(0, np.int64)])))
        if rows.size == 0:
            continue
        taken = store.take(segment, rows)
        tables.append(taken.filter(pa.array(store.live(segment, taken, before))))
    return tables, run
