"""semantic_deduped's history from the persistent state: the kept embeddings, in IVF-SQ8 segments.

The segments are ``semantic_state`` segments (codes, error bounds, exact vectors, ids) kept in a
``StateStore`` manifest, so the semantic state has the same lifecycle as the exact and pHash
states: one segment a day, size-tiered merges, dates retired on a re-run, a grace period for
readers, sync against the warehouse's commit ids, one-swap rebuild, takedown removal.

The coarse quantizer is trained once, on the first day written, and again only by ``rebuild``
(``dataplatform rebuild-state``, or ``retrain_if_due`` when a measured signal says so), which
trains it on a sample of every kept embedding in the warehouse (up to ``SAMPLE_ROWS``) before it
rebuilds the segments. Quantizers live under ``quantizers/<fingerprint>/`` and a search loads
the one its segments were written with, so a rebuild's new quantizer and segments are swapped
in together by the manifest. Each day measures the drift of its vectors against the quantizer;
a retrain is due when the drift passes ``DRIFT_RETRAIN_THRESHOLD`` (and the history has grown by
``RETRAIN_MIN_GROWTH`` since the last training, so that a run of unusual days does not retrain
every day) or when the history has outgrown the quantizer's lists by ``OUTGROWN_FACTOR``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup import semantic_state
from dataplatform.core.dedup.dedup_state import (
    END_OF_TIME,
    DayRecord,
    Segment,
    SegmentGone,
    StateError,
    StateStore,
)
from dataplatform.core.dedup.history_state import (
    state_mirror_url,
    state_root,
    sync_days,
    warehouse_commits,
)
from dataplatform.core.dedup.semantic_index import ivf_parameters
from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.scoring.embedding_table import rows_for
from dataplatform.core.store.durable import replace_json
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    partition_file,
    read_partition,
)

log = logging.getLogger(__name__)

NAME = "semantic_deduped"
EMBEDDINGS_TABLE = "embeddings"
IDS_SCHEMA = pa.schema([("pair_id", pa.string()), ("date", pa.string())])
QUANTIZERS_FOLDER = "quantizers"  # one folder per trained quantizer, named by fingerprint
SAMPLE_ROWS = 200_000
# A merge holds its sources' pair_ids (about 40 bytes a row) to check that none is kept twice:
# segments stop merging at 16.8M rows (about 0.7 GB of ids), so a compaction day's memory has a
# bound; a search reads every segment's lists anyway, so more segments cost it little.
MAX_SEGMENT_ROWS = 1 << 24
# The quantizer has outgrown its history when ivf_parameters asks for this many times its lists.
OUTGROWN_FACTOR = 4
# A drift-triggered retrain waits until the history is this many times what it was trained for.
RETRAIN_MIN_GROWTH = 1.25
# An outgrown quantizer is retrained only when the retrain gives at least this many times its lists,
# and the history has grown this many times since it was trained.
RETRAIN_MIN_LIST_GAIN = 2
OUTGROWN_MIN_GROWTH = 2
TRAINED_FILE = "trained.json"  # beside a quantizer: the history rows it was trained for
# Declared once: the Literal is what a run config is checked against at launch.
RetrainMode = Literal["auto", "advise"]
RETRAIN_MODES: tuple[str, ...] = get_args(RetrainMode)


@dataclass(frozen=True)
class HistoryMatches:
    """Every (day row, earlier kept pair) at the threshold: ``history`` lists the pairs once, in
    (date, pair_id) order, and ``row`` points into it (the order greedy ties are broken in)."""

    query: np.ndarray  # int64
    row: np.ndarray  # int64
    similarity: np.ndarray  # float32
    history: pa.Table  # pair_id, date


class SemanticStore(StateStore):
    """A ``StateStore`` whose segments are ``semantic_state`` segments of unit vectors."""

    def __init__(self, root: Path, mirror_url: str | None = None) -> None:
        super().__init__(
            root, NAME, IDS_SCHEMA, mirror_url=mirror_url, max_merged_rows=MAX_SEGMENT_ROWS
        )
        self.quantizers = self.folder / QUANTIZERS_FOLDER
        self._training: semantic_state.Quantizer | None = None  # set while rebuilding

    def quantizer(self) -> semantic_state.Quantizer | None:
        """The quantizer the live segments were written with (the newest one if none are)."""
        if self._training is not None:
            return self._training
        for segment in self.manifest():
            if segment.name:
                try:
                    info = semantic_state.segment_info(self.segment_folder(segment))
                except FileNotFoundError as exc:
                    raise SegmentGone(f"{self.segment_folder(segment)} is gone") from exc
                return semantic_state.load_quantizer(self.quantizers / info.quantizer_fingerprint)
        trained = (
            sorted(
                self.quantizers.glob("*/" + semantic_state.QUANTIZER_FILE),
                key=lambda p: p.stat().st_mtime,
            )
            if self.quantizers.exists()
            else []
        )
        return semantic_state.load_quantizer(trained[-1].parent) if trained else None

    def train(self, sample: np.ndarray, *, expected_rows: int | None = None):
        """Train a quantizer on ``sample`` and keep it under its fingerprint."""
        self.quantizers.mkdir(parents=True, exist_ok=True)
        staged = self.quantizers / f".tmp-{uuid.uuid4().hex}"
        quantizer = semantic_state.train_quantizer(sample, staged, expected_rows=expected_rows)
        final = self.quantizers / quantizer.fingerprint
        if final.exists():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            staged.rename(final)
        history_rows = len(sample) if expected_rows is None else expected_rows
        replace_json(final / TRAINED_FILE, {"history_rows": int(history_rows)})
        log.info(
            "%s state: quantizer %s trained on %d vectors, %d lists",
            NAME,
            quantizer.fingerprint,
            len(sample),
            quantizer.nlist,
        )
        return semantic_state.load_quantizer(final)

    def _as_keys(self, keys: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(keys, dtype=np.float32)

    def _quantizer_for(self, vectors: np.ndarray, date: str) -> semantic_state.Quantizer:
        """The live quantizer; a new one when there is none, or when the embeddings changed
        dimension (another CLIP model) and no other day's segment still uses the old one."""
        quantizer = self.quantizer()
        if quantizer is not None and quantizer.dim == vectors.shape[1]:
            return quantizer
        if quantizer is not None:
            others = sorted(d for s in self.manifest() if s.name for d in s.dates if d != date)
            if others:
                raise StateError(
                    f"{date}'s image embeddings have d={vectors.shape[1]}, but the semantic "
                    f"history ({others[0]}..{others[-1]}) was embedded with d={quantizer.dim}: "
                    "re-materialize clip_scored for every day with one model, then run "
                    "`dataplatform rebuild-state`"
                )
        return self.train(vectors)

    def _write_segment(self, keys: np.ndarray, rows: pa.Table) -> str:
        name = f"seg-{uuid.uuid4().hex}"
        semantic_state.write_segment(
            self.folder / name,
            self._quantizer_for(keys, rows.column("date")[0].as_py()),
            rows.column("pair_id").to_pylist(),
            rows.column("date").to_pylist(),
            keys,
        )
        return name

    def _segment_ids(self, segment) -> pa.Table:
        try:
            return semantic_state._open_segment(self.segment_folder(segment)).ids()
        except FileNotFoundError as exc:
            raise SegmentGone(f"{self.segment_folder(segment)} is gone") from exc

    def _rewritten(self, sources: Sequence, drop: set[str]) -> str:
        """A new segment of ``sources`` without the pairs ``drop`` (not visible until named)."""
        name = f"seg-{uuid.uuid4().hex}"
        semantic_state.merge_segments([self.segment_folder(s) for s in sources], self.folder / name)
        if drop:
            semantic_state.remove_pairs(self.folder / name, sorted(drop))
        return name

    def _retired_ids(self, segment) -> set[str]:
        ids = self._segment_ids(segment)
        live = self.live(segment, ids, END_OF_TIME)
        return set(ids.column("pair_id").filter(pa.array(~live)).to_pylist())

    def _merge(self, group: Sequence):
        drop: set[str] = set()
        records = {}
        for segment in group:
            drop |= self._retired_ids(segment)
            records.update(segment.dates)
        name = self._rewritten(group, drop)
        rows = semantic_state.segment_rows(self.folder / name)
        return Segment(name, rows, records)

    def _ids(self, segment: Segment) -> pa.Table:
        return self._segment_ids(segment)

    def _without(self, segment: Segment, drop: np.ndarray) -> Segment:
        ids = self._segment_ids(segment)
        dropped = set(ids.column("pair_id").filter(pa.array(drop)).to_pylist())
        name = self._rewritten([segment], dropped | self._retired_ids(segment))
        rows = semantic_state.segment_rows(self.folder / name)
        kept_ids = self._segment_ids(Segment(name, rows)) if rows else IDS_SCHEMA.empty_table()
        present = {c["values"]: c["counts"] for c in pc.value_counts(kept_ids["date"]).to_pylist()}
        records = {d: DayRecord(present.get(d, 0), r.commit) for d, r in segment.dates.items()}
        return Segment(name if rows else "", rows, records)

    def search(self, queries: np.ndarray, threshold: float, before: str) -> HistoryMatches:
        """Every earlier kept pair at ``threshold`` of a row of ``queries``."""
        return self.retrying(lambda: self._search(queries, threshold, before, nearest=False))

    def nearest(self, queries: np.ndarray, threshold: float, before: str) -> HistoryMatches:
        """Each row of ``queries``' most similar earlier kept pair at ``threshold`` (ties: the
        first in (date, pair_id) order): all that ``greedy_keep`` decides by, as it takes a
        row's best history hit, which it prefers in that same order. Unlike ``search``, whose
        pairs grow with the history (a cluster gathers members every day), this holds at most
        one pair per row plus one block of the index's matches."""
        return self.retrying(lambda: self._search(queries, threshold, before, nearest=True))

    def nearest_on_engine(
        self,
        queries: np.ndarray,
        threshold: float,
        before: str,
        engine: EngineSpec,
        log: Callable[[str], None] | None = None,
    ) -> tuple[HistoryMatches, ChunkRun]:
        """``nearest``, split by index cell over the engine's workers: each searches its share
        of the inverted lists (``CELL_SHARDS`` of them) and returns its best pair per row; the
        best of those, ties in (date, pair_id) order, is ``nearest``'s answer. The workers
        read the state where this step synced it (the home, mounted on every node)."""
        quantizer = self.quantizer()
        if quantizer is None or len(queries) == 0 or not self.segments_for(before):
            return self.nearest(queries, threshold, before), ChunkRun("ray", 0, 0, 0.0)
        cells = np.array_split(np.arange(quantizer.nlist), min(CELL_SHARDS, quantizer.nlist))
        worker = partial(_CellSearch, self.folder.parent, queries, threshold, before)

        def search() -> tuple[HistoryMatches, ChunkRun]:
            best, run = map_chunks(engine, worker, cells, log=log)
            return _history_matches(_best_per_query(pa.concat_tables(best))), run

        return self.retrying(search)

    def _search(
        self,
        queries: np.ndarray,
        threshold: float,
        before: str,
        *,
        nearest: bool,
        cells: np.ndarray | None = None,
    ) -> HistoryMatches:
        best = self._best(queries, threshold, before, nearest=nearest, cells=cells)
        return best if isinstance(best, HistoryMatches) else _history_matches(best)

    def _best(
        self,
        queries: np.ndarray,
        threshold: float,
        before: str,
        *,
        nearest: bool,
        cells: np.ndarray | None = None,
    ) -> HistoryMatches | pa.Table:
        segments = self.segments_for(before)
        quantizer = self.quantizer()
        if not segments or quantizer is None or len(queries) == 0:
            return _MATCHES_SCHEMA.empty_table()
        folders = [self.segment_folder(s) for s in segments]
        for folder in folders:
            if not folder.exists():
                raise SegmentGone(f"{folder} is gone")
        try:
            if not nearest:
                found = semantic_state.search_segments(folders, quantizer, queries, threshold)
                return _history_matches(self._live(segments, found, before))
            best = _MATCHES_SCHEMA.empty_table()
            for block in semantic_state.search_segment_blocks(
                folders, quantizer, queries, threshold, cells=cells
            ):
                best = _best_per_query(
                    pa.concat_tables([best, self._live(segments, block, before)])
                )
            return best
        except semantic_state.CorruptSegmentError as exc:
            raise StateError(f"{exc}; run `dataplatform rebuild-state`") from exc

    def _live(
        self, segments: Sequence[Segment], found: semantic_state.SegmentMatches, before: str
    ) -> pa.Table:
        """The matches ``found`` in ``segments`` that count as history before ``before``."""
        keep = np.zeros(len(found), bool)
        for k, segment in enumerate(segments):
            mine = found.segment == k
            if mine.any():
                keep[mine] = self.live(segment, pa.table({"date": found.date.filter(mine)}), before)
        mask = pa.array(keep)
        return pa.table(
            {
                "query": found.query[keep].astype(np.int64),
                "pair_id": found.pair_id.filter(mask),
                "date": found.date.filter(mask),
                "similarity": found.similarity[keep].astype(np.float32),
            },
            schema=_MATCHES_SCHEMA,
        )

    def advice(self, vectors: np.ndarray, before: str) -> dict[str, object]:
        """The day's drift against the quantizer, whether a retrain is advised and why, and
        whether it is due (``semantic_retrain_due``: a measured signal, which ``retrain_if_due``
        acts on; an unmeasurable drift or another CLIP model is only advised)."""
        quantizer = self.quantizer()
        if quantizer is None or len(vectors) == 0:
            return {
                "semantic_quantizer_lists": quantizer.nlist if quantizer else 0,
                "semantic_retrain_due": False,
            }
        if quantizer.dim != vectors.shape[1]:
            return {
                "semantic_quantizer_lists": quantizer.nlist,
                "semantic_retrain_advised": (
                    f"the day's embeddings have d={vectors.shape[1]}, the quantizer "
                    f"d={quantizer.dim} (another CLIP model)"
                ),
                "semantic_retrain_due": False,
            }
        drift = semantic_state.drift(quantizer, vectors)
        history = self.rows_before(before)
        wanted = ivf_parameters(max(history, 1), 0.95)[0] if history else quantizer.nlist
        trained_for = self._trained_rows(quantizer)
        reasons, due = [], False
        if math.isnan(drift):
            reasons.append("the quantizer's training sample was too small to measure drift")
        elif drift > semantic_state.DRIFT_RETRAIN_THRESHOLD:
            grown = history >= RETRAIN_MIN_GROWTH * max(1, trained_for)
            due = due or grown
            reasons.append(
                f"the day's drift {drift:.2f} is above {semantic_state.DRIFT_RETRAIN_THRESHOLD}"
                + (
                    ""
                    if grown
                    else f" (not yet due: {history} history vectors, trained for {trained_for})"
                )
            )
        if wanted > OUTGROWN_FACTOR * quantizer.nlist:
            # A retrain samples at most SAMPLE_ROWS, whose 40 points a list cap it at about
            # 4,500 lists: due only if it gives many more lists than the quantizer has.
            # The estimate assumes a full sample (days of uneven size give a smaller one), so a
            # retrain also waits for the history to double since the last: never daily.
            sample = min(SAMPLE_ROWS, history)
            better = semantic_state.default_nlist(sample, max(sample, history))
            gain = better >= RETRAIN_MIN_LIST_GAIN * quantizer.nlist
            doubled = history >= OUTGROWN_MIN_GROWTH * max(1, trained_for)
            due = due or (gain and doubled)
            reasons.append(
                f"{history} history vectors want about {wanted} lists, the quantizer has "
                f"{quantizer.nlist}"
                + (
                    ""
                    if gain
                    else f" (a {sample}-vector sample gives {better}: a retrain would not help)"
                )
            )
        return {
            "semantic_quantizer_lists": quantizer.nlist,
            "semantic_drift": "n/a" if math.isnan(drift) else round(float(drift), 3),
            "semantic_retrain_advised": "; ".join(reasons) or "-",
            "semantic_retrain_due": due,
        }

    def _trained_rows(self, quantizer: semantic_state.Quantizer) -> int:
        """The history rows ``quantizer`` was trained for (0 when it does not say)."""
        path = self.quantizers / quantizer.fingerprint / TRAINED_FILE
        try:
            return int(json.loads(path.read_text())["history_rows"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0


_MATCHES_SCHEMA = pa.schema(
    [
        ("query", pa.int64()),
        ("pair_id", pa.string()),
        ("date", pa.string()),
        ("similarity", pa.float32()),
    ]
)


# Index cells (inverted lists) per sharded search: a few per worker of a mid-sized cluster,
# each still a block-sized read of every segment.
CELL_SHARDS = 16


class _CellSearch:
    """A worker: the best earlier pair per day row among the lists of one shard of cells."""

    def __init__(self, root: Path, queries: np.ndarray, threshold: float, before: str) -> None:
        self._store = SemanticStore(root)
        if not self._store.folder.is_dir():
            raise StateError(
                f"the semantic state {self._store.folder} is not on this Ray node: mount "
                "DATAPLATFORM_HOME on every node at the same path, or set the engine's "
                "shard_dedup to false to keep the search in the Dagster step"
            )
        self._queries = queries
        self._threshold = threshold
        self._before = before

    def __call__(self, cells: np.ndarray) -> pa.Table:
        best = self._store._best(
            self._queries, self._threshold, self._before, nearest=True, cells=cells
        )
        assert isinstance(best, pa.Table)
        return best


def _best_per_query(matches: pa.Table) -> pa.Table:
    """Per query, its highest similarity; ties to the first (date, pair_id)."""
    ordered = matches.sort_by(
        [
            ("query", "ascending"),
            ("similarity", "descending"),
            ("date", "ascending"),
            ("pair_id", "ascending"),
        ]
    )
    query = ordered["query"].to_numpy()
    first = np.ones(len(query), bool)
    first[1:] = query[1:] != query[:-1]
    return ordered.filter(pa.array(first))


def _history_matches(matches: pa.Table) -> HistoryMatches:
    """``matches`` (query, pair_id, date, similarity) with their history pairs listed once, in
    (date, pair_id) order."""
    if matches.num_rows == 0:
        return HistoryMatches(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            IDS_SCHEMA.empty_table(),
        )
    keys = pc.binary_join_element_wise(matches["date"], matches["pair_id"], "\x00")
    history = pc.unique(keys).sort()
    parts = [h.split("\x00") for h in history.to_pylist()]
    table = pa.table({"pair_id": [p[1] for p in parts], "date": [p[0] for p in parts]})
    return HistoryMatches(
        matches["query"].to_numpy().astype(np.int64),
        np.asarray(pc.index_in(keys, value_set=history), dtype=np.int64),
        matches["similarity"].to_numpy().astype(np.float32),
        table,
    )


def store(home: Home) -> SemanticStore:
    return SemanticStore(state_root(home), state_mirror_url(home, NAME))


@dataclass(frozen=True)
class SemanticSpec:
    """The semantic state as the assets' shared helpers name it (like a ``StateSpec``)."""

    name: str = NAME
    table: str = NAME

    def store(self, home: Home) -> SemanticStore:
        return store(home)


SEMANTIC_SPEC = SemanticSpec()


def _day(home: Home, date: str) -> tuple[np.ndarray, pa.Table]:
    """The kept pairs of ``date`` (pair_id, date) and their image embeddings, in that order."""
    kept = read_partition(home, NAME, date).select(["pair_id", "date"])
    if kept.num_rows == 0:
        return np.zeros((0, 0), np.float32), kept
    embeddings = read_partition(home, EMBEDDINGS_TABLE, date)
    return rows_for(kept.column("pair_id").to_pylist(), embeddings), kept


def sync(home: Home, before: str) -> list[str]:
    """Rebuild the days before ``before`` the state lacks or holds from another commit."""
    return sync_days(home, store(home), NAME, before, lambda date: _day(home, date))


def record(home: Home, date: str, vectors: np.ndarray, kept: pa.Table, commit: str) -> None:
    store(home).record_day(date, vectors, kept.select(["pair_id", "date"]), commit)


def rebuild(home: Home) -> int:
    """Retrain the quantizer on a sample of every kept embedding and rebuild every day with it;
    the new segments, and with them the new quantizer, are swapped in by one manifest replace
    (``dataplatform rebuild-state``). Returns the days rebuilt."""
    state = store(home)
    commits = warehouse_commits(home, NAME, END_OF_TIME)
    sample = _sample(home, sorted(commits))
    if len(sample):
        state._training = state.train(
            sample, expected_rows=max(len(sample), _history_rows(home, sorted(commits)))
        )

    def days() -> Iterator[tuple[str, np.ndarray, pa.Table, str | None]]:
        for date in sorted(commits):
            vectors, kept = _day(home, date)
            yield date, vectors, kept, commits[date]

    try:
        return state.rebuild(days())
    finally:
        state._training = None


def retrain_if_due(home: Home, vectors: np.ndarray, date: str, mode: str) -> tuple[dict, str]:
    """(the day's advice, what was retrained and why, or "-"): with ``mode`` "auto" a due
    retrain (``advice``'s ``semantic_retrain_due``) runs ``rebuild`` before the day searches,
    which re-encodes every earlier day: a rare day that costs the history, logged; "advise"
    leaves it to ``dataplatform rebuild-state`` and only reports it."""
    if mode not in RETRAIN_MODES:
        raise ValueError(f"retrain must be one of {RETRAIN_MODES}, not {mode!r}")
    state = store(home)
    advice = state.advice(vectors, date)
    if mode != "auto" or not advice.get("semantic_retrain_due"):
        return advice, "-"
    reason = str(advice["semantic_retrain_advised"])
    log.warning(
        "%s state: retraining the quantizer before %s (%s); every earlier day is re-encoded "
        "with it (retrain='advise' leaves this to `dataplatform rebuild-state`)",
        NAME,
        date,
        reason,
    )
    days = rebuild(home)
    return store(home).advice(vectors, date), f"{reason}; {days} day(s) re-encoded"


def _history_rows(home: Home, dates: Sequence[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(partition_file(home, NAME, d)).num_rows for d in dates)


def _sample(home: Home, dates: Sequence[str]) -> np.ndarray:
    """Up to ``SAMPLE_ROWS`` kept embeddings, spread evenly over ``dates`` (seeded)."""
    rng = np.random.default_rng(0)
    per_day = max(1, SAMPLE_ROWS // max(1, len(dates)))
    parts = []
    for date in dates:
        vectors, _ = _day(home, date)
        if len(vectors) > per_day:
            vectors = vectors[np.sort(rng.choice(len(vectors), per_day, replace=False))]
        if len(vectors):
            parts.append(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
