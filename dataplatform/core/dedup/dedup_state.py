"""Persistent dedup state: what each global stage kept on earlier days, as sorted segments.

Why: a global stage decides a day against every pair kept before it. Re-reading every earlier
partition and rebuilding the index makes a day's cost grow with the history (issue 13). The
state keeps, per stage, the few columns a decision needs (a 64-bit key, the pair_id, the date
and what verifies a match) in segments that each day adds to, so a day reads only the segments'
sorted keys (memory-mapped) and the rows its own keys hit.

Layout, under ``DATAPLATFORM_HOME/state/<name>/``::

    manifest.json        the commit point: every live segment and, per date, its rows and the
                         warehouse commit id they reflect
    seg-<id>/keys.npy    the segment's keys, sorted (uint64, 8 bytes a row)
    seg-<id>/rows.arrow  pair_id, date and the verifying columns, in key order (Arrow IPC)
    .lock                serialises writers (one manifest update at a time)

Rules that keep "history before day d" exact:

- A segment holds one day when written; ``compact`` merges segments of similar size (tiers of
  4x), so a history of N rows is O(log N) segments and a row is rewritten O(log N) times.
- Every row carries its date; a query for day d drops rows dated d or later, so a merged
  segment answers an earlier day correctly, and a backfill's order does not matter.
- Re-recording day d writes a new segment for it and retires d from the segment that held it:
  those rows stay on disk until the next compaction but no query returns them.
- A segment folder is complete before the manifest names it (written under a temp name and
  renamed), and the manifest is replaced atomically: a crash leaves either the old or the new
  state, plus at worst an unreferenced folder that the next writer removes.

The warehouse stays the record: ``stale_dates`` compares the manifest with the warehouse's
commit ids, and the stage rebuilds those days' segments from their partitions (see
``docs/dedup_state.md``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from dataplatform.core.store.durable import fsync_path, replace_json

FORMAT = 1
STATE_FOLDER = "state"
MANIFEST = "manifest.json"
KEYS_FILE = "keys.npy"
ROWS_FILE = "rows.arrow"
_TIER_FACTOR = 4  # segments within a factor of 4 in size are merged, 4 at a time
_MERGE_AT = 4


class StateError(RuntimeError):
    """The state is unreadable or does not match the warehouse; ``rebuild-state`` repairs it."""


@dataclass(frozen=True)
class DayRecord:
    rows: int
    commit: str | None


@dataclass(frozen=True)
class Segment:
    """One immutable folder of rows sorted by key, and the dates of it that are live."""

    name: str
    rows: int
    dates: Mapping[str, DayRecord] = field(default_factory=dict)

    @property
    def live_rows(self) -> int:
        return sum(d.rows for d in self.dates.values())


@dataclass(frozen=True)
class Hits:
    """Rows of the state that queries hit: query index, and the hit row's columns."""

    query: np.ndarray  # int64
    rows: pa.Table  # pair_id, date and the store's verifying columns, one row per hit


def key_of_hex(values: Sequence[str]) -> np.ndarray:
    """The first 16 hex digits of each value (a SHA-256 or a pHash) as a uint64 key."""
    return np.array([int(v[:16], 16) for v in values], dtype=np.uint64)


def key_of_text(values: Sequence[str]) -> np.ndarray:
    """A 64-bit BLAKE2b of each text (a pair_id): spread evenly, verified against the text."""
    import hashlib

    return np.array(
        [
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big")
            for v in values
        ],
        dtype=np.uint64,
    )


