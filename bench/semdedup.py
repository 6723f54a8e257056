"""Benchmark of the semantic near-pair search against the N x N cosine matrix.

Generates ``--n`` random unit vectors of dimension ``--d`` (a stand-in for CLIP embeddings) in
which 1% of the rows are noisy copies of another row at cosine 0.95-0.999, and 0.25% decoys at
0.90-0.95 that must not be reported. Sources and copies are disjoint, so the pairs at the
threshold are known by construction. It times ``find_similar_pairs(method="auto")``, measures
the recall of the planted pairs, checks on a subset that ivf returns a subset of exact search
(equal up to the recall), and times the approach of DataFlow's ImageDeduplicateFilter (the full
cosine matrix, then a threshold) at the largest size that fits comfortably, scaled
quadratically to ``--n``.

    .venv/bin/python bench/semdedup.py [--n 1000000] [--d 512]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import time

import faiss
import numpy as np
from sklearn.metrics.pairwise import cosine_similarity

from dataplatform.core.dedup.semantic_index import (
    AUTO_EXACT_MAX_PRODUCTS,
    DEFAULT_SIMILARITY_THRESHOLD,
    find_similar_pairs,
    greedy_keep,
    ivf_parameters,
)

CHUNK = 65_536
GIB = 2**30


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def copies_at_cosine(
    rng: np.random.Generator, sources: np.ndarray, cosines: np.ndarray
) -> np.ndarray:
    """Unit vectors at exactly ``cosines`` to ``sources``: the source plus a random orthogonal
    direction (float64, then rounded to float32 like the rest)."""
    s = sources.astype(np.float64)
    noise = rng.standard_normal(s.shape)
    noise -= np.einsum("ij,ij->i", noise, s)[:, None] * s
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = cosines[:, None] * s + np.sqrt(1 - cosines**2)[:, None] * noise
    return (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)


def planted_vectors(
    n: int, d: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, source rows, copy rows, planted cosine, is decoy), generated in chunks."""
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, d), np.float32)
    for lo in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - lo), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[lo : lo + len(block)] = block
    copies, decoys = n // 100, n // 400
    chosen = rng.permutation(n)[: 2 * (copies + decoys)]
    src, dst = chosen[: copies + decoys], chosen[copies + decoys :]
    decoy = np.arange(copies + decoys) >= copies
    cosines = np.where(decoy, rng.uniform(0.90, 0.95, len(src)), rng.uniform(0.95, 0.999, len(src)))
    for lo in range(0, len(src), CHUNK):
        part = slice(lo, lo + CHUNK)
        vectors[dst[part]] = copies_at_cosine(rng, vectors[src[part]], cosines[part])
    return vectors, src, dst, cosines, decoy


def pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j)


