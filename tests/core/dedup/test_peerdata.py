"""Our pHash and default threshold against the ground truth of other dedup tools' test data.

Each GROUND_TRUTH.md under ../shared/peerdata says which images are copies of which; these
tests assert it through ``phash_of_image`` and ``DEFAULT_PHASH_THRESHOLD``. The distances
asserted here are the measurement behind the threshold (docs/phash_threshold.md).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from dataplatform.core.dedup.phash import hamming, phash_of_image, to_hex
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD, deduplicate

PEERDATA = Path(__file__).resolve().parents[3].parent / "shared" / "peerdata"
if not PEERDATA.is_dir():
    pytest.skip(
        f"peer tools' ground-truth images not found at {PEERDATA}; they live in ../shared next "
        "to the repository (CI has them)",
        allow_module_level=True,
    )

IMAGEDEDUP = PEERDATA / "imagededup" / "tests" / "data"
JENSSEGERS = PEERDATA / "jenssegers-imagehash"
FOREST = JENSSEGERS / "tests" / "images" / "forest"
OFFICE = JENSSEGERS / "tests" / "images" / "office"
ORIENTATION = JENSSEGERS / "history_350ee21" / "tests" / "images" / "orientation"
PDQ = PEERDATA / "threatexchange-pdq" / "pdq" / "data"
T = DEFAULT_PHASH_THRESHOLD


@functools.cache
def phash(path: Path) -> int:
    with Image.open(path) as image:
        return phash_of_image(image)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix != ".md")


MODES = images_in(PDQ / "misc-images" / "modes")


def distance(a: Path, b: Path) -> int:
    return hamming(phash(a), phash(b))


def pairwise(paths: list[Path]) -> dict[tuple[str, str], int]:
    return {(a.name, b.name): distance(a, b) for a, b in itertools.combinations(paths, 2)}


# --- idealo/imagededup ------------------------------------------------------------------

MIXED = IMAGEDEDUP / "mixed_images"
UKBENCH_120 = MIXED / "ukbench00120.jpg"


def test_imagededup_encodings() -> None:
    # GROUND_TRUTH.md: imagehash 4.3.2 gives 9fee256238984d71 for ukbench00120 and its
    # resize (imagededup's own pHash is 1 bit off). The others are imagehash's values too.
    assert {p.name: to_hex(phash(p)) for p in sorted(MIXED.glob("ukbench*[0-9].jpg"))} == {
        "ukbench00120.jpg": "9fee256238984d71",
        "ukbench09268.jpg": "c73436c2da2f29c9",
    }
    assert to_hex(phash(MIXED / "ukbench00120_resize.jpg")) == "9fee256238984d71"
    assert to_hex(phash(MIXED / "ukbench00120_hflip.jpg")) == "cabb7237e8cd1824"
    assert to_hex(phash(MIXED / "ukbench00120_rotation.jpg")) == "850d513c4fdcbb32"


def test_imagededup_resize_gray_and_alpha_copies_are_near_duplicates() -> None:
    copies = {
        "resize": MIXED / "ukbench00120_resize.jpg",
        "gray": IMAGEDEDUP / "ukbench00120_gray.jpg",
        "alpha": IMAGEDEDUP / "alpha_channel_image.png",
    }
    assert {k: distance(UKBENCH_120, p) for k, p in copies.items()} == {
        "resize": 0,
        "gray": 0,
        "alpha": 0,
    }


def test_imagededup_hflip_and_rotation_are_not_phash_duplicates() -> None:
    assert distance(UKBENCH_120, MIXED / "ukbench00120_hflip.jpg") == 32
    assert distance(UKBENCH_120, MIXED / "ukbench00120_rotation.jpg") == 34
    assert distance(UKBENCH_120, MIXED / "ukbench09268.jpg") == 30  # upstream: > 20


def test_imagededup_base_images_are_pairwise_distinct() -> None:
    distances = pairwise(sorted((IMAGEDEDUP / "base_images").glob("*.jpg")))
    assert len(distances) == 45
    assert min(distances.values()) == 22  # GROUND_TRUTH.md: smallest pairwise distance 22
    assert min(distances.values()) > T


def test_imagededup_same_bytes_under_wrong_extensions_and_webp_reencode() -> None:
    original = phash(IMAGEDEDUP / "base_images" / "ukbench09380.jpg")
    formats = sorted((IMAGEDEDUP / "formats_images").glob("ukbench09380.*"))
    assert [p.suffix for p in formats] == [".bmp", ".jpeg", ".png", ".svg", ".webp"]
    assert [hamming(phash(p), original) for p in formats] == [0, 0, 0, 0, 0]


def test_imagededup_corrupt_file_fails_to_decode() -> None:
    corrupt = MIXED / "ukbench09268_corrupt.jpg"
    assert corrupt.stat().st_size == (MIXED / "ukbench09268.jpg").stat().st_size
    with pytest.raises(UnidentifiedImageError):
        phash(corrupt)


def test_imagededup_duplicates_to_remove_on_mixed_images() -> None:
    # Upstream find_duplicates_to_remove (threshold 10) removes exactly one of ukbench00120 and
    # its resize; the greedy keeps the first in order and drops the other, 0 bits away.
    files = sorted(p for p in MIXED.glob("*.jpg") if "corrupt" not in p.name)
    decision = deduplicate(np.array([phash(p) for p in files], np.uint64), T)
    removed = [
        (p.name, files[int(decision.duplicate_of[k])].name, int(decision.distance[k]))
        for k, p in enumerate(files)
        if not decision.keep[k]
    ]
    assert removed == [("ukbench00120_resize.jpg", "ukbench00120.jpg", 0)]


# --- jenssegers/imagehash ---------------------------------------------------------------


def test_jenssegers_forest_edits_are_all_near_duplicates() -> None:
    distances = pairwise(sorted(FOREST.glob("*.jpg")))
    # Upstream asserts < 10 for every pair; the copyright overlay is the farthest edit.
    assert distances == {
        ("forest-copyright.jpg", "forest-cropped.jpg"): 4,
        ("forest-copyright.jpg", "forest-high.jpg"): 4,
        ("forest-copyright.jpg", "forest-low.jpg"): 4,
        ("forest-copyright.jpg", "forest-thumb.jpg"): 4,
        ("forest-cropped.jpg", "forest-high.jpg"): 0,
        ("forest-cropped.jpg", "forest-low.jpg"): 0,
        ("forest-cropped.jpg", "forest-thumb.jpg"): 0,
        ("forest-high.jpg", "forest-low.jpg"): 0,
        ("forest-high.jpg", "forest-thumb.jpg"): 0,
        ("forest-low.jpg", "forest-thumb.jpg"): 0,
    }
    assert max(distances.values()) <= T


def test_jenssegers_office_frames_are_distinct() -> None:
    distances = pairwise(sorted(OFFICE.glob("*.jpg")))
    assert sorted(distances.values()) == [28, 30, 30]  # upstream: every pair > 10
    forest_office = [distance(a, b) for a in FOREST.glob("*.jpg") for b in OFFICE.glob("*.jpg")]
    assert min(forest_office) == 30


ORIENTATION_TWINS = [("f0", "fb"), ("fb", "f0"), ("fh", "fv"), ("fv", "fh")]


def test_jenssegers_orientation_set() -> None:
    # r180 equals flip-both, etc.: 8 byte-identical pairs hash equal. Any other rotation or
    # flip is far: a plain pHash is not invariant to them (upstream needs autorotate for it).
    same = [(f"r{r}-{a}", f"r{r + 180}-{b}") for r in (0, 90) for a, b in ORIENTATION_TWINS]
    match = {p.stem.removeprefix("match-"): p for p in ORIENTATION.glob("match-*.jpg")}
    assert [distance(match[a], match[b]) for a, b in same] == [0] * 8
    distinct = [match[a] for a, _ in same]
    assert min(pairwise(distinct).values()) == 26
    mismatch = sorted(ORIENTATION.glob("mismatch-*.jpg"))
    assert distance(mismatch[0], FOREST / "forest-high.jpg") == 0
    assert distance(mismatch[1], OFFICE / "tumblr_ndyfnr7lk21tubinno1_1280.jpg") == 0
    assert distance(mismatch[2], OFFICE / "tumblr_ndyfdoR6Wp1tubinno1_1280.jpg") == 0
    assert sorted(pairwise(mismatch).values()) == [30, 30, 32]  # upstream: every pair > 5


# --- facebook/ThreatExchange pdq ---------------------------------------------------------

BRIDGE = PDQ / "bridge-mods" / "aaa-orig.jpg"


def test_pdq_bridge_edits_caught_at_default_threshold() -> None:
    edits = {p.stem: distance(BRIDGE, p) for p in sorted((PDQ / "bridge-mods").glob("*.jpg"))}
    del edits["aaa-orig"]
    assert edits == {
        "blur-a-little": 0,
        "blur-a-lot": 0,
        "high-contrast": 0,
        "high-saturation": 0,
        "sharpen-a-little": 0,
        "sharpen-a-lot": 4,
        "shrink-a-little": 0,
        "shrink-a-lot": 0,
        "square-128x128": 0,
        "square-256x256": 0,
        "square-512x512": 0,
    }
    assert sorted(k for k, d in edits.items() if d <= T) == sorted(edits)  # all 11 caught


def test_pdq_pil_modes_are_all_near_duplicates() -> None:
    modes = {p.name: distance(BRIDGE, p) for p in MODES}
    assert modes == {
        "1.png": 0,
        "CMYK.jpg": 0,
        "F.webp": 0,
        "HSV.webp": 0,
        "I.webp": 0,
        "L.png": 0,
        "LA.png": 0,
        "LAB.webp": 0,
        "P.png": 0,
        "PA.webp": 0,
        "RGB.jpg": 0,
        "RGBA.png": 0,
        "YCbCr.jpg": 0,
        "original.jpg": 0,
    }


def test_pdq_rotations_and_flips_are_not_caught() -> None:
    dih = {p.stem: distance(BRIDGE, p) for p in sorted((PDQ / "reg-test-input" / "dih").glob("*"))}
    assert dih == {
        "bridge-1-original": 0,
        "bridge-2-rotate-90": 32,
        "bridge-3-rotate-180": 32,
        "bridge-4-rotate-270": 28,
        "bridge-5-flipx": 32,
        "bridge-6-flipy": 32,
        "bridge-7-flip-plus-1": 30,
        "bridge-8-flip-minus-1": 30,
    }


PDQ_NEGATIVES = [
    *sorted((PDQ / "reg-test-input" / "labelme-subset").glob("*.jpg")),
    PDQ / "misc-images" / "c.png",
    PDQ / "misc-images" / "small.jpg",
    PDQ / "misc-images" / "wee.jpg",
    PDQ / "reg-test-input" / "pen-and-coaster.png",
]


def test_pdq_negatives_are_distinct() -> None:
    assert len(PDQ_NEGATIVES) == 11
    assert min(pairwise(PDQ_NEGATIVES).values()) == 22
    assert min(distance(BRIDGE, p) for p in PDQ_NEGATIVES) == 22


# --- the threshold ----------------------------------------------------------------------


def test_default_threshold_separates_all_peer_sets() -> None:
    """Every labelled near-duplicate is within the threshold; no two distinct objects are.

    One image per distinct object across the three sets (EXIF-rotation shots carry no label
    and are left out); the closest such pair is 14 bits apart, the farthest copy 4.
    """
    formats = ("Iggy.1024.ppm", "baboon.pgm", "copyleft.tiff", "giphy.gif", "marbles.pbm")
    objects = [
        *sorted((IMAGEDEDUP / "base_images").glob("*.jpg")),
        *(IMAGEDEDUP / "formats_images" / name for name in formats),
        FOREST / "forest-high.jpg",
        *sorted(OFFICE.glob("*.jpg")),
        BRIDGE,
        *PDQ_NEGATIVES,
    ]
    distinct = pairwise(objects)
    assert len(objects) == 31
    closest = min(distinct, key=distinct.__getitem__)
    assert (closest, distinct[closest]) == (("ukbench01380.jpg", "c.png"), 14)
    copies = [
        distance(UKBENCH_120, MIXED / "ukbench00120_resize.jpg"),
        *pairwise(sorted(FOREST.glob("*.jpg"))).values(),
        *(distance(BRIDGE, p) for p in (PDQ / "bridge-mods").glob("*.jpg")),
        *(distance(BRIDGE, p) for p in MODES),
    ]
    assert max(copies) == 4
    assert max(copies) <= T < distinct[closest]
