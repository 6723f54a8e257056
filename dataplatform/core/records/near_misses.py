"""Near misses of a dedup stage: kept pairs whose nearest kept neighbour lies just outside the
threshold, the false negatives a reviewer calibrates the threshold against.

A dedup sheet shows what was removed, which is the threshold's false positives at worst; a
copy that stayed because it was a bit too far is invisible there. The near-miss band is every
kept pair whose nearest kept neighbour is within twice the threshold but outside it:

- pHash: Hamming distance ``d`` with ``t < d <= 2t`` bits; margin ``d - t``.
- semantic: cosine ``s`` with ``1 - 2(1 - t) <= s < t`` (twice the threshold's distance from
  identical, ``1 - s``); margin ``t - s``.

The band is searched among a bounded pool (the caller's sample of the day's kept rows, plus
reference rows it already holds, such as the earlier-day originals a sheet shows), with the
same exact searches the dedup stages use; it is ordered by margin, smallest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataplatform.core.dedup.phash_index import (
    HASH_BITS,
    find_near_pairs,
    find_near_pairs_between,
)
from dataplatform.core.dedup.semantic_index import find_similar_pairs

HAMMING = "hamming"
COSINE = "cosine"
# A cosine band must stay a valid search threshold (0, 1] however low ``t`` is.
_MIN_COSINE = 1e-6


@dataclass(frozen=True)
class NearMiss:
    """Kept row ``row`` (an index into the day's pool) and its nearest kept ``neighbour``.

    ``neighbour`` indexes the day's pool, or, at ``len(pool)`` and above, the reference rows.
    """

    row: int
    neighbour: int
    value: float  # Hamming bits or cosine similarity
    margin: float  # how far outside the threshold: bits or cosine, >= 0 (> 0 for Hamming)


def hamming_band(threshold: int) -> tuple[int, int]:
    """(exclusive low, inclusive high) Hamming distances of the pHash near-miss band."""
    return int(threshold), min(HASH_BITS, 2 * int(threshold))


def cosine_band(threshold: float) -> tuple[float, float]:
    """(inclusive low, exclusive high) cosines of the semantic near-miss band."""
    return max(_MIN_COSINE, 2 * float(threshold) - 1), float(threshold)


def phash_near_misses(
    hashes: np.ndarray, threshold: int, reference: np.ndarray | None = None
) -> list[NearMiss]:
    """Every row of ``hashes`` (the day's kept pHashes) whose nearest other row, or nearest
    row of ``reference`` (earlier kept pHashes), lies in the near-miss band; by margin."""
    low, high = hamming_band(threshold)
    h = np.asarray(hashes, dtype=np.uint64)
    i, j, d = find_near_pairs(h, high)
    qi, ri, rd = (
        find_near_pairs_between(h, np.asarray(reference, dtype=np.uint64), high)
        if reference is not None and len(reference)
        else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16))
    )
    rows = np.concatenate([i, j, qi]).astype(np.int64)
    others = np.concatenate([j, i, ri + len(h)]).astype(np.int64)
    values = np.concatenate([d, d, rd]).astype(np.float64)
    # Nearest first: the smallest distance, ties to the smaller neighbour index.
    nearest = _nearest(rows, others, values, len(h))
    found = [
        NearMiss(int(r), int(o), float(v), float(v - low)) for r, o, v in nearest if low < v <= high
    ]
    return _ordered(found)


def semantic_near_misses(vectors: np.ndarray, threshold: float) -> list[NearMiss]:
    """Every row of ``vectors`` (the day's kept, unit-norm image embeddings) whose most similar
    other row lies in the near-miss band; by margin."""
    low, high = cosine_band(threshold)
    v = np.asarray(vectors, dtype=np.float32)
    if len(v) < 2:
        return []
    i, j, s = find_similar_pairs(v, low)
    rows = np.concatenate([i, j]).astype(np.int64)
    others = np.concatenate([j, i]).astype(np.int64)
    # Nearest is the most similar: negate so that the smallest value leads.
    values = -np.concatenate([s, s]).astype(np.float64)
    nearest = _nearest(rows, others, values, len(v))
    found = [
        NearMiss(int(r), int(o), float(-v_), float(high + v_))
        for r, o, v_ in nearest
        if low <= -v_ < high
    ]
    return _ordered(found)


def _nearest(
    rows: np.ndarray, others: np.ndarray, values: np.ndarray, n: int
) -> list[tuple[int, int, float]]:
    """(row, neighbour, value) with each row's smallest value (ties: smallest neighbour)."""
    if not len(rows):
        return []
    order = np.lexsort((others, values, rows))
    rows, others, values = rows[order], others[order], values[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return [
        (int(r), int(o), float(v))
        for r, o, v in zip(rows[first], others[first], values[first], strict=True)
        if r < n
    ]


def _ordered(found: list[NearMiss]) -> list[NearMiss]:
    """By margin, then by pair; a pair that is each other's nearest is listed once."""
    seen: set[tuple[int, int]] = set()
    unique = []
    for miss in sorted(found, key=lambda m: (m.margin, min(m.row, m.neighbour), m.row)):
        key = (min(miss.row, miss.neighbour), max(miss.row, miss.neighbour))
        if key not in seen:
            seen.add(key)
            unique.append(miss)
    return unique
