"""Model-free technical scores of one decoded image: size, shape, sharpness, exposure.

These are cheap enough to compute for every pair on a CPU worker, and they are written as
columns before any filtering (see ``quality_rules``) so their thresholds can be changed and
re-applied without decoding the images again.

Sharpness is the variance of the Laplacian (Pech-Pacheco et al., 2000): a 3x3 second-derivative
filter responds to edges and fine texture, so a blurred image has a low variance. The raw value
depends on resolution: a 2000 px photo spreads each edge over more pixels than a 500 px copy of
it, so its raw score is several times lower (hubble_deep_field: 51 at 2000 px, 537 at 1000 px).
The grayscale image is therefore shrunk (Lanczos) so its longer side is ``BLUR_LONG_SIDE`` px,
which makes one threshold hold for full-size photos (hubble_deep_field scores 1106, 1087 and
1101 at 2000, 1000 and 750 px). Smaller images are measured as they are, not enlarged:
enlarging smooths them, and a sharp smooth photo shown at 200 px (moon 5.6, retina 14.6) would
then read as blurry; at native size they score 110 and 362.

Measured on the photos shipped with scikit-image and scikit-learn: each sharp original, and
Gaussian-blurred copies (PIL ``GaussianBlur``, radius 1.5 and 3 px at the original size).
``clock_motion`` is skimage's photo with real motion blur, listed as it ships:

    photo                   size   sharp blur r1.5  blur r3
    astronaut           512x512    861.9      22.1      4.4
    brick               512x512    176.5      17.9      3.1
    camera              512x512   1131.5      15.6      2.6
    chelsea             451x300    401.5       7.6      2.7
    china               640x427   4648.6      44.1      5.6
    coffee              600x400   1395.5      23.9      5.1
    coins               384x303   1925.4      23.3      3.9
    flower              640x427    474.3      19.5      4.4
    grass               512x512   5295.4      45.8      4.2
    gravel              512x512   1645.7      43.5      5.4
    horse               400x328   1433.9      38.1      5.8
    hubble_deep_field  1000x872   1086.8     132.7     16.6
    moon                512x512     65.1       2.6      1.3
    motorcycle_left     741x500   1642.2     100.3     13.0
    retina             1411x1411    91.7      37.9      9.6
    rocket              640x427    681.6      11.3      2.4
    clock_motion        400x300     24.3       1.4      0.9

Every sharp photo scores >= 65.1 (moon, mostly smooth surface), every radius-3 copy <= 16.6,
and the motion-blurred clock 24.3. A radius-1.5 blur is mild and only partly caught (2.6 to
132.7). ``quality_rules`` picks its blur threshold in the 16.6-65.1 gap; the tests re-measure
this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Longer side, in px, of the grayscale image the Laplacian is taken on (see module docstring).
BLUR_LONG_SIDE = 512
# Grayscale levels counted as clipped: 0-2 is crushed black, 253-255 blown-out white. A margin
# of 2 levels catches JPEG noise around pure black/white without counting dark or bright detail.
CLIP_LOW = 2
CLIP_HIGH = 253


@dataclass(frozen=True)
class TechnicalScores:
    shortest_side: int
    aspect_ratio: float
    blur_variance: float
    clipped_fraction: float


def technical_scores(
    image: Image.Image, width: int | None = None, height: int | None = None
) -> TechnicalScores:
    """Score one decoded image.

    ``width``/``height`` are the original size when the caller decoded a reduced copy (JPEG
    draft mode): size and aspect rules are about the real image, while sharpness and exposure
    are measured on whatever pixels were decoded. Give both or neither.
    """
    if (width is None) != (height is None):
        raise ValueError(
            f"give both width and height or neither, not width={width!r}, height={height!r}"
        )
    if width is None or height is None:
        width, height = image.size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"decoded image is empty ({image.width}x{image.height} px)")

    short, long = sorted((int(width), int(height)))
    gray = image.convert("L")
    return TechnicalScores(
        shortest_side=short,
        aspect_ratio=long / short,
        blur_variance=laplacian_variance(gray),
        clipped_fraction=clipped_fraction(gray),
    )


def laplacian_variance(gray: Image.Image, long_side: int = BLUR_LONG_SIDE) -> float:
    """Variance of the 4-neighbour Laplacian of ``gray``, shrunk to at most ``long_side`` px.

    Returns 0.0 for an image too thin to have an interior pixel: it has no detail to measure.
    """
    if max(gray.size) > long_side:
        scale = long_side / max(gray.size)
        size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    if pixels.shape[0] < 3 or pixels.shape[1] < 3:
        return 0.0
    laplacian = (
        pixels[:-2, 1:-1]
        + pixels[2:, 1:-1]
        + pixels[1:-1, :-2]
        + pixels[1:-1, 2:]
        - 4.0 * pixels[1:-1, 1:-1]
    )
    return float(laplacian.var())


def clipped_fraction(gray: Image.Image) -> float:
    """Share of pixels at or below ``CLIP_LOW`` or at or above ``CLIP_HIGH``."""
    pixels = np.asarray(gray)
    clipped = np.count_nonzero((pixels <= CLIP_LOW) | (pixels >= CLIP_HIGH))
    return clipped / pixels.size
