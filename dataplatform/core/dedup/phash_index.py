"""Exact near-duplicate search over 64-bit hashes, without comparing all pairs.

Comparing every pair is quadratic: a million hashes are 5e11 comparisons. Multi-index hashing
finds exactly the same pairs much faster. Pick disjoint bit bands with search radii r_b such
that sum(r_b + 1) > threshold. A pair within the threshold then differs in at most r_b bits
of some band b (otherwise the bands alone would add up to more than the threshold). So the
search only looks at pairs whose band values differ by a mask of at most r_b bits: one table
lookup per (hash, mask) in a dense occupancy table of the band, then an exact popcount check
of the full hashes. A pair that several bands find is reported only by the first of them. The
bands are chosen per call by a cost model, and brute force is used when that is cheaper
(small inputs, large thresholds).

The greedy dedup contract (``deduplicate``, ``greedy_keep``): items are processed in their
given order after every history hash. An item is a duplicate iff it is within the threshold of a
history hash or of an earlier kept item; it then points at the match with the smallest
distance, ties going to history first, then the smallest index. No two kept hashes, history
included, are within the threshold of each other.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if not hasattr(np, "bitwise_count"):
    raise ImportError("dataplatform.core.dedup.phash_index needs numpy>=2 for np.bitwise_count")

# Measured on the peer tools' ground-truth sets (docs/phash_threshold.md): all 42 labelled
# near-duplicate pairs are <= 4 bits apart and the closest of 465 distinct-object pairs is 14.
# Every threshold from 4 to 13 separates them; 8 sits in the middle of that gap (natural pHash
# distances are even, so 8 acts like 9), leaving margin on both sides.
DEFAULT_PHASH_THRESHOLD: int = 8

HASH_BITS = 64
MAX_BAND_BITS = 24  # a dense table of 2**24 entries is the largest worth building
_PROBE_BLOCK = 1 << 20  # (hash, mask) lookups per numpy step: bounds temporary memory
_PAIR_BLOCK = 1 << 21  # candidate pairs verified per numpy step

# Cost model, in rough nanoseconds per unit of work on one core (measured with numpy 2.4).
_NS_PROBE = 3.5  # one (hash, mask) lookup in the occupancy table
_NS_CANDIDATE = 14.0  # expanding and verifying one candidate pair
_NS_TABLE_ENTRY = 1.5  # building one entry of a dense band table
_NS_SORT = 60.0  # sorting one hash by its band value
_NS_BRUTE = 1.6  # one all-pairs comparison
_BRUTE_ALWAYS = 20_000_000  # comparisons below which planning costs more than it saves
_WORKERS = min(8, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 1


@dataclass(frozen=True)
class _Band:
    shift: int
    width: int
    radius: int

    def values(self, hashes: np.ndarray) -> np.ndarray:
        return ((hashes >> np.uint64(self.shift)) & np.uint64((1 << self.width) - 1)).astype(
            np.uint32
        )


def _as_hashes(hashes: np.ndarray, name: str) -> np.ndarray:
    """1-D uint64 view of ``hashes``; int64 (e.g. a DuckDB BIGINT column) is reinterpreted."""
    if isinstance(hashes, np.ndarray):
        arr = hashes
    else:
        try:
            arr = np.array(hashes, dtype=np.uint64)
        except (OverflowError, TypeError, ValueError) as exc:
            raise TypeError(f"{name} must hold unsigned 64-bit integers: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of 64-bit hashes, got shape {arr.shape}")
    if arr.dtype == np.int64:
        return arr.view(np.uint64)
    if arr.size == 0 or arr.dtype.kind == "u":
        return arr.astype(np.uint64, copy=False)
    raise TypeError(f"{name} must hold unsigned 64-bit integers, got dtype {arr.dtype}")


def _check_threshold(threshold: int) -> int:
    t = operator.index(threshold)
    if not 0 <= t <= HASH_BITS:
        raise ValueError(f"threshold must be between 0 and {HASH_BITS} bits, got {threshold}")
    return t


def _ball(width: int, radius: int) -> int:
    """Number of ``width``-bit masks with at most ``radius`` bits set."""
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


def _band_cost(n_probe: int, n_table: int, width: int, radius: int, self_join: bool) -> float:
    masks = _ball(width, radius)
    if self_join:  # each unordered pair of band values is probed from one side only
        probes = n_probe * (masks - 1) / 2
        candidates = n_probe * (n_probe - 1) / 2 * masks / 2**width
    else:
        probes = n_probe * masks
        candidates = n_probe * n_table * masks / 2**width
    return (
        _NS_PROBE * probes
        + _NS_CANDIDATE * candidates
        + _NS_TABLE_ENTRY * 2**width
        + _NS_SORT * (n_probe + n_table)
    )


@functools.lru_cache(maxsize=256)
def _plan(n_probe: int, n_table: int, threshold: int, self_join: bool) -> tuple[_Band, ...] | None:
    """Cheapest set of bands for this search under the cost model, or None for brute force.

    Bands need not cover all 64 bits: the pigeonhole argument only needs them disjoint with
    sum(radius + 1) = threshold + 1. A dynamic programme over (bits used, sum(radius + 1))
    picks the widths and radii; the model assumes uniformly spread hash values.
    """
    pairs = n_probe * (n_probe - 1) / 2 if self_join else n_probe * n_table
    brute = _NS_BRUTE * pairs
    if pairs <= _BRUTE_ALWAYS:
        return None
    need = threshold + 1
    inf = float("inf")
    widths = range(8, MAX_BAND_BITS + 1)
    radii = range(min(need, 5))
    cost_of = {(w, r): _band_cost(n_probe, n_table, w, r, self_join) for w in widths for r in radii}
    # best[bits][s]: (cost, bands) using ``bits`` bits with sum(radius + 1) == s.
    best: list[list[tuple[float, tuple[tuple[int, int], ...]]]] = [
        [(inf, ())] * (need + 1) for _ in range(HASH_BITS + 1)
    ]
    best[0][0] = (0.0, ())
    for bits in range(HASH_BITS + 1):
        for s in range(need):
            cost, bands = best[bits][s]
            if cost == inf:
                continue
            for width in range(8, min(MAX_BAND_BITS, HASH_BITS - bits) + 1):
                for radius in range(min(need - s, 5)):
                    total = cost + cost_of[width, radius]
                    slot = (bits + width, s + radius + 1)
                    if total < best[slot[0]][slot[1]][0]:
                        best[slot[0]][slot[1]] = (total, (*bands, (width, radius)))
    cost, bands = min(best[bits][need] for bits in range(HASH_BITS + 1))
    if cost >= brute:
        return None
    plan, shift = [], 0
    for width, radius in bands:
        plan.append(_Band(shift, width, radius))
        shift += width
    return tuple(plan)


@functools.lru_cache(maxsize=512)
def _masks(width: int, radius: int, top_bit: int | None = None) -> np.ndarray:
    """``width``-bit masks with at most ``radius`` bits set; with ``top_bit``, only those whose
    highest set bit is ``top_bit``."""
    if top_bit is None:
        bit_sets = itertools.chain.from_iterable(
            itertools.combinations(range(width), k) for k in range(radius + 1)
        )
        return np.array([sum(1 << b for b in bs) for bs in bit_sets], dtype=np.uint32)
    lower = _masks(top_bit, radius - 1) if radius >= 1 else np.zeros(0, np.uint32)
    return (lower | np.uint32(1 << top_bit)).astype(np.uint32)


class _SortedBand:
    """Hashes sorted by one band's value. Lookups and verification then walk memory in near
    order, several times faster than random access on a million hashes."""

    def __init__(self, hashes: np.ndarray, band: _Band) -> None:
        values = band.values(hashes)
        self.order = np.argsort(values, kind="stable")  # equal values keep ascending index
        self.values = values[self.order]
        self.hashes = hashes[self.order]


class _Subset(_SortedBand):
    """Some positions of a sorted band, still in sorted order."""

    def __init__(self, band: _SortedBand, positions: np.ndarray) -> None:
        self.order = band.order[positions]
        self.values = band.values[positions]
        self.hashes = band.hashes[positions]


class _Matches:
    """Verified pairs of one band: within the threshold, and not reported by an earlier band."""

    def __init__(self, threshold: int, earlier: tuple[_Band, ...]) -> None:
        self.threshold, self.earlier = threshold, earlier
        self.found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def verify(self, xor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the candidates (given by ``a ^ b``) to report, and their distances."""
        dist = np.bitwise_count(xor)
        keep = np.flatnonzero(dist <= self.threshold)
        for band in self.earlier:
            if keep.size:
                keep = keep[np.bitwise_count(band.values(xor[keep])) > band.radius]
        return keep, dist[keep]

    def check_pairs(
        self, left: _SortedBand, a: np.ndarray, right: _SortedBand, b: np.ndarray
    ) -> None:
        """Candidates given as positions ``a`` into ``left`` and ``b`` into ``right``."""
        keep, dist = self.verify(left.hashes[a] ^ right.hashes[b])
        if keep.size:
            self.found.append((left.order[a[keep]], right.order[b[keep]], dist))

    def check_runs(
        self,
        left: _SortedBand,
        a: np.ndarray,
        right: _SortedBand,
        start: np.ndarray,
        count: np.ndarray,
    ) -> None:
        """Candidates: left position ``a[k]`` with each of ``right[start[k]:start[k]+count[k]]``,
        expanded a bounded block at a time."""
        ends = np.cumsum(count, dtype=np.int64)
        lo = 0
        while lo < len(count):
            base = ends[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(ends, base + _PAIR_BLOCK, side="right")))
            cnt = count[lo:hi]
            offset = np.repeat(start[lo:hi] - (ends[lo:hi] - cnt - base), cnt)
            b = offset + np.arange(ends[hi - 1] - base)
            self.check_pairs(left, np.repeat(a[lo:hi], cnt), right, b)
            lo = hi


