"""The 256-bit search finds exactly what brute force finds; flips and rotations of real photos
are duplicates of their originals, across days and within one; distinct photos stay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.dedup.pdq import DIHEDRAL_NAMES, dihedral_hashes
from dataplatform.core.dedup.pdq_index import (
    INVERSE,
    distances,
    find_pdq_pairs,
    find_pdq_pairs_between,
    pdq_deduplicate,
    pdq_words,
)
from tests.conftest import photo

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]


def _random_with_near_copies(rng: np.random.Generator, n: int) -> np.ndarray:
    base = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64)
    base ^= rng.integers(0, 2, size=(n, 4), dtype=np.int64).astype(np.uint64) << np.uint64(63)
    copies = base[: n // 2].copy()
    for row, flips in enumerate(rng.integers(0, 45, size=len(copies))):
        for bit in rng.choice(256, size=flips, replace=False):
            copies[row, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return np.concatenate([base, copies])


def _brute(a: np.ndarray, b: np.ndarray, threshold: int, self_join: bool) -> set:
    found = set()
    for i in range(len(a)):
        d = distances(np.repeat(a[i : i + 1], len(b), axis=0), b)
        for j in np.flatnonzero(d <= threshold):
            if not self_join or i < j:
                found.add((i, int(j), int(d[j])))
    return found


@pytest.mark.parametrize("threshold", [0, 7, 31, 40])
def test_the_search_finds_exactly_the_brute_force_pairs(threshold: int):
    rng = np.random.default_rng(threshold)
    hashes = _random_with_near_copies(rng, 300)
    i, j, d = find_pdq_pairs(hashes, threshold)
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == _brute(
        hashes, hashes, threshold, True
    )
    queries, reference = hashes[:200], hashes[200:]
    i, j, d = find_pdq_pairs_between(queries, reference, threshold)
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == _brute(
        queries, reference, threshold, False
    )
    assert len(i) > 0 or threshold == 0


def _variants(images: list[Image.Image]) -> np.ndarray:
    return np.stack([pdq_words(dihedral_hashes(image)[0]) for image in images])


def test_flips_and_rotations_are_copies_of_yesterdays_originals_and_say_which():
    originals = [photo(name) for name in PHOTOS[:3]]
    history = _variants(originals)[:, 0, :]
    today, expected = [], []
    for k, image in enumerate(originals):
        for name in DIHEDRAL_NAMES[1:]:
            today.append(image.transpose(Image.Transpose[name.upper()]))
            expected.append((k, DIHEDRAL_NAMES[INVERSE[DIHEDRAL_NAMES.index(name)]]))
    today += [photo(name) for name in PHOTOS[3:]]  # distinct: kept
    decision, variant = pdq_deduplicate(_variants(today), history=history)
    copies = len(expected)
    assert decision.keep.tolist() == [False] * copies + [True] * 3
    assert decision.dup_in_history[:copies].all()
    got = [(int(decision.duplicate_of[k]), DIHEDRAL_NAMES[variant[k]]) for k in range(copies)]
    assert got == expected
    assert (decision.distance[:copies] <= 24).all()  # 0 to 20 here: well inside 31


def test_within_one_day_the_first_is_kept_and_its_mirror_points_at_it():
    image = photo("coffee")
    day = [image, photo("rocket"), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    decision, variant = pdq_deduplicate(_variants(day))
    assert decision.keep.tolist() == [True, True, False]
    assert int(decision.duplicate_of[2]) == 0 and not decision.dup_in_history[2]
    assert DIHEDRAL_NAMES[variant[2]] == "flip_left_right"


def test_distinct_photos_and_their_flips_never_merge_with_each_other():
    images = [photo(name) for name in PHOTOS]
    decision, _ = pdq_deduplicate(_variants(images))
    assert decision.keep.all()


def test_a_malformed_hash_or_threshold_is_an_error():
    with pytest.raises(ValueError, match="64 hex digits"):
        pdq_words(["abc"])
    with pytest.raises(ValueError, match="threshold"):
        find_pdq_pairs(np.zeros((2, 4), np.uint64), 300)
