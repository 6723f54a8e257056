"""Defensive decoding of untrusted image bytes: facts about an image, or a reason it is unusable.

``inspect_image_bytes`` is ingest's decode (facts and pHash); ``decode_rgb`` is the pixel decode
every later stage uses.

Web images are hostile input: empty, truncated, mislabelled, decompression bombs. At ingest
every failure becomes an ``ImageRejected`` with a stable reason string for the ledger, never an
uncaught exception, so one bad image never fails a partition.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dataplatform.core.dedup.phash import phash_of_image, to_hex
from dataplatform.core.ingest.rejection import Rejection

# 178 MP: twice Pillow's own warning limit; above it a single image costs gigabytes to decode.
DEFAULT_MAX_PIXELS = 178_956_970
# JPEG can decode at 1/2, 1/4 or 1/8 scale inside the codec; pHash only needs 32x32, so
# asking for at least this size keeps the hash stable while skipping most of the decode work.
DEFAULT_DRAFT_SIZE = 256


class ImageRejected(Rejection):
    """An image that cannot enter the warehouse, with the ledger reason and a detail."""


@dataclass(frozen=True)
class ImageFacts:
    sha256: str
    width: int
    height: int
    format: str
    mode: str
    frames: int
    exif_transposed: bool
    phash: str
    n_bytes: int


def inspect_image_bytes(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = DEFAULT_DRAFT_SIZE,
) -> ImageFacts:
    """Decode ``data`` once and return its facts; raise ``ImageRejected`` if it is unusable.

    Width and height are the upright size, after EXIF orientation, because that is what every
    later stage (and a human reviewer) sees.
    """
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    sha256 = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = _open_header(data)
        except UnidentifiedImageError as exc:
            raise ImageRejected(
                "not_an_image", f"no image format recognises these bytes (starting {data[:8]!r})"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - any parser failure is a property of the input
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            )
        if width < 1 or height < 1:
            raise ImageRejected("decode_error", f"invalid size {width}x{height}")
        fmt = image.format or "unknown"
        mode = image.mode
        frames = int(getattr(image, "n_frames", 1))
        orientation = _orientation(image)
        try:
            if draft_size and fmt == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            upright = ImageOps.exif_transpose(image) if orientation not in (0, 1) else image
            phash = to_hex(phash_of_image(eight_bit(upright)))
        except Image.DecompressionBombError as exc:
            raise ImageRejected("decompression_bomb", str(exc)) from exc
        except OSError as exc:
            reason = "truncated_image" if "truncat" in str(exc).lower() else "decode_error"
            raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - see above
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageFacts(
        sha256=sha256,
        width=width,
        height=height,
        format=fmt,
        mode=mode,
        frames=frames,
        exif_transposed=orientation not in (0, 1),
        phash=phash,
        n_bytes=len(data),
    )


def eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit samples scaled to 8 bits; other modes unchanged.

    Pillow's own I;16 -> L conversion clips every sample above 255 to white, so all 16-bit
    images would hash alike and be taken for duplicates of each other.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        samples = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255)
        return Image.fromarray(samples.astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    return image


def decode_rgb(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Untrusted bytes as an upright 8-bit RGB image: first frame, EXIF orientation applied.

    The one pixel decode of every stage after ingest (CLIP, the quality scorers, the tokenizer),
    so they all see the same pixels. With ``draft_size``, a JPEG is decoded at the smallest 1/2,
    1/4 or 1/8 scale that is still at least that size on both sides: those stages resize to
    their own input size anyway, and the DCT-domain scaling makes decoding a camera-sized JPEG
    several times faster.
    """
    with warnings.catch_warnings():
        # Ingest already rejected images over its pixel limit; Pillow's warning is noise here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        image = ImageOps.exif_transpose(image)
        return eight_bit(image).convert("RGB")


def _open_header(data: bytes) -> Image.Image:
    """Open without Pillow's own pixel limit: ours is checked next, with a clearer message."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return 1