class _BandTable(_SortedBand):
    """A sorted band plus dense tables over every band value: how many hashes have it (0, 1,
    several), where their run starts, and the run's first hash. Most runs hold one hash when
    the band is about log2(n) bits wide, and those are verified straight from the table."""

    def __init__(self, hashes: np.ndarray, band: _Band) -> None:
        super().__init__(hashes, band)
        size = 1 << band.width
        index_type = np.int32 if len(hashes) < 2**31 else np.int64  # halves the table memory
        counts = np.bincount(self.values, minlength=size)
        self.occupied = counts > 0
        self.counts = counts.astype(index_type)
        self.starts = (np.cumsum(counts) - counts).astype(index_type)
        self.first_hash = np.zeros(size, np.uint64)
        run_starts = self.starts[self.occupied]
        self.first_hash[self.values[run_starts]] = self.hashes[run_starts]

    def search(self, left: _SortedBand, masks: np.ndarray, matches: _Matches) -> None:
        """Check every (left hash, table hash) whose band values differ by one of ``masks``.

        Left values should be sorted: the lookups then walk the tables in near order.
        ``take`` rather than ``[]``: several times faster with uint32 indices."""
        n_left = len(left.values)
        if len(masks) == 0 or n_left == 0:
            return
        per_step = max(1, _PROBE_BLOCK // n_left)  # masks per numpy step
        chunk = _PROBE_BLOCK if per_step == 1 else n_left
        for m in range(0, len(masks), per_step):
            mask_block = masks[m : m + per_step, np.newaxis]
            for lo in range(0, n_left, chunk):
                values = left.values[lo : lo + chunk]
                keys = (mask_block ^ values).ravel()
                hits = np.flatnonzero(self.occupied.take(keys))
                if hits.size == 0:
                    continue
                a = lo + (hits if per_step == 1 else hits % len(values))
                key = keys.take(hits)
                keep, dist = matches.verify(self.first_hash.take(key) ^ left.hashes.take(a))
                if keep.size:
                    found = self.order.take(self.starts.take(key.take(keep)))
                    matches.found.append((left.order.take(a.take(keep)), found, dist))
                # One gather of the run lengths serves the "several" test and the rest's length.
                count = self.counts.take(key)
                several = np.flatnonzero(count > 1)
                if several.size:
                    rest = count.take(several) - 1
                    start = self.starts.take(key.take(several)) + 1
                    matches.check_runs(left, a.take(several), self, start, rest)


def _sorted_result(
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_right: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.int16)
    a = np.concatenate([f[0] for f in found]).astype(np.int64)
    b = np.concatenate([f[1] for f in found]).astype(np.int64)
    d = np.concatenate([f[2] for f in found]).astype(np.int16)
    order = np.argsort(a * n_right + b)
    return a[order], b[order], d[order]


def _brute_pairs(
    left: np.ndarray, right: np.ndarray, threshold: int, self_join: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found = []
    chunk = max(1, (1 << 22) // max(1, len(right)))
    for lo in range(0, len(left), chunk):
        block = left[lo : lo + chunk]
        first = lo if self_join else 0  # a self join only needs the columns j > i
        dist = np.bitwise_count(block[:, np.newaxis] ^ right[np.newaxis, first:])
        near = dist <= threshold
        if self_join:
            near &= np.arange(dist.shape[1])[np.newaxis, :] > np.arange(len(block))[:, None]
        a, b = np.nonzero(near)
        found.append((a + lo, b + first, dist[a, b]))
    return _sorted_result(found, len(right))


def _in_parallel(calls: list[functools.partial[None]]) -> None:
    """Run independent searches on the available cores. Threads, not processes: numpy
    releases the GIL in the lookups and ufuncs that dominate, and the tables are shared."""
    if _WORKERS == 1 or len(calls) <= 1:
        for call in calls:
            call()
        return
    with ThreadPoolExecutor(_WORKERS) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _search_from_top_bit(table: _BandTable, band: _Band, top: int, matches: _Matches) -> None:
    side = np.flatnonzero((table.values >> np.uint32(top)) & 1 == 0)
    table.search(_Subset(table, side), _masks(band.width, band.radius, top), matches)


def find_near_pairs(
    hashes: np.ndarray, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of ``hashes`` within ``threshold`` bits, each pair once.

    Exactly the pairs brute force finds, as (i, j, distance) arrays (int64, int64, int16)
    sorted by (i, j). Identical hashes are all paired with each other, so the output is
    quadratic in the size of an exact-copy cluster; ``deduplicate`` collapses those first.
    """
    h = _as_hashes(hashes, "hashes")
    t = _check_threshold(threshold)
    plan = _plan(len(h), len(h), t, True)
    if plan is None:
        return _brute_pairs(h, h, t, self_join=True)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k, band in enumerate(plan):
        table = _BandTable(h, band)
        matches = _Matches(t, plan[:k])
        # Same band value: pair each hash with the later ones of its run.
        run_end = table.starts[table.values] + table.counts[table.values]
        later = run_end - np.arange(len(h)) - 1
        has_later = np.flatnonzero(later > 0)
        matches.check_runs(table, has_later, table, has_later + 1, later[has_later])
        # Different values v < v ^ mask: probe only from the hashes whose value lacks the
        # mask's top bit, so each unordered pair of values is looked at once.
        tops = [top for top in range(band.width) if len(_masks(band.width, band.radius, top))]
        _in_parallel(
            [functools.partial(_search_from_top_bit, table, band, top, matches) for top in tops]
        )
        for a, b, d in matches.found:
            found.append((np.minimum(a, b), np.maximum(a, b), d))
    return _sorted_result(found, len(h))


def find_near_pairs_between(
    queries: np.ndarray, reference: np.ndarray, threshold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query index, reference index, distance) with distance <= ``threshold``.

    Arrays are (int64, int64, int16), sorted by (query index, reference index).
    """
    q = _as_hashes(queries, "queries")
    r = _as_hashes(reference, "reference")
    t = _check_threshold(threshold)
    if len(q) == 0 or len(r) == 0:
        return _sorted_result([], len(r))
    swap = len(q) > len(r)  # probe from the smaller side into tables of the larger
    probe_side, table_side = (r, q) if swap else (q, r)
    plan = _plan(len(probe_side), len(table_side), t, False)
    if plan is None:
        return _brute_pairs(q, r, t, self_join=False)
    found = []
    for k, band in enumerate(plan):
        table = _BandTable(table_side, band)
        left = _SortedBand(probe_side, band)
        matches = _Matches(t, plan[:k])
        parts = np.array_split(_masks(band.width, band.radius), 4 * _WORKERS)
        _in_parallel([functools.partial(table.search, left, p, matches) for p in parts])
        found.extend(matches.found)
    if swap:
        found = [(b, a, d) for a, b, d in found]
    return _sorted_result(found, len(r))


# ---- band tables stored with a segment of the dedup state ------------------------------------
#
# The search above builds its band tables per call, which is right for one-off inputs but makes
# a daily search against a large history rebuild them every day. A state segment instead stores
# the tables of three fixed bands when it is written (``write_band_tables``); a query then only
# picks radii for the threshold it is asked (sum(radius + 1) > threshold over the bands it
# uses) and probes the stored tables (``find_near_stored``). Bands are about log2(n) bits wide
# (8 to 22), so a run holds about one hash and a probe costs a lookup and a popcount.

STORED_BANDS_FILE = "bands.json"
_STORED_MAX_WIDTH = 22
_STORED_MAX_RADIUS = 4


def stored_band_widths(n: int) -> tuple[int, ...]:
    """The widths of the three bands stored for a segment of ``n`` hashes (64 bits at most).

    About log2(n) bits each; when three such bands would pass 64 bits, the 64 are shared out
    evenly (21, 21, 22) rather than leaving the last band narrow: a narrow band's runs hold
    more hashes, and its candidates dominated the search of a 6.4M-hash segment.
    """
    width = min(_STORED_MAX_WIDTH, max(8, math.ceil(math.log2(max(n, 2)))))
    if 3 * width <= HASH_BITS:
        return (width, width, width)
    return (HASH_BITS // 3, HASH_BITS // 3, HASH_BITS - 2 * (HASH_BITS // 3))


def write_band_tables(folder: Path, hashes: np.ndarray) -> None:
    """Store, in ``folder``, the band tables of ``hashes`` (positions index ``hashes``).

    Per band: the positions sorted by band value (``order``), the hashes in that order, where
    each value's run starts (2**width + 1 entries) and each run's first hash. About 12 bytes
    a hash a band, plus 12 bytes per band value.
    """
    h = _as_hashes(hashes, "hashes")
    widths = stored_band_widths(len(h))
    index_type = np.int32 if len(h) < 2**31 else np.int64
    shift = 0
    for k, width in enumerate(widths):
        band = _SortedBand(h, _Band(shift, width, 0))
        counts = np.bincount(band.values, minlength=1 << width)
        starts = np.zeros((1 << width) + 1, index_type)
        np.cumsum(counts, out=starts[1:])
        first_hash = np.zeros(1 << width, np.uint64)
        occupied = counts > 0
        first_hash[occupied] = band.hashes[starts[:-1][occupied]]
        np.save(folder / f"band{k}_order.npy", band.order.astype(index_type))
        np.save(folder / f"band{k}_hashes.npy", band.hashes)
        np.save(folder / f"band{k}_starts.npy", starts)
        np.save(folder / f"band{k}_first.npy", first_hash)
        shift += width
    (folder / STORED_BANDS_FILE).write_text(json.dumps({"widths": widths, "rows": len(h)}))


def _stored_table(folder: Path, k: int, band: _Band) -> _BandTable:
    """A ``_BandTable`` over the stored arrays (memory-mapped); the run counts and flags are
    derived from the run starts: 2**width entries, whatever the segment's size."""
    table = _BandTable.__new__(_BandTable)
    starts = np.load(folder / f"band{k}_starts.npy", mmap_mode="r")
    counts = np.diff(starts)
    table.order = np.load(folder / f"band{k}_order.npy", mmap_mode="r")
    table.hashes = np.load(folder / f"band{k}_hashes.npy", mmap_mode="r")
    table.first_hash = np.load(folder / f"band{k}_first.npy", mmap_mode="r")
    table.counts = counts
    table.starts = np.asarray(starts[:-1])
    table.occupied = counts > 0
    return table


def _stored_plan(
    n_probe: int, n_table: int, widths: tuple[int, ...], threshold: int
) -> tuple[_Band, ...] | None:
    """Radii for the stored bands (a band may be left out) with sum(radius + 1) > threshold at
    the least modelled cost; None when no choice within the radius cap reaches the threshold."""
    choices = [(-1, *range(_STORED_MAX_RADIUS + 1))] * len(widths)
    best: tuple[float, tuple[int, ...]] | None = None
    for radii in itertools.product(*choices):
        if sum(r + 1 for r in radii) <= threshold:
            continue
        cost = sum(
            _band_cost(n_probe, n_table, w, r, False)
            for w, r in zip(widths, radii, strict=True)
            if r >= 0
        )
        if best is None or cost < best[0]:
            best = (cost, radii)
    if best is None:
        return None
    plan, shift = [], 0
    for width, radius in zip(widths, best[1], strict=True):
        if radius >= 0:
            plan.append(_Band(shift, width, radius))
        shift += width
    return tuple(plan)


def _stored_search_plan(
    n_queries: int, folder: Path, n: int, threshold: int
) -> tuple[tuple[_Band, ...] | None, tuple[int, ...]]:
    """The bands a stored search probes (None: the per-call search) and the stored widths."""
    if not (folder / STORED_BANDS_FILE).exists():  # a segment written without band tables
        return None, ()
    meta = json.loads((folder / STORED_BANDS_FILE).read_text())
    if meta["rows"] != n:
        raise ValueError(f"{folder} holds band tables of {meta['rows']} hashes, not {n}")
    widths = tuple(meta["widths"])
    plan = _stored_plan(n_queries, n, widths, threshold)
    if plan is None or n_queries * n <= _BRUTE_ALWAYS:
        return None, widths
    return plan, widths


def stored_search_bands(n_queries: int, folder: Path, n: int, threshold: int) -> int:
    """How many independent band searches ``find_near_stored`` makes for these sizes: the
    shards a cluster can run apart (``bands=`` each); 1 where the search is not banded."""
    if n_queries == 0 or n == 0:
        return 0
    plan, _ = _stored_search_plan(n_queries, folder, n, _check_threshold(threshold))
    return 1 if plan is None else len(plan)


def find_near_stored(
    queries: np.ndarray,
    folder: Path,
    keys: np.ndarray,
    threshold: int,
    bands: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``find_near_pairs_between(queries, keys, threshold)`` using the band tables stored in
    ``folder`` for ``keys`` (``write_band_tables``): the same pairs, without building tables.

    Small searches, thresholds the stored bands cannot reach and a segment without stored
    tables (written before they existed) go to the per-call search.

    ``bands`` (indices below ``stored_search_bands``) searches only those bands. A pair is
    reported by the first band that finds it, so the searches of disjoint band sets find
    disjoint pairs, and together exactly the pairs of all bands: that is how a cluster splits
    one segment's search by hash band. The per-call search counts as band 0.
    """
    q = _as_hashes(queries, "queries")
    t = _check_threshold(threshold)
    n = len(keys)
    if len(q) == 0 or n == 0:
        return _sorted_result([], n)
    plan, widths = _stored_search_plan(len(q), folder, n, t)
    if plan is None:
        if bands is not None and 0 not in bands:
            return _sorted_result([], n)
        return find_near_pairs_between(q, np.asarray(keys), t)
    shifts = [sum(widths[:k]) for k in range(len(widths))]
    found = []
    for k, band in enumerate(plan):
        if bands is not None and k not in bands:
            continue
        table = _stored_table(folder, shifts.index(band.shift), band)
        left = _SortedBand(q, band)
        matches = _Matches(t, plan[:k])
        parts = np.array_split(_masks(band.width, band.radius), 4 * _WORKERS)
        _in_parallel([functools.partial(table.search, left, p, matches) for p in parts])
        found.extend(matches.found)
    return _sorted_result(found, n)


@dataclass(frozen=True, eq=False)
class DedupDecision:
    """Outcome of greedy near-duplicate removal, one entry per item in processing order.

    ``duplicate_of`` is -1 for kept items; for a duplicate it is the index of the item it
    matched or, where ``dup_in_history`` is set, the index into the history array.
    ``distance`` is the Hamming distance to that match, -1 for kept items.
    """

    keep: np.ndarray  # (n,) bool
    duplicate_of: np.ndarray  # (n,) int64
    dup_in_history: np.ndarray  # (n,) bool
    distance: np.ndarray  # (n,) int16


def greedy_keep(
    n: int,
    pairs_i: np.ndarray,
    pairs_j: np.ndarray,
    distances: np.ndarray,
    *,
    history_items: np.ndarray | None = None,
    history_indices: np.ndarray | None = None,
    history_distances: np.ndarray | None = None,
) -> DedupDecision:
    """Resolve the greedy contract over items 0..n-1 from their near pairs.

    ``pairs_*``: every pair of items within the threshold (either order), as
    ``find_near_pairs`` returns. ``history_*``: every (item, history index, distance) within
    the threshold, as ``find_near_pairs_between(items, history, ...)`` returns.
    """
    ids = np.arange(n, dtype=np.int64)
    hist = _history_triplets(history_items, history_indices, history_distances)
    pairs = _pair_triplets(pairs_i, pairs_j, distances)
    for name, idx in (("pairs", pairs[0]), ("pairs", pairs[1]), ("history_items", hist[0])):
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name} refer to items outside 0..{n - 1}")
    for name, dist in (("distances", pairs[2]), ("history_distances", hist[2])):
        if len(dist) and (dist.min() < 0 or dist.max() > HASH_BITS):
            raise ValueError(f"{name} must be Hamming distances between 0 and {HASH_BITS}")
    return _resolve(ids, ids, pairs, hist)


def deduplicate(
    hashes: np.ndarray, threshold: int, history: np.ndarray | None = None
) -> DedupDecision:
    """Greedy near-duplicate removal of ``hashes`` (in processing order) against ``history``.

    Identical hashes are collapsed before the pair search, so a cluster of exact copies (blank
    stand-in images are common in web data) costs one search entry instead of quadratic pairs.
    """
    h = _as_hashes(hashes, "hashes")
    t = _check_threshold(threshold)
    uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    by_first = np.argsort(first)  # group ids in processing order of their first occurrence
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    group_hashes = uniq[by_first]
    pairs = find_near_pairs(group_hashes, t)
    hist = _history_triplets(None, None, None)
    if history is not None and len(history):
        hist = find_near_pairs_between(group_hashes, _as_hashes(history, "history"), t)
    return _resolve(rank[inverse.ravel()].astype(np.int64), first[by_first], pairs, hist)


_Triplets = tuple[np.ndarray, np.ndarray, np.ndarray]


def _pair_triplets(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> _Triplets:
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if not len(i) == len(j) == len(d):
        raise ValueError(f"pairs_i, pairs_j, distances differ in length: {len(i)}, {len(j)}")
    return np.minimum(i, j), np.maximum(i, j), np.asarray(d, np.int64)


def _history_triplets(
    items: np.ndarray | None, indices: np.ndarray | None, distances: np.ndarray | None
) -> _Triplets:
    if items is None and indices is None and distances is None:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    if items is None or indices is None or distances is None:
        raise ValueError("history_items, history_indices and history_distances go together")
    arrays = [np.asarray(a, np.int64) for a in (items, indices, distances)]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("history_items, history_indices and history_distances differ in length")
    return arrays[0], arrays[1], arrays[2]


def _resolve(
    item_group: np.ndarray, reps: np.ndarray, pairs: _Triplets, history: _Triplets
) -> DedupDecision:
    """Greedy decisions for items that fall into groups of identical hashes.

    ``item_group[k]``: group of item k; ``reps[g]``: index of the first item of group g, with
    groups numbered in that order. ``pairs``: (g, h, distance) for near groups. ``history``:
    (g, history index, distance). Only the first item of a group can be kept, and it is kept
    iff no history hash and no earlier kept group is near, so the greedy pass runs on groups.
    """
    n, n_groups = len(item_group), len(reps)
    gi, gj, gd = (np.asarray(a, np.int64) for a in pairs)
    hg, hidx, hd = (np.asarray(a, np.int64) for a in history)
    if len(gi) and (gi == gj).any():
        raise ValueError("a near pair joins an item to itself; pairs need i != j")

    kept = np.ones(n_groups, bool)
    kept[hg] = False
    # Only groups with an earlier near group need the sequential pass; visiting them in order
    # means every earlier neighbour is already decided.
    order = np.lexsort((gi, gj))
    later, earlier = gj[order], gi[order]
    targets, first = np.unique(later, return_index=True)
    bounds = np.append(first, len(later))
    for g, lo, hi in zip(targets.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if kept[g] and kept[earlier[lo:hi]].any():
            kept[g] = False

    keep = np.zeros(n, bool)
    keep[reps[kept]] = True
    duplicate_of = np.full(n, -1, np.int64)
    in_history = np.zeros(n, bool)
    distance = np.full(n, -1, np.int16)
    copies = ~keep & kept[item_group]  # later copies of a kept hash: distance 0 to its first
    duplicate_of[copies] = reps[item_group[copies]]
    distance[copies] = 0

    # Every other item k picks, among the history hits of its group and the kept groups near
    # it whose first item comes before k, the smallest (distance, history first, index). One
    # pass over events sorted by (group, position) with a running minimum per group does it;
    # the key encodes (distance, 0 for history or 1 + item index).
    dup_items = np.flatnonzero(~keep & ~kept[item_group])
    if dup_items.size == 0:
        return DedupDecision(keep, duplicate_of, in_history, distance)
    stride = n + 1
    none = (HASH_BITS + 1) * stride  # larger than any real key
    if (n_groups + 1) * (none + 1) >= 2**62:
        raise ValueError(f"{n} items are too many for one greedy pass; split the partition")
    hist_order = np.lexsort((hidx, hd, hg))
    hg, hidx, hd = hg[hist_order], hidx[hist_order], hd[hist_order]
    first_hit = np.unique(hg, return_index=True)[1]
    best_hist_index = np.full(n_groups, -1, np.int64)
    best_hist_index[hg[first_hit]] = hidx[first_hit]
    edge_a = np.concatenate([gj[kept[gi] & ~kept[gj]], gi[kept[gj] & ~kept[gi]]])
    edge_b = np.concatenate([gi[kept[gi] & ~kept[gj]], gj[kept[gj] & ~kept[gi]]])
    edge_d = np.concatenate([gd[kept[gi] & ~kept[gj]], gd[kept[gj] & ~kept[gi]]])
    ev_group = np.concatenate([hg[first_hit], edge_a, item_group[dup_items]])
    ev_pos = np.concatenate([np.full(len(first_hit), -1), reps[edge_b], dup_items])
    ev_key = np.concatenate(
        [hd[first_hit] * stride, edge_d * stride + reps[edge_b] + 1, np.full(dup_items.size, none)]
    )
    ev_order = np.lexsort((ev_pos, ev_group))
    ev_group, ev_key = ev_group[ev_order], ev_key[ev_order]
    # Offsetting later groups lower lets one global running minimum stay within each group.
    offset = (n_groups - ev_group) * (none + 1)
    running = np.minimum.accumulate(ev_key + offset) - offset
    is_item = ev_order >= len(first_hit) + len(edge_a)
    items = dup_items[ev_order[is_item] - len(first_hit) - len(edge_a)]
    best = running[is_item]
    match = best % stride
    from_history = match == 0
    in_history[items] = from_history
    duplicate_of[items] = np.where(from_history, best_hist_index[item_group[items]], match - 1)
    distance[items] = best // stride
    return DedupDecision(keep, duplicate_of, in_history, distance)
