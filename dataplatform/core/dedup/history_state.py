"""The global dedup stages' history, read from their persistent state instead of every partition.

Each stage asks the state only for the history rows its day can hit: the kept pairs whose
SHA-256 equals one of the day's, the pair_ids the day reuses, the kept pHashes within the
threshold of the day's. The existing decision functions (``exact_deduplicate``,
``phash_deduplicate``) then run on that subset; they only ever join or compare history rows
that match, so the decisions are the ones the whole history gives, and the day's cost follows
the day. Before deciding, ``sync`` brings the state in line with the warehouse, which stays the
record: a day the state lacks or holds from another commit (a run killed after its warehouse
commit, a warehouse older than the state, a re-run earlier day) is rebuilt from that day's
partition alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataplatform.core.dedup.dedup_state import (
    END_OF_TIME,
    STATE_FOLDER,
    Hits,
    SegmentGone,
    StateError,
    StateStore,
    key_of_hex,
    key_of_text,
    stale_dates,
)
from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.dedup.phash_index import find_near_stored, write_band_tables
from dataplatform.core.dedup.sharded_lookup import find_equal_on_engine, near_rows_on_engine
from dataplatform.core.engine.chunk_map import ChunkRun
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    commit_id,
    partition_dates,
    partition_file,
    read_partition,
)

log = logging.getLogger(__name__)

MIRROR_FOLDER = "_state"  # below an object-store warehouse's URL

_TEXT = pa.string()
IDS_SCHEMA = pa.schema([("pair_id", _TEXT), ("date", _TEXT)])
SHA_SCHEMA = pa.schema([("pair_id", _TEXT), ("date", _TEXT), ("image_sha256", _TEXT)])
PHASH_SCHEMA = pa.schema([("pair_id", _TEXT), ("date", _TEXT), ("phash", _TEXT)])


@dataclass(frozen=True)
class StateSpec:
    """One state: its folder name, the table it mirrors, the columns it keeps and its key."""

    name: str
    table: str
    schema: pa.Schema
    key: Callable[[pa.Table], np.ndarray]
    index: Callable[[Path, np.ndarray], None] | None = None
    max_merged_rows: int | None = None

    def store(self, home: Home) -> StateStore:
        return StateStore(
            state_root(home),
            self.name,
            self.schema,
            self.index,
            state_mirror_url(home, self.name),
            self.max_merged_rows,
        )


def state_root(home: Home) -> Path:
    """Where the state is read and written: below the home (with an object-store warehouse,
    the local cache of the copy beside it: ``state_mirror_url``)."""
    return home.root / STATE_FOLDER


def state_mirror_url(home: Home, name: str) -> str | None:
    """Where the state ``name`` is kept beside an object-store warehouse, so that every machine
    that runs a day shares it (``_state/`` is skipped by the table listings, like
    ``_commits/``); None for a local warehouse, whose state is the local folder itself."""
    if not home.warehouse_url:
        return None
    return f"{home.warehouse_url}/{MIRROR_FOLDER}/{name}"


def _ids_key(rows: pa.Table) -> np.ndarray:
    return key_of_text(rows.column("pair_id").to_pylist())


def _sha_key(rows: pa.Table) -> np.ndarray:
    return key_of_hex(rows.column("image_sha256").to_pylist())


def _phash_key(rows: pa.Table) -> np.ndarray:
    return np.array([from_hex(h) for h in rows.column("phash").to_pylist()], dtype=np.uint64)


# Every pair_id raw_pairs ingested (a pair_id stays unique even when its first row was dropped).
INGESTED_IDS = StateSpec("ingested_ids", "raw_pairs", IDS_SCHEMA, _ids_key)
EXACT_KEPT = StateSpec("exact_deduped", "exact_deduped", SHA_SCHEMA, _sha_key)
# Band tables are built by sorting a whole segment (about 30 bytes a hash a band): segments stop
# growing at 16.8M hashes (about 0.5 GB to build), so a compaction day stays within a day's
# memory; past that the state holds more segments, each searched in turn.
PHASH_MAX_SEGMENT = 1 << 24
PHASH_KEPT = StateSpec(
    "phash_deduped",
    "phash_deduped",
    PHASH_SCHEMA,
    _phash_key,
    index=write_band_tables,
    max_merged_rows=PHASH_MAX_SEGMENT,
)
SPECS = (INGESTED_IDS, EXACT_KEPT, PHASH_KEPT)


def warehouse_commits(home: Home, table: str, before: str) -> dict[str, str | None]:
    """Each partition date of ``table`` before ``before`` and its commit id (footers only)."""
    return {
        d: commit_id(partition_file(home, table, d))
        for d in partition_dates(home, table)
        if d < before
    }


def sync(home: Home, spec: StateSpec, before: str) -> list[str]:
    """Rebuild the days before ``before`` that the state lacks or holds from another commit.

    Returns the dates rebuilt. Each is read from its own partition, so a normal day (nothing
    stale) reads only the footers; a warehouse written before the state existed is rebuilt
    once, a day at a time, and says so in the log.
    """

    def load(date: str) -> tuple[np.ndarray, pa.Table]:
        rows = read_partition(home, spec.table, date).select(spec.schema.names)
        return spec.key(rows), rows

    return sync_days(home, spec.store(home), spec.table, before, load)


def sync_days(
    home: Home,
    store: StateStore,
    table: str,
    before: str,
    load: Callable[[str], tuple[np.ndarray, pa.Table]],
) -> list[str]:
    """``sync`` for any state: ``table``'s partitions are the record, ``load`` gives one
    day's keys and rows from them (the semantic state loads embeddings)."""
    store.refresh()
    commits = warehouse_commits(home, table, before)
    rebuild, drop = stale_dates(store.dates(), commits, before)
    if drop:
        log.warning("%s state: dropping %s, whose %s partitions are gone", store.name, drop, table)
        store.drop_dates(drop)
    if rebuild:
        log.warning(
            "%s state: rebuilding %d day(s) from the warehouse (%s%s): missing or from another "
            "commit",
            store.name,
            len(rebuild),
            ", ".join(rebuild[:5]),
            ", ..." if len(rebuild) > 5 else "",
        )
    for date in rebuild:
        keys, rows = load(date)
        store.record_day(date, keys, rows, commits[date])
    return rebuild


