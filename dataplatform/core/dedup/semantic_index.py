"""Semantic near-duplicate search over L2-normalised CLIP embeddings, without an n x n matrix.

Two items are semantic duplicates when the cosine of their embeddings (the inner product, for
unit vectors) is at least a threshold. The all-pairs similarity matrix that simple tools build
is quadratic in memory: 4 TB of float32 for a million images. Two search methods avoid it:

``exact``
    faiss ``IndexFlatIP`` range search over blocks of the reference, queries in chunks: the
    same pairs as brute force with memory bounded by the block sizes, but still quadratic time
    (about 1.3e12 float operations for 50,000 512-d vectors, ten seconds on two cores).
``ivf``
    faiss ``IndexIVFFlat``: k-means cells over the vectors, and each query scans only the
    ``nprobe`` cells whose centroids are closest to it. A pair is missed only if the cell of one
    vector is not among the probed cells of the other; the probe counts below are measured to
    keep that under 1% for pairs right at the threshold.
``auto``
    exact while the search is small, ivf above, exact again for thresholds below the range the
    ivf probe counts were measured for.

Similarities of reported pairs are recomputed in float64 from the float32 vectors, and pairs
are kept when that value is >= the threshold. faiss keeps results strictly above its radius
and sums in an order that depends on its kernels, so the search runs with a radius a rounding
bound below the threshold and the recomputation decides: both methods report exactly what a
float64 brute force over the same vectors would, up to the recall of ivf.

The greedy dedup contract (``semantic_deduplicate``, ``greedy_keep``): items are visited best
rank first (lower rank is better). An item is a duplicate iff its similarity to some history
vector (kept by earlier partitions, which always win) or to an already kept, better-ranked item
is >= the threshold; otherwise it is kept. A duplicate points at the match with the highest
similarity, ties going to history first (lowest history index), then to the best-ranked item.
No two kept items, history included, are similar at the threshold.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# The semantic_deduped default: strict enough that only near-copies go (DataFlow's
# ImageDeduplicateFilter uses 0.90). It is a parameter, to be tuned on labelled pairs; the ivf
# probe counts below are measured for thresholds from 0.90 up.
DEFAULT_SIMILARITY_THRESHOLD: float = 0.95

METHODS = ("auto", "exact", "ivf")

# "auto" searches exactly up to the work of a 50,000-vector self-join (n * (n - 1) / 2 inner
# products, about ten seconds at d=512 on two cores) and with ivf above.
AUTO_EXACT_MAX_PRODUCTS = 50_000 * 49_999 // 2

NORM_TOLERANCE = 1e-3  # rows whose norm is off by more than this are not unit vectors

# ivf probe counts, as (lowest threshold, nprobe) from high to low thresholds, for up to 4,000
# cells (n <= 1,000,000); beyond that nprobe grows with sqrt(nlist). Measured on isotropic random
# unit vectors (recall barely depends on d) with pairs planted at exactly the threshold cosine,
# the hardest pairs to find, aiming at >= 99.5% recall there. A self-join finds a pair when the
# cell of either vector is probed from the other; a search between two sets only from the query
# side, so it needs more probes. Recall (%) at cos == t:
#   self-join   n=30k d=64 / 250k d=64 / 1M d=512 / 4M d=64 (nlist 693 / 2,000 / 4,000 / 8,000,
#               the last with nprobe grown x1.4 and rounded to the measured 8, 16, 24, 32, 48)
#     t=0.99 nprobe  6: 99.96 / 99.88 / 99.93 / 99.97
#     t=0.97 nprobe 12: 99.98 / 99.94 / 99.92 / 99.92
#     t=0.95 nprobe 16: 99.94 / 99.86 / 99.80 / 99.88
#     t=0.92 nprobe 24: 99.92 / 99.76 / 99.62 / 99.66
#     t=0.90 nprobe 32: 99.92 / 99.77 / 99.52 / 99.67
#   one-sided   n=30k d=64 / 1M d=64
#     t=0.99 nprobe  12: 99.98 / 99.96;  t=0.97 nprobe 24: 99.98 / 99.87
#     t=0.95 nprobe  32: 99.94 / 99.52;  t=0.92 nprobe 96: 100.0 / 99.81
#     t=0.90 nprobe 128: 100.0 / 99.76
# The planted vectors were not in the k-means sample; vectors that were (16% of them at 1M, all
# of them below 40 * nlist) share a cell with their copies more often, so these are lower bounds.
# Real CLIP embeddings are clustered rather than isotropic, and their near-duplicates mostly sit
# well above the threshold, where recall is higher: bench/semdedup.py at 1M x 512, t=0.95,
# nprobe 16 finds 99.96% of pairs planted at cos 0.95-0.999 (99.90% of those below 0.96).
# Below 0.90 "auto" searches exactly.
_NPROBE_SELF_JOIN = ((0.99, 6), (0.97, 12), (0.95, 16), (0.92, 24), (0.90, 32))
_NPROBE_ONE_SIDED = ((0.99, 12), (0.97, 24), (0.95, 32), (0.92, 96), (0.90, 128))
IVF_MIN_THRESHOLD = _NPROBE_SELF_JOIN[-1][0]
_CALIBRATION_SLACK = 1e-6  # a float32 threshold (np.float32(0.9) < 0.9) uses the 0.9 row
_NPROBE_CALIBRATED_NLIST = 4_000  # beyond it, probes grow with sqrt(nlist) (measured at 8,000)

_IVF_CELLS_PER_SQRT_N = 4  # nlist = 4 * sqrt(n): the usual faiss rule for IVF on flat vectors
_IVF_TRAIN_POINTS_PER_CELL = 40  # faiss asks for at least 39 k-means points per centroid
_IVF_KMEANS_ITERATIONS = 10  # 25 (the faiss default) gave the same recall at 1M, +-0.05%
_IVF_SEED = 1234  # k-means initialisation and training sample: same input, same output

_REFERENCE_BLOCK = 16_384  # exact search: reference rows per flat index (32 MiB at d = 512)
_QUERY_CHUNK = 16_384  # queries per faiss range search: bounds the result buffers
_VERIFY_CHUNK = 8_192  # candidate pairs recomputed in float64 per step (64 MiB at d = 512)
_NORM_CHUNK = 65_536


@dataclass(frozen=True, eq=False)
class SemanticDecision:
    """Outcome of greedy semantic dedup, one entry per input row (in input order).

    ``duplicate_of`` is -1 for kept items; for a duplicate it is the index of the kept item it
    matched or, where ``dup_in_history`` is set, the row index into the history array.
    ``similarity`` is the cosine to that match, NaN for kept items.
    """

    keep: np.ndarray  # (n,) bool
    duplicate_of: np.ndarray  # (n,) int64
    dup_in_history: np.ndarray  # (n,) bool
    similarity: np.ndarray  # (n,) float32


_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def find_similar_pairs(vectors: np.ndarray, threshold: float, *, method: str = "auto") -> _Pairs:
    """Every pair (i, j), i < j, of rows of ``vectors`` with cosine >= ``threshold``.

    Returns (i, j, similarity) arrays (int64, int64, float32) sorted by (i, j). ``vectors`` are
    L2-normalised embeddings (n, d). Each pair appears once, so a cluster of k near-identical
    images yields k * (k - 1) / 2 pairs.
    """
    v = _as_unit_vectors(vectors, "vectors")
    t = _check_threshold(threshold)
    n = len(v)
    if n < 2:
        return _empty_pairs()
    chosen = _choose_method(method, n * (n - 1) // 2, t)
    _set_faiss_threads()
    start = time.perf_counter()
    if chosen == "exact":
        candidates = _exact_self_candidates(v, t)
    else:
        candidates = _ivf_candidates(v, v, t, self_join=True)
    pairs = _verified(v, v, candidates, t)
    log.debug(
        "find_similar_pairs: n=%d method=%s %d pairs in %.1f s",
        n,
        chosen,
        len(pairs[0]),
        time.perf_counter() - start,
    )
    return pairs


def find_similar_between(
    queries: np.ndarray, reference: np.ndarray, threshold: float, *, method: str = "auto"
) -> _Pairs:
    """Every (query row, reference row, similarity) with cosine >= ``threshold``.

    Arrays are (int64, int64, float32), sorted by (query row, reference row). With ``ivf`` the
    index is built over ``reference``, so pass the larger or the more reused set there.
    """
    q = _as_unit_vectors(queries, "queries")
    r = _as_unit_vectors(reference, "reference")
    _check_same_dimension(q, "queries", r, "reference")
    t = _check_threshold(threshold)
    if len(q) == 0 or len(r) == 0:
        return _empty_pairs()
    chosen = _choose_method(method, len(q) * len(r), t)
    _set_faiss_threads()
    if chosen == "exact":
        candidates = _exact_between_candidates(q, r, t)
    else:
        candidates = _ivf_candidates(q, r, t, self_join=False)
    return _verified(q, r, candidates, t)


def ivf_parameters(
    n_reference: int, threshold: float, *, self_join: bool = True
) -> tuple[int, int]:
    """(nlist, nprobe) that ``ivf`` uses for an index over ``n_reference`` vectors.

    nlist = 4 * sqrt(n), capped so that k-means gets 40 training points per cell. nprobe comes
    from the measured table above for the threshold (rounded down to the nearest measured
    threshold, which probes more), grown with sqrt(nlist) beyond the 4,000 measured cells.
    """
    t = _check_threshold(threshold)
    if t < IVF_MIN_THRESHOLD - _CALIBRATION_SLACK:
        raise ValueError(
            f"method='ivf' is calibrated for thresholds >= {IVF_MIN_THRESHOLD}, got {threshold}; "
            "use method='exact' (or 'auto', which does) for lower thresholds"
        )
    nlist = max(
        1,
        min(
            round(_IVF_CELLS_PER_SQRT_N * math.sqrt(n_reference)),
            n_reference // _IVF_TRAIN_POINTS_PER_CELL,
        ),
    )
    table = _NPROBE_SELF_JOIN if self_join else _NPROBE_ONE_SIDED
    base = next(probes for lowest, probes in table if t >= lowest - _CALIBRATION_SLACK)
    growth = max(1.0, math.sqrt(nlist / _NPROBE_CALIBRATED_NLIST))
    return nlist, min(nlist, math.ceil(base * growth))


def semantic_deduplicate(
    vectors: np.ndarray,
    threshold: float,
    rank: np.ndarray,
    history: np.ndarray | None = None,
    *,
    method: str = "auto",
) -> SemanticDecision:
    """Greedy semantic dedup of ``vectors`` in ``rank`` order (lower is better) against
    ``history``, the embeddings kept by earlier partitions.

    An empty ``history`` (any shape with no rows) counts as none.
    """
    v = _as_unit_vectors(vectors, "vectors")
    rank_arr = _as_rank(rank, len(v))
    pairs = find_similar_pairs(v, threshold, method=method)
    history_pairs = None
    if history is not None and np.size(history) > 0:
        h = _as_unit_vectors(history, "history")
        _check_same_dimension(v, "vectors", h, "history")
        history_pairs = find_similar_between(v, h, threshold, method=method)
    return greedy_keep(rank_arr, pairs, history_pairs)


def greedy_keep(
    rank: np.ndarray, pairs: _Pairs, history_pairs: _Pairs | None = None
) -> SemanticDecision:
    """Resolve the greedy contract over items 0..n-1 (n = len(rank)) from their similar pairs.

    ``pairs``: every pair of items at the threshold, (i, j, similarity) in either order, as
    ``find_similar_pairs`` returns. ``history_pairs``: every (item, history row, similarity) at
    the threshold, as ``find_similar_between(items, history, ...)`` returns. Ties in ``rank``
    go to the lower index.
    """
    n = len(rank)
    rank_arr = _as_rank(rank, n)
    pi, pj, ps = _as_triplets(pairs, "pairs", n)
    hi, hj, hs = _as_triplets(history_pairs, "history_pairs", n)

    order = np.argsort(rank_arr, kind="stable")
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)
    i_first = position[pi] < position[pj]
    later = np.where(i_first, pj, pi)
    earlier = np.where(i_first, pi, pj)
    if len(later) and (later == earlier).any():
        raise ValueError("pairs join an item to itself; pairs need i != j")

    kept = np.ones(n, bool)
    kept[hi] = False
    # Visiting pairs by the position of their later item decides every earlier item first, so
    # one pass settles each item. A Python loop over flat lists beats per-item numpy calls here.
    by_later = np.argsort(position[later], kind="stable")
    kept_flags = bytearray(kept.tobytes())
    for x, e in zip(later[by_later].tolist(), earlier[by_later].tolist(), strict=True):
        if kept_flags[x] and kept_flags[e]:
            kept_flags[x] = 0
    kept = np.frombuffer(bytes(kept_flags), dtype=bool).copy()

    # Each duplicate picks, among its history hits and its kept better-ranked neighbours, the
    # highest similarity; ties: history before items, then lower history row / better rank.
    to_kept = kept[earlier] & ~kept[later]
    cand_item = np.concatenate([hi, later[to_kept]])
    cand_sim = np.concatenate([hs, ps[to_kept]])
    cand_is_item = np.concatenate([np.zeros(len(hi), bool), np.ones(int(to_kept.sum()), bool)])
    cand_tie = np.concatenate([hj, position[earlier[to_kept]]])
    cand_target = np.concatenate([hj, earlier[to_kept]])
    best = np.lexsort((cand_tie, cand_is_item, -cand_sim, cand_item))
    first = best[np.unique(cand_item[best], return_index=True)[1]]

    duplicate_of = np.full(n, -1, np.int64)
    dup_in_history = np.zeros(n, bool)
    similarity = np.full(n, np.nan, np.float32)
    items = cand_item[first]
    duplicate_of[items] = cand_target[first]
    dup_in_history[items] = ~cand_is_item[first]
    similarity[items] = cand_sim[first]
    return SemanticDecision(kept, duplicate_of, dup_in_history, similarity)


def _empty_pairs() -> _Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _as_unit_vectors(vectors: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous float32 (n, d) view or copy of ``vectors``, checked to be unit length."""
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array of embeddings, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point embeddings, got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has shape {arr.shape}: embeddings need at least one dimension")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for lo in range(0, len(arr), _NORM_CHUNK):
        block = arr[lo : lo + _NORM_CHUNK]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE))  # NaN counts as bad
        if bad.size:
            row = lo + int(bad[0])
            raise ValueError(
                f"{name} must be L2-normalised: row {row} of shape {arr.shape} has norm "
                f"{float(norms[bad[0]]):.6g} (tolerance {NORM_TOLERANCE}); normalise with "
                "v / np.linalg.norm(v, axis=1, keepdims=True) and drop rows with NaN or zero norm"
            )
    return arr


