"""pHash must equal imagehash.phash bit for bit: real photos, odd modes and degenerate sizes."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage
import sklearn
from PIL import Image

from dataplatform.core.dedup.phash import (
    from_hex,
    gray32_of_image,
    hamming,
    phash_batch_from_gray32,
    phash_of_image,
    to_hex,
)

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"
PHOTOS = [
    SKIMAGE_DATA / "astronaut.png",
    SKIMAGE_DATA / "chelsea.png",
    SKIMAGE_DATA / "coffee.png",
    SKIMAGE_DATA / "rocket.jpg",
    SKIMAGE_DATA / "camera.png",
    SKIMAGE_DATA / "moon.png",
    SKIMAGE_DATA / "coins.png",
    SKIMAGE_DATA / "hubble_deep_field.jpg",
    SKIMAGE_DATA / "retina.jpg",
    SKIMAGE_DATA / "motorcycle_left.png",
    SKIMAGE_DATA / "ihc.png",
    SKIMAGE_DATA / "page.png",
    SKIMAGE_DATA / "brick.png",
    SKIMAGE_DATA / "gravel.png",
    SKLEARN_IMAGES / "china.jpg",
    SKLEARN_IMAGES / "flower.jpg",
]


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_equals_imagehash_on_real_photos(path: Path) -> None:
    image = open_image(path)
    assert to_hex(phash_of_image(image)) == str(imagehash.phash(image))


def edge_images() -> dict[str, Image.Image]:
    camera = np.asarray(open_image(SKIMAGE_DATA / "camera.png"))
    astronaut = open_image(SKIMAGE_DATA / "astronaut.png")
    alpha = Image.fromarray(np.tile(np.arange(512, dtype=np.uint8)[:, None] // 2, (1, 512)))
    rgba = astronaut.copy()
    rgba.putalpha(alpha)
    return {
        "1x1": Image.new("RGB", (1, 1), (200, 40, 90)),
        "1x1_black_L": Image.new("L", (1, 1), 0),
        "constant_rgb": Image.new("RGB", (64, 48), (12, 200, 100)),
        "constant_white": Image.new("RGB", (300, 200), (255, 255, 255)),
        "constant_black": Image.new("L", (300, 200), 0),
        "tall_strip_1px": Image.fromarray(camera[:, :1].copy()),
        "wide_strip_1px": Image.fromarray(camera[:1].copy()),
        "rgba_with_alpha": rgba,
        "palette_P": open_image(SKIMAGE_DATA / "chelsea.png").convert("P"),
        "palette_P_adaptive": astronaut.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "i16_low_values": Image.fromarray(camera.astype(np.uint16)),
        "i16_full_range": Image.fromarray(camera.astype(np.uint16) * 257),
        "bilevel_1": Image.fromarray(camera).convert("1"),
        "float_F": Image.fromarray(camera.astype(np.float32) / 3),
        "LA": open_image(SKIMAGE_DATA / "coffee.png").convert("LA"),
        "CMYK": open_image(SKIMAGE_DATA / "coffee.png").convert("CMYK"),
        "tiny_3x2": Image.fromarray(camera[200:202, 300:303].copy()),
    }


@pytest.mark.parametrize("name", list(edge_images()))
def test_equals_imagehash_on_edge_images(name: str) -> None:
    image = edge_images()[name]
    assert to_hex(phash_of_image(image)) == str(imagehash.phash(image))


def test_i16_images_really_are_16_bit() -> None:
    images = edge_images()
    assert images["i16_low_values"].mode == "I;16"
    assert images["i16_full_range"].mode == "I;16"


def test_flat_images_hash_to_their_exact_values() -> None:
    # Only the DC coefficient is non-zero: the median is 0 and only the first bit is above it.
    # A plain cosine-matrix DCT would leave +-1e-12 noise here and flip bits at random.
    assert phash_of_image(Image.new("RGB", (64, 48), (12, 200, 100))) == 1 << 63
    assert phash_of_image(Image.new("L", (7, 7), 0)) == 0


def test_batch_equals_one_by_one() -> None:
    images = [open_image(p) for p in PHOTOS] + list(edge_images().values())
    batch = phash_batch_from_gray32(np.stack([gray32_of_image(im) for im in images]))
    assert batch.dtype == np.uint64
    assert batch.tolist() == [phash_of_image(im) for im in images]


def test_batch_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 32, 32\)"):
        phash_batch_from_gray32(np.zeros((32, 32)))
    assert phash_batch_from_gray32(np.zeros((0, 32, 32))).tolist() == []


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "0000000000000000"),
        (1, "0000000000000001"),
        (0xABC, "0000000000000abc"),
        (1 << 63, "8000000000000000"),
        (2**64 - 1, "ffffffffffffffff"),
        (0x9FEE256238984D71, "9fee256238984d71"),
    ],
)
def test_hex_round_trip(value: int, text: str) -> None:
    assert to_hex(value) == text
    assert from_hex(text) == value
    assert from_hex(text.upper()) == value


def test_hex_round_trip_random_and_numpy_values() -> None:
    values = np.random.default_rng(7).integers(0, 2**64, size=1000, dtype=np.uint64)
    assert [from_hex(to_hex(v)) for v in values] == values.tolist()


@pytest.mark.parametrize(
    "text", ["", "abc", "0x9fee256238984d7", "9fee256238984d710", "9fee25623898zd71"]
)
def test_from_hex_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="16 hex digits"):
        from_hex(text)


@pytest.mark.parametrize("value", [-1, 2**64])
def test_to_hex_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        to_hex(value)


def test_hamming_equals_imagehash_difference() -> None:
    a, b = open_image(PHOTOS[0]), open_image(PHOTOS[1])
    expected = imagehash.phash(a) - imagehash.phash(b)
    assert hamming(phash_of_image(a), phash_of_image(b)) == expected
    assert hamming(0, 2**64 - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(np.uint64(5), 5) == 0