def matrix_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """ImageDeduplicateFilter's search: the full cosine matrix, then every i < j at the
    threshold. Vectorised here; the filter walks the matrix in a Python loop, slower still."""
    sims = cosine_similarity(vectors, vectors)
    return np.nonzero(np.triu(sims >= threshold, k=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=DEFAULT_SIMILARITY_THRESHOLD)
    parser.add_argument("--subset", type=int, default=50_000)
    parser.add_argument("--matrix-n", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, d, t = args.n, args.d, args.threshold
    logging.basicConfig(format="    %(message)s")
    logging.getLogger("dataplatform.core.dedup.semantic_index").setLevel(logging.DEBUG)

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    )
    start = time.perf_counter()
    vectors, src, dst, cosines, decoy = planted_vectors(n, d, args.seed)
    true_sims = np.einsum(
        "ij,ij->i", vectors[src].astype(np.float64), vectors[dst].astype(np.float64)
    )
    truth = np.sort(pair_keys(src, dst, n)[true_sims >= t])
    print(
        f"n={n:,} vectors, d={d}, threshold={t}: {len(truth):,} planted pairs at cos >= {t}, "
        f"{int(decoy.sum()):,} decoys at 0.90-0.95 ({time.perf_counter() - start:.1f} s, "
        f"data {vectors.nbytes / GIB:.2f} GiB)"
    )
    products = n * (n - 1) // 2
    method = "exact" if products <= AUTO_EXACT_MAX_PRODUCTS else "ivf"
    if method == "ivf":
        nlist, nprobe = ivf_parameters(n, t)
        print(f"auto -> ivf: nlist={nlist:,}, nprobe={nprobe}")
    rss_before = peak_rss_gib()

    start = time.perf_counter()
    i, j, sim = find_similar_pairs(vectors, t, method="auto")
    search_s = time.perf_counter() - start
    rss_search = peak_rss_gib()
    print(f"find_similar_pairs(auto): {search_s:.1f} s, {len(i):,} pairs")
    print(f"peak RSS: {rss_search:.2f} GiB (before the search: {rss_before:.2f} GiB)")

    found = pair_keys(i, j, n)
    hit = np.isin(truth, found)
    print(f"recall of planted pairs: {hit.sum():,}/{len(truth):,} = {hit.mean():.4%}")
    near = (true_sims >= t) & (true_sims < t + 0.01)
    near_hit = np.isin(pair_keys(src, dst, n)[near], found)
    print(
        f"  of those at cos {t}-{t + 0.01:.2f}: {near_hit.sum():,}/{near.sum():,} "
        f"= {near_hit.mean():.4%}"
    )
    extra = int((~np.isin(found, truth)).sum())
    print(f"reported pairs that are not planted pairs >= {t}: {extra} (decoys included)")
    if hit.mean() < 0.99 or extra:
        raise SystemExit("FAIL: recall below 99% or pairs below the threshold reported")

    start = time.perf_counter()
    rank = np.random.default_rng(args.seed + 1).permutation(n)
    decision = greedy_keep(rank, (i, j, sim))
    print(
        f"greedy_keep on those pairs: {time.perf_counter() - start:.2f} s, kept "
        f"{int(decision.keep.sum()):,} of {n:,} (expected {n - len(i):,}: one per disjoint pair)"
    )
    if decision.keep.sum() != n - len(i):
        raise SystemExit("FAIL: greedy_keep did not drop exactly one row of each pair")

    # Subset: the rows of some planted pairs (so it holds pairs to find), then random rows.
    rng = np.random.default_rng(args.seed + 2)
    s = min(args.subset, n)
    taken = rng.permutation(len(src))[: s // 5]
    rows = np.unique(np.concatenate([src[taken], dst[taken]]))
    rest = np.setdiff1d(np.arange(n), rows)
    rows = np.sort(np.concatenate([rows, rng.choice(rest, s - len(rows), replace=False)]))
    sub = vectors[rows]
    start = time.perf_counter()
    exact = find_similar_pairs(sub, t, method="exact")
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    ivf = find_similar_pairs(sub, t, method="ivf")
    ivf_s = time.perf_counter() - start
    exact_keys, ivf_keys = pair_keys(exact[0], exact[1], s), pair_keys(ivf[0], ivf[1], s)
    at = np.searchsorted(exact_keys, ivf_keys)
    subset_ok = bool(np.isin(ivf_keys, exact_keys).all() and np.array_equal(exact[2][at], ivf[2]))
    print(
        f"subset s={s:,}: exact {exact_s:.1f} s, {len(exact_keys):,} pairs; ivf {ivf_s:.1f} s, "
        f"{len(ivf_keys):,} pairs, all in exact with equal similarity: {subset_ok}, "
        f"recall {len(ivf_keys) / max(1, len(exact_keys)):.4%}"
    )
    if not subset_ok:
        raise SystemExit("FAIL: ivf reported a pair that exact search does not")

    m = min(args.matrix_n, n)
    matrix_bytes = m * m * 4
    start = time.perf_counter()
    mi, mj = matrix_pairs(vectors[:m], t)
    matrix_s = time.perf_counter() - start
    same = np.array_equal(
        pair_keys(mi, mj, m), pair_keys(*find_similar_pairs(vectors[:m], t, method="exact")[:2], m)
    )
    scaled_s = matrix_s * (n / m) ** 2
    full_bytes = n * n * 4
    print(
        f"N x N matrix (ImageDeduplicateFilter) at N={m:,}: {matrix_s:.1f} s, "
        f"{matrix_bytes / GIB:.2f} GiB for the float32 matrix, {len(mi):,} pairs "
        f"(same pairs as exact search: {same}); peak RSS now {peak_rss_gib():.2f} GiB"
    )
    print(
        f"  scaled to n={n:,}: {scaled_s:,.0f} s ({scaled_s / 3600:.1f} h) and "
        f"{full_bytes / 1e12:,.2f} TB ({full_bytes / 2**40:,.2f} TiB) for the matrix"
    )
    print(
        f"find_similar_pairs vs N x N matrix at n={n:,}: {scaled_s / search_s:,.0f}x faster, "
        f"{full_bytes / (rss_search * GIB):,.0f}x less memory (matrix vs whole-process peak RSS)"
    )


if __name__ == "__main__":
    main()
