"""Finding uniform borders (letterbox, pillarbox, padding) so that a padded copy hashes like
its original.

A re-post that adds bars to fit another aspect ratio moves every pixel of the picture in the
hash's grid: pHash and PDQ see a different image. Cropping the bars away first gives the hash
the picture alone. A border is a run of rows (or columns) from an edge whose pixels all lie
within ``tolerance`` of that edge's colour, in any colour, allowing a small share of outliers
(JPEG ringing, a watermark corner). A run that reaches ``max_fraction`` of the side is taken
as the picture itself (a flat image, a wide sky), not a border, and a box smaller than
``min_side`` pixels is not trimmed at all.

The box is recorded with the hashes so an auditor can see what was hashed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_TOLERANCE = 12  # of 255, per channel: bars survive JPEG at any usual quality
DEFAULT_OUTLIER_SHARE = 0.02  # pixels of a border row allowed outside the tolerance
DEFAULT_MAX_FRACTION = 0.45  # of the width or height, per side
DEFAULT_MIN_SIDE = 16
# Borders are looked for on a copy at most this large: bars are wide, and a 12 MP photo
# need not be scanned at full size to find them.
_SCAN_SIDE = 512


@dataclass(frozen=True)
class TrimBox:
    """The picture inside its borders, in the image's pixels (right and bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int
    width: int
    height: int

    @property
    def trimmed(self) -> bool:
        return (self.left, self.top, self.right, self.bottom) != (0, 0, self.width, self.height)

    def as_text(self) -> str:
        """``left,top,right,bottom`` of ``width x height``, for a column and the ledger."""
        return f"{self.left},{self.top},{self.right},{self.bottom} of {self.width}x{self.height}"


def find_borders(
    image: Image.Image,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    outlier_share: float = DEFAULT_OUTLIER_SHARE,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    min_side: int = DEFAULT_MIN_SIDE,
) -> TrimBox:
    """The box of ``image`` inside its uniform borders (the whole image when it has none)."""
    width, height = image.size
    whole = TrimBox(0, 0, width, height, width, height)
    if width < min_side or height < min_side:
        return whole
    scan = image.convert("RGB")
    scale = max(width, height) / _SCAN_SIDE
    if scale > 1:
        scan = scan.resize((max(1, round(width / scale)), max(1, round(height / scale))))
    else:
        scale = 1.0
    pixels = np.asarray(scan, dtype=np.int16)
    rows, cols = pixels.shape[:2]
    top = _border_run(pixels, tolerance, outlier_share, int(rows * max_fraction))
    bottom = _border_run(pixels[::-1], tolerance, outlier_share, int(rows * max_fraction))
    across = pixels.transpose(1, 0, 2)
    left = _border_run(across, tolerance, outlier_share, int(cols * max_fraction))
    right = _border_run(across[::-1], tolerance, outlier_share, int(cols * max_fraction))
    box = TrimBox(
        left=min(width, round(left * scale)),
        top=min(height, round(top * scale)),
        right=max(0, width - round(right * scale)),
        bottom=max(0, height - round(bottom * scale)),
        width=width,
        height=height,
    )
    if box.right - box.left < min_side or box.bottom - box.top < min_side:
        return whole
    return box


def trim(image: Image.Image, box: TrimBox) -> Image.Image:
    """``image`` cropped to ``box`` (the image itself when nothing is trimmed)."""
    if not box.trimmed:
        return image
    return image.crop((box.left, box.top, box.right, box.bottom))


def _border_run(pixels: np.ndarray, tolerance: int, outlier_share: float, limit: int) -> int:
    """How many leading rows of ``pixels`` (rows, cols, 3) are border: each within
    ``tolerance`` of the first row's median colour, but for ``outlier_share`` of its pixels."""
    if limit <= 0:
        return 0
    reference = np.median(pixels[0], axis=0)
    window = pixels[:limit]
    deviation = np.abs(window - reference).max(axis=2)
    outside = (deviation > tolerance).mean(axis=1)
    uniform = outside <= outlier_share
    if uniform.all():
        # The edge's colour runs as far as a border may: that is the picture (a flat image,
        # a wide sky), not bars added around it.
        return 0
    return int(np.argmin(uniform))
