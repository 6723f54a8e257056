"""A persistent, incremental IVF-SQ8 index of the kept CLIP embeddings, searched one day at a time.

Why: ``semantic_deduplicate`` is handed every earlier day's kept embeddings and builds a faiss
index over them from scratch, so each day costs k-means plus adding the whole history, and holds
the whole history in memory. Here the coarse quantizer and the codec are trained once on a
sample (``train_quantizer``); each day's kept vectors are encoded once into a *segment* on disk
(``write_segment``); a day's search reads only the inverted lists its queries probe.

Layout. A ``Quantizer`` is ``nlist`` spherical k-means centroids plus an 8-bit scalar quantizer
(SQ8: per dimension a minimum and a step, 256 levels), identified by a fingerprint (a hash of
both). A segment is a folder::

    manifest.json          format version, rows, dim, nlist, quantizer fingerprint, file sizes,
                           first/last date, and the name of the version folder below
    v-<uuid>/offsets.npy   int64 (nlist + 1): rows are sorted by inverted list, list L is the
                           contiguous slice offsets[L]:offsets[L + 1] of every file below
    v-<uuid>/codes.npy     uint8 (rows, d): the SQ8 code of each vector
    v-<uuid>/errors.npy    float32 (rows,): |x - decode(code(x))|, rounded up
    v-<uuid>/vectors.npy   float32 (rows, d) (or float16): the exact vectors, memory-mapped
    v-<uuid>/ids.arrow     Arrow IPC file: pair_id, date (strings), memory-mapped; a search
                           reads only the record batches holding its matches

Bytes per vector on disk at d = 512: 512 (codes) + 2,048 (float32 vectors; 1,024 as float16)
+ 4 (error) + the ids (~40), about 2.6 KB; the exact vectors are most of it and are read only
for candidates. A write goes to ``.tmp-<uuid>``, which is renamed to ``v-<uuid>`` and then made
current by replacing ``manifest.json`` (``os.replace``, atomic): a reader sees the old segment
or the new one, never half of one, and a crash leaves a ``.tmp-*`` folder that readers never
look at and the next write removes. One writer per segment at a time (a Dagster partition).

Search. Each query probes its ``nprobe`` nearest lists. For every probed list the codes of that
list in every segment are read (``os.pread`` of a contiguous slice) and scored against the
queries probing it with one matrix product, using ``q . decode(c) = q . (min + step / 2) +
(q * step) . c``. Cauchy-Schwarz bounds the codec's error for a query q and a stored x by
``|q| * |x - decode(code(x))|``, the stored error: a candidate is kept when its approximate
score plus that bound (and a float32 rounding bound) reaches the threshold, so SQ8 loses no
pair at all; recall is lost only to lists not probed. Each block's candidates are re-scored in
float64 from the exact vectors (memory-mapped, the touched pages dropped after each chunk) and
kept at >= threshold, as ``find_similar_between`` does: reported similarities are exact and
nothing below the threshold is reported. The pair_id and date of the pairs kept are copied from
only the record batches of ids.arrow that hold them.

Memory during a query: the queries and their probe lists (day-sized), the offsets of every
segment (8 * (nlist + 1) bytes each, which is why segments should be compacted with
``merge_segments``), one block of codes (``_BLOCK_ROWS`` rows across all segments; a longer list
is read a block at a time), that block's candidates, ``_VERIFY_CHUNK`` exact vectors, and the
pairs found. Mapped file pages count as the process's memory (VmHWM), which is why the vectors'
pages are dropped as they are used: kept, they grew the peak by about 550 bytes per history
vector (bench/semantic_scale.py: 1.9 GiB at 1M, 4.1 GiB at 5M), as did the candidates of the
whole search, which are now verified a block at a time. The pairs found are the one thing that
grows with the history (a cluster gains members every day); ``search_segment_blocks`` yields
them a block at a time for a caller that keeps only the best per query
(``SemanticStore.nearest``). Time: each query scans
history * nprobe / nlist codes, so pick ``nlist`` from the expected history when training
(``expected_rows``), and retrain (a one-off re-encode of the history) when the history
outgrows it or ``drift`` passes ``DRIFT_RETRAIN_THRESHOLD``.

Measured (2 shared cores, d = 512, 200,000 history rows in 10 day segments, nlist 1,125,
nprobe 32, 10,000 queries, threshold 0.95): clustered CLIP-like vectors, 100% of the 6,631
brute-force pairs, none below the threshold, 3.1 s against 53 s for ``brute_force_search``
(25 s for numpy float32 q @ h.T), peak RSS 260-300 MiB (92 before the search), 330 MiB over 1.2
million rows; isotropic vectors with pairs planted at cosine 0.9505-0.952, the hardest case,
99.89% (100% with nprobe 64).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup.semantic_index import (
    DEFAULT_SIMILARITY_THRESHOLD,
    _as_unit_vectors,
    _check_threshold,
    _set_faiss_threads,
    ivf_parameters,
)
from dataplatform.core.store.durable import fsync_path, replace_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUANTIZER_FILE = "quantizer.npz"
MANIFEST = "manifest.json"
OFFSETS = "offsets.npy"
CODES = "codes.npy"
ERRORS = "errors.npy"
VECTORS = "vectors.npy"
IDS = "ids.arrow"
SEGMENT_FILES = (OFFSETS, CODES, ERRORS, VECTORS, IDS)
VECTOR_DTYPES = ("float32", "float16")

# Retraining is advised when new vectors sit this much farther from their nearest centroid than
# held-out sample rows did. Measured on clustered CLIP-like vectors (tests/core/dedup/
# test_semantic_state.py, and 200k x 512): vectors like the sample score 0.95-1.03, clusters from
# topics the sample never saw 5-6, so 1.2 is reached when about 5% of a day comes from regions
# the quantizer has not seen. Such data does not make the search wrong (the SQ8 bound holds for
# any vector); it crowds into few lists, which costs time and recall, and widens the codes'
# error, which costs time.
DRIFT_RETRAIN_THRESHOLD = 1.2

_CELLS_PER_SAMPLE_POINT = 40  # k-means points per centroid, as ivf_parameters caps nlist
_KMEANS_ITERATIONS = 20  # trained once, so more than semantic_index's per-day 10
_HOLDOUT_FRACTION = 0.1  # of the sample, kept out of k-means to measure the drift baseline
_HOLDOUT_MAX = 20_000
_SQ_LEVELS = 256

_TMP_PREFIX = ".tmp-"
_VERSION_PREFIX = "v-"
_IDS_SCHEMA = pa.schema([("pair_id", pa.string()), ("date", pa.string())])

_QUERY_CHUNK = 16_384  # vectors per nearest-centroid search
_ENCODE_CHUNK = 16_384  # vectors encoded per step (d bytes + 8 d bytes of temporaries each)
_BLOCK_ROWS = 65_536  # rows of codes read per block of lists in a search (32 MiB at d = 512)
_COPY_ROWS = 16_384  # rows copied per step by merge and remove (about 80 MiB at d = 512)
_SCORE_CELLS = 1 << 22  # approximate scores per matrix product (16 MiB of float32)
_VERIFY_CHUNK = 8_192  # candidates re-scored in float64 per step (64 MiB at d = 512)


class CorruptSegmentError(RuntimeError):
    """A segment folder that cannot be read as written: a missing, truncated or malformed file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"segment {path} is unreadable: {reason}; rewrite it from its source day with "
            "write_segment (or drop it from the search)"
        )


