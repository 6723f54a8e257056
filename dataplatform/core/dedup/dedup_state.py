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

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from dataplatform.core.store.durable import fsync_path, replace_json
from dataplatform.core.store.folder_mirror import FolderMirror

T = TypeVar("T")

FORMAT = 1
STATE_FOLDER = "state"
MANIFEST = "manifest.json"
KEYS_FILE = "keys.npy"
ROWS_FILE = "rows.arrow"
BATCHES_FILE = "batches.npy"  # the first row of each batch of rows.arrow, then the row count
_TIER_FACTOR = 4  # segments within a factor of 4 in size are merged, 4 at a time
_MERGE_AT = 4
_BATCH_ROWS = 1 << 16  # rows per record batch of rows.arrow: a hit reads only its batch
_MERGE_CHUNK = 1 << 16  # rows taken from each segment per step of a merge
# A segment that leaves the manifest stays on disk this long, so that a reader that read the
# manifest before the change can still open it (readers take no lock); a takedown purges at once.
RETIRED_GRACE_S = 600.0
_READ_ATTEMPTS = 3
END_OF_TIME = "9999-12-31"  # a ``before`` later than every partition date


class StateError(RuntimeError):
    """The state is unreadable or does not match the warehouse; ``rebuild-state`` repairs it."""


