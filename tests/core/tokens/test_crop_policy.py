"""Crop policies: exact geometry, odd and tiny sizes, reproducible random crops, real pixels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from dataplatform.core.tokens.crop_policy import (
    POLICIES,
    RESOLUTIONS,
    CropBox,
    Placement,
    apply,
    plan,
)

CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"  # 451x300


def test_center_landscape() -> None:
    assert plan(640, 480, 256, "center") == Placement(CropBox(80, 0, 560, 480), (256, 256), (0, 0))


def test_center_portrait_and_odd_slack() -> None:
    # 641 - 480 = 161: the odd pixel goes to the right.
    assert plan(641, 480, 256, "center").crop == CropBox(80, 0, 560, 480)
    assert plan(480, 641, 336, "center").crop == CropBox(0, 80, 480, 560)
    assert plan(481, 640, 448, "center").crop == CropBox(0, 79, 481, 560)


def test_center_square_is_whole_image() -> None:
    assert plan(300, 300, 448, "center").crop == CropBox(0, 0, 300, 300)


def test_letterbox_landscape() -> None:
    assert plan(640, 480, 256, "letterbox") == Placement(
        CropBox(0, 0, 640, 480), (256, 192), (0, 32)
    )


def test_letterbox_portrait() -> None:
    # 481 * 256 / 640 = 192.4 -> 192.
    assert plan(481, 640, 256, "letterbox") == Placement(
        CropBox(0, 0, 481, 640), (192, 256), (32, 0)
    )


def test_letterbox_odd_padding_goes_right_and_bottom() -> None:
    # 10 * 256 / 300 = 8.53 -> 9; 247 pixels of padding: 123 left, 124 right.
    assert plan(10, 300, 256, "letterbox") == Placement(CropBox(0, 0, 10, 300), (9, 256), (123, 0))
    # 300 * 336 / 641 = 157.25 -> 157; 179 of padding: 89 top, 90 bottom.
    assert plan(641, 300, 336, "letterbox").scaled_size == (336, 157)
    assert plan(641, 300, 336, "letterbox").paste_offset == (0, 89)


def test_letterbox_rounds_half_up() -> None:
    # 3 * 256 / 512 = 1.5 -> 2.
    assert plan(512, 3, 256, "letterbox").scaled_size == (256, 2)


def test_tiny_images() -> None:
    for policy in ("center", "letterbox"):
        assert plan(1, 1, 256, policy) == Placement(CropBox(0, 0, 1, 1), (256, 256), (0, 0))
    assert plan(10, 300, 256, "center").crop == CropBox(0, 145, 10, 155)
    # A strip too thin to keep a pixel after scaling still keeps one.
    assert plan(1, 5000, 256, "letterbox") == Placement(CropBox(0, 0, 1, 5000), (1, 256), (127, 0))
    assert plan(1, 1, 256, "random", seed=0, key="a").crop == CropBox(0, 0, 1, 1)


def test_random_within_bounds_and_square() -> None:
    for key in map(str, range(200)):
        for width, height in ((640, 480), (480, 641), (10, 300)):
            placement = plan(width, height, 256, "random", seed=7, key=key)
            crop = placement.crop
            side = min(width, height)
            assert crop.size == (side, side)
            assert crop.left >= 0 and crop.right <= width
            assert crop.top >= 0 and crop.bottom <= height
            assert placement.scaled_size == (256, 256) and placement.paste_offset == (0, 0)


def test_random_deterministic_per_seed_and_key() -> None:
    first = plan(640, 480, 256, "random", seed=3, key="laion/1.jpg")
    assert plan(640, 480, 256, "random", seed=3, key="laion/1.jpg") == first
    lefts = {plan(640, 480, 256, "random", seed=3, key=str(k)).crop.left for k in range(100)}
    assert len(lefts) > 50  # 161 possible positions, 100 keys
    by_seed = {plan(640, 480, 256, "random", seed=s, key="x").crop.left for s in range(50)}
    assert len(by_seed) > 25


def test_random_pinned_value() -> None:
    # The position is SHA-256 of "seed\0key": changing that would move every recorded crop.
    digest = hashlib.sha256(b"3\x00laion/1.jpg").digest()
    expected = int.from_bytes(digest[:8], "big") % 161
    assert plan(640, 480, 256, "random", seed=3, key="laion/1.jpg").crop.left == expected


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="needs a seed"):
        plan(640, 480, 256, "random")
    with pytest.raises(ValueError, match="unknown crop policy"):
        plan(640, 480, 256, "stretch")
    with pytest.raises(ValueError, match="size must be positive"):
        plan(0, 480, 256, "center")
    with pytest.raises(ValueError, match="resolution must be positive"):
        plan(640, 480, 0, "center")


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_apply_size_and_mode(resolution: int, policy: str) -> None:
    photo = Image.open(CHELSEA)
    placement = plan(photo.width, photo.height, resolution, policy, seed=1, key="chelsea")
    result = apply(photo, placement, resolution)
    assert result.size == (resolution, resolution)
    assert result.mode == "RGB"


def test_apply_letterbox_padding_is_fill() -> None:
    photo = Image.open(CHELSEA)  # 451x300 -> 256x170, 43 rows above, 43 below
    placement = plan(photo.width, photo.height, 256, "letterbox")
    assert placement.scaled_size == (256, 170)
    assert placement.paste_offset == (0, 43)
    fill = (12, 200, 34)
    pixels = np.asarray(apply(photo, placement, 256, fill=fill))
    assert (pixels[:43] == fill).all()
    assert (pixels[43 + 170 :] == fill).all()
    assert not (pixels[43 : 43 + 170] == fill).all()


def test_apply_letterbox_odd_padding_columns() -> None:
    image = Image.new("RGB", (10, 300), (255, 255, 255))
    placement = plan(10, 300, 256, "letterbox")
    pixels = np.asarray(apply(image, placement, 256, fill=(0, 0, 0)))
    assert (pixels[:, :123] == 0).all()
    assert (pixels[:, 123 + 9 :] == 0).all()
    assert pixels[:, 123 + 9 :].shape[1] == 124
    assert (pixels[:, 123 : 123 + 9] == 255).all()


def test_apply_center_takes_the_middle() -> None:
    # Left third red, middle green, right third blue: the centre crop of 300x100 is all green.
    image = Image.new("RGB", (300, 100), (0, 255, 0))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    pixels = np.asarray(apply(image, plan(300, 100, 256, "center"), 256))
    assert (pixels == (0, 255, 0)).all()


def test_apply_converts_grayscale_and_rejects_foreign_placement() -> None:
    gray = Image.new("L", (40, 20), 128)
    result = apply(gray, plan(40, 20, 256, "center"), 256)
    assert result.mode == "RGB" and result.getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(ValueError, match="outside"):
        apply(gray, plan(640, 480, 256, "center"), 256)
    with pytest.raises(ValueError, match="does not fit"):
        apply(gray, plan(40, 20, 448, "letterbox"), 256)
