"""The near-pair index must find exactly what brute force finds, and the greedy dedup must
follow its contract exactly: both are checked against direct reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from dataplatform.core.dedup import phash_index
from dataplatform.core.dedup.phash_index import (
    DEFAULT_PHASH_THRESHOLD,
    deduplicate,
    find_near_pairs,
    find_near_pairs_between,
    greedy_keep,
)

THRESHOLDS = [0, 4, 6, 8, 10, 12]


def flip_bits(rng: np.random.Generator, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each hash with ``counts[k]`` distinct random bits flipped."""
    ranks = np.argsort(rng.random((len(hashes), 64)), axis=1)
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    masks = np.bitwise_or.reduce(np.where(ranks < counts[:, None], weights, np.uint64(0)), axis=1)
    return hashes ^ masks


def planted(n: int, threshold: int, seed: int) -> np.ndarray:
    """Random hashes where a fifth are near copies (0..threshold+2 bits) of earlier ones,
    including exact copies and copies of copies, so clusters and chains occur."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(2):  # a second round copies some copies: chains
        dst = rng.choice(n, n // 10, replace=False)
        src = rng.integers(0, n, size=len(dst))
        hashes[dst] = flip_bits(rng, hashes[src], rng.integers(0, threshold + 3, size=len(dst)))
    return hashes


def brute_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, ...]:
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(dist <= threshold, k=1))
    return i, j, dist[i, j]


def brute_between(queries: np.ndarray, reference: np.ndarray, t: int) -> tuple[np.ndarray, ...]:
    dist = np.bitwise_count(queries[:, None] ^ reference[None, :])
    i, j = np.nonzero(dist <= t)
    return i, j, dist[i, j]


def assert_same(found: tuple[np.ndarray, ...], expected: tuple) -> None:
    assert [a.tolist() for a in found] == [np.asarray(b).tolist() for b in expected]


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_find_near_pairs_equals_brute_force(threshold: int) -> None:
    hashes = planted(9_000, threshold, seed=threshold)
    # 9,000 hashes are above the size where brute force is used outright.
    assert phash_index._plan(len(hashes), len(hashes), threshold, True) is not None
    found = find_near_pairs(hashes, threshold)
    assert_same(found, brute_pairs(hashes, threshold))
    assert found[0].dtype == np.int64 and found[2].dtype == np.int16
    assert len(found[0]) > 400  # the planted pairs are really there


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 7, 9, 11, 12])
def test_every_band_plan_equals_brute_force(threshold: int, monkeypatch) -> None:
    # Force the index at a size where brute force would normally win, so many band layouts
    # (widths 8..17, radii 0..4) are exercised cheaply.
    monkeypatch.setattr(phash_index, "_BRUTE_ALWAYS", 0)
    phash_index._plan.cache_clear()
    hashes = planted(2_500, threshold, seed=100 + threshold)
    try:
        assert phash_index._plan(len(hashes), len(hashes), threshold, True) is not None
        assert_same(find_near_pairs(hashes, threshold), brute_pairs(hashes, threshold))
        queries = planted(700, threshold, seed=200 + threshold)
        queries[:300] = flip_bits(
            np.random.default_rng(threshold), hashes[:300], np.arange(300) % (threshold + 3)
        )
        for q, r in ((queries, hashes), (hashes, queries)):
            assert_same(find_near_pairs_between(q, r, threshold), brute_between(q, r, threshold))
    finally:
        phash_index._plan.cache_clear()


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_find_near_pairs_between_equals_brute_force(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    reference = planted(12_000, threshold, seed=threshold)
    queries = rng.integers(0, 2**64, size=3_000, dtype=np.uint64)
    near = rng.choice(len(reference), 1_500, replace=False)
    queries[:1_500] = flip_bits(rng, reference[near], rng.integers(0, threshold + 3, size=1_500))
    assert phash_index._plan(len(queries), len(reference), threshold, False) is not None
    expected = brute_between(queries, reference, threshold)
    assert_same(find_near_pairs_between(queries, reference, threshold), expected)
    # Larger query side: the index probes from the reference side and swaps back.
    swapped = find_near_pairs_between(reference, queries, threshold)
    order = np.lexsort((expected[0], expected[1]))
    assert_same(swapped, (expected[1][order], expected[0][order], expected[2][order]))


def test_identical_hashes_pair_with_each_other_once() -> None:
    hashes = np.array([7, 7, 7, 2**64 - 1, 7], dtype=np.uint64)
    i, j, d = find_near_pairs(hashes, 0)
    assert list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == [
        (0, 1, 0),
        (0, 2, 0),
        (0, 4, 0),
        (1, 2, 0),
        (1, 4, 0),
        (2, 4, 0),
    ]


def test_threshold_64_pairs_everything() -> None:
    hashes = np.array([0, 2**64 - 1, 12345], dtype=np.uint64)
    assert_same(find_near_pairs(hashes, 64), ([0, 0, 1], [1, 2, 2], [64, 6, 58]))


def test_empty_and_single_inputs() -> None:
    empty = np.zeros(0, np.uint64)
    for result in (
        find_near_pairs(empty, 8),
        find_near_pairs(np.array([5], np.uint64), 8),
        find_near_pairs_between(empty, np.array([1], np.uint64), 8),
        find_near_pairs_between(np.array([1], np.uint64), empty, 8),
    ):
        assert [len(a) for a in result] == [0, 0, 0]


def test_int64_input_is_read_as_the_same_bits() -> None:
    # A BIGINT column holds hashes >= 2**63 as negative numbers.
    unsigned = np.array([2**63 + 5, 2**63 + 4, 3], dtype=np.uint64)
    assert_same(find_near_pairs(unsigned.view(np.int64), 2), ([0], [1], [1]))
    assert_same(find_near_pairs([2**63 + 5, 2**63 + 4, 3], 2), ([0], [1], [1]))


@pytest.mark.parametrize("threshold", [-1, 65])
def test_threshold_out_of_range_is_rejected(threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold must be between 0 and 64"):
        find_near_pairs(np.zeros(3, np.uint64), threshold)


def test_wrong_shapes_and_types_are_rejected() -> None:
    with pytest.raises(ValueError, match="hashes must be a 1-D array"):
        find_near_pairs(np.zeros((2, 2), np.uint64), 4)
    with pytest.raises(TypeError, match="reference must hold unsigned 64-bit integers"):
        find_near_pairs_between(np.zeros(2, np.uint64), np.zeros(2, np.float64), 4)
    with pytest.raises(TypeError, match="hashes must hold unsigned 64-bit integers"):
        find_near_pairs([-1, 2], 4)


# --- greedy dedup -----------------------------------------------------------------------


def reference_greedy(hashes: np.ndarray, threshold: int, history: np.ndarray) -> list[tuple]:
    """The contract, written as directly as possible: one item at a time, in order, against
    every history hash and every item kept so far."""
    kept: list[int] = []
    out = []
    for k in range(len(hashes)):
        to_history = np.bitwise_count(history ^ hashes[k])
        to_kept = np.bitwise_count(hashes[kept] ^ hashes[k])
        # (distance, 0 for history / 1 for an item, index): min() is the tie-break order.
        candidates = []
        if len(history) and to_history.min() <= threshold:
            candidates.append((int(to_history.min()), 0, int(np.argmin(to_history))))
        if kept and to_kept.min() <= threshold:
            candidates.append((int(to_kept.min()), 1, kept[int(np.argmin(to_kept))]))
        if candidates:
            dist, source, index = min(candidates)
            out.append((False, index, source == 0, dist))
        else:
            kept.append(k)
            out.append((True, -1, False, -1))
    return out


def as_rows(decision: phash_index.DedupDecision) -> list[tuple]:
    return list(
        zip(
            decision.keep.tolist(),
            decision.duplicate_of.tolist(),
            decision.dup_in_history.tolist(),
            decision.distance.tolist(),
            strict=True,
        )
    )


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_deduplicate_equals_reference(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    hashes = planted(1_500, threshold, seed=threshold)
    base = rng.choice(len(hashes), 150, replace=False)
    history = flip_bits(rng, hashes[base], rng.integers(0, threshold + 3, size=150))
    history = np.concatenate([history, rng.integers(0, 2**64, size=150, dtype=np.uint64)])
    decision = deduplicate(hashes, threshold, history)
    expected = reference_greedy(hashes, threshold, history)
    assert as_rows(decision) == expected
    assert 0 < sum(not row[0] for row in expected) < len(hashes)
    assert any(row[2] for row in expected)  # some matched history


def test_deduplicate_at_index_scale_equals_reference() -> None:
    # Large enough that the unique hashes go through the band index, not brute force.
    threshold = DEFAULT_PHASH_THRESHOLD
    hashes = planted(8_000, threshold, seed=42)
    n_unique = len(np.unique(hashes))
    assert phash_index._plan(n_unique, n_unique, threshold, True) is not None
    history = flip_bits(np.random.default_rng(1), hashes[:400], np.arange(400) % (threshold + 3))
    assert as_rows(deduplicate(hashes, threshold, history)) == reference_greedy(
        hashes, threshold, history
    )


def test_chain_keeps_the_far_end() -> None:
    # A~B, B~C, A!~C: B goes as a copy of A, so nothing kept is near C and C stays.
    a, b, c = 0, 0b1111, 0b1111_1111
    decision = deduplicate(np.array([a, b, c], np.uint64), threshold=4)
    assert as_rows(decision) == [(True, -1, False, -1), (False, 0, False, 4), (True, -1, False, -1)]


def test_chain_through_history() -> None:
    # B matches history, so it is dropped and cannot block C, which is 4 bits from B only.
    history = np.array([0], np.uint64)
    decision = deduplicate(np.array([0b1111, 0b1111_1111], np.uint64), 4, history)
    assert as_rows(decision) == [(False, 0, True, 4), (True, -1, False, -1)]


def bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


def test_smallest_distance_wins_then_history_then_lowest_index() -> None:
    h0 = bits(0, 1, 2, 3)
    history = np.array([bits(*range(40, 48)), h0, h0], np.uint64)
    hashes = np.array(
        [
            bits(*range(8)),  # kept: 4 bits from history 1
            bits(*range(16, 20)),  # kept
            bits(*range(16, 24)),  # kept: 4 bits from item 1
            bits(*range(6)),  # 2 from history 1 and 2, 2 from item 0: history, earliest
            bits(*range(5)),  # 1 from history 1, 3 from item 0: history 1
            bits(*range(7)),  # 3 from history 1, 1 from item 0: item 0
            bits(*range(16, 22)),  # 2 from items 1 and 2: the lower index, item 1
            bits(*range(16, 23)),  # 3 from item 1, 1 from item 2: item 2
        ],
        np.uint64,
    )
    expected = [
        (True, -1, False, -1),
        (True, -1, False, -1),
        (True, -1, False, -1),
        (False, 1, True, 2),
        (False, 1, True, 1),
        (False, 0, False, 1),
        (False, 1, False, 2),
        (False, 2, False, 1),
    ]
    assert reference_greedy(hashes, 3, history) == expected
    assert as_rows(deduplicate(hashes, 3, history)) == expected


def test_equal_distance_to_history_and_item_goes_to_history() -> None:
    history = np.array([0b1], np.uint64)
    hashes = np.array([0b1_0000_0000, 0b1_0000_0001], np.uint64)  # item 1: 1 bit from both
    assert as_rows(deduplicate(hashes, 1, history)) == [
        (True, -1, False, -1),
        (False, 0, True, 1),
    ]


def test_copies_of_a_kept_hash_point_at_its_first_occurrence() -> None:
    hashes = np.array([9, 5, 9, 9, 5], np.uint64)
    assert as_rows(deduplicate(hashes, 0)) == [
        (True, -1, False, -1),
        (True, -1, False, -1),
        (False, 0, False, 0),
        (False, 0, False, 0),
        (False, 1, False, 0),
    ]


def test_later_copy_can_match_an_item_kept_after_its_first_occurrence() -> None:
    # P matches history H. Q (near P, not near H) is kept after P. P's later copy is 2 bits
    # from H but 1 bit from Q, so it points at Q.
    history = np.array([0], np.uint64)
    p, q = 0b011, 0b111
    decision = deduplicate(np.array([p, q, p], np.uint64), 2, history)
    assert as_rows(decision) == [(False, 0, True, 2), (True, -1, False, -1), (False, 1, False, 1)]


def test_huge_exact_copy_cluster_stays_cheap() -> None:
    # 200,000 copies of a blank-image hash would be 2e10 pairs; deduplicate collapses them.
    rng = np.random.default_rng(3)
    hashes = np.concatenate(
        [
            np.full(200_000, 0x8000000000000000, np.uint64),
            rng.integers(0, 2**64, size=1_000, dtype=np.uint64),
        ]
    )
    hashes = hashes[rng.permutation(len(hashes))]
    first = int(np.flatnonzero(hashes == 0x8000000000000000)[0])
    decision = deduplicate(hashes, DEFAULT_PHASH_THRESHOLD)
    blank = hashes == 0x8000000000000000
    assert decision.keep.sum() == 1_001
    assert decision.keep[first]
    assert decision.duplicate_of[blank & ~decision.keep].tolist() == [first] * 199_999
    assert decision.distance[blank & ~decision.keep].tolist() == [0] * 199_999


def test_no_two_kept_hashes_are_near() -> None:
    threshold = 10
    hashes = planted(6_000, threshold, seed=5)
    history = planted(2_000, threshold, seed=6)
    decision = deduplicate(hashes, threshold, history)
    kept = hashes[decision.keep]
    assert len(find_near_pairs(kept, threshold)[0]) == 0
    assert len(find_near_pairs_between(kept, history, threshold)[0]) == 0
    # And every duplicate really is within the threshold of what it points at.
    dups = np.flatnonzero(~decision.keep)
    targets = np.where(
        decision.dup_in_history[dups],
        history[np.where(decision.dup_in_history[dups], decision.duplicate_of[dups], 0)],
        hashes[decision.duplicate_of[dups]],
    )
    assert np.bitwise_count(hashes[dups] ^ targets).tolist() == decision.distance[dups].tolist()
    assert (decision.distance[dups] <= threshold).all()
    assert decision.keep[decision.duplicate_of[dups][~decision.dup_in_history[dups]]].all()


def test_greedy_keep_on_pairs_equals_deduplicate() -> None:
    threshold = 6
    rng = np.random.default_rng(9)
    hashes = np.unique(planted(3_000, threshold, seed=9))  # greedy_keep has no copy collapsing
    hashes = hashes[rng.permutation(len(hashes))]
    history = planted(500, threshold, seed=10)
    pairs = find_near_pairs(hashes, threshold)
    hist = find_near_pairs_between(hashes, history, threshold)
    decision = greedy_keep(
        len(hashes),
        pairs[1],  # either order is accepted
        pairs[0],
        pairs[2],
        history_items=hist[0],
        history_indices=hist[1],
        history_distances=hist[2],
    )
    assert as_rows(decision) == as_rows(deduplicate(hashes, threshold, history))
    assert as_rows(decision) == reference_greedy(hashes, threshold, history)


def test_greedy_keep_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        greedy_keep(3, np.array([0]), np.array([3]), np.array([1]))
    with pytest.raises(ValueError, match="go together"):
        greedy_keep(3, np.array([0]), np.array([1]), np.array([1]), history_items=np.array([0]))
    with pytest.raises(ValueError, match="item to itself"):
        greedy_keep(3, np.array([1]), np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="distances must be Hamming distances"):
        greedy_keep(3, np.array([0]), np.array([1]), np.array([65]))


def test_deduplicate_empty_and_no_history() -> None:
    decision = deduplicate(np.zeros(0, np.uint64), 8, np.zeros(0, np.uint64))
    assert [len(a) for a in as_rows_arrays(decision)] == [0, 0, 0, 0]
    decision = deduplicate(np.array([0, 2**64 - 1], np.uint64), 8)
    assert as_rows(decision) == [(True, -1, False, -1), (True, -1, False, -1)]


def as_rows_arrays(decision: phash_index.DedupDecision) -> list[np.ndarray]:
    return [decision.keep, decision.duplicate_of, decision.dup_in_history, decision.distance]


def test_default_threshold_is_in_the_measured_range() -> None:
    # docs/phash_threshold.md: true near-duplicates of the peer sets are <= 4 bits apart and
    # the closest distinct images 14 bits.
    assert 4 <= DEFAULT_PHASH_THRESHOLD < 14


@pytest.mark.parametrize("threshold", [*THRESHOLDS, 14, 20])
def test_stored_band_tables_find_what_brute_force_finds(threshold: int, tmp_path) -> None:
    # The tables are written once, as a state segment does, and then probed with radii the
    # threshold asks for; 20 is beyond what three bands of radius <= 4 reach (the per-call
    # search answers it).
    rng = np.random.default_rng(100 + threshold)
    reference = np.sort(planted(12_000, threshold, seed=threshold))
    queries = rng.integers(0, 2**64, size=3_000, dtype=np.uint64)
    near = rng.choice(len(reference), 1_500, replace=False)
    queries[:1_500] = flip_bits(rng, reference[near], rng.integers(0, threshold + 3, size=1_500))
    phash_index.write_band_tables(tmp_path, reference)
    plan = phash_index._stored_plan(
        3_000, 12_000, phash_index.stored_band_widths(12_000), threshold
    )
    assert (plan is None) == (threshold == 20)
    assert sum(b.radius + 1 for b in plan or ()) > threshold if plan else True
    expected = brute_between(queries, reference, threshold)
    assert_same(phash_index.find_near_stored(queries, tmp_path, reference, threshold), expected)


def test_stored_band_tables_refuse_other_keys(tmp_path) -> None:
    phash_index.write_band_tables(tmp_path, np.arange(100, dtype=np.uint64))
    with pytest.raises(ValueError, match="band tables of 100 hashes, not 99"):
        phash_index.find_near_stored(
            np.arange(10, dtype=np.uint64), tmp_path, np.arange(99, dtype=np.uint64), 4
        )
