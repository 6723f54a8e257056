"""Exact near-duplicate search over 256-bit PDQ hashes, flips and rotations included.

A 256-bit hash is four 64-bit words. Two hashes within ``t`` bits differ in at most
``t // 4`` bits of at least one word (four words each more than ``t // 4`` apart would add up
to more than ``t``). So each word is searched with the 64-bit multi-index search of
``phash_index`` at radius ``t // 4`` (7 for the default 31), which finds every pair that
could be within ``t`` and, on real hashes, almost nothing else; the candidates are then checked
on all 256 bits. No step compares all pairs.

Flips and rotations: a query brings the hashes of its eight dihedral variants
(``pdq.dihedral_hashes``), and the reference side only its original. A pair is a copy when any
variant of one is within ``t`` of the other's original; the result says which variant, for the
ledger (``pdq_dihedral``). The greedy contract is ``phash_index.greedy_keep``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataplatform.core.dedup.pdq import DIHEDRAL_NAMES, HASH_BITS
from dataplatform.core.dedup.phash_index import (
    DedupDecision,
    find_near_pairs,
    find_near_pairs_between,
    greedy_keep,
)

WORDS = HASH_BITS // 64
VARIANTS = len(DIHEDRAL_NAMES)
# ThreatExchange's usual match threshold for PDQ. On its peer data, with this implementation
# (tests/core/dedup/test_pdq.py): the bridge's 12 edits are at most 16 bits from the original,
# its 13 Pillow modes at most 2, and the nearest two of 11 distinct images, under any flip or
# rotation, 108 bits apart.
DEFAULT_PDQ_THRESHOLD = 31
# Each transform's inverse, by index in DIHEDRAL_NAMES: the quarter turns undo each other, the
# rest undo themselves.
INVERSE = tuple(
    DIHEDRAL_NAMES.index({"rotate_90": "rotate_270", "rotate_270": "rotate_90"}.get(n, n))
    for n in DIHEDRAL_NAMES
)


def pdq_words(hexes: Sequence[str]) -> np.ndarray:
    """``(n, 4)`` uint64 words of 64-hex-digit hashes, most significant word first."""
    out = np.zeros((len(hexes), WORDS), np.uint64)
    for row, text in enumerate(hexes):
        if len(text) != HASH_BITS // 4:
            raise ValueError(f"a PDQ hash has {HASH_BITS // 4} hex digits, not {len(text)}")
        for k in range(WORDS):
            out[row, k] = int(text[16 * k : 16 * (k + 1)], 16)
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between rows of ``a`` and ``b`` (``(n, 4)`` each), summed over words."""
    return np.bitwise_count(a ^ b).sum(axis=1).astype(np.int64)


def find_pdq_pairs_between(
    queries: np.ndarray, reference: np.ndarray, threshold: int = DEFAULT_PDQ_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, reference row, distance) within ``threshold``, sorted, each once."""
    radius = _radius(threshold)
    found: list[np.ndarray] = []
    for k in range(WORDS):
        i, j, _ = find_near_pairs_between(queries[:, k], reference[:, k], radius)
        found.append(np.stack([i, j], axis=1))
    return _verified(np.concatenate(found), queries, reference, threshold)


def find_pdq_pairs(
    hashes: np.ndarray, threshold: int = DEFAULT_PDQ_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j, distance), i < j, of ``hashes`` within ``threshold``, sorted, each once."""
    radius = _radius(threshold)
    found: list[np.ndarray] = []
    for k in range(WORDS):
        i, j, _ = find_near_pairs(hashes[:, k], radius)
        found.append(np.stack([i, j], axis=1))
    return _verified(np.concatenate(found), hashes, hashes, threshold)


def find_dihedral_pairs_between(
    variants: np.ndarray, reference: np.ndarray, threshold: int = DEFAULT_PDQ_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query, reference row, distance, variant) where some variant of the query (``variants``
    is ``(n, 8, 4)``) is within ``threshold`` of the reference's original; per pair the
    nearest variant (the original first on a tie)."""
    n = variants.shape[0]
    flat = variants.reshape(n * VARIANTS, WORDS)
    q, r, d = find_pdq_pairs_between(flat, reference, threshold)
    item, variant = q // VARIANTS, q % VARIANTS
    order = np.lexsort((variant, d, r, item))
    item, r, d, variant = item[order], r[order], d[order], variant[order]
    first = np.ones(len(item), bool)
    first[1:] = (item[1:] != item[:-1]) | (r[1:] != r[:-1])
    return item[first], r[first], d[first], variant[first]


def pdq_deduplicate(
    variants: np.ndarray,
    threshold: int = DEFAULT_PDQ_THRESHOLD,
    history: np.ndarray | None = None,
) -> tuple[DedupDecision, np.ndarray]:
    """Greedy removal of flip, rotation and near copies among ``variants`` (``(n, 8, 4)``, in
    processing order) and against ``history`` (originals, ``(m, 4)``).

    Returns ``greedy_keep``'s decision and, per item, the index in ``DIHEDRAL_NAMES`` of the
    transform that turns the duplicate into the image it copies (0 for a plain near copy, -1
    for kept items), so the ledger can say ``rotate_90`` or ``flip_left_right``.
    """
    n = variants.shape[0]
    originals = np.ascontiguousarray(variants[:, 0, :])
    i, j, d, v = find_dihedral_pairs_between(variants, originals, threshold)
    mutual = i != j
    i, j, d, v = i[mutual], j[mutual], d[mutual], v[mutual]
    # A pair found from both sides is one pair; the nearer reading counts.
    low, high = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((d, high, low))
    keep_first = np.ones(len(order), bool)
    keep_first[1:] = (low[order][1:] != low[order][:-1]) | (high[order][1:] != high[order][:-1])
    pick = order[keep_first]
    hist_i = hist_j = hist_d = hist_v = np.zeros(0, np.int64)
    if history is not None and len(history):
        hist_i, hist_j, hist_d, hist_v = find_dihedral_pairs_between(variants, history, threshold)
    decision = greedy_keep(
        n,
        low[pick],
        high[pick],
        d[pick],
        history_items=hist_i,
        history_indices=hist_j,
        history_distances=hist_d,
    )
    matched = np.full(n, -1, np.int64)
    # (a, b, v): variant v of a is near b's original, so v turns a into b. Read from the other
    # side (b's variant near a), the inverse of v does.
    within = {(int(a), int(b)): int(x) for a, b, x in zip(i, j, v, strict=True)}
    from_history = {
        (int(a), int(b)): int(x) for a, b, x in zip(hist_i, hist_j, hist_v, strict=True)
    }
    for item in np.flatnonzero(~decision.keep).tolist():
        other = int(decision.duplicate_of[item])
        if decision.dup_in_history[item]:
            matched[item] = from_history.get((item, other), 0)
        elif (item, other) in within:
            matched[item] = within[(item, other)]
        else:
            matched[item] = INVERSE[within.get((other, item), 0)]
    return decision, matched


def _radius(threshold: int) -> int:
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"a PDQ threshold is 0 to {HASH_BITS - 1} bits, not {threshold}")
    return threshold // WORDS


def _verified(
    candidates: np.ndarray, left: np.ndarray, right: np.ndarray, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unique candidate pairs within ``threshold`` on all words, sorted."""
    if len(candidates) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    pairs = np.unique(candidates, axis=0)
    d = distances(left[pairs[:, 0]], right[pairs[:, 1]])
    close = d <= threshold
    return pairs[close, 0].astype(np.int64), pairs[close, 1].astype(np.int64), d[close]