class QuantizerMismatchError(ValueError):
    """A segment encoded with another quantizer than the one it is searched or merged with."""


class SegmentChangedError(RuntimeError):
    """A segment was rewritten while it was being read; the read can simply be repeated."""


@dataclass(frozen=True, eq=False)
class Quantizer:
    """Coarse centroids and SQ8 codec, trained once; segments record its ``fingerprint``."""

    centroids: np.ndarray  # (nlist, d) float32, unit rows
    sq_min: np.ndarray  # (d,) float32: the lowest level of each dimension
    sq_step: np.ndarray  # (d,) float32: width of one of the 256 levels
    reference_distance: float  # mean 1 - cos to the nearest centroid of held-out sample rows
    fingerprint: str

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def nearest_lists(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, list ids) of the ``k`` nearest centroids of each row, nearest first."""
        import faiss

        index = faiss.IndexFlatIP(self.dim)
        index.add(self.centroids)
        sims = np.empty((len(vectors), k), np.float32)
        ids = np.empty((len(vectors), k), np.int64)
        for lo in range(0, len(vectors), _QUERY_CHUNK):
            chunk = np.ascontiguousarray(vectors[lo : lo + _QUERY_CHUNK], dtype=np.float32)
            sims[lo : lo + len(chunk)], ids[lo : lo + len(chunk)] = index.search(chunk, k)
        return sims, ids

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """SQ8 codes (n, d) uint8; values outside the trained range take the end levels."""
        levels = np.floor((vectors - self.sq_min) / self.sq_step)
        return np.clip(levels, 0, _SQ_LEVELS - 1).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return (self.sq_min + (codes.astype(np.float32) + 0.5) * self.sq_step).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SegmentMatches:
    """Every (query row, history row) found at the threshold, sorted by (query, date, pair_id).

    ``segment`` indexes the list of segments searched and ``row`` is the row inside it (rows
    move when a segment is rewritten, merged or has pairs removed; pair_id does not).
    """

    query: np.ndarray  # (m,) int64
    pair_id: pa.Array  # (m,) string
    date: pa.Array  # (m,) string
    similarity: np.ndarray  # (m,) float32, exact (float64 from the stored vectors)
    segment: np.ndarray  # (m,) int64
    row: np.ndarray  # (m,) int64

    def __len__(self) -> int:
        return len(self.query)


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment's manifest says about it."""

    path: Path
    rows: int
    dim: int
    nlist: int
    quantizer_fingerprint: str
    vector_dtype: str
    first_date: str | None
    last_date: str | None
    version: str


def train_quantizer(
    sample: np.ndarray,
    path: Path,
    *,
    nlist: int | None = None,
    expected_rows: int | None = None,
    seed: int = 0,
) -> Quantizer:
    """Train the centroids and codec on ``sample`` (unit rows (n, d)) and save them in the
    folder ``path`` (one file, written under a temporary name and renamed into place).

    ``nlist`` defaults to what ``ivf_parameters`` picks for ``expected_rows`` (4 * sqrt(n)),
    capped at 40 k-means points per centroid; without ``expected_rows``, the cap itself (the
    most cells the sample supports, which a history much larger than the sample wants). A tenth
    of the sample (at most 20,000 rows) is held out of k-means to measure the drift baseline.
    """
    import faiss

    s = _as_unit_vectors(sample, "sample")
    n, d = s.shape
    if n == 0:
        raise ValueError("sample is empty: train the quantizer on kept embeddings (n, d)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_hold = _holdout_rows(n)
    hold = s[np.sort(order[:n_hold])] if n_hold else s
    train = s[np.sort(order[n_hold:])]
    if nlist is None:
        nlist = default_nlist(n, expected_rows)
    if not 1 <= nlist <= len(train):
        raise ValueError(
            f"nlist={nlist} needs 1..{len(train)} (the sample rows k-means trains on, "
            f"{n} minus {n_hold} held out); give a larger sample or a smaller nlist"
        )
    _set_faiss_threads()
    # Spherical k-means keeps centroids on the unit sphere, so the inner product to a centroid
    # is a cosine and no list wins queries just by having a longer centroid.
    kmeans = faiss.Kmeans(
        d,
        nlist,
        niter=_KMEANS_ITERATIONS,
        spherical=True,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, math.ceil(len(train) / nlist)),
    )
    kmeans.train(train)
    centroids = kmeans.centroids.astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    low, high = s.min(axis=0), s.max(axis=0)
    step = np.maximum((high - low) / _SQ_LEVELS, np.float32(1e-9)).astype(np.float32)
    provisional = Quantizer(centroids, low.astype(np.float32), step, 1.0, "")
    reference = _mean_distance(provisional, hold)
    quantizer = Quantizer(
        centroids,
        low.astype(np.float32),
        step,
        reference,
        _fingerprint(centroids, low.astype(np.float32), step),
    )
    _save_quantizer(quantizer, Path(path), seed=seed, sample_rows=n)
    log.info(
        "train_quantizer: %d sample rows (%d held out), d=%d, nlist=%d, fingerprint %s",
        n,
        n_hold,
        d,
        nlist,
        quantizer.fingerprint,
    )
    return quantizer