def record(
    home: Home, spec: StateSpec, date: str, rows: pa.Table, *, commit: str | None = None
) -> None:
    """Make the state's content for ``date`` the rows of ``spec.table``'s partition for it.

    ``commit`` is the commit id those rows came from: the one the caller's commit returned, or
    one read before it read the rows. Then, if the partition is rewritten meanwhile (a
    takedown), the state holds an older commit than the warehouse and the next ``sync``
    rebuilds the day. Read from the footer only when not given.
    """
    rows = rows.select(spec.schema.names)
    if commit is None:
        commit = commit_id(partition_file(home, spec.table, date))
    spec.store(home).record_day(date, spec.key(rows), rows, commit)


def rebuild_all(home: Home) -> dict[str, int]:
    """Rebuild every state from the warehouse (``dataplatform rebuild-state``).

    Each state is rebuilt beside the live one and swapped in with one manifest replace, so a
    run reading it meanwhile sees the old state, never an empty or partial one.
    """
    done = {}
    for spec in SPECS:
        commits = warehouse_commits(home, spec.table, END_OF_TIME)

        def days(spec: StateSpec = spec, commits: dict = commits):
            for date, commit in sorted(commits.items()):
                rows = read_partition(home, spec.table, date).select(spec.schema.names)
                yield date, spec.key(rows), rows, commit

        done[spec.name] = spec.store(home).rebuild(days())
    from dataplatform.core.dedup import semantic_history

    done[semantic_history.NAME] = semantic_history.rebuild(home)
    return done


def remove_pairs(home: Home, pair_ids: list[str]) -> dict[str, int]:
    """Delete ``pair_ids`` from every state's files (takedowns), then resync the days whose
    partitions the takedown rewrote. Returns the live rows removed per state."""
    from dataplatform.core.dedup import semantic_history

    removed = {spec.name: spec.store(home).remove_pairs(pair_ids) for spec in SPECS}
    removed[semantic_history.NAME] = semantic_history.store(home).remove_pairs(pair_ids)
    for spec in SPECS:
        sync(home, spec, END_OF_TIME)
    semantic_history.sync(home, END_OF_TIME)
    return removed


