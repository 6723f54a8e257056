"""PDQ against ThreatExchange's expected hashes, and its dihedral variants against real flips.

The reference hashes (``../shared/peerdata/threatexchange-pdq``) come from two reference
implementations that differ from each other by a few bits on the same file; the reference's
own tests allow 16. Where the peer data is absent the tests on the wheel photos still run.
"""

from __future__ import annotations

import csv
import re

import pytest
from PIL import Image

from dataplatform.core.dedup.pdq import (
    DIHEDRAL_NAMES,
    dihedral_distance,
    dihedral_hashes,
    hamming,
    pdq_of_image,
)
from tests.conftest import PEERDATA, photo

PDQ = PEERDATA / "threatexchange-pdq" / "pdq"
needs_peerdata = pytest.mark.skipif(
    not PDQ.is_dir(), reason="../shared/peerdata/threatexchange-pdq absent"
)
# The reference's own tests allow this much between implementations (pdq_test.py:95-102).
REFERENCE_TOLERANCE = 16
# The usual PDQ match threshold.
MATCH = 31
# The reference's dihedral test files, by the Pillow transform that makes each.
DIH_FILES = {
    "bridge-1-original.jpg": "original",
    "bridge-2-rotate-90.jpg": "rotate_90",
    "bridge-3-rotate-180.jpg": "rotate_180",
    "bridge-4-rotate-270.jpg": "rotate_270",
    "bridge-5-flipx.jpg": "flip_top_bottom",
    "bridge-6-flipy.jpg": "flip_left_right",
    "bridge-7-flip-plus-1.jpg": "transpose",
    "bridge-8-flip-minus-1.jpg": "transverse",
}


def _expected() -> dict[str, list[str]]:
    """Expected hashes per data file, from the WASM test CSV and the Python README."""
    out: dict[str, list[str]] = {}
    with open(PDQ / "wasm" / "test" / "TestData" / "PDQMD5TestData.csv") as fh:
        for row in csv.DictReader(fh):
            if "/data/" in row["FilePath"] and len(row["Hash"]) == 64:
                out.setdefault(row["FilePath"].split("/data/")[1], []).append(row["Hash"])
    readme = (PDQ / "python" / "README.md").read_text()
    for digest, path in re.findall(r"^([0-9a-f]{64}),\d+,\.\./\.\./data/(\S+)$", readme, re.M):
        out.setdefault(path, []).append(digest)
    return out


@needs_peerdata
def test_hashes_match_the_reference_implementations_within_their_tolerance():
    checked = 0
    for rel, digests in _expected().items():
        path = PDQ / "data" / rel
        if not path.is_file():  # misc-images/b.jpg is cited but not in the upstream tree
            continue
        with Image.open(path) as image:
            got = pdq_of_image(image).hex
        for digest in digests:
            assert hamming(got, digest) <= REFERENCE_TOLERANCE, (rel, got, digest)
        checked += 1
    assert checked >= 15


@needs_peerdata
def test_every_dihedral_file_is_far_plainly_and_near_through_its_own_variant():
    with Image.open(PDQ / "data" / "reg-test-input" / "dih" / "bridge-1-original.jpg") as image:
        variants, quality = dihedral_hashes(image)
    assert quality == 100
    for name, transform in DIH_FILES.items():
        with Image.open(PDQ / "data" / "reg-test-input" / "dih" / name) as image:
            other = pdq_of_image(image).hex
        distance, matched = dihedral_distance(variants, other)
        assert (matched, distance <= REFERENCE_TOLERANCE) == (transform, True), name
        if transform != "original":
            assert hamming(variants[0], other) > 90, name  # plain PDQ cannot see it
    # PDQHasherTest.java:52: the original against its 90-degree rotation is 120 bits apart
    with Image.open(PDQ / "data" / "reg-test-input" / "dih" / "bridge-2-rotate-90.jpg") as image:
        assert hamming(variants[0], pdq_of_image(image).hex) == 120


@needs_peerdata
def test_distinct_images_stay_far_from_each_other_under_every_variant():
    data = PDQ / "data"
    paths = sorted((data / "reg-test-input" / "labelme-subset").glob("*"))
    paths += [data / "reg-test-input" / "pen-and-coaster.png", data / "misc-images" / "c.png"]
    paths += [data / "bridge-mods" / "aaa-orig.jpg"]
    hashes = []
    for path in paths:
        with Image.open(path) as image:
            hashes.append(dihedral_hashes(image)[0])
    assert len(hashes) >= 10
    nearest = min(
        dihedral_distance(a, b[0])[0] for i, a in enumerate(hashes) for b in hashes[i + 1 :]
    )
    assert nearest > 3 * MATCH  # 108 here: the threshold has a wide margin on this side


@needs_peerdata
def test_the_bridge_edits_and_modes_are_well_inside_the_threshold():
    with Image.open(PDQ / "data" / "bridge-mods" / "aaa-orig.jpg") as image:
        original = pdq_of_image(image).hex
    edited = list((PDQ / "data" / "bridge-mods").glob("*.jpg"))
    modes = [p for p in (PDQ / "data" / "misc-images" / "modes").iterdir() if p.suffix != ".md"]
    worst = {}
    for group, paths in (("edits", edited), ("modes", modes)):
        far = 0
        for path in paths:
            with Image.open(path) as image:
                far = max(far, hamming(original, pdq_of_image(image).hex))
        worst[group] = far
    assert worst["edits"] <= 20 and worst["modes"] <= 4, worst  # 16 and 2 here


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "china"])
def test_each_flip_and_rotation_of_a_wheel_photo_is_found_by_its_variant(name: str):
    image = photo(name)
    variants, _ = dihedral_hashes(image)
    for transform in DIHEDRAL_NAMES[1:]:
        moved = pdq_of_image(image.transpose(Image.Transpose[transform.upper()])).hex
        distance, matched = dihedral_distance(variants, moved)
        assert matched == transform and distance <= REFERENCE_TOLERANCE, (transform, distance)


def test_near_copies_are_near_and_other_photos_are_not():
    base = photo("astronaut")
    original = pdq_of_image(base).hex
    smaller = pdq_of_image(base.resize((256, 256))).hex
    gray = pdq_of_image(base.convert("L")).hex
    assert hamming(original, smaller) <= MATCH and hamming(original, gray) <= MATCH
    others = [dihedral_hashes(photo(n))[0] for n in ("coffee", "chelsea", "rocket", "china")]
    for variants in others:
        assert dihedral_distance(variants, original)[0] > MATCH


def test_a_flat_image_has_no_quality_to_trust():
    flat = pdq_of_image(Image.new("RGB", (200, 120), (90, 90, 90)))
    assert flat.quality == 0 and len(flat.hex) == 64
    assert pdq_of_image(photo("astronaut")).quality > 50


def test_the_hex_layout_puts_row_zero_in_the_last_word_and_column_zero_in_bit_zero():
    import numpy as np

    from dataplatform.core.dedup.pdq import _bits_hex

    coefficients = np.zeros((16, 16))
    coefficients[0, :] = 1.0  # row 0 above the median (0): word 0, written last
    coefficients[15, 0] = 1.0  # row 15, column 0: bit 0 of word 15, written first
    assert _bits_hex(coefficients) == "0001" + "0000" * 14 + "ffff"
