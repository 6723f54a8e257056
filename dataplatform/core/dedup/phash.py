"""64-bit perceptual hash (pHash), bit for bit the value ``imagehash.phash`` gives.

imagehash is the reference users trust, so the hash must agree with it exactly: the same
``convert("L")`` and 32x32 Lanczos resize, the unnormalised type-II DCT along both axes, the
8x8 low-frequency block, ``bit = coefficient > median``, read row-major with the first bit
most significant (the order of imagehash's hex string).

The DCT is two pairs of matrix products with precomputed numpy matrices instead of
``scipy.fftpack``, so raw ingest can hash a batch of decoded images at once without importing
scipy. The first pair only adds and subtracts mirrored pixels (a fast-DCT butterfly written as a
matrix of 0 and +-1), which is exact on integer pixels in any summation order. That exactness
matters: the coefficients a symmetric or flat image cancels to zero come out as exact zeros, as
they do from scipy's FFT-based DCT, instead of +-1e-12 rounding noise. Flat images (blank
stand-in images are common in web data) have a median of exactly 0, and noise there would flip
bits. The second pair applies the cosines to the folded values.

Measured on 3,686 images (photos and their edits in many PIL modes, flat, 1-pixel and random
synthetic images, random crops and JPEG re-encodes of the wheel photos): identical hashes
except for 6 degenerate images, exactly mirror-symmetric synthetics and crops 2 pixels wide.
In those, half the coefficients are exactly 0 in exact arithmetic, but scipy's FFT leaves
some at +-1e-13, so imagehash's bits come from that rounding noise. This module returns the
exact-arithmetic bits.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

HASH_BITS = 64
SIDE = 32  # imagehash: hash_size 8 x highfreq_factor 4
_LOW = 8  # the low-frequency block that becomes the hash
_HEX = re.compile(r"[0-9a-fA-F]{16}")


def _dct_factors() -> tuple[np.ndarray, np.ndarray]:
    """Return (fold, cosines) with ``cosines @ fold`` = rows 0..7 of the 32-point DCT-II.

    DCT-II: X_k = 2 * sum_n x_n cos(pi k (2n+1) / 64). Since the cosine for n and 31-n differ
    only by the sign (-1)^k, odd k need only x_n - x_{31-n} and even k only x_n + x_{31-n};
    folding the sums twice more the same way leaves k = 0 and k = 4 on four values each.
    Rows of ``fold``: 16 differences (k = 1, 3, 5, 7), 8 differences of sums (k = 2, 6),
    4 (k = 4), 4 sums of everything folded (k = 0).
    """
    eye = np.eye(SIDE)
    sums, diffs = eye[:16] + eye[:15:-1], eye[:16] - eye[:15:-1]
    sums2, diffs2 = sums[:8] + sums[:7:-1], sums[:8] - sums[:7:-1]
    sums3, diffs3 = sums2[:4] + sums2[:3:-1], sums2[:4] - sums2[:3:-1]
    fold = np.vstack([diffs, diffs2, diffs3, sums3])

    def cos_row(k: int, count: int) -> np.ndarray:
        n = np.arange(count)
        return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * SIDE))

    cosines = np.zeros((_LOW, SIDE))
    for k in (1, 3, 5, 7):
        cosines[k, 0:16] = cos_row(k, 16)
    for k in (2, 6):
        cosines[k, 16:24] = cos_row(k, 8)
    cosines[4, 24:28] = cos_row(4, 4)
    cosines[0, 28:32] = 2.0
    return fold, cosines


_FOLD, _COSINES = _dct_factors()


def gray32_of_image(image: Image.Image) -> np.ndarray:
    """The (32, 32) float64 grayscale thumbnail pHash is computed from, exactly as imagehash
    makes it (no EXIF orientation: apply ``ImageOps.exif_transpose`` first if wanted)."""
    small = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64)


def phash_batch_from_gray32(gray: np.ndarray) -> np.ndarray:
    """pHash of each (32, 32) grayscale thumbnail in ``gray`` (n, 32, 32): (n,) uint64.

    Pixels should be the integer values 0..255 that ``gray32_of_image`` gives; any other
    float values still hash, but exact agreement with imagehash is only promised for those.
    """
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 3 or gray.shape[1:] != (SIDE, SIDE):
        raise ValueError(
            f"gray must have shape (n, {SIDE}, {SIDE}), got {gray.shape}; "
            "stack gray32_of_image(...) results"
        )
    n = len(gray)
    # Each product is one 2-D GEMM over the whole batch: right-multiplying the stacked rows by
    # M.T and transposing each image in between applies M along both axes.
    half = (gray.reshape(n * SIDE, SIDE) @ _FOLD.T).reshape(n, SIDE, SIDE).transpose(0, 2, 1)
    folded_t = half.reshape(n * SIDE, SIDE) @ _FOLD.T  # (FOLD @ g @ FOLD.T).T, exact
    cos_half = (folded_t @ _COSINES.T).reshape(n, SIDE, _LOW).transpose(0, 2, 1)
    low = (cos_half.reshape(n * _LOW, SIDE) @ _COSINES.T).reshape(n, _LOW * _LOW)
    median = np.median(low, axis=1, keepdims=True)
    packed = np.packbits(low > median, axis=1)  # first coefficient -> most significant bit
    return packed.view(">u8").ravel().astype(np.uint64)


def phash_of_image(image: Image.Image) -> int:
    """pHash of a PIL image as an unsigned 64-bit int, equal to ``imagehash.phash(image)``."""
    return int(phash_batch_from_gray32(gray32_of_image(image)[np.newaxis])[0])


def to_hex(h: int) -> str:
    """16 lowercase hex digits, zero-padded: the text ``str(imagehash.phash(...))`` gives."""
    value = int(h)
    if not 0 <= value < 1 << HASH_BITS:
        raise ValueError(f"hash {h!r} is not an unsigned 64-bit value")
    return f"{value:016x}"


def from_hex(s: str) -> int:
    """Inverse of ``to_hex``; accepts upper case too, but exactly 16 hex digits."""
    if not isinstance(s, str) or not _HEX.fullmatch(s):
        raise ValueError(f"pHash text must be 16 hex digits, got {s!r}")
    return int(s, 16)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes (imagehash's ``h1 - h2``)."""
    return (int(a) ^ int(b)).bit_count()
