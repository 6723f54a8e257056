"""PDQ, ThreatExchange's 256-bit perceptual hash, and its eight dihedral variants, in numpy.

pHash's 64 bits catch re-encodes, resizes and tints; a flipped or rotated copy is 28-32 bits
from its original, as far as a different photo. PDQ (Facebook's ThreatExchange, documented in
its ``hashing.pdf``) is the same idea at 256 bits with a better-defined downsampling, and its
DCT has a property that makes flips and rotations cheap: mirroring the image only changes the
signs of some coefficients, and transposing it transposes the coefficient matrix. So one pass
over the pixels gives the hashes of all eight flips and rotations, and a copy is a flip or
rotation of another when any variant of one is near the other's hash.

The steps, as the reference defines them (this is an implementation of the published
algorithm, checked against the reference's expected hashes in ``../shared/peerdata``):

1. luminance ``0.299 R + 0.587 G + 0.114 B`` at full resolution;
2. a Jarosz filter: two passes of a box filter along rows then columns, each window
   ``(n + 127) // 128`` wide, so the 64x64 samples that follow average their neighbourhood;
3. decimation to 64x64 by sampling the centre of each cell;
4. a 16x16 DCT that leaves out the DC term (rows 1..16 of the 64-point DCT-II basis);
5. one bit per coefficient: above the median of the 256 or not.

The hex form is the reference's: 16 words of 16 bits, the last word first, bit ``j`` of word
``i`` the coefficient in row ``i``, column ``j``. A quality figure (0-100, from the 64x64's
gradients) says how much structure the image has: the reference treats under 50 as too flat to
trust a match on.

Why not the ``pdqhash`` wheel: on PyPI it is a source distribution that compiles C++ at
install, which a clean CI machine without a compiler cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

HASH_BITS = 256
_CELLS = 64
_COEFFS = 16
_JAROSZ_PASSES = 2
# The order of ``dihedral_hashes``' output, named as Pillow's ``Image.Transpose`` names the
# transform of the original that gives it (rotations counter-clockwise, as the reference's
# ``rotate-90`` test file). The reference's ``flipx`` mirrors about the x axis (Pillow's
# top-bottom flip), ``flipy`` left-right, and ``flip-plus-1`` is the transpose.
DIHEDRAL_NAMES = (
    "original",
    "rotate_90",
    "rotate_180",
    "rotate_270",
    "flip_left_right",
    "flip_top_bottom",
    "transpose",
    "transverse",
)


@dataclass(frozen=True)
class PdqHash:
    """A 256-bit PDQ hash as 64 hex digits, and the image's quality (0-100)."""

    hex: str
    quality: int


def pdq_of_image(image: Image.Image) -> PdqHash:
    """The PDQ hash of ``image`` (any mode; EXIF orientation is the caller's business)."""
    coefficients, quality = _dct16(image)
    return PdqHash(_bits_hex(coefficients), quality)


def dihedral_hashes(image: Image.Image) -> tuple[list[str], int]:
    """The hashes of the image's eight flips and rotations (``DIHEDRAL_NAMES`` order), from
    one pass over its pixels; and its quality."""
    coefficients, quality = _dct16(image)
    return [_bits_hex(c) for c in _dihedral_coefficients(coefficients)], quality


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of the same length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def dihedral_distance(hashes_a: list[str], hash_b: str) -> tuple[int, str]:
    """The nearest of ``hashes_a`` (one image's eight variants) to ``hash_b`` (another's
    original hash): the distance and which transform it is."""
    return min((hamming(h, hash_b), name) for h, name in zip(hashes_a, DIHEDRAL_NAMES, strict=True))


