"""Small JPEG thumbnails of untrusted image bytes, for review pages that must open from disk.

A thumbnail is embedded in the page as a ``data:`` URI, so a review sheet is one file that can
be opened offline or mailed. Decoding is defensive like ingest: any failure is a
``ThumbnailError`` with a short reason that the page shows in place of the image.
"""

from __future__ import annotations

import base64
import io
import warnings

from PIL import Image, ImageOps

from dataplatform.core.ingest.image_decode import DEFAULT_MAX_PIXELS, eight_bit

THUMBNAIL_PX = 160
JPEG_QUALITY = 82
# Transparent pixels are drawn on a light checkerboard so that "transparent" is visible, not
# silently black or white.
_CHECKER_PX = 8
_CHECKER_LIGHT = (236, 236, 236)
_CHECKER_DARK = (204, 204, 204)


class ThumbnailError(Exception):
    """Bytes that cannot be shown as a thumbnail; ``str()`` is the reason for the reviewer."""


def thumbnail_jpeg(
    data: bytes, size: int = THUMBNAIL_PX, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """``data`` as an upright JPEG no larger than ``size`` x ``size``; first frame of animations.

    JPEGs are decoded at the smallest DCT scale that is still at least ``size`` (draft mode),
    which makes a camera-sized photo several times cheaper than a full decode.
    """
    if not data:
        raise ThumbnailError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ThumbnailError(f"{width}x{height} is too large to preview")
            if image.format == "JPEG":
                image.draft("RGB", (size, size))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _rgb_or_rgba(eight_bit(image))
            image.thumbnail((size, size), Image.Resampling.BICUBIC)
            if image.mode == "RGBA":
                image = _on_checkerboard(image)
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        except ThumbnailError:
            raise
        except Exception as exc:  # noqa: BLE001 - hostile bytes must not fail the page
            raise ThumbnailError(f"cannot decode: {type(exc).__name__}: {exc}") from exc
    return out.getvalue()


def jpeg_data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _on_checkerboard(rgba: Image.Image) -> Image.Image:
    board = Image.new("RGB", rgba.size, _CHECKER_LIGHT)
    dark = Image.new("RGB", (_CHECKER_PX, _CHECKER_PX), _CHECKER_DARK)
    for y in range(0, rgba.height, _CHECKER_PX):
        for x in range((y // _CHECKER_PX % 2) * _CHECKER_PX, rgba.width, 2 * _CHECKER_PX):
            board.paste(dark, (x, y))
    board.paste(rgba, mask=rgba.getchannel("A"))
    return board
