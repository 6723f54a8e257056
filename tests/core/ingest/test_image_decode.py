import hashlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.dedup.phash import from_hex, hamming, phash_of_image, to_hex
from dataplatform.core.ingest.image_decode import ImageRejected, inspect_image_bytes
from tests.conftest import encode, photo


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(ImageRejected) as info:
        inspect_image_bytes(data, **kw)
    return info.value.reason


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header that claims a huge size, in a few hundred bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_facts_of_a_real_jpeg():
    img = photo("chelsea")
    data = encode(img, quality=90)
    facts = inspect_image_bytes(data)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert (facts.width, facts.height) == img.size
    assert (facts.format, facts.mode, facts.frames, facts.exif_transposed) == (
        "JPEG",
        "RGB",
        1,
        False,
    )
    assert facts.n_bytes == len(data)
    # Full decode reproduces imagehash exactly; the draft decode stays within a few bits.
    full = inspect_image_bytes(data, draft_size=None)
    assert full.phash == to_hex(phash_of_image(Image.open(__import__("io").BytesIO(data))))
    assert hamming(from_hex(full.phash), from_hex(facts.phash)) <= 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_file"),
        (b"this is a caption, not an image\n" * 10, "not_an_image"),
        (bomb_png(40000, 40000), "decompression_bomb"),
    ],
)
def test_rejections(data, reason):
    assert _reason(data) == reason


def test_truncated_jpeg():
    data = encode(photo("coffee"), quality=90)
    assert _reason(data[: int(len(data) * 0.6)]) == "truncated_image"


def test_configurable_pixel_limit():
    data = encode(photo("coffee"))
    assert _reason(data, max_pixels=100_000) == "decompression_bomb"


def test_valid_oddities_are_ingested():
    base = photo("rocket").resize((120, 80))
    cmyk = inspect_image_bytes(encode(base.convert("CMYK")))
    assert (cmyk.mode, cmyk.width, cmyk.height) == ("CMYK", 120, 80)

    deep = Image.fromarray(np.arange(120 * 80, dtype=np.uint16).reshape(80, 120) * 7)
    assert deep.mode == "I;16"
    assert inspect_image_bytes(encode(deep, "PNG")).mode == "I;16"

    pal = base.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    assert inspect_image_bytes(encode(pal, "PNG", transparency=0)).mode == "P"

    frames = [base, base.rotate(90), base.rotate(180)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert inspect_image_bytes(gif).frames == 3

    tiny = inspect_image_bytes(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))
    assert (tiny.width, tiny.height) == (1, 1)


def test_exif_orientation_is_applied():
    upright = photo("astronaut").resize((200, 120))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display, which undoes ROTATE_90 (CCW)
    data = encode(stored, quality=95, exif=exif.tobytes())
    facts = inspect_image_bytes(data, draft_size=None)
    assert (facts.width, facts.height, facts.exif_transposed) == (200, 120, True)
    assert hamming(from_hex(facts.phash), phash_of_image(upright)) <= 4
    assert hamming(from_hex(facts.phash), phash_of_image(stored)) > 10


def test_16_bit_images_hash_by_their_content_not_as_white():
    ramp = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256) % 60000).astype(np.uint16)
    other = np.ascontiguousarray(ramp.T[::-1])
    a = inspect_image_bytes(encode(Image.fromarray(ramp), "PNG"))
    b = inspect_image_bytes(encode(Image.fromarray(other), "PNG"))
    assert a.mode == "I;16"
    assert hamming(from_hex(a.phash), from_hex(b.phash)) > 16
