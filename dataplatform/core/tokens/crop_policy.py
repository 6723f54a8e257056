"""Square crop policies that take a source image to the tokenizer's resolution (section 7.6).

Three policies, chosen by what the tokens are for:

- ``random``: the largest square at a random position, for training (augmentation). The
  position comes from a hash of ``(seed, key)``, so a re-run with the same seed reproduces
  every crop and two images never share one stream of draws.
- ``center``: the largest centred square, for inference and evaluation.
- ``letterbox``: the whole image, long side scaled to the resolution, short side padded
  symmetrically, for inference when the edges matter (text, diagrams).

:func:`plan` is pure geometry on the source size, so the placement can be recorded in a data
card without decoding the image; :func:`apply` turns a placement into pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, get_args

from PIL import Image

# 7.6: 256 for 1B-class models, 336 or 448 for 10B-class. Other sizes are accepted by plan().
RESOLUTIONS = (256, 336, 448)
# The policies, declared once: the Literal is what a run config is checked against at launch.
CropPolicy = Literal["center", "letterbox", "random"]
POLICIES: tuple[str, ...] = get_args(CropPolicy)
# The 1B-class resolution, and the crop that keeps a fixed dataset reproducible.
DEFAULT_RESOLUTION = RESOLUTIONS[0]
DEFAULT_POLICY = "center"

# BICUBIC, not LANCZOS: Pillow antialiases both when downscaling, bicubic is what CLIP-style
# and torchvision preprocessing use (so tokenizers trained on them see familiar inputs), and it
# rings less than LANCZOS when tiny images are scaled up.
RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class CropBox:
    """A box in source pixels, PIL convention (right and bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


@dataclass(frozen=True)
class Placement:
    """Where the source goes: crop it, scale the crop to ``scaled_size``, paste at ``paste_offset``.

    For ``center`` and ``random`` the crop is square, ``scaled_size`` is ``(res, res)`` and the
    offset ``(0, 0)``; for ``letterbox`` the crop is the whole source and the offset is where the
    scaled image sits on the square canvas.
    """

    crop: CropBox
    scaled_size: tuple[int, int]
    paste_offset: tuple[int, int]


def _offset_from_hash(seed: int, key: str, slack: int) -> int:
    """A position in ``[0, slack]`` from SHA-256, stable across processes and Python versions."""
    if slack == 0:
        return 0
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    # 64 bits modulo a slack of a few thousand pixels: the bias is below 1e-15.
    return int.from_bytes(digest[:8], "big") % (slack + 1)


def plan(
    width: int,
    height: int,
    resolution: int,
    policy: str,
    *,
    seed: int | None = None,
    key: str = "",
) -> Placement:
    """The placement of a ``width`` x ``height`` source on a ``resolution`` square canvas.

    ``random`` needs ``seed`` (the run's augmentation seed) and uses ``key`` (the pair id) so
    each image gets its own reproducible position.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}; use one of {RESOLUTIONS}")
    if policy not in POLICIES:
        raise ValueError(f"unknown crop policy {policy!r}; use one of {POLICIES}")

    if policy == "letterbox":
        long_side, short_side = max(width, height), min(width, height)
        # Integer round-half-up of short * res / long, at least one pixel for extreme strips.
        scaled_short = max(1, (2 * short_side * resolution + long_side) // (2 * long_side))
        scaled = (resolution, scaled_short) if width >= height else (scaled_short, resolution)
        # Odd padding puts the extra pixel at the bottom / right.
        offset = ((resolution - scaled[0]) // 2, (resolution - scaled[1]) // 2)
        return Placement(CropBox(0, 0, width, height), scaled, offset)

    side = min(width, height)
    if policy == "center":
        left, top = (width - side) // 2, (height - side) // 2
    else:
        if seed is None:
            raise ValueError(
                "the random crop policy needs a seed (the run's augmentation seed) "
                "so crops are reproducible"
            )
        # Only the long axis has slack; the hash picks the position along it.
        left = _offset_from_hash(seed, key, width - side)
        top = _offset_from_hash(seed, key, height - side)
    return Placement(CropBox(left, top, left + side, top + side), (resolution, resolution), (0, 0))


def apply(
    image: Image.Image,
    placement: Placement,
    resolution: int,
    fill: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """The ``resolution`` x ``resolution`` RGB image that ``placement`` describes."""
    crop = placement.crop
    if crop.left < 0 or crop.top < 0 or crop.right > image.width or crop.bottom > image.height:
        raise ValueError(
            f"crop {crop} lies outside the {image.width}x{image.height} image; "
            "plan() the placement from this image's size"
        )
    sw, sh = placement.scaled_size
    ox, oy = placement.paste_offset
    if ox < 0 or oy < 0 or ox + sw > resolution or oy + sh > resolution:
        raise ValueError(
            f"placement {placement} does not fit a {resolution}x{resolution} canvas; "
            "plan() it with the same resolution"
        )
    scaled = image.convert("RGB").crop((crop.left, crop.top, crop.right, crop.bottom))
    if scaled.size != (sw, sh):
        scaled = scaled.resize((sw, sh), RESAMPLE)
    if (sw, sh) == (resolution, resolution):
        return scaled
    canvas = Image.new("RGB", (resolution, resolution), tuple(fill))
    canvas.paste(scaled, (ox, oy))
    return canvas