def default_nlist(sample_rows: int, expected_rows: int | None = None) -> int:
    """The lists ``train_quantizer`` gives a sample of ``sample_rows``: what ``ivf_parameters``
    picks for ``expected_rows``, capped at 40 k-means points per centroid (the cap itself
    without ``expected_rows``)."""
    cap = max(1, (sample_rows - _holdout_rows(sample_rows)) // _CELLS_PER_SAMPLE_POINT)
    if expected_rows is None:
        return cap
    return min(cap, ivf_parameters(expected_rows, DEFAULT_SIMILARITY_THRESHOLD)[0])


def _holdout_rows(n: int) -> int:
    return min(int(n * _HOLDOUT_FRACTION), _HOLDOUT_MAX) if n >= 20 else 0


def load_quantizer(path: Path) -> Quantizer:
    """The quantizer that ``train_quantizer`` saved in the folder ``path``."""
    file = Path(path) / QUANTIZER_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {QUANTIZER_FILE} in {path}: train one with train_quantizer")
    try:
        with np.load(file, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            centroids = data["centroids"].astype(np.float32)
            sq_min = data["sq_min"].astype(np.float32)
            sq_step = data["sq_step"].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{file} is not a readable quantizer ({exc}); retrain it") from exc
    fingerprint = _fingerprint(centroids, sq_min, sq_step)
    if meta.get("format_version") != FORMAT_VERSION or fingerprint != meta.get("fingerprint"):
        raise ValueError(
            f"{file}: format {meta.get('format_version')} / fingerprint {meta.get('fingerprint')} "
            f"do not match this code's format {FORMAT_VERSION} / its content's {fingerprint}; "
            "retrain the quantizer"
        )
    return Quantizer(centroids, sq_min, sq_step, float(meta["reference_distance"]), fingerprint)


def drift(quantizer: Quantizer, vectors: np.ndarray) -> float:
    """Mean distance (1 - cosine) of ``vectors`` to their nearest centroid, relative to that of
    the sample rows held out at training: about 1 for vectors like the sample, above
    ``DRIFT_RETRAIN_THRESHOLD`` when the quantizer should be retrained. NaN when the training
    sample gave no reference (too small a sample, or every held-out row on a centroid)."""
    v = _as_unit_vectors(vectors, "vectors")
    _check_dimension(quantizer, v, "vectors")
    if len(v) == 0:
        raise ValueError("drift needs at least one vector")
    _set_faiss_threads()
    if not quantizer.reference_distance > 0:
        return math.nan
    return _mean_distance(quantizer, v) / quantizer.reference_distance


def default_nprobe(nlist: int, threshold: float) -> int:
    """Lists each query probes: ``ivf_parameters``' measured one-sided probe count for an
    index of ``nlist`` lists, or every list below the thresholds it is calibrated for."""
    t = _check_threshold(threshold)
    # ivf_parameters picks nlist = min(round(4 sqrt(n)), n // 40); this n gives back ``nlist``.
    n = max(_CELLS_PER_SAMPLE_POINT * nlist, math.ceil(nlist * nlist / 16))
    try:
        size, nprobe = ivf_parameters(n, t, self_join=False)
    except ValueError:  # below the calibrated thresholds: probing everything is exact
        return nlist
    assert size == nlist, (size, nlist)
    return nprobe


def write_segment(
    directory: Path,
    quantizer: Quantizer,
    pair_ids: Sequence[str],
    dates: Sequence[str],
    vectors: np.ndarray,
    *,
    vector_dtype: str = "float32",
) -> None:
    """Encode one day's kept pairs (or any set of them) into the segment folder ``directory``,
    replacing what it held. ``vector_dtype="float16"`` halves the exact vectors on disk; the
    reported similarities are then those of the float16 vectors (within about 1e-3)."""
    directory = Path(directory)
    v = _as_unit_vectors(vectors, "vectors")
    _check_dimension(quantizer, v, "vectors")
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector_dtype must be one of {VECTOR_DTYPES}, got {vector_dtype!r}")
    ids = pa.array(pair_ids, pa.string())
    day = pa.array(dates, pa.string())
    if not len(ids) == len(day) == len(v):
        raise ValueError(
            f"pair_ids ({len(ids)}), dates ({len(day)}) and vectors ({len(v)}) need one entry "
            "per kept pair"
        )
    if ids.null_count or day.null_count:
        raise ValueError("pair_ids and dates must not contain None")
    if len(pc.unique(ids)) != len(ids):
        raise ValueError(f"pair_ids repeat within the segment for {directory}: give each once")
    _set_faiss_threads()
    lists = quantizer.nearest_lists(v, 1)[1][:, 0] if len(v) else np.zeros(0, np.int64)
    order = np.argsort(lists, kind="stable")
    offsets = _offsets(np.bincount(lists, minlength=quantizer.nlist))
    dates_range = _date_range(day)
    with _SegmentWriter(directory, len(v), quantizer.dim, vector_dtype) as out:
        for lo in range(0, len(v), _ENCODE_CHUNK):
            chunk = v[order[lo : lo + _ENCODE_CHUNK]]
            codes = quantizer.encode(chunk)
            hi = lo + len(chunk)
            out.codes[lo:hi] = codes
            out.errors[lo:hi] = _residual_norms(quantizer, chunk, codes)
            out.vectors[lo:hi] = chunk
            out.release()
        taken = pa.record_batch([ids.take(order), day.take(order)], schema=_IDS_SCHEMA)
        out.commit(offsets, [taken], quantizer.fingerprint, quantizer.nlist, dates_range)


def merge_segments(sources: Sequence[Path], directory: Path) -> None:
    """Compaction: write the rows of ``sources`` (same quantizer) as one segment ``directory``
    (which may be one of them). Codes are copied, not re-encoded, one block of lists at a time;
    the sources are left in place for the caller to remove once it uses the merged one."""
    directory = Path(directory)
    if not sources:
        raise ValueError("merge_segments needs at least one source segment")
    readers = [_open_segment(Path(s)) for s in sources]
    first = readers[0].info
    for reader in readers[1:]:
        info = reader.info
        if info.quantizer_fingerprint != first.quantizer_fingerprint:
            raise QuantizerMismatchError(
                f"cannot merge {info.path} (quantizer {info.quantizer_fingerprint}) with "
                f"{first.path} (quantizer {first.quantizer_fingerprint}): re-encode one of them "
                "with the other's quantizer first"
            )
        if info.vector_dtype != first.vector_dtype:
            raise ValueError(
                f"cannot merge {info.path} ({info.vector_dtype} vectors) with {first.path} "
                f"({first.vector_dtype}): rewrite one of them with the other's vector_dtype"
            )
    counts = sum(np.diff(r.offsets) for r in readers)
    offsets = _offsets(counts)
    rows = int(offsets[-1])
    dates = [d for r in readers for d in (r.info.first_date, r.info.last_date) if d is not None]
    date_range = (min(dates), max(dates)) if dates else (None, None)
    tables = [r.ids() for r in readers]
    bases = _offsets(np.array([r.info.rows for r in readers], np.int64))
    all_ids = pa.concat_tables(tables)
    if pc.count_distinct(all_ids["pair_id"]).as_py() != rows:
        raise ValueError(
            f"the sources of {directory} share pair_ids: a pair is kept once, so remove it from "
            "all but one source (remove_pairs) before merging"
        )

    def batches() -> Iterator[pa.RecordBatch]:
        pos = 0
        for lists in _list_blocks(counts, np.arange(first.nlist), _COPY_ROWS):
            lo, hi = int(lists[0]), int(lists[-1]) + 1
            parts = {name: [] for name in (CODES, ERRORS, VECTORS)}
            list_of, source_row = [], []
            for s, reader in enumerate(readers):
                a, b = int(reader.offsets[lo]), int(reader.offsets[hi])
                if a == b:
                    continue
                with reader.files((CODES, ERRORS, VECTORS)) as files:
                    for name in parts:
                        parts[name].append(files.read(name, a, b))
                list_of.append(np.repeat(np.arange(lo, hi), np.diff(reader.offsets[lo : hi + 1])))
                source_row.append(bases[s] + np.arange(a, b))
            if not list_of:
                continue
            perm = np.argsort(np.concatenate(list_of), kind="stable")
            n = len(perm)
            out.codes[pos : pos + n] = np.concatenate(parts[CODES])[perm]
            out.errors[pos : pos + n] = np.concatenate(parts[ERRORS])[perm]
            out.vectors[pos : pos + n] = np.concatenate(parts[VECTORS])[perm]
            out.release()
            pos += n
            taken = all_ids.take(pa.array(np.concatenate(source_row)[perm]))
            yield from taken.to_batches()
        assert pos == rows, (pos, rows)

    with _SegmentWriter(directory, rows, first.dim, first.vector_dtype) as out:
        out.commit(offsets, batches(), first.quantizer_fingerprint, first.nlist, date_range)


def remove_pairs(directory: Path, pair_ids: Iterable[str]) -> int:
    """Take down ``pair_ids`` from the segment ``directory`` (rewritten atomically, rows in the
    same order); returns how many rows it removed (0: the segment is left as it was)."""
    directory = Path(directory)
    reader = _open_segment(directory)
    info = reader.info
    table = reader.ids()
    wanted = pa.array(list(pair_ids), pa.string())
    gone = pc.is_in(table["pair_id"], value_set=wanted).to_numpy(zero_copy_only=False)
    removed = int(gone.sum())
    if removed == 0:
        return 0
    keep = ~gone
    lists = np.repeat(np.arange(info.nlist), np.diff(reader.offsets))
    offsets = _offsets(np.bincount(lists[keep], minlength=info.nlist))
    rows = int(offsets[-1])
    date_range = _date_range(table["date"].filter(pa.array(keep)))

    def batches() -> Iterator[pa.RecordBatch]:
        pos = 0
        for lo in range(0, info.rows, _COPY_ROWS):
            hi = min(info.rows, lo + _COPY_ROWS)
            mask = keep[lo:hi]
            n = int(mask.sum())
            if n == 0:
                continue
            with reader.files((CODES, ERRORS, VECTORS)) as files:
                out.codes[pos : pos + n] = files.read(CODES, lo, hi)[mask]
                out.errors[pos : pos + n] = files.read(ERRORS, lo, hi)[mask]
                out.vectors[pos : pos + n] = files.read(VECTORS, lo, hi)[mask]
            out.release()
            pos += n
            yield from table.slice(lo, hi - lo).filter(pa.array(mask)).to_batches()

    with _SegmentWriter(directory, rows, info.dim, info.vector_dtype) as out:
        out.commit(offsets, batches(), info.quantizer_fingerprint, info.nlist, date_range)
    return removed


def segment_info(directory: Path) -> SegmentInfo:
    """The manifest of the segment ``directory``, after checking its files are all there."""
    return _open_segment(Path(directory)).info


def segment_rows(directory: Path) -> int:
    return segment_info(directory).rows


def search_segments(
    segments: Sequence[Path],
    quantizer: Quantizer,
    queries: np.ndarray,
    threshold: float,
    *,
    nprobe: int | None = None,
) -> SegmentMatches:
    """Every (query row, stored row) of ``segments`` with cosine >= ``threshold`` that the
    index finds: all of those in the ``nprobe`` lists nearest each query (default
    ``default_nprobe``; ``nprobe = quantizer.nlist`` finds exactly what brute force finds)."""
    readers, verified = _search(segments, quantizer, queries, threshold, nprobe)
    return _resolve(readers, list(verified))


def search_segment_blocks(
    segments: Sequence[Path],
    quantizer: Quantizer,
    queries: np.ndarray,
    threshold: float,
    *,
    nprobe: int | None = None,
    cells: np.ndarray | None = None,
) -> Iterator[SegmentMatches]:
    """``search_segments``' matches one block of inverted lists at a time (each block sorted
    as ``search_segments`` sorts; together, the same matches), for a caller that reduces them
    as they come (the best per query) and so holds one block's matches, not the history's.

    ``cells`` (inverted-list numbers) searches only those lists: the searches of disjoint cell
    sets find disjoint matches, and together the matches of all lists, which is how a cluster
    splits one search by index cell."""
    readers, verified = _search(segments, quantizer, queries, threshold, nprobe, cells)
    for block in verified:
        if len(block.query):
            yield _resolve(readers, [block])


def _search(
    segments: Sequence[Path],
    quantizer: Quantizer,
    queries: np.ndarray,
    threshold: float,
    nprobe: int | None,
    cells: np.ndarray | None = None,
) -> tuple[list[_OpenSegment], Iterator[_Verified]]:
    """The opened segments, and the search's verified pairs one block of lists at a time
    (arguments are checked before this returns, the search runs as the blocks are taken)."""
    q = _as_unit_vectors(queries, "queries")
    _check_dimension(quantizer, q, "queries")
    t = _check_threshold(threshold)
    readers = [_open_segment(Path(s), quantizer) for s in segments]
    nlist = quantizer.nlist
    nprobe = default_nprobe(nlist, t) if nprobe is None else int(nprobe)
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be in 1..{nlist} (the quantizer's lists), got {nprobe}")
    if len(q) == 0 or not readers:
        return readers, iter(())
    return readers, _verified_blocks(readers, quantizer, q, t, nprobe, cells)


def _verified_blocks(
    readers: Sequence[_OpenSegment],
    quantizer: Quantizer,
    q: np.ndarray,
    t: float,
    nprobe: int,
    cells: np.ndarray | None = None,
) -> Iterator[_Verified]:
    _set_faiss_threads()
    nlist = quantizer.nlist
    probes = quantizer.nearest_lists(q, nprobe)[1]
    flat = probes.ravel()
    list_queries = np.argsort(flat, kind="stable") // nprobe  # queries grouped by list
    query_offsets = _offsets(np.bincount(flat, minlength=nlist))
    del probes, flat
    counts = sum(np.diff(r.offsets) for r in readers)
    probed = np.flatnonzero((np.diff(query_offsets) > 0) & (counts > 0))
    if cells is not None:
        probed = probed[np.isin(probed, cells)]

    scaled = (q * quantizer.sq_step).astype(np.float32, copy=False)
    offset = (quantizer.sq_min + 0.5 * quantizer.sq_step).astype(np.float64)
    bias = np.empty(len(q), np.float32)
    for lo in range(0, len(q), _QUERY_CHUNK):  # BLAS in float64, a chunk of rows widened at once
        bias[lo : lo + _QUERY_CHUNK] = q[lo : lo + _QUERY_CHUNK] @ offset
    norms = np.sqrt(np.einsum("ij,ij->i", q, q, dtype=np.float64)).astype(np.float32)
    lower = np.float32(t - _rounding_bound(quantizer, float(norms.max())))

    with _exact_vectors(readers) as gathers:
        for block in _code_blocks(readers, counts, probed):
            found = []
            for lst, pieces in block:
                who = list_queries[query_offsets[lst] : query_offsets[lst + 1]]
                found.extend(_score_list(pieces, who, scaled[who], bias[who], norms[who], lower))
            # Verified block by block: the candidates of one block are bounded by the block
            # and the day, while those of the whole search grow with the history.
            yield _verify(gathers, found, q, t)


def brute_force_search(
    segments: Sequence[Path], queries: np.ndarray, threshold: float
) -> SegmentMatches:
    """The baseline: every stored row of ``segments`` scored in float64 against every query
    from the exact vectors, one slice of rows at a time."""
    q = _as_unit_vectors(queries, "queries")
    t = _check_threshold(threshold)
    readers = [_open_segment(Path(s)) for s in segments]
    q64 = q.astype(np.float64)  # the baseline trades memory for simplicity
    step = max(64, _SCORE_CELLS // max(1, len(q)))  # stored rows scored per product
    for reader in readers:
        if reader.info.dim != q.shape[1]:
            raise ValueError(
                f"queries have d={q.shape[1]}, segment {reader.info.path} d={reader.info.dim}"
            )
    matches = []
    with _exact_vectors(readers) as gathers:
        for s, reader in enumerate(readers):
            with reader.files((VECTORS,)) as files:
                for lo in range(0, reader.info.rows, step):
                    hi = min(reader.info.rows, lo + step)
                    sims = q64 @ files.read(VECTORS, lo, hi).astype(np.float64).T
                    qi, ri = np.nonzero(sims >= t)
                    found = [(qi, np.full(len(qi), s), ri + lo)]
                    matches.append(_verify(gathers, found, q, t))
    return _resolve(readers, matches)


def measure_recall(
    segments: Sequence[Path],
    quantizer: Quantizer,
    queries: np.ndarray,
    threshold: float,
    exact: SegmentMatches | None = None,
    *,
    nprobe: int | None = None,
) -> float:
    """Share of the (query, pair_id) pairs of ``exact`` (default: ``brute_force_search``) that
    ``search_segments`` finds; 1.0 when there are none to find."""
    if exact is None:
        exact = brute_force_search(segments, queries, threshold)
    found = search_segments(segments, quantizer, queries, threshold, nprobe=nprobe)
    want = set(zip(exact.query.tolist(), exact.pair_id.to_pylist(), strict=True))
    if not want:
        return 1.0
    got = set(zip(found.query.tolist(), found.pair_id.to_pylist(), strict=True))
    return len(want & got) / len(want)


# -- the quantizer -----------------------------------------------------------------------------


def _fingerprint(centroids: np.ndarray, sq_min: np.ndarray, sq_step: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.asarray(centroids.shape, np.int64).tobytes())
    for part in (centroids, sq_min, sq_step):
        digest.update(np.ascontiguousarray(part, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _save_quantizer(quantizer: Quantizer, path: Path, *, seed: int, sample_rows: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": quantizer.fingerprint,
        "reference_distance": quantizer.reference_distance,
        "nlist": quantizer.nlist,
        "dim": quantizer.dim,
        "seed": seed,
        "sample_rows": sample_rows,
    }
    tmp = path / f"{_TMP_PREFIX}{uuid.uuid4().hex}.npz"
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                centroids=quantizer.centroids,
                sq_min=quantizer.sq_min,
                sq_step=quantizer.sq_step,
                meta=np.array(json.dumps(meta)),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / QUANTIZER_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path)


def _mean_distance(quantizer: Quantizer, vectors: np.ndarray) -> float:
    sims = quantizer.nearest_lists(vectors, 1)[0][:, 0].astype(np.float64)
    return float(np.mean(1.0 - sims))


def _residual_norms(quantizer: Quantizer, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """|x - decode(code(x))| per row, rounded up to float32 so it stays an upper bound."""
    residual = vectors.astype(np.float64) - quantizer.decode(codes)
    exact = np.sqrt(np.einsum("ij,ij->i", residual, residual))
    stored = exact.astype(np.float32)
    return np.where(stored < exact, np.nextafter(stored, np.float32(np.inf)), stored)


def _rounding_bound(quantizer: Quantizer, max_query_norm: float) -> float:
    """Bound on float32 rounding in an approximate score: a d-term dot product of codes (<= 255)
    with q * step is off by at most (d + 2) u times the sum of its terms' magnitudes (u = 2**-24,
    the scaling of q adding one rounding per term), <= 255 |q| |step| by Cauchy-Schwarz, plus
    the bias term's rounding; doubled for the additions of the bias and the error bound."""
    d = quantizer.dim
    offset = quantizer.sq_min.astype(np.float64) + 0.5 * quantizer.sq_step
    magnitude = (_SQ_LEVELS - 1) * max_query_norm * float(
        np.linalg.norm(quantizer.sq_step.astype(np.float64))
    ) + max_query_norm * float(np.linalg.norm(offset))
    return 2 * (d + 2) * 2.0**-24 * (magnitude + 2.0)


def _check_dimension(quantizer: Quantizer, v: np.ndarray, name: str) -> None:
    if v.shape[1] != quantizer.dim:
        raise ValueError(
            f"{name} have d={v.shape[1]} but the quantizer {quantizer.fingerprint} was trained "
            f"on d={quantizer.dim}: use embeddings from the same model"
        )


# -- the search --------------------------------------------------------------------------------


def _list_blocks(counts: np.ndarray, lists: np.ndarray, max_rows: int) -> Iterator[np.ndarray]:
    """Runs of ``lists`` (sorted) holding about ``max_rows`` rows each (a larger list alone)."""
    if len(lists) == 0:
        return
    ends = np.cumsum(counts[lists])
    start = 0
    while start < len(lists):
        before = ends[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(ends, before + max_rows, side="right")))
        yield lists[start:end]
        start = end


_Piece = tuple[int, np.ndarray, np.ndarray, int]  # segment, codes, errors, first row


def _code_blocks(
    readers: Sequence[_OpenSegment], counts: np.ndarray, probed: np.ndarray
) -> Iterator[list[tuple[int, list[_Piece]]]]:
    """The codes of the ``probed`` lists in blocks of about ``_BLOCK_ROWS`` rows over all
    segments: per block, (list, its pieces). A list longer than a block comes in several
    blocks, so that no read grows with a list (lists grow with history / nlist)."""
    for block in _list_blocks(counts, probed, _BLOCK_ROWS):
        if len(block) == 1 and counts[block[0]] > _BLOCK_ROWS:
            yield from _long_list(readers, int(block[0]))
            continue
        codes, errors, starts = _read_block(readers, block)
        yield [
            (
                lst,
                [
                    (s, codes[s][k], errors[s][k], starts[s][k])
                    for s in range(len(readers))
                    if len(codes[s][k])
                ],
            )
            for k, lst in enumerate(block.tolist())
        ]


def _long_list(
    readers: Sequence[_OpenSegment], lst: int
) -> Iterator[list[tuple[int, list[_Piece]]]]:
    """The list ``lst`` of every segment, ``_BLOCK_ROWS`` rows at a time."""
    pieces: list[_Piece] = []
    rows = 0
    for s, reader in enumerate(readers):
        a, b = int(reader.offsets[lst]), int(reader.offsets[lst + 1])
        with reader.files((CODES, ERRORS)) as files:
            while a < b:
                stop = min(b, a + _BLOCK_ROWS - rows)
                pieces.append((s, files.read(CODES, a, stop), files.read(ERRORS, a, stop), a))
                rows += stop - a
                a = stop
                if rows == _BLOCK_ROWS:
                    yield [(lst, pieces)]
                    pieces, rows = [], 0
    if pieces:
        yield [(lst, pieces)]


def _read_block(
    readers: Sequence[_OpenSegment], block: np.ndarray
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]], list[list[int]]]:
    """Per segment and per list of ``block``: its codes, errors and first row, read with one
    ``pread`` per run of consecutive lists."""
    runs = np.split(block, np.flatnonzero(np.diff(block) != 1) + 1)
    codes, errors, starts = [], [], []
    for reader in readers:
        seg_codes, seg_errors, seg_starts = [], [], []
        off = reader.offsets
        with reader.files((CODES, ERRORS)) as files:
            for run in runs:
                a, b = int(off[run[0]]), int(off[run[-1] + 1])
                run_codes = files.read(CODES, a, b)
                run_errors = files.read(ERRORS, a, b)
                for lst in run.tolist():
                    lo, hi = int(off[lst]) - a, int(off[lst + 1]) - a
                    seg_codes.append(run_codes[lo:hi])
                    seg_errors.append(run_errors[lo:hi])
                    seg_starts.append(a + lo)
        codes.append(seg_codes)
        errors.append(seg_errors)
        starts.append(seg_starts)
    return codes, errors, starts


def _score_list(
    pieces: list[_Piece],
    who: np.ndarray,
    scaled: np.ndarray,
    bias: np.ndarray,
    norms: np.ndarray,
    lower: np.float32,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Candidates (query, segment, row) of one list: approximate score + the codec's error
    bound >= ``lower``. ``pieces`` are (segment, codes, errors, first row) of the list."""
    # Rows per product: at most _SCORE_CELLS scores, and at most _SCORE_CELLS codes widened
    # to float32 (a list probed by few queries would otherwise widen all of its codes at once).
    max_rows = max(64, _SCORE_CELLS // max(len(who), scaled.shape[1]))
    while pieces:
        chunk, rows = [], 0
        while pieces and rows < max_rows:
            s, c, e, start = pieces.pop()
            take = min(len(c), max_rows - rows)
            chunk.append((s, c[:take], e[:take], start))
            if take < len(c):
                pieces.append((s, c[take:], e[take:], start + take))
            rows += take
        codes = np.concatenate([c for _, c, _, _ in chunk]).astype(np.float32)
        errors = np.concatenate([e for _, _, e, _ in chunk])
        scores = codes @ scaled.T  # (rows, queries)
        scores += bias
        scores += errors[:, None] * norms
        r, c = np.nonzero(scores >= lower)
        if len(r):
            segment = np.concatenate([np.full(len(x), s, np.int64) for s, x, _, _ in chunk])
            row = np.concatenate([np.arange(st, st + len(x)) for _, x, _, st in chunk])
            yield who[c], segment[r], row[r]


@dataclass(frozen=True)
class _Verified:
    """Candidates that reached the threshold when re-scored exactly, ids not yet resolved."""

    query: np.ndarray  # int64
    segment: np.ndarray  # int64
    row: np.ndarray  # int64
    similarity: np.ndarray  # float32


@contextlib.contextmanager
def _exact_vectors(
    readers: Sequence[_OpenSegment],
) -> Iterator[list[Callable[[np.ndarray], np.ndarray]]]:
    """Each segment's ``vectors()`` gather, open for the whole search."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(reader.vectors()) for reader in readers]


def _verify(
    gathers: Sequence[Callable[[np.ndarray], np.ndarray]],
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    queries: np.ndarray,
    threshold: float,
) -> _Verified:
    """Re-score candidates (query, segment, row) in float64 from the exact vectors,
    ``_VERIFY_CHUNK`` at a time in (segment, row) order, and keep those >= ``threshold``."""
    if not found:
        empty = np.zeros(0, np.int64)
        return _Verified(empty, empty, empty, np.zeros(0, np.float32))
    query = np.concatenate([f[0] for f in found]).astype(np.int64, copy=False)
    segment = np.concatenate([f[1] for f in found]).astype(np.int64, copy=False)
    row = np.concatenate([f[2] for f in found]).astype(np.int64, copy=False)
    found.clear()  # the caller's list: its arrays are copied above
    order = np.lexsort((row, segment))
    query, segment, row = query[order], segment[order], row[order]
    del order
    bounds = np.searchsorted(segment, np.arange(len(gathers) + 1))
    sims = np.empty(len(row), np.float64)
    for s, gather in enumerate(gathers):
        for a in range(bounds[s], bounds[s + 1], _VERIFY_CHUNK):
            b = min(bounds[s + 1], a + _VERIFY_CHUNK)
            x = gather(row[a:b]).astype(np.float64)
            q64 = queries[query[a:b]].astype(np.float64)
            sims[a:b] = np.einsum("ij,ij->i", q64, x)
    keep = sims >= threshold
    return _Verified(query[keep], segment[keep], row[keep], sims[keep].astype(np.float32))


def _resolve(readers: Sequence[_OpenSegment], parts: Sequence[_Verified]) -> SegmentMatches:
    """The verified pairs with their pair_id and date (read for those rows only), sorted by
    (query, date, pair_id) and then (segment, row)."""
    query = np.concatenate([np.zeros(0, np.int64), *(p.query for p in parts)])
    if len(query) == 0:
        return _empty_matches()
    segment = np.concatenate([p.segment for p in parts])
    row = np.concatenate([p.row for p in parts])
    similarity = np.concatenate([p.similarity for p in parts])
    order = np.lexsort((row, segment))
    query, segment, row, similarity = query[order], segment[order], row[order], similarity[order]
    bounds = np.searchsorted(segment, np.arange(len(readers) + 1))
    ids = pa.concat_tables(
        [
            readers[s].ids_of(row[bounds[s] : bounds[s + 1]])
            for s in range(len(readers))
            if bounds[s] < bounds[s + 1]
        ]
    )
    table = pa.table(
        {
            "query": query,
            "date": ids["date"],
            "pair_id": ids["pair_id"],
            "similarity": similarity,
            "segment": segment,
            "row": row,
        }
    ).sort_by(
        [
            ("query", "ascending"),
            ("date", "ascending"),
            ("pair_id", "ascending"),
            ("segment", "ascending"),
            ("row", "ascending"),
        ]
    )
    return SegmentMatches(
        query=table["query"].to_numpy(),
        pair_id=table["pair_id"].combine_chunks(),
        date=table["date"].combine_chunks(),
        similarity=table["similarity"].to_numpy(),
        segment=table["segment"].to_numpy(),
        row=table["row"].to_numpy(),
    )


def _empty_matches() -> SegmentMatches:
    empty = np.zeros(0, np.int64)
    strings = pa.array([], pa.string())
    return SegmentMatches(empty, strings, strings, np.zeros(0, np.float32), empty, empty)


# -- segment files -----------------------------------------------------------------------------


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _date_range(dates: pa.Array | pa.ChunkedArray) -> tuple[str | None, str | None]:
    if len(dates) == 0:
        return None, None
    bounds = pc.min_max(dates)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _new_array(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if math.prod(shape) == 0:  # numpy cannot map an empty file
        empty = np.zeros(shape, dtype)
        np.save(path, empty)
        return empty
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


class _SegmentWriter:
    """A new version of the segment ``directory``, filled through ``codes``, ``errors`` and
    ``vectors`` (memory-mapped) and made current by ``commit``; dropped if anything fails."""

    def __init__(self, directory: Path, rows: int, dim: int, vector_dtype: str) -> None:
        self.directory = directory
        self.rows, self.dim, self.vector_dtype = rows, dim, vector_dtype
        directory.mkdir(parents=True, exist_ok=True)
        self.tmp = directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        self.tmp.mkdir()
        self.codes = _new_array(self.tmp / CODES, "uint8", (rows, dim))
        self.errors = _new_array(self.tmp / ERRORS, "float32", (rows,))
        self.vectors = _new_array(self.tmp / VECTORS, vector_dtype, (rows, dim))

    def __enter__(self) -> _SegmentWriter:
        return self

    def release(self) -> None:
        """Write back the rows filled so far and drop their pages from this process: a mapped
        page counts as its memory until unmapped, and a merge fills gigabytes. The data stays
        in the file (and the page cache); call it after each block."""
        for array in (self.codes, self.errors, self.vectors):
            mapped = getattr(array, "_mmap", None)
            if mapped is not None:
                array.flush()
                mapped.madvise(mmap.MADV_DONTNEED)

    def __exit__(self, *exc: object) -> None:
        self.codes = self.errors = self.vectors = None
        shutil.rmtree(self.tmp, ignore_errors=True)  # gone already after a commit

    def commit(
        self,
        offsets: np.ndarray,
        ids: Iterable[pa.RecordBatch],
        fingerprint: str,
        nlist: int,
        date_range: tuple[str | None, str | None],
    ) -> None:
        rows = 0
        with (
            pa.OSFile(str(self.tmp / IDS), "wb") as sink,
            pa.ipc.new_file(sink, _IDS_SCHEMA) as writer,
        ):
            for batch in ids:  # merge and remove fill the arrays while this iterates
                writer.write_batch(batch)
                rows += batch.num_rows
        if rows != self.rows or int(offsets[-1]) != self.rows or len(offsets) != nlist + 1:
            raise AssertionError(f"segment writer got {rows} ids for {self.rows} rows")
        for array in (self.codes, self.errors, self.vectors):
            if isinstance(array, np.memmap):
                array.flush()
        self.codes = self.errors = self.vectors = None
        np.save(self.tmp / OFFSETS, offsets.astype(np.int64))
        sizes = {}
        for name in SEGMENT_FILES:
            fsync_path(self.tmp / name)
            sizes[name] = (self.tmp / name).stat().st_size
        version = f"{_VERSION_PREFIX}{uuid.uuid4().hex}"
        os.replace(self.tmp, self.directory / version)
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "rows": self.rows,
            "dim": self.dim,
            "nlist": nlist,
            "quantizer_fingerprint": fingerprint,
            "vector_dtype": self.vector_dtype,
            "first_date": date_range[0],
            "last_date": date_range[1],
            "files": sizes,
        }
        replace_json(self.directory / MANIFEST, manifest, temp_prefix=_TMP_PREFIX)
        for entry in self.directory.iterdir():  # older versions, crashed writes' leftovers
            if entry.name.startswith((_TMP_PREFIX, _VERSION_PREFIX)) and entry.name != version:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Layout:
    """Where a .npy file's rows start and how wide a row is."""

    offset: int
    dtype: np.dtype
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.row_shape)


class _OpenSegment:
    """A segment whose manifest and files were checked; files are opened only while read."""

    def __init__(self, directory: Path, manifest: dict, offsets: np.ndarray, layouts: dict):
        self.directory = directory
        self.version_dir = directory / manifest["version"]
        self.info = SegmentInfo(
            path=directory,
            rows=int(manifest["rows"]),
            dim=int(manifest["dim"]),
            nlist=int(manifest["nlist"]),
            quantizer_fingerprint=str(manifest["quantizer_fingerprint"]),
            vector_dtype=str(manifest["vector_dtype"]),
            first_date=manifest["first_date"],
            last_date=manifest["last_date"],
            version=str(manifest["version"]),
        )
        self.offsets = offsets
        self.layouts: dict[str, _Layout] = layouts

    def _open(self, name: str) -> int:
        try:
            return os.open(self.version_dir / name, os.O_RDONLY)
        except FileNotFoundError:
            raise self._changed(name) from None

    def _changed(self, name: str) -> SegmentChangedError:
        return SegmentChangedError(
            f"segment {self.directory} lost {self.info.version}/{name} while being read: it "
            "was rewritten meanwhile; read it again"
        )

    @contextlib.contextmanager
    def files(self, names: Sequence[str]) -> Iterator[_RowReader]:
        fds = {name: self._open(name) for name in names}
        try:
            yield _RowReader(self, fds)
        finally:
            for fd in fds.values():
                os.close(fd)

    @contextlib.contextmanager
    def vectors(self) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """A function of row numbers giving copies of their exact vectors, read through a memory
        map that lasts as long as the ``with``. The pages a call touched are dropped from the
        map before it returns (``MADV_DONTNEED``; they stay in the page cache): mapped pages
        count as the process's memory, and a search gathers rows from all over the history."""
        layout = self.layouts[VECTORS]
        fd = self._open(VECTORS)
        try:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        shape = (self.info.rows, self.info.dim)

        def gather(rows: np.ndarray) -> np.ndarray:
            if len(rows) == 0:
                return np.zeros((0, shape[1]), layout.dtype)
            stored = np.frombuffer(mapped, layout.dtype, math.prod(shape), layout.offset)
            taken = stored.reshape(shape)[rows]
            del stored
            # All of the map, not the rows' range: a fault maps its neighbours too.
            mapped.madvise(mmap.MADV_DONTNEED)
            return taken

        try:
            yield gather
        finally:
            mapped.close()

    def ids_of(self, rows: np.ndarray) -> pa.Table:
        """pair_id and date of ``rows`` (ascending, repeats allowed), in that order, copied from
        only the record batches of ids.arrow that hold them: the file is memory-mapped, so the
        other batches' pages are never touched, and the map is closed before returning."""
        path = self.version_dir / IDS
        try:
            source = pa.memory_map(str(path))
        except FileNotFoundError:
            raise self._changed(IDS) from None
        with source:
            try:
                reader = pa.ipc.open_file(source)
                sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
            except pa.ArrowInvalid as exc:
                raise CorruptSegmentError(path, f"not an Arrow file ({exc})") from exc
            if sum(sizes) != self.info.rows or not reader.schema.equals(_IDS_SCHEMA):
                raise CorruptSegmentError(
                    path, f"{sum(sizes)} rows of {reader.schema} for {self.info.rows} rows"
                )
            starts = _offsets(np.asarray(sizes, np.int64))
            cuts = np.searchsorted(rows, starts)
            pieces = [
                pa.Table.from_batches([reader.get_batch(b)]).take(
                    pa.array(rows[cuts[b] : cuts[b + 1]] - starts[b])
                )
                for b in range(len(sizes))
                if cuts[b] < cuts[b + 1]
            ]
            return pa.concat_tables(pieces or [_IDS_SCHEMA.empty_table()]).combine_chunks()

    def ids(self) -> pa.Table:
        """pair_id and date of every row, memory-mapped: the map goes when the table does, so
        hold it only while needed (a search takes one segment's matches at a time)."""
        fd = self._open(IDS)
        try:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()
        except pa.ArrowInvalid as exc:
            raise CorruptSegmentError(self.version_dir / IDS, f"not an Arrow file ({exc})") from exc
        if table.num_rows != self.info.rows or not table.schema.equals(_IDS_SCHEMA):
            raise CorruptSegmentError(
                self.version_dir / IDS,
                f"{table.num_rows} rows of {table.schema} for {self.info.rows} rows",
            )
        return table


class _RowReader:
    def __init__(self, segment: _OpenSegment, fds: dict[str, int]) -> None:
        self.segment, self.fds = segment, fds

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the .npy file ``name``, with one pread."""
        layout = self.segment.layouts[name]
        size = (stop - start) * layout.row_bytes
        data = os.pread(self.fds[name], size, layout.offset + start * layout.row_bytes)
        if len(data) != size:
            raise CorruptSegmentError(
                self.segment.version_dir / name, f"short read of rows {start}..{stop}"
            )
        return np.frombuffer(data, layout.dtype).reshape((stop - start, *layout.row_shape))


def _open_segment(directory: Path, quantizer: Quantizer | None = None) -> _OpenSegment:
    """Check the manifest, the files' presence and sizes, the .npy headers and the offsets;
    with ``quantizer``, that the segment was encoded with it."""
    if not directory.is_dir():
        raise FileNotFoundError(f"segment {directory} does not exist: write it with write_segment")
    for _ in range(3):
        manifest = _read_manifest(directory)
        version_dir = directory / manifest["version"]
        missing = [n for n in SEGMENT_FILES if not (version_dir / n).is_file()]
        if missing and _read_manifest(directory)["version"] != manifest["version"]:
            continue  # rewritten between reading the manifest and the files
        break
    if missing:
        raise CorruptSegmentError(directory, f"{manifest['version']} lacks {', '.join(missing)}")
    for name in SEGMENT_FILES:
        size = (version_dir / name).stat().st_size
        expected = manifest["files"].get(name)
        if size != expected:
            raise CorruptSegmentError(
                version_dir / name, f"{size} bytes where the manifest recorded {expected}"
            )
    if quantizer is not None and manifest["quantizer_fingerprint"] != quantizer.fingerprint:
        raise QuantizerMismatchError(
            f"segment {directory} was encoded with quantizer {manifest['quantizer_fingerprint']}, "
            f"not with {quantizer.fingerprint} that it is searched with: search it with its own "
            "quantizer or rewrite it with this one"
        )
    rows, dim = int(manifest["rows"]), int(manifest["dim"])
    nlist = int(manifest["nlist"])
    expected_layouts = {
        OFFSETS: ("int64", (nlist + 1,)),
        CODES: ("uint8", (rows, dim)),
        ERRORS: ("float32", (rows,)),
        VECTORS: (manifest["vector_dtype"], (rows, dim)),
    }
    layouts = {}
    for name, (dtype, shape) in expected_layouts.items():
        layouts[name] = _npy_layout(version_dir / name, np.dtype(dtype), shape)
    offsets = np.load(version_dir / OFFSETS, allow_pickle=False)
    if offsets[0] != 0 or offsets[-1] != rows or (np.diff(offsets) < 0).any():
        raise CorruptSegmentError(version_dir / OFFSETS, f"not list offsets of {rows} rows")
    return _OpenSegment(directory, manifest, offsets, layouts)


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise CorruptSegmentError(
            directory,
            f"no {MANIFEST}: it was never completely written (a write that stopped leaves only "
            f"{_TMP_PREFIX}* folders)",
        )
    try:
        manifest = json.loads(path.read_text())
        required = ("format_version", "version", "rows", "dim", "nlist", "files")
        if not isinstance(manifest, dict) or any(key not in manifest for key in required):
            raise ValueError(f"it lacks some of {required}")
    except ValueError as exc:
        raise CorruptSegmentError(path, f"unreadable manifest ({exc})") from exc
    if manifest["format_version"] != FORMAT_VERSION:
        raise CorruptSegmentError(
            path, f"format version {manifest['format_version']}, this code reads {FORMAT_VERSION}"
        )
    return manifest


def _npy_layout(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> _Layout:
    with open(path, "rb") as f:
        head = io.BytesIO(f.read(65_536))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(head)
        else:
            found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(head)
    except ValueError as exc:
        raise CorruptSegmentError(path, f"not a .npy file ({exc})") from exc
    if found_shape != shape or found_dtype != dtype or fortran:
        raise CorruptSegmentError(
            path, f"holds {found_dtype} {found_shape}, the manifest says {dtype} {shape}"
        )
    layout = _Layout(head.tell(), dtype, shape[1:])
    if path.stat().st_size != layout.offset + math.prod(shape) * dtype.itemsize:
        raise CorruptSegmentError(path, "size does not match its header")
    return layout