def _check_same_dimension(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{a_name} has shape {a.shape} and {b_name} has shape {b.shape}: both need the "
            "same embedding dimension d (embeddings from the same model)"
        )


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0 < t <= 1:
        raise ValueError(f"threshold must be a cosine in (0, 1], got {threshold}")
    return t


def _as_rank(rank: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(rank)
    if arr.shape != (n,):
        raise ValueError(f"rank must have shape ({n},), one entry per vector, got {arr.shape}")
    if n and arr.dtype.kind not in "iu":
        raise TypeError(f"rank must hold integers (lower is better), got dtype {arr.dtype}")
    return arr


def _as_triplets(pairs: _Pairs | None, name: str, n: int) -> _Pairs:
    if pairs is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, s = (
        np.asarray(pairs[0], np.int64),
        np.asarray(pairs[1], np.int64),
        np.asarray(pairs[2], np.float32),
    )
    if not len(a) == len(b) == len(s):
        raise ValueError(f"{name} arrays differ in length: {len(a)}, {len(b)}, {len(s)}")
    if len(a) and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{name} refer to items outside 0..{n - 1}")
    if name == "pairs" and len(b) and (b.min() < 0 or b.max() >= n):
        raise ValueError(f"{name} refer to items outside 0..{n - 1}")
    return a, b, s


def _choose_method(method: str, products: int, threshold: float) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        if (
            products <= AUTO_EXACT_MAX_PRODUCTS
            or threshold < IVF_MIN_THRESHOLD - _CALIBRATION_SLACK
        ):
            return "exact"
        return "ivf"
    if method == "ivf" and threshold < IVF_MIN_THRESHOLD - _CALIBRATION_SLACK:
        raise ValueError(
            f"method='ivf' is calibrated for thresholds >= {IVF_MIN_THRESHOLD}, got {threshold}; "
            "use method='exact' (or 'auto', which does) for lower thresholds"
        )
    return method


def _set_faiss_threads() -> None:
    """faiss uses every core of the machine by default, not the ones this process may use
    (a container or a Dagster step pinned to fewer), which oversubscribes them."""
    import faiss

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faiss.omp_set_num_threads(max(1, cores or 1))


def _search_radius(threshold: float, d: int) -> float:
    """A radius below ``threshold`` by more than float32 rounding can move an inner product of
    two unit vectors (each of the d products and partial sums is off by at most 2**-24)."""
    return threshold - 4 * d * 2.0**-24 - 1e-6


def _query_rows(first: int, lims: np.ndarray) -> np.ndarray:
    """Query row of each range-search result; ``lims`` (uint64) delimits each query's results."""
    counts = np.diff(lims.astype(np.int64))
    return np.repeat(np.arange(first, first + len(counts), dtype=np.int64), counts)


def _exact_self_candidates(v: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs (i, j), i < j, above the search radius. Reference block [lo, hi) is searched only
    by queries [0, hi): each pair is computed once (plus half of each diagonal block)."""
    import faiss

    n, d = v.shape
    radius = _search_radius(threshold, d)
    found = []
    for lo in range(0, n, _REFERENCE_BLOCK):
        hi = min(n, lo + _REFERENCE_BLOCK)
        index = faiss.IndexFlatIP(d)
        index.add(v[lo:hi])
        for q_lo in range(0, hi, _QUERY_CHUNK):
            q_hi = min(hi, q_lo + _QUERY_CHUNK)
            lims, _, labels = index.range_search(v[q_lo:q_hi], radius)
            q = _query_rows(q_lo, lims)
            r = labels.astype(np.int64) + lo
            keep = q < r
            found.append((q[keep], r[keep]))
    return found


def _exact_between_candidates(
    q: np.ndarray, r: np.ndarray, threshold: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    import faiss

    radius = _search_radius(threshold, q.shape[1])
    found = []
    for lo in range(0, len(r), _REFERENCE_BLOCK):
        index = faiss.IndexFlatIP(q.shape[1])
        index.add(r[lo : lo + _REFERENCE_BLOCK])
        for q_lo in range(0, len(q), _QUERY_CHUNK):
            q_hi = min(len(q), q_lo + _QUERY_CHUNK)
            lims, _, labels = index.range_search(q[q_lo:q_hi], radius)
            rows = _query_rows(q_lo, lims)
            found.append((rows, labels.astype(np.int64) + lo))
    return found


def _ivf_candidates(
    q: np.ndarray, r: np.ndarray, threshold: float, *, self_join: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs from an IndexIVFFlat over ``r``. The probe lists of the queries are
    computed once and reused to fill the index (their first cell) and to search it, instead of
    the coarse quantizer running twice over the vectors."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned

    n, d = r.shape
    nlist, nprobe = ivf_parameters(n, threshold, self_join=self_join)
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    # Spherical k-means keeps centroids on the unit sphere, so the inner product to a centroid
    # is a cosine and no cell wins queries just by having a longer centroid.
    index.cp.spherical = True
    index.cp.niter = _IVF_KMEANS_ITERATIONS
    index.cp.seed = _IVF_SEED
    index.cp.min_points_per_centroid = 1  # small forced-ivf inputs: no faiss warning
    n_train = min(n, _IVF_TRAIN_POINTS_PER_CELL * nlist)
    sample = np.random.default_rng(_IVF_SEED).choice(n, n_train, replace=False)
    index.train(r[np.sort(sample)])
    index.nprobe = nprobe
    trained = time.perf_counter()

    def probes(x: np.ndarray, k: int) -> np.ndarray:
        return (
            np.concatenate(
                [
                    quantizer.search(x[lo : lo + _QUERY_CHUNK], k)[1]
                    for lo in range(0, len(x), _QUERY_CHUNK)
                ]
            )
            if len(x)
            else np.zeros((0, k), np.int64)
        )

    query_probes = probes(q, nprobe)
    cells = query_probes[:, 0].copy() if self_join else probes(r, 1)[:, 0].copy()
    for lo in range(0, n, _QUERY_CHUNK):
        add_preassigned(index, r[lo : lo + _QUERY_CHUNK], cells[lo : lo + _QUERY_CHUNK])
    assigned = time.perf_counter()

    radius = _search_radius(threshold, d)
    found = []
    for lo in range(0, len(q), _QUERY_CHUNK):
        hi = min(len(q), lo + _QUERY_CHUNK)
        chunk_probes = np.ascontiguousarray(query_probes[lo:hi])
        lims, _, labels = range_search_preassigned(index, q[lo:hi], radius, chunk_probes)
        rows = _query_rows(lo, lims)
        cols = labels.astype(np.int64)
        if self_join:  # found from either side: orient as i < j, duplicates merged later
            keep = rows != cols
            rows, cols = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
        found.append((rows, cols))
    log.debug(
        "ivf: nlist=%d nprobe=%d train %.1f s, assign+add %.1f s, search %.1f s",
        nlist,
        nprobe,
        trained - start,
        assigned - trained,
        time.perf_counter() - assigned,
    )
    return found


def _verified(
    q: np.ndarray, r: np.ndarray, found: list[tuple[np.ndarray, np.ndarray]], threshold: float
) -> _Pairs:
    """Unique candidates with float64 similarity >= ``threshold``, sorted by (q row, r row)."""
    if not found:
        return _empty_pairs()
    a = np.concatenate([f[0] for f in found])
    b = np.concatenate([f[1] for f in found])
    key = np.unique(a * len(r) + b)  # sorts by (a, b) and merges pairs found twice
    a, b = key // len(r), key % len(r)
    sims = np.empty(len(key), np.float64)
    for lo in range(0, len(key), _VERIFY_CHUNK):
        qa = q[a[lo : lo + _VERIFY_CHUNK]].astype(np.float64)
        rb = r[b[lo : lo + _VERIFY_CHUNK]].astype(np.float64)
        sims[lo : lo + _VERIFY_CHUNK] = np.einsum("ij,ij->i", qa, rb)
    keep = sims >= threshold
    return a[keep], b[keep], sims[keep].astype(np.float32)