def _verified(hits_rows: pa.Table, query: np.ndarray, column: str, values: list) -> pa.Table:
    """The hit rows whose ``column`` equals the query row's value (the 64-bit key only narrows)."""
    stored = hits_rows.column(column).to_pylist()
    same = [stored[k] == values[q] for k, q in enumerate(query.tolist())]
    return hits_rows.filter(pa.array(same, pa.bool_()))


@dataclass(frozen=True)
class Lookups:
    """Where a global stage's history lookups run: in this process, or sharded by key over
    the Ray engine's workers (``sharded_lookup``); each sharded lookup's run is appended to
    ``runs`` for the asset's metadata."""

    engine: EngineSpec | None = None
    log: Callable[[str], None] | None = None
    runs: list[ChunkRun] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return self.engine is not None and self.engine.is_ray and self.engine.shard_dedup

    def find_equal(self, store: StateStore, keys: np.ndarray, before: str) -> Hits:
        if not self.sharded:
            return store.find_equal(keys, before)
        assert self.engine is not None
        hits, run = store.retrying(
            lambda: find_equal_on_engine(store, keys, before, self.engine, self.log)
        )
        self.runs.append(run)
        return hits


LOCAL_LOOKUPS = Lookups()


def ingested_before(
    home: Home, current: pa.Table, date: str, lookups: Lookups = LOCAL_LOOKUPS
) -> pa.Table:
    """(pair_id, date) of every earlier ingested row sharing a pair_id with ``current``."""
    ids = current.column("pair_id").to_pylist()
    hits = lookups.find_equal(INGESTED_IDS.store(home), key_of_text(ids), date)
    return _verified(hits.rows, hits.query, "pair_id", ids).select(["pair_id", "date"])


def kept_sha_before(
    home: Home, current: pa.Table, date: str, lookups: Lookups = LOCAL_LOOKUPS
) -> pa.Table:
    """(pair_id, image_sha256, date) of every earlier kept pair with one of the day's SHA-256s."""
    shas = current.column("image_sha256").to_pylist()
    hits = lookups.find_equal(EXACT_KEPT.store(home), key_of_hex(shas), date)
    rows = _verified(hits.rows, hits.query, "image_sha256", shas)
    return rows.select(["pair_id", "image_sha256", "date"])


def kept_phash_near(
    home: Home, current: pa.Table, date: str, threshold: int, lookups: Lookups = LOCAL_LOOKUPS
) -> pa.Table:
    """(pair_id, phash, date) of every earlier kept pair within ``threshold`` bits of a pair of
    ``current``: exactly the history rows the greedy decision can use."""
    store = PHASH_KEPT.store(home)
    hashes = _phash_key(current)
    if not lookups.sharded:
        return store.retrying(lambda: _phash_near(store, hashes, date, threshold))
    assert lookups.engine is not None
    tables, run = store.retrying(
        lambda: near_rows_on_engine(store, hashes, date, threshold, lookups.engine, lookups.log)
    )
    lookups.runs.append(run)
    if not tables:
        return PHASH_SCHEMA.empty_table().select(["pair_id", "phash", "date"])
    return pa.concat_tables(tables).select(["pair_id", "phash", "date"])


def _phash_near(store: StateStore, hashes: np.ndarray, date: str, threshold: int) -> pa.Table:
    tables = []
    for segment, keys in store.keys_before(date):
        folder = store.segment_folder(segment)
        try:
            _, ref, _ = find_near_stored(hashes, folder, keys, threshold)
        except FileNotFoundError as exc:
            if not folder.exists():
                raise SegmentGone(f"{folder} is gone") from exc
            raise StateError(
                f"{folder}: its pHash band tables are unreadable ({exc}); "
                "run `dataplatform rebuild-state`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{folder}: its pHash band tables are unreadable ({exc}); "
                "run `dataplatform rebuild-state`"
            ) from exc
        if ref.size == 0:
            continue
        rows = store.take(segment, np.unique(ref))
        tables.append(rows.filter(pa.array(store.live(segment, rows, date))))
    if not tables:
        return PHASH_SCHEMA.empty_table().select(["pair_id", "phash", "date"])
    return pa.concat_tables(tables).select(["pair_id", "phash", "date"])