def luma(image: Image.Image) -> np.ndarray:
    """Luminance as float64, rows by columns, with the reference's weights; alpha is dropped
    and palettes expanded, as a decoder hands the reference RGB."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _dct16(image: Image.Image) -> tuple[np.ndarray, int]:
    values = luma(image)
    rows, cols = values.shape
    along_rows = _window(cols)
    along_cols = _window(rows)
    for _ in range(_JAROSZ_PASSES):
        values = _box(values, along_rows, axis=1)
        values = _box(values, along_cols, axis=0)
    cells = values[np.ix_(_centres(rows), _centres(cols))]
    basis = _dct_basis()
    return basis @ cells @ basis.T, _quality(cells)


def _window(length: int) -> int:
    """The reference's box width for ``length`` pixels down to 64 cells."""
    return (length + 2 * _CELLS - 1) // (2 * _CELLS)


def _box(values: np.ndarray, width: int, axis: int) -> np.ndarray:
    """The reference's 1-D box filter along ``axis``: output ``o`` is the mean of the inputs
    from ``o - (width - half)`` to ``o + half - 1`` (``half = (width + 2) // 2``), the window
    clipped at both ends."""
    n = values.shape[axis]
    half = (width + 2) // 2
    out_index = np.arange(n)
    low = np.maximum(0, out_index - (width - half))
    high = np.minimum(n - 1, out_index + half - 1)
    moved = np.moveaxis(values, axis, 0)
    cumulative = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)])
    sums = cumulative[high + 1] - cumulative[low]
    counts = (high - low + 1).reshape((-1,) + (1,) * (moved.ndim - 1))
    return np.moveaxis(sums / counts, 0, axis)


def _centres(length: int) -> np.ndarray:
    """The row (or column) sampled for each of the 64 cells: the one at the cell's centre."""
    return ((np.arange(_CELLS) + 0.5) * length / _CELLS).astype(np.int64)


@cache
def _dct_basis() -> np.ndarray:
    """Rows 1..16 of the 64-point DCT-II (the DC row left out), scaled by sqrt(2/64)."""
    i = np.arange(1, _COEFFS + 1)[:, None]
    j = np.arange(_CELLS)[None, :]
    return np.sqrt(2.0 / _CELLS) * np.cos(np.pi / 2 / _CELLS * i * (2 * j + 1))


def _quality(cells: np.ndarray) -> int:
    """The reference's quality: the sum of absolute neighbour differences on the 64x64 (as
    percent of full scale, truncated), over 90, capped at 100."""
    down = np.trunc((cells[:-1, :] - cells[1:, :]) * 100 / 255)
    across = np.trunc((cells[:, :-1] - cells[:, 1:]) * 100 / 255)
    total = int(np.abs(down).sum() + np.abs(across).sum())
    return min(100, total // 90)


def _bits_hex(coefficients: np.ndarray) -> str:
    """One bit per coefficient above the median, in the reference's hex layout."""
    median = float(np.median(coefficients))
    bits = coefficients > median
    words = (bits * (1 << np.arange(_COEFFS))[None, :]).sum(axis=1)
    return "".join(f"{int(w):04x}" for w in words[::-1])


def _dihedral_coefficients(c: np.ndarray) -> list[np.ndarray]:
    """The 16x16 coefficients of the image's flips and rotations, from its own.

    Mirroring left-right multiplies column ``v`` by ``(-1)^(v+1)`` (its basis is odd or even
    about the centre); up-down does the same to rows; transposing the image transposes the
    matrix. A rotation by 90 degrees is a transpose and a mirror.
    """
    sign = (-1.0) ** (np.arange(_COEFFS) + 1)
    left_right = c * sign[None, :]
    top_bottom = c * sign[:, None]
    rotate_180 = left_right * sign[:, None]
    transposed = c.T
    # Counter-clockwise by 90: the transpose mirrored top to bottom; by 270, left to right.
    rotate_90 = transposed * sign[:, None]
    rotate_270 = transposed * sign[None, :]
    transverse = transposed * sign[None, :] * sign[:, None]
    return [c, rotate_90, rotate_180, rotate_270, left_right, top_bottom, transposed, transverse]