class StateStore:
    """The segments of one state (``name``: a stage, or ``pair_ids``) under ``root``."""

    def __init__(
        self,
        root: Path,
        name: str,
        schema: pa.Schema,
        index: Callable[[Path, np.ndarray], None] | None = None,
    ) -> None:
        """``index``, when given, writes a search structure over a new segment's sorted keys
        into its folder before the folder is renamed into place (pHash: the band tables)."""
        self.folder = Path(root) / name
        self.name = name
        self.schema = schema
        self.index = index

    def segment_folder(self, segment: Segment) -> Path:
        return self.folder / segment.name

    # ---- reading --------------------------------------------------------------------------

    def manifest(self) -> list[Segment]:
        path = self.folder / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
            ) from exc
        if raw.get("format") != FORMAT:
            raise StateError(
                f"{path} has format {raw.get('format')}, this version reads {FORMAT}; "
                "run `dataplatform rebuild-state`"
            )
        return [
            Segment(
                s["name"],
                int(s["rows"]),
                {d: DayRecord(int(r["rows"]), r.get("commit")) for d, r in s["dates"].items()},
            )
            for s in raw["segments"]
        ]

    def dates(self) -> dict[str, DayRecord]:
        """Every live date of the state and what it reflects."""
        return {d: r for s in self.manifest() for d, r in s.dates.items()}

    def _keys(self, segment: Segment) -> np.ndarray:
        path = self.folder / segment.name / KEYS_FILE
        try:
            keys = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
            ) from exc
        if keys.shape != (segment.rows,) or keys.dtype != np.uint64:
            raise StateError(
                f"{path} holds {keys.shape} {keys.dtype}, the manifest says {segment.rows} "
                "uint64 keys; run `dataplatform rebuild-state`"
            )
        return keys

    def _rows(self, segment: Segment) -> pa.Table:
        path = self.folder / segment.name / ROWS_FILE
        try:
            with pa.memory_map(str(path)) as source:
                table = ipc.open_file(source).read_all()
        except (OSError, pa.ArrowException) as exc:
            raise StateError(
                f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
            ) from exc
        if table.num_rows != segment.rows:
            raise StateError(
                f"{path} holds {table.num_rows} rows, the manifest says {segment.rows}; "
                "run `dataplatform rebuild-state`"
            )
        return table

    def segments_for(self, before: str) -> list[Segment]:
        """The segments holding any live date earlier than ``before``."""
        return [s for s in self.manifest() if s.name and any(d < before for d in s.dates)]

    def rows_before(self, before: str) -> int:
        return sum(r.rows for d, r in self.dates().items() if d < before)

    def keys_before(self, before: str) -> Iterator[tuple[Segment, np.ndarray]]:
        """Each segment's memory-mapped keys, for a search (pHash) that needs them all."""
        for segment in self.segments_for(before):
            yield segment, self._keys(segment)

    def take(self, segment: Segment, rows: np.ndarray) -> pa.Table:
        return self._rows(segment).take(pa.array(rows, pa.int64()))

    def live(self, segment: Segment, rows: pa.Table, before: str) -> np.ndarray:
        """Which ``rows`` of ``segment`` count as history before ``before``."""
        allowed = pa.array(sorted(d for d in segment.dates if d < before), pa.string())
        return np.asarray(pc.is_in(rows.column("date"), value_set=allowed), dtype=bool)

    def find_equal(self, keys: np.ndarray, before: str) -> Hits:
        """Every live row before ``before`` whose key equals a query key (to be verified)."""
        keys = np.asarray(keys, dtype=np.uint64)
        queries, tables = [], []
        for segment in self.segments_for(before):
            stored = self._keys(segment)
            lo = np.searchsorted(stored, keys, side="left")
            hi = np.searchsorted(stored, keys, side="right")
            count = hi - lo
            hit = np.flatnonzero(count)
            if hit.size == 0:
                continue
            query = np.repeat(hit, count[hit])
            ends = np.cumsum(count[hit])
            rows = np.arange(ends[-1]) - np.repeat(ends - count[hit], count[hit])
            rows += np.repeat(lo[hit], count[hit])
            table = self.take(segment, rows)
            live = self.live(segment, table, before)
            queries.append(query[live])
            tables.append(table.filter(pa.array(live)))
        if not tables:
            return Hits(np.zeros(0, np.int64), self.schema.empty_table())
        return Hits(np.concatenate(queries).astype(np.int64), pa.concat_tables(tables))

    # ---- writing --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_manifest(self, segments: Sequence[Segment]) -> None:
        body = {
            "format": FORMAT,
            "name": self.name,
            "segments": [
                {
                    "name": s.name,
                    "rows": s.rows,
                    "dates": {
                        d: {"rows": r.rows, "commit": r.commit} for d, r in sorted(s.dates.items())
                    },
                }
                for s in segments
            ],
        }
        replace_json(self.folder / MANIFEST, body)

    def _write_segment(self, keys: np.ndarray, rows: pa.Table) -> str:
        """Sort by key, write under a temp name, rename into place; return the folder name."""
        order = np.argsort(keys, kind="stable")
        name = f"seg-{uuid.uuid4().hex}"
        temp = self.folder / f".tmp-{name}"
        temp.mkdir(parents=True)
        sorted_keys = np.ascontiguousarray(keys[order], dtype=np.uint64)
        np.save(temp / KEYS_FILE, sorted_keys)
        table = rows.select(self.schema.names).cast(self.schema).take(pa.array(order))
        with ipc.new_file(str(temp / ROWS_FILE), self.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 16)
        if self.index is not None:
            self.index(temp, sorted_keys)
        for path in temp.iterdir():
            fsync_path(path)
        os.rename(temp, self.folder / name)
        return name

    def record_day(self, date: str, keys: np.ndarray, rows: pa.Table, commit: str | None) -> None:
        """Make ``rows`` (with their ``keys``) the state's content for ``date``; compact."""
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) != rows.num_rows:
            raise ValueError(f"{len(keys)} keys for {rows.num_rows} rows")
        with self._locked():
            segments = self.manifest()
            name = self._write_segment(keys, rows) if rows.num_rows else None
            retired = [
                Segment(s.name, s.rows, {d: r for d, r in s.dates.items() if d != date})
                for s in segments
            ]
            kept = [s for s in retired if s.dates]
            if name is not None:
                kept.append(Segment(name, rows.num_rows, {date: DayRecord(rows.num_rows, commit)}))
            else:
                # An empty day is still recorded, so that it does not read as missing.
                kept.append(Segment("", 0, {date: DayRecord(0, commit)}))
            self._write_manifest(self._compacted(kept))
            self._remove_unreferenced()

    def drop_dates(self, dates: Sequence[str]) -> None:
        """Forget ``dates`` (their partitions are gone from the warehouse)."""
        gone = set(dates)
        with self._locked():
            segments = [
                Segment(s.name, s.rows, {d: r for d, r in s.dates.items() if d not in gone})
                for s in self.manifest()
            ]
            self._write_manifest([s for s in segments if s.dates])
            self._remove_unreferenced()

    def remove_pairs(self, pair_ids: Sequence[str]) -> int:
        """Rewrite the segments holding any of ``pair_ids`` without them (takedowns)."""
        wanted = pa.array(sorted(set(pair_ids)), pa.string())
        removed = 0
        with self._locked():
            out = []
            for segment in self.manifest():
                if not segment.name:
                    out.append(segment)
                    continue
                rows = self._rows(segment)
                hit = pc.is_in(rows.column("pair_id"), value_set=wanted)
                n = pc.sum(hit).as_py() or 0
                if not n:
                    out.append(segment)
                    continue
                keep = pc.invert(hit)
                keys = np.asarray(self._keys(segment))[np.asarray(keep)]
                rows = rows.filter(keep)
                removed += n
                out.append(self._rewrite(segment, keys, rows))
            self._write_manifest([s for s in out if s.dates])
            self._remove_unreferenced()
        return removed

    def _rewrite(self, segment: Segment, keys: np.ndarray, rows: pa.Table) -> Segment:
        """``segment`` with only ``rows`` (live dates kept), its day counts recounted."""
        counted = pc.value_counts(rows.column("date")).to_pylist()
        present = {c["values"]: c["counts"] for c in counted}
        records = {d: DayRecord(present.get(d, 0), r.commit) for d, r in segment.dates.items()}
        if not rows.num_rows:
            return Segment("", 0, records)
        return Segment(self._write_segment(keys, rows), rows.num_rows, records)

    def _compacted(self, segments: list[Segment]) -> list[Segment]:
        """Merge segments of one size tier, ``_MERGE_AT`` at a time, until no tier is full."""
        while True:
            tiers: dict[int, list[Segment]] = {}
            for s in segments:
                if s.name:
                    tiers.setdefault(_tier(s.live_rows), []).append(s)
            full = next(
                (group for _, group in sorted(tiers.items()) if len(group) >= _MERGE_AT), None
            )
            if full is None:
                return segments
            group = full[:_MERGE_AT]
            segments = [s for s in segments if s not in group] + [self._merge(group)]

    def _merge(self, group: Sequence[Segment]) -> Segment:
        keys, tables, records = [], [], {}
        for segment in group:
            rows = self._rows(segment)
            live = self.live(segment, rows, "9999-99-99")
            keys.append(np.asarray(self._keys(segment))[live])
            tables.append(rows.filter(pa.array(live)))
            records.update(segment.dates)
        merged = pa.concat_tables(tables)
        return Segment(self._write_segment(np.concatenate(keys), merged), merged.num_rows, records)

    def _remove_unreferenced(self) -> None:
        named = {s.name for s in self.manifest() if s.name}
        for entry in os.scandir(self.folder):
            if entry.is_dir(follow_symlinks=False) and (
                entry.name.startswith(".tmp-seg-")
                or (entry.name.startswith("seg-") and entry.name not in named)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(f".{MANIFEST}."):
                os.unlink(entry.path)

    def clear(self) -> None:
        """Forget everything (``rebuild-state`` starts from here)."""
        with self._locked():
            self._write_manifest([])
            self._remove_unreferenced()


def _tier(rows: int) -> int:
    tier, size = 0, 1
    while size * _TIER_FACTOR <= rows:
        size *= _TIER_FACTOR
        tier += 1
    return tier


def stale_dates(
    recorded: Mapping[str, DayRecord], warehouse: Mapping[str, str | None], before: str
) -> tuple[list[str], list[str]]:
    """(dates to rebuild, dates to drop) before ``before``: a date whose warehouse partition has
    another commit than the state reflects, or that the state lacks; and a date the state holds
    whose partition is gone."""
    rebuild = [
        d
        for d, commit in sorted(warehouse.items())
        if d < before and (d not in recorded or recorded[d].commit != commit)
    ]
    drop = [d for d in sorted(recorded) if d < before and d not in warehouse]
    return rebuild, drop