class SegmentGone(StateError):
    """A segment the manifest named was removed meanwhile (a reader older than the grace)."""


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
        mirror_url: str | None = None,
        max_merged_rows: int | None = None,
    ) -> None:
        """``index``, when given, writes a search structure over a new segment's sorted keys
        into its folder before the folder is renamed into place (pHash: the band tables).

        ``mirror_url`` (an object-store folder beside the warehouse) makes the local folder a
        cache of the state kept there: ``refresh`` and every write start from its copy, and
        every write publishes the result to it (``folder_mirror``).

        ``max_merged_rows`` caps what compaction builds, for an ``index`` that needs a whole
        segment in memory (pHash band tables are sorted whole): segments past a quarter of it
        are no longer merged. Without it, merges stream and segments grow without bound."""
        self.folder = Path(root) / name
        self.name = name
        self.schema = schema
        self.index = index
        self.mirror = FolderMirror(self.folder, mirror_url) if mirror_url else None
        self.max_merged_rows = max_merged_rows
        self._purged: set[str] = set()  # segments a takedown removed during this write

    def segment_folder(self, segment: Segment) -> Path:
        return self.folder / segment.name

    # ---- reading --------------------------------------------------------------------------

    def manifest(self) -> list[Segment]:
        return self._parse(self._raw())

    def _raw(self) -> dict:
        path = self.folder / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {"format": FORMAT, "segments": []}
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
            ) from exc
        if raw.get("format") != FORMAT:
            raise StateError(
                f"{path} has format {raw.get('format')}, this version reads {FORMAT}; "
                "run `dataplatform rebuild-state`"
            )
        return raw

    @staticmethod
    def _parse(raw: dict) -> list[Segment]:
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
        except FileNotFoundError as exc:
            raise SegmentGone(f"{path} is gone") from exc
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

    @contextmanager
    def _reader(self, segment: Segment) -> Iterator[tuple[ipc.RecordBatchFileReader, np.ndarray]]:
        """The segment's rows.arrow and the first row of each of its batches (and the count).

        The batch starts come from ``batches.npy``, checked against the file's batch count and
        the manifest's rows, so that opening a segment reads no batch: a lookup then reads only
        the batches its hits are in, whatever the history's size. A segment written before
        that file existed has its batches counted, which reads all of them."""
        path = self.folder / segment.name / ROWS_FILE
        try:
            # Read, not memory-mapped: Arrow pages a mapped batch in whole (and that counts
            # as the process's memory); a read batch is freed once its hits are taken.
            with pa.OSFile(str(path)) as source:
                reader = ipc.open_file(source)
                starts = self._batch_starts(segment, reader)
                if len(starts) != reader.num_record_batches + 1 or starts[-1] != segment.rows:
                    raise StateError(
                        f"{path} holds {reader.num_record_batches} batches ending at row "
                        f"{starts[-1]}, the manifest says {segment.rows} rows; "
                        "run `dataplatform rebuild-state`"
                    )
                yield reader, starts
        except FileNotFoundError as exc:
            raise SegmentGone(f"{path} is gone") from exc
        except (OSError, pa.ArrowException) as exc:
            raise StateError(
                f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
            ) from exc

    def _batch_starts(self, segment: Segment, reader: ipc.RecordBatchFileReader) -> np.ndarray:
        path = self.folder / segment.name / BATCHES_FILE
        if path.exists():
            try:
                starts = np.load(path, allow_pickle=False)
            except (ValueError, EOFError) as exc:
                raise StateError(
                    f"{path} is unreadable ({exc}); run `dataplatform rebuild-state`"
                ) from exc
            if (
                starts.dtype != np.int64
                or starts.ndim != 1
                or not len(starts)
                or starts[0] != 0
                or (np.diff(starts) <= 0).any()
            ):
                raise StateError(f"{path} holds no batch starts; run `dataplatform rebuild-state`")
            return starts
        sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    def _rows(self, segment: Segment) -> pa.Table:
        """Every row of ``segment`` (compaction and takedowns; a lookup uses ``take``)."""
        with self._reader(segment) as (reader, _):
            return reader.read_all()

    def segments_for(self, before: str) -> list[Segment]:
        """The segments holding any live date earlier than ``before``."""
        return [s for s in self.manifest() if s.name and any(d < before for d in s.dates)]

    def rows_before(self, before: str) -> int:
        return sum(r.rows for d, r in self.dates().items() if d < before)

    def keys_of(self, segment: Segment) -> np.ndarray:
        """The segment's sorted keys, memory-mapped (a search's other process reads them)."""
        return self._keys(segment)

    def keys_before(self, before: str) -> Iterator[tuple[Segment, np.ndarray]]:
        """Each segment's memory-mapped keys, for a search (pHash) that needs them all."""
        for segment in self.segments_for(before):
            yield segment, self._keys(segment)

    def take(self, segment: Segment, rows: np.ndarray) -> pa.Table:
        """Rows ``rows`` of ``segment``, in that order, reading only the batches they are in."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return self.schema.empty_table()
        with self._reader(segment) as (reader, starts):
            batch = np.searchsorted(starts, rows, side="right") - 1
            order = np.argsort(batch, kind="stable")
            pieces = []
            for b in np.unique(batch):
                local = rows[order][batch[order] == b] - starts[b]
                batch_rows = pa.Table.from_batches([reader.get_batch(int(b))])
                pieces.append(batch_rows.take(pa.array(local)))
            taken = pa.concat_tables(pieces).combine_chunks()
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return taken.take(pa.array(inverse))

    def live(self, segment: Segment, rows: pa.Table, before: str) -> np.ndarray:
        """Which ``rows`` of ``segment`` count as history before ``before``."""
        allowed = pa.array(sorted(d for d in segment.dates if d < before), pa.string())
        return np.asarray(pc.is_in(rows.column("date"), value_set=allowed), dtype=bool)

    def find_equal(self, keys: np.ndarray, before: str) -> Hits:
        """Every live row before ``before`` whose key equals a query key (to be verified)."""
        return self.retrying(lambda: self._find_equal(np.asarray(keys, dtype=np.uint64), before))

    def retrying(self, read: Callable[[], T]) -> T:
        """``read`` again from a fresh manifest if a segment it named was removed meanwhile."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return read()
            except SegmentGone:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _find_equal(self, keys: np.ndarray, before: str) -> Hits:
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

    def refresh(self) -> None:
        """Bring the local copy up to the object store's (a no-op without a mirror): a day
        calls it before it reads the state, so that what another machine recorded counts."""
        if self.mirror is not None:
            with self._locked(publish=False):
                pass

    @contextmanager
    def _locked(self, *, publish: bool = True) -> Iterator[None]:
        """One writer at a time on this machine; with a mirror, the write starts from the
        object store's copy and, when it succeeds, publishes its result there (a takedown's
        purged segments leave the object store at once, not after the grace)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if self.mirror is not None and self.mirror.pull():
                    # Segments another machine retired or purged leave this cache too.
                    raw = self._raw()
                    named = {s["name"] for s in raw["segments"] if s["name"]}
                    self._remove_unreferenced(named | set(raw.get("retired", {})))
                self._purged = set()
                yield
                if self.mirror is not None and publish:
                    self.mirror.push(delete_now=self._purged)
            finally:
                self._purged = set()
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_manifest(self, segments: Sequence[Segment], *, purge: bool = False) -> None:
        """Replace the manifest; segments that leave it are listed as retired, with the time,
        and removed once ``RETIRED_GRACE_S`` has passed (at once with ``purge``)."""
        old = self._raw()
        now = time.time()
        named = {s.name for s in segments if s.name}
        retired = {n: t for n, t in old.get("retired", {}).items() if n not in named}
        for segment in self._parse(old):
            if segment.name and segment.name not in named:
                retired.setdefault(segment.name, now)
        grace = 0.0 if purge else RETIRED_GRACE_S
        if purge:
            self._purged |= set(retired)
        retired = {n: t for n, t in retired.items() if now - t < grace}
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
            "retired": retired,
        }
        replace_json(self.folder / MANIFEST, body)
        self._remove_unreferenced(named | set(retired))

    def _write_segment(self, keys: np.ndarray, rows: pa.Table) -> str:
        """Sort by key, write under a temp name, rename into place; return the folder name."""
        order = np.argsort(keys, kind="stable")
        with self._new_segment(len(keys)) as out:
            out.add(keys[order], rows.select(self.schema.names).take(pa.array(order)))
        return out.name

    @contextmanager
    def _new_segment(self, rows: int) -> Iterator[_SegmentWriter]:
        """A segment of ``rows`` rows written in key order a piece at a time, then indexed,
        made durable and renamed into place; a failure leaves only a temp folder."""
        out = _SegmentWriter(self.folder, self.schema, rows)
        try:
            yield out
            out.close()
            if self.index is not None:
                self.index(out.temp, np.load(out.temp / KEYS_FILE, mmap_mode="r"))
            for path in out.temp.iterdir():
                fsync_path(path)
            fsync_path(out.temp)
            os.rename(out.temp, self.folder / out.name)
            fsync_path(self.folder)
        except BaseException:
            out.abort()
            raise

    def _with_day(
        self, segments: list[Segment], date: str, name: str | None, rows: int, commit: str | None
    ) -> list[Segment]:
        """``segments`` with ``date`` retired from each and its new segment (or an empty-day
        entry, so that the day does not read as missing) added, then compacted."""
        retired = [
            Segment(s.name, s.rows, {d: r for d, r in s.dates.items() if d != date})
            for s in segments
        ]
        kept = [s for s in retired if s.dates]
        kept.append(Segment(name or "", rows if name else 0, {date: DayRecord(rows, commit)}))
        return self._compacted(kept)

    def _as_keys(self, keys: np.ndarray) -> np.ndarray:
        """What a segment is searched by: uint64 keys here (vectors in the semantic state)."""
        return np.asarray(keys, dtype=np.uint64)

    def record_day(self, date: str, keys: np.ndarray, rows: pa.Table, commit: str | None) -> None:
        """Make ``rows`` (with their ``keys``) the state's content for ``date``; compact."""
        keys = self._as_keys(keys)
        if len(keys) != rows.num_rows:
            raise ValueError(f"{len(keys)} keys for {rows.num_rows} rows")
        with self._locked():
            name = self._write_segment(keys, rows) if rows.num_rows else None
            self._write_manifest(self._with_day(self.manifest(), date, name, rows.num_rows, commit))

    def rebuild(self, days: Iterable[tuple[str, np.ndarray, pa.Table, str | None]]) -> int:
        """Replace the whole state with ``days`` (date, keys, rows, commit) in one manifest
        swap: readers see the old state until the new one is complete. Returns the days."""
        count = 0
        with self._locked():
            segments: list[Segment] = []
            for date, keys, rows, commit in days:
                keys = self._as_keys(keys)
                name = self._write_segment(keys, rows) if rows.num_rows else None
                segments = self._with_day(segments, date, name, rows.num_rows, commit)
                count += 1
            self._write_manifest(segments)
        return count

    def drop_dates(self, dates: Sequence[str]) -> None:
        """Forget ``dates`` (their partitions are gone from the warehouse)."""
        gone = set(dates)
        with self._locked():
            segments = [
                Segment(s.name, s.rows, {d: r for d, r in s.dates.items() if d not in gone})
                for s in self.manifest()
            ]
            self._write_manifest([s for s in segments if s.dates])

    def remove_pairs(self, pair_ids: Sequence[str]) -> int:
        """Rewrite the segments holding any of ``pair_ids`` without them, and delete the old
        segment files at once (takedowns: the rows leave the disk, not only the lookups).
        Returns the live rows removed."""
        wanted = pa.array(sorted(set(pair_ids)), pa.string())
        removed = 0
        with self._locked():
            out = []
            for segment in self.manifest():
                ids = self._ids(segment) if segment.name else None
                hit = None if ids is None else pc.is_in(ids.column("pair_id"), value_set=wanted)
                if hit is None or not pc.any(hit).as_py():
                    out.append(segment)
                    continue
                live = self.live(segment, ids, END_OF_TIME)
                removed += int(np.count_nonzero(np.asarray(hit) & live))
                out.append(self._without(segment, np.asarray(hit)))
            self._write_manifest([s for s in out if s.dates], purge=True)
        return removed

    def _ids(self, segment: Segment) -> pa.Table:
        """pair_id and date of every row of ``segment``, in its row order."""
        return self._rows(segment)

    def _without(self, segment: Segment, drop: np.ndarray) -> Segment:
        """``segment`` rewritten without the rows ``drop`` marks."""
        keep = ~drop
        rows = self._rows(segment).filter(pa.array(keep))
        return self._rewrite(segment, np.asarray(self._keys(segment))[keep], rows)

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
                if s.name and self._mergeable(s):
                    tiers.setdefault(_tier(s.live_rows), []).append(s)
            full = [group for _, group in sorted(tiers.items()) if len(group) >= _MERGE_AT]
            if not full:
                return segments
            group = full[0][:_MERGE_AT]
            segments = [s for s in segments if s not in group] + [self._merge(group)]

    def _mergeable(self, segment: Segment) -> bool:
        cap = self.max_merged_rows
        return cap is None or segment.live_rows * _MERGE_AT <= cap

    def _merge(self, group: Sequence[Segment]) -> Segment:
        """One segment of ``group``'s live rows in key order, merged a chunk at a time: memory
        holds ``_MERGE_CHUNK`` rows per segment, not the segments, whatever their size. Rows
        with equal keys may interleave across segments differently from a whole merge; no
        lookup depends on their order (each verifies and orders its hits itself)."""
        records: dict[str, DayRecord] = {}
        for segment in group:
            records.update(segment.dates)
        total = sum(s.live_rows for s in group)
        keys = [self._keys(segment) for segment in group]
        at = [0] * len(group)
        with contextlib.ExitStack() as stack:
            readers = [_RangeReader(*stack.enter_context(self._reader(s))) for s in group]
            with self._new_segment(total) as out:
                while active := [k for k in range(len(group)) if at[k] < len(keys[k])]:
                    # Every key <= bound of every segment goes into this chunk, so the chunks
                    # come out in order; the segment that set the bound gives a whole chunk.
                    bound = min(
                        keys[k][min(at[k] + _MERGE_CHUNK, len(keys[k])) - 1] for k in active
                    )
                    chunk_keys, chunk_rows, taken = [], [], 0
                    for k in active:
                        window = keys[k][at[k] : at[k] + _MERGE_CHUNK]
                        end = at[k] + int(np.searchsorted(window, bound, side="right"))
                        rows = readers[k].rows(at[k], end)
                        live = self.live(group[k], rows, END_OF_TIME)
                        chunk_keys.append(np.asarray(keys[k][at[k] : end])[live])
                        chunk_rows.append(rows.filter(pa.array(live)))
                        taken += end - at[k]
                        at[k] = end
                    if not taken:  # sorted keys always advance the segment that set the bound
                        raise StateError(
                            f"{self.folder}: the keys of {[s.name for s in group]} are not "
                            "sorted; run `dataplatform rebuild-state`"
                        )
                    merged_keys = np.concatenate(chunk_keys)
                    order = np.argsort(merged_keys, kind="stable")
                    merged_rows = pa.concat_tables(chunk_rows).take(pa.array(order))
                    try:
                        out.add(merged_keys[order], merged_rows)
                    except (OSError, pa.ArrowException) as exc:
                        # Not the sources' fault: their reader would call it unreadable.
                        raise StateError(
                            f"{out.temp}: writing the merged segment failed ({exc})"
                        ) from exc
        return Segment(out.name, total, records)

    def _remove_unreferenced(self, keep: set[str]) -> None:
        """Delete segment folders outside ``keep`` (retired past their grace, or never named:
        a writer killed before its manifest), temp folders and temp manifests."""
        for entry in os.scandir(self.folder):
            if entry.is_dir(follow_symlinks=False) and (
                entry.name.startswith(".tmp-seg-")
                or (entry.name.startswith("seg-") and entry.name not in keep)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(f".{MANIFEST}."):
                os.unlink(entry.path)

    def clear(self) -> None:
        """Forget everything."""
        with self._locked():
            self._write_manifest([], purge=True)


class _SegmentWriter:
    """The files of a segment being written under ``.tmp-<name>``: the keys into a .npy whose
    length is known up front (streamed, never held or memory-mapped whole), the rows batch by
    batch, and the first row of each batch."""

    def __init__(self, folder: Path, schema: pa.Schema, rows: int) -> None:
        self.name = f"seg-{uuid.uuid4().hex}"
        self.temp = folder / f".tmp-{self.name}"
        self.temp.mkdir(parents=True)
        self.schema, self.rows, self.written = schema, rows, 0
        self.starts = [0]
        self._keys = open(self.temp / KEYS_FILE, "wb")  # noqa: SIM115 - closed by close/abort
        header = {"descr": np.dtype(np.uint64).str, "fortran_order": False, "shape": (rows,)}
        np.lib.format.write_array_header_1_0(self._keys, header)
        self._writer = ipc.new_file(str(self.temp / ROWS_FILE), schema)

    def add(self, keys: np.ndarray, rows: pa.Table) -> None:
        """Append ``rows`` and their ``keys``, which follow every key added before."""
        if len(keys) != rows.num_rows or self.written + len(keys) > self.rows:
            raise ValueError(
                f"{len(keys)} keys for {rows.num_rows} rows, {self.written} of {self.rows} written"
            )
        self._keys.write(np.ascontiguousarray(keys, dtype=np.uint64).tobytes())
        for batch in rows.select(self.schema.names).cast(self.schema).to_batches(_BATCH_ROWS):
            if batch.num_rows:
                self._writer.write_batch(batch)
                self.starts.append(self.starts[-1] + batch.num_rows)
        self.written += len(keys)

    def close(self) -> None:
        self._writer.close()
        self._keys.close()
        if self.written != self.rows:
            raise StateError(
                f"segment {self.name}: {self.written} rows written where the manifest's day "
                f"counts say {self.rows}; run `dataplatform rebuild-state`"
            )
        np.save(self.temp / BATCHES_FILE, np.asarray(self.starts, np.int64))

    def abort(self) -> None:
        for handle in (self._writer, self._keys):
            with contextlib.suppress(Exception):
                handle.close()
        shutil.rmtree(self.temp, ignore_errors=True)


class _RangeReader:
    """Consecutive row ranges of a segment's rows.arrow, each batch read once."""

    def __init__(self, reader: ipc.RecordBatchFileReader, starts: np.ndarray) -> None:
        self.reader, self.starts = reader, starts
        self._batch, self._index = None, -1

    def rows(self, lo: int, hi: int) -> pa.Table:
        pieces = []
        while lo < hi:
            b = int(np.searchsorted(self.starts, lo, side="right")) - 1
            if b != self._index:
                self._batch, self._index = self.reader.get_batch(b), b
            first, end = int(self.starts[b]), int(self.starts[b + 1])
            pieces.append(self._batch.slice(lo - first, min(hi, end) - lo))
            lo = min(hi, end)
        if not pieces:
            return pa.Table.from_batches([], self.reader.schema)
        return pa.Table.from_batches(pieces)


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
