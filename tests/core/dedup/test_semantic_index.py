"""The semantic pair search must find exactly what a float64 brute force finds (ivf: a subset of
it, with >= 99% recall of planted pairs), and the greedy dedup must follow its contract exactly:
both are checked against direct reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from dataplatform.core.dedup import semantic_index
from dataplatform.core.dedup.semantic_index import (
    DEFAULT_SIMILARITY_THRESHOLD,
    SemanticDecision,
    find_similar_between,
    find_similar_pairs,
    ivf_parameters,
    semantic_deduplicate,
)

THRESHOLDS = [0.9, 0.95, 0.99]
D = 64


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noisy_copies(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """Rows plus Gaussian noise, renormalised: cosines to the originals spread over about
    0.88-0.999 (cos ~ 1 / sqrt(1 + d * sigma**2))."""
    sigma = rng.uniform(0.005, 0.07, size=(len(rows), 1))
    return unit_rows(rows + sigma * rng.standard_normal(rows.shape))


def planted(n: int, seed: int) -> np.ndarray:
    """Random unit vectors where a fifth are noisy copies of others, in two rounds so that
    copies of copies make clusters and chains."""
    rng = np.random.default_rng(seed)
    v = unit_rows(rng.standard_normal((n, D)))
    for _ in range(2):
        dst = rng.choice(n, n // 10, replace=False)
        v[dst] = noisy_copies(rng, v[rng.integers(0, n, size=len(dst))])
    return v


def at_cosine(rng: np.random.Generator, rows: np.ndarray, cosines: np.ndarray) -> np.ndarray:
    """Unit vectors at exactly ``cosines`` (up to float32 rounding) to ``rows``."""
    s = rows.astype(np.float64)
    noise = rng.standard_normal(s.shape)
    noise -= np.einsum("ij,ij->i", noise, s)[:, None] * s
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return unit_rows(cosines[:, None] * s + np.sqrt(1 - cosines**2)[:, None] * noise)


def brute_pairs(v: np.ndarray, t: float) -> list[list]:
    sims = v.astype(np.float64) @ v.astype(np.float64).T
    i, j = np.nonzero(np.triu(sims >= t, k=1))
    return [i.tolist(), j.tolist(), sims[i, j].astype(np.float32).tolist()]


def brute_between(q: np.ndarray, r: np.ndarray, t: float) -> list[list]:
    sims = q.astype(np.float64) @ r.astype(np.float64).T
    i, j = np.nonzero(sims >= t)
    return [i.tolist(), j.tolist(), sims[i, j].astype(np.float32).tolist()]


def as_lists(found: tuple[np.ndarray, ...]) -> list[list]:
    return [a.tolist() for a in found]


def as_dict(found: tuple[np.ndarray, ...]) -> dict[tuple[int, int], float]:
    """{(row, row): similarity}, for comparing an approximate result with the exact one."""
    return {(a, b): s for a, b, s in zip(*as_lists(found), strict=True)}


def pair_at(cos: np.float32, a: int = 0, b: int = 1) -> np.ndarray:
    """Rows e_a and cos * e_a + sin * e_b (float32): their inner product is exactly ``cos`` in
    any summation order, as only coordinate a is nonzero in both."""
    v = np.zeros((2, D), np.float32)
    v[0, a] = 1
    v[1, a], v[1, b] = cos, np.float32(np.sqrt(1 - np.float64(cos) ** 2))
    return v


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_find_similar_pairs_exact_equals_brute_force(threshold: float) -> None:
    v = planted(2_000, seed=int(threshold * 100))
    found = find_similar_pairs(v, threshold, method="exact")
    assert as_lists(found) == brute_pairs(v, threshold)
    assert [a.dtype for a in found] == [np.int64, np.int64, np.float32]
    assert len(found[0]) > 40  # the planted pairs are really there
    # Small inputs take the exact path under "auto" and give the same answer.
    assert as_lists(find_similar_pairs(v, threshold)) == as_lists(found)


def test_exact_search_spans_reference_blocks(monkeypatch) -> None:
    # Blocks much smaller than the input: pairs across and within blocks, queries in chunks.
    monkeypatch.setattr(semantic_index, "_REFERENCE_BLOCK", 300)
    monkeypatch.setattr(semantic_index, "_QUERY_CHUNK", 128)
    monkeypatch.setattr(semantic_index, "_VERIFY_CHUNK", 7)
    v = planted(1_000, seed=7)
    assert as_lists(find_similar_pairs(v, 0.9, method="exact")) == brute_pairs(v, 0.9)
    q = noisy_copies(np.random.default_rng(8), v[::3])
    assert as_lists(find_similar_between(q, v, 0.9, method="exact")) == brute_between(q, v, 0.9)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_find_similar_between_exact_equals_brute_force(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 1000))
    reference = planted(1_500, seed=int(threshold * 1000))
    queries = np.concatenate([noisy_copies(rng, reference[:600]), unit_rows(rng.random((300, D)))])
    found = find_similar_between(queries, reference, threshold, method="exact")
    assert as_lists(found) == brute_between(queries, reference, threshold)
    assert len(found[0]) > 100


@pytest.mark.parametrize("method", ["exact", "ivf"])
@pytest.mark.parametrize("cos", [0.9, 0.95, 0.99, 0.9876])
def test_threshold_is_inclusive(method: str, cos: float) -> None:
    # faiss keeps results strictly above its radius; the contract is >=.
    c = np.float32(cos)
    v = np.concatenate([pair_at(c), np.eye(D, dtype=np.float32)[2:5]])
    at, above = float(c), float(np.nextafter(np.float64(c), 2.0))
    assert as_lists(find_similar_pairs(v, at, method=method)) == [[0], [1], [c]]
    assert as_lists(find_similar_pairs(v, above, method=method)) == [[], [], []]
    assert as_lists(find_similar_between(v[1:], v[:1], at, method=method)) == [[0], [0], [c]]
    assert as_lists(find_similar_between(v[1:], v[:1], above, method=method)) == [[], [], []]


def test_threshold_edge_pairs_among_random_vectors() -> None:
    # Pairs at exactly the threshold, just below and just above it, inside a random set.
    rng = np.random.default_rng(3)
    t = float(np.float32(0.95))
    v = unit_rows(rng.standard_normal((500, D)))
    below, above = np.nextafter(np.float32(t), np.float32(0)), np.nextafter(np.float32(t), 1)
    for k, c in enumerate((np.float32(t), below, above)):
        v[100 * (k + 1) : 100 * (k + 1) + 2] = pair_at(c, 2 * k, 2 * k + 1)
    found = find_similar_pairs(v, t, method="exact")
    assert as_lists(found) == brute_pairs(v, t)
    assert found[0].tolist() == [100, 300]
    assert found[2].tolist() == [np.float32(t), above]


@pytest.mark.parametrize("threshold", [0.9, DEFAULT_SIMILARITY_THRESHOLD, 0.99])
def test_ivf_recall_on_planted_pairs(threshold: float, monkeypatch) -> None:
    # Planted pairs within 0.01 above the threshold: the hardest ones for the cells to keep.
    rng = np.random.default_rng(11)
    n, m = 30_000, 1_000
    v = unit_rows(rng.standard_normal((n, D)))
    src, dst = rng.permutation(n)[: 2 * m].reshape(2, m)
    v[dst] = at_cosine(rng, v[src], rng.uniform(threshold, threshold + 0.01, m))
    planted_sims = np.einsum("ij,ij->i", v[src].astype(np.float64), v[dst].astype(np.float64))
    truth = set(
        zip(
            np.minimum(src, dst)[planted_sims >= threshold].tolist(),
            np.maximum(src, dst)[planted_sims >= threshold].tolist(),
            strict=True,
        )
    )
    assert len(truth) >= 990

    i, j, sims = find_similar_pairs(v, threshold, method="ivf")
    found = as_dict((i, j, sims))
    assert len(truth & set(found)) / len(truth) >= 0.99
    # Every returned pair is truly >= threshold, with the float64 similarity.
    true_sims = np.einsum("ij,ij->i", v[i].astype(np.float64), v[j].astype(np.float64))
    assert (true_sims >= threshold).all()
    assert sims.tolist() == true_sims.astype(np.float32).tolist()
    assert (np.diff(i * n + j) > 0).all()  # sorted by (i, j), each pair once
    # Same input, same output: the k-means training is seeded.
    assert as_lists(find_similar_pairs(v, threshold, method="ivf")) == as_lists((i, j, sims))
    # The probe count is what holds recall up: a single probe loses pairs (21% at 0.9, 0.7% at
    # 0.99; fewer than on unseen vectors, as k-means trained on almost all of these 30,000).
    monkeypatch.setattr(semantic_index, "_NPROBE_SELF_JOIN", ((0.0, 1),))
    one_probe = as_dict(find_similar_pairs(v, threshold, method="ivf"))
    assert len(truth & set(one_probe)) < len(truth & set(found))


def test_ivf_between_recall_on_planted_pairs() -> None:
    rng = np.random.default_rng(12)
    t = DEFAULT_SIMILARITY_THRESHOLD
    reference = unit_rows(rng.standard_normal((30_000, D)))
    rows = rng.choice(len(reference), 2_000, replace=False)
    queries = np.concatenate(
        [
            at_cosine(rng, reference[rows], rng.uniform(t, 0.999, len(rows))),
            unit_rows(rng.standard_normal((3_000, D))),
        ]
    )
    found = as_dict(find_similar_between(queries, reference, t, method="ivf"))
    exact = as_dict(find_similar_between(queries, reference, t, method="exact"))
    assert found == {p: exact[p] for p in found}
    planted_found = len(set(found) & set(enumerate(rows.tolist())))
    assert planted_found / len(rows) >= 0.99
    assert len(exact) >= 1_990


def test_ivf_parameters() -> None:
    assert ivf_parameters(1_000_000, 0.95) == (4_000, 16)
    assert ivf_parameters(1_000_000, 0.95, self_join=False) == (4_000, 32)
    assert ivf_parameters(1_000_000, 0.96) == (4_000, 16)  # rounds down to a measured threshold
    assert ivf_parameters(1_000_000, 0.99) == (4_000, 6)
    assert ivf_parameters(1_000_000, 0.9) == (4_000, 32)
    assert ivf_parameters(4_000_000, 0.95) == (8_000, 23)  # grows with sqrt(nlist)
    assert ivf_parameters(30_000, 0.95) == (693, 16)
    assert ivf_parameters(100, 0.9) == (2, 2)  # 40 training points per cell, nprobe <= nlist
    with pytest.raises(ValueError, match="calibrated for thresholds >= 0.9"):
        ivf_parameters(1_000_000, 0.85)


def test_method_choice(monkeypatch) -> None:
    choose = semantic_index._choose_method
    assert choose("auto", semantic_index.AUTO_EXACT_MAX_PRODUCTS, 0.95) == "exact"
    assert choose("auto", semantic_index.AUTO_EXACT_MAX_PRODUCTS + 1, 0.95) == "ivf"
    assert choose("auto", 10**12, 0.85) == "exact"  # below the calibrated ivf thresholds
    assert choose("exact", 10**12, 0.95) == "exact"
    with pytest.raises(ValueError, match="calibrated for thresholds >= 0.9, got 0.8"):
        find_similar_pairs(planted(10, seed=0), 0.8, method="ivf")
    with pytest.raises(ValueError, match="method must be one of"):
        find_similar_pairs(planted(10, seed=0), 0.95, method="hnsw")


# --- greedy dedup -------------------------------------------------------------------------


def reference_dedup(
    v: np.ndarray, t: float, rank: np.ndarray, history: np.ndarray | None
) -> SemanticDecision:
    """The contract, one item at a time in rank order, comparing against every kept item."""
    n = len(v)
    v64 = v.astype(np.float64)
    h64 = np.zeros((0, v.shape[1])) if history is None else history.astype(np.float64)
    keep = np.zeros(n, bool)
    duplicate_of = np.full(n, -1, np.int64)
    dup_in_history = np.zeros(n, bool)
    similarity = np.full(n, np.nan, np.float32)
    kept: list[int] = []
    position = {}
    for pos, x in enumerate(sorted(range(n), key=lambda k: (rank[k], k))):
        position[x] = pos
        matches = []  # (-similarity, 0 history / 1 item, tie-break, target)
        for h in range(len(h64)):
            s = float(v64[x] @ h64[h])
            if s >= t:
                matches.append((-np.float32(s), 0, h, h))
        for y in kept:
            s = float(v64[x] @ v64[y])
            if s >= t:
                matches.append((-np.float32(s), 1, position[y], y))
        if matches:
            neg_sim, source, _, target = min(matches)
            duplicate_of[x], dup_in_history[x], similarity[x] = target, source == 0, -neg_sim
        else:
            keep[x] = True
            kept.append(x)
    return SemanticDecision(keep, duplicate_of, dup_in_history, similarity)


def assert_same_decision(got: SemanticDecision, want: SemanticDecision) -> None:
    assert got.keep.tolist() == want.keep.tolist()
    assert got.duplicate_of.tolist() == want.duplicate_of.tolist()
    assert got.dup_in_history.tolist() == want.dup_in_history.tolist()
    np.testing.assert_array_equal(got.similarity, want.similarity)  # NaN == NaN here
    assert [
        got.keep.dtype,
        got.duplicate_of.dtype,
        got.dup_in_history.dtype,
        got.similarity.dtype,
    ] == [bool, np.int64, bool, np.float32]


def assert_no_kept_pair(d: SemanticDecision, v: np.ndarray, t: float, history) -> None:
    kept = v[d.keep].astype(np.float64)
    sims = kept @ kept.T
    assert not np.triu(sims >= t, k=1).any()
    if history is not None and len(history):
        assert not (kept @ history.astype(np.float64).T >= t).any()


@pytest.mark.parametrize("threshold", [0.9, 0.95])
@pytest.mark.parametrize("with_history", [False, True])
def test_semantic_deduplicate_equals_reference(threshold: float, with_history: bool) -> None:
    rng = np.random.default_rng(int(threshold * 100) + with_history)
    v = planted(600, seed=int(threshold * 100))
    history = None
    if with_history:
        history = np.concatenate([noisy_copies(rng, v[:80]), unit_rows(rng.random((40, D)))])
    rank = rng.permutation(len(v))
    got = semantic_deduplicate(v, threshold, rank, history)
    want = reference_dedup(v, threshold, rank, history)
    assert_same_decision(got, want)
    assert_no_kept_pair(got, v, threshold, history)
    assert 0 < (~got.keep).sum() < len(v)
    assert got.dup_in_history.any() == with_history
    assert_same_decision(semantic_deduplicate(v, threshold, rank, history), got)  # deterministic
    assert_same_decision(semantic_deduplicate(v, threshold, rank, history, method="ivf"), got)


def rotated(angles_deg: list[float]) -> np.ndarray:
    """Unit vectors in the e0-e1 plane at these angles: cos between two is cos(difference)."""
    a = np.radians(np.array(angles_deg))
    v = np.zeros((len(a), D))
    v[:, 0], v[:, 1] = np.cos(a), np.sin(a)
    return v.astype(np.float32)


def test_best_rank_is_kept_even_at_a_higher_index() -> None:
    v = rotated([0, 5, 10, 60])  # 0, 1, 2 within cos(10 deg) = 0.985 of each other
    d = semantic_deduplicate(v, 0.95, rank=np.array([3, 2, 0, 1]))
    assert d.keep.tolist() == [False, False, True, True]
    assert d.duplicate_of.tolist() == [2, 2, -1, -1]
    assert d.dup_in_history.tolist() == [False] * 4
    v64 = v.astype(np.float64)
    assert d.similarity[:2].tolist() == [np.float32(v64[0] @ v64[2]), np.float32(v64[1] @ v64[2])]


def test_chain_resolves_from_the_best_ranked_item() -> None:
    # A~B and B~C at cos(15 deg) = 0.966, A!~C at cos(30 deg) = 0.866.
    v = rotated([0, 15, 30])
    b_best = semantic_deduplicate(v, 0.95, rank=np.array([1, 0, 2]))
    assert b_best.keep.tolist() == [False, True, False]
    assert b_best.duplicate_of.tolist() == [1, -1, 1]
    # With A best, B is a duplicate and so cannot remove C: C is kept.
    a_best = semantic_deduplicate(v, 0.95, rank=np.array([0, 1, 2]))
    assert a_best.keep.tolist() == [True, False, True]
    assert a_best.duplicate_of.tolist() == [-1, 0, -1]
    assert_same_decision(a_best, reference_dedup(v, 0.95, np.array([0, 1, 2]), None))


def test_history_always_wins() -> None:
    v = rotated([0, 90])
    history = rotated([50, 10, 3])  # item 0 is within 0.95 of history rows 1 and 2
    d = semantic_deduplicate(v, 0.95, rank=np.array([0, 1]), history=history)
    assert d.keep.tolist() == [False, True]
    assert d.duplicate_of.tolist() == [2, -1]  # the closer history row
    assert d.dup_in_history.tolist() == [True, False]
    assert d.similarity[0] == np.float32(np.cos(np.radians(3)))


def test_duplicate_of_picks_the_highest_similarity() -> None:
    # x is within the threshold of kept y1 (cos 13 deg = 0.974), kept y2 (cos 6 deg = 0.995)
    # and a history row off the plane (0.954). y1 and y2 are 19 deg (0.946) apart and 0.929 and
    # 0.949 from the history row, so both are kept.
    v = rotated([0, -13, 6])
    history = np.zeros((1, D), np.float32)
    history[0, 0], history[0, 2] = np.cos(np.radians(17.5)), np.sin(np.radians(17.5))
    d = semantic_deduplicate(v, 0.95, rank=np.array([2, 0, 1]), history=history)
    assert d.keep.tolist() == [False, True, True]
    assert d.duplicate_of.tolist() == [2, -1, -1]
    assert d.dup_in_history.tolist() == [False, False, False]
    assert d.similarity[0] == np.float32(np.cos(np.radians(6)))


def test_similarity_ties_go_to_history_then_to_the_better_rank() -> None:
    c = np.float32(0.96)
    s = np.float32(np.sqrt(1 - np.float64(c) ** 2))
    x = np.zeros(D, np.float32)
    x[0] = 1

    def near(axis: int) -> np.ndarray:  # cos exactly c to x, c * c = 0.92 to each other
        row = np.zeros(D, np.float32)
        row[0], row[axis] = c, s
        return row

    items = np.stack([x, near(1), near(2), near(3)])
    history = np.stack([near(5), near(4)])
    d = semantic_deduplicate(items, 0.95, rank=np.array([9, 5, 1, 3]), history=history)
    assert d.keep.tolist() == [False, True, True, True]
    assert (d.duplicate_of[0], d.dup_in_history[0], d.similarity[0]) == (0, True, c)
    d = semantic_deduplicate(items, 0.95, rank=np.array([9, 5, 1, 3]))
    assert (d.duplicate_of[0], d.dup_in_history[0], d.similarity[0]) == (2, False, c)


@pytest.mark.parametrize("history", [None, np.zeros((0, D), np.float32), np.zeros(0)])
def test_edge_sizes_and_empty_history(history) -> None:
    empty = semantic_deduplicate(np.zeros((0, D), np.float32), 0.95, np.zeros(0, int), history)
    assert [a.tolist() for a in vars(empty).values()] == [[], [], [], []]
    assert [a.dtype for a in vars(empty).values()] == [bool, np.int64, bool, np.float32]
    one = semantic_deduplicate(rotated([0]), 0.95, np.array([0]), history)
    assert (one.keep.tolist(), one.duplicate_of.tolist()) == ([True], [-1])
    assert np.isnan(one.similarity).tolist() == [True]
    for n in (0, 1):
        found = find_similar_pairs(rotated([0] * n).reshape(n, D), 0.95)
        assert as_lists(found) == [[], [], []]
        assert [a.dtype for a in found] == [np.int64, np.int64, np.float32]
    assert as_lists(find_similar_between(rotated([]).reshape(0, D), rotated([0]), 0.9)) == [
        [],
        [],
        [],
    ]


def test_dimension_mismatch_names_the_shapes() -> None:
    with pytest.raises(
        ValueError,
        match=r"queries has shape \(2, 64\) and reference has shape "
        r"\(1, 32\)",
    ):
        find_similar_between(rotated([0, 1]), unit_rows(np.ones((1, 32))), 0.95)
    with pytest.raises(
        ValueError,
        match=r"vectors has shape \(2, 64\) and history has shape "
        r"\(3, 16\)",
    ):
        semantic_deduplicate(rotated([0, 1]), 0.95, np.array([0, 1]), unit_rows(np.ones((3, 16))))


def test_non_normalised_input_is_rejected() -> None:
    v = rotated([0, 10, 20])
    v[1] *= 1.002
    with pytest.raises(
        ValueError, match=r"vectors must be L2-normalised: row 1 of shape \(3, 64\)"
    ):
        find_similar_pairs(v, 0.95)
    v[1] *= 1.0009 / 1.002  # within the 1e-3 tolerance
    assert find_similar_pairs(v, 0.95)[0].tolist() == [0, 1]
    v[2] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        semantic_deduplicate(v, 0.95, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="history must be L2-normalised: row 0"):
        semantic_deduplicate(v[:2], 0.95, np.array([0, 1]), history=2 * rotated([0]))


def test_bad_arguments_are_rejected() -> None:
    v = rotated([0, 10])
    with pytest.raises(ValueError, match=r"rank must have shape \(2,\)"):
        semantic_deduplicate(v, 0.95, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="rank must hold integers"):
        semantic_deduplicate(v, 0.95, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"threshold must be a cosine in \(0, 1\], got 1.5"):
        find_similar_pairs(v, 1.5)
    with pytest.raises(ValueError, match=r"2-D \(n, d\) array of embeddings, got shape \(64,\)"):
        find_similar_pairs(v[0], 0.95)
