"""Uniform borders found and cropped, so letterboxed, pillarboxed and padded copies hash like
their originals; pictures without borders are left alone."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from dataplatform.core.dedup.border_trim import find_borders, trim
from dataplatform.core.dedup.pdq import hamming, pdq_of_image
from dataplatform.core.dedup.phash import phash_of_image
from tests.conftest import encode, photo


def _padded(
    image: Image.Image, left: int, top: int, right: int, bottom: int, colour
) -> Image.Image:
    width, height = image.size
    canvas = Image.new("RGB", (left + width + right, top + height + bottom), colour)
    canvas.paste(image, (left, top))
    # Through JPEG, as a re-post arrives: the bars are no longer exactly one colour.
    return Image.open(io.BytesIO(encode(canvas, quality=85))).convert("RGB")


CASES = {
    "letterbox": (0, 90, 0, 90, (0, 0, 0)),
    "pillarbox": (120, 0, 120, 0, (255, 255, 255)),
    "padding": (40, 25, 40, 25, (200, 30, 120)),
    "one side": (0, 0, 0, 150, (16, 16, 16)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_a_padded_copy_is_trimmed_back_to_its_picture_and_hashes_like_it(name: str, case: str):
    original = photo(name).convert("RGB")
    left, top, right, bottom, colour = CASES[case]
    padded = _padded(original, left, top, right, bottom, colour)
    box = find_borders(padded)
    width, height = original.size
    expected = (left, top, left + width, top + height)
    got = (box.left, box.top, box.right, box.bottom)
    assert all(abs(g - e) <= 3 for g, e in zip(got, expected, strict=True)), (got, expected)
    assert box.trimmed and box.as_text().endswith(f"of {padded.width}x{padded.height}")
    trimmed = trim(padded, box)
    assert hamming(pdq_of_image(trimmed).hex, pdq_of_image(original).hex) <= 24
    near = (phash_of_image(trimmed) ^ phash_of_image(original)).bit_count()
    far = (phash_of_image(padded) ^ phash_of_image(original)).bit_count()
    assert near <= 6 < far


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"])
def test_a_photo_without_borders_is_left_whole(name: str):
    image = photo(name)
    box = find_borders(image)
    assert not box.trimmed and trim(image, box) is image


def test_a_flat_or_tiny_image_is_not_trimmed_to_nothing():
    assert not find_borders(Image.new("RGB", (800, 600), (30, 30, 30))).trimmed
    assert not find_borders(Image.new("RGB", (10, 10), (0, 0, 0))).trimmed
    # mostly bars around a sliver of picture smaller than min_side: left whole
    sliver = _padded(photo("coffee").resize((12, 12)), 100, 100, 100, 100, (0, 0, 0))
    assert not find_borders(sliver).trimmed
