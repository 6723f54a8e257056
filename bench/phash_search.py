"""Benchmark of the exact pHash near-pair search against brute force.

Generates ``--n`` random 64-bit hashes, plants near-duplicates at 0..threshold+2 bits from
their source, and times ``find_near_pairs``. It checks that every planted pair within the
threshold is found and that, on a subset, the result equals brute force exactly. It then
scales the brute-force time on that subset to the full size (all-pairs work is quadratic).

    .venv/bin/python bench/phash_search.py [--n 1000000] [--threshold T]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dataplatform.core.dedup.phash_index import (
    DEFAULT_PHASH_THRESHOLD,
    deduplicate,
    find_near_pairs,
)

WORKERS = min(8, len(os.sched_getaffinity(0)))  # the same threads the index uses


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_masks(rng: np.random.Generator, bit_counts: np.ndarray) -> np.ndarray:
    """One uint64 mask per entry with exactly that many distinct random bits set."""
    ranks = np.argsort(rng.random((len(bit_counts), 64)), axis=1)
    chosen = ranks < bit_counts[:, np.newaxis]  # positions whose rank is among the first k
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return np.bitwise_or.reduce(np.where(chosen, weights, np.uint64(0)), axis=1)


def planted_hashes(
    n: int, threshold: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random hashes where ``fraction`` of them copy another one with 0..threshold+2 flips.

    Sources and copies are disjoint, so each planted pair is exactly that many bits apart.
    Returns (hashes, source index, copy index, planted distance).
    """
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    m = int(n * fraction)
    chosen = rng.permutation(n)[: 2 * m]
    src, dst = chosen[:m], chosen[m:]
    flips = rng.integers(0, threshold + 3, size=m)
    hashes[dst] = hashes[src] ^ random_masks(rng, flips)
    return hashes, src, dst, flips


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, ...]:
    """All-pairs popcount in row blocks, on as many threads as the index uses (numpy releases
    the GIL in these ufuncs), so the comparison is core for core; the reference to equal."""

    def block(lo: int) -> tuple[np.ndarray, ...]:
        rows = hashes[lo : lo + 256]
        dist = np.bitwise_count(rows[:, np.newaxis] ^ hashes[np.newaxis, lo:])
        near = dist <= threshold
        near &= np.arange(dist.shape[1])[np.newaxis, :] > np.arange(len(rows))[:, np.newaxis]
        a, b = np.nonzero(near)
        return a + lo, b + lo, dist[a, b]

    with ThreadPoolExecutor(WORKERS) as pool:
        parts = list(pool.map(block, range(0, len(hashes), 256)))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--threshold", type=int, default=DEFAULT_PHASH_THRESHOLD)
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument("--planted-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, t = args.n, args.threshold

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{WORKERS} worker threads"
    )
    hashes, src, dst, flips = planted_hashes(n, t, args.planted_fraction, args.seed)
    print(f"n={n:,} hashes, threshold={t}, planted pairs={len(src):,} (0..{t + 2} bits)")
    rss_before = peak_rss_mib()

    start = time.perf_counter()
    i, j, d = find_near_pairs(hashes, t)
    index_s = time.perf_counter() - start
    print(f"find_near_pairs: {index_s:.2f} s, {len(i):,} pairs within {t} bits")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (before the search: {rss_before:.0f} MiB)")

    found = np.sort(i * n + j)
    want = flips <= t
    lo, hi = np.minimum(src, dst)[want], np.maximum(src, dst)[want]
    at = np.searchsorted(found, lo * n + hi)
    hit = (at < len(found)) & (found[np.minimum(at, len(found) - 1)] == lo * n + hi)
    print(f"recall of planted pairs within threshold: {hit.sum():,}/{want.sum():,}")
    if not hit.all():
        raise SystemExit("FAIL: the index missed planted pairs")

    start = time.perf_counter()
    decision = deduplicate(hashes, t)
    print(
        f"deduplicate: {time.perf_counter() - start:.2f} s, "
        f"kept {decision.keep.sum():,} of {n:,}; peak RSS {peak_rss_mib():.0f} MiB"
    )

    # Subset: half planted pairs (so it holds near pairs to find), half random hashes.
    rng = np.random.default_rng(args.seed + 1)
    s = min(args.subset, n)
    pairs_taken = rng.permutation(len(src))[: s // 4]
    subset = np.unique(np.concatenate([src[pairs_taken], dst[pairs_taken]]))
    rest = np.setdiff1d(np.arange(n), subset)
    subset = np.sort(np.concatenate([subset, rng.choice(rest, s - len(subset), replace=False)]))
    sub = hashes[subset]
    start = time.perf_counter()
    index_pairs = find_near_pairs(sub, t)
    index_sub_s = time.perf_counter() - start
    start = time.perf_counter()
    brute_pairs = brute_force_pairs(sub, t)
    brute_s = time.perf_counter() - start
    order = np.lexsort((brute_pairs[1], brute_pairs[0]))
    exact = all(np.array_equal(a, b[order]) for a, b in zip(index_pairs, brute_pairs, strict=True))
    print(f"subset s={s:,}: index == brute force: {exact} ({len(index_pairs[0]):,} pairs)")
    if not exact:
        raise SystemExit("FAIL: the index differs from brute force on the subset")
    scaled = brute_s * (n * (n - 1)) / (s * (s - 1))
    print(f"brute force on subset: {brute_s:.2f} s; scaled to n={n:,}: {scaled:,.0f} s")
    print(f"index on the subset: {index_sub_s:.3f} s")
    print(f"index vs brute force (scaled): {scaled / index_s:,.0f}x faster")


if __name__ == "__main__":
    main()
