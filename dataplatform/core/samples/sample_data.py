"""Built-in demo landing data: real photographs from the scikit-image and scikit-learn wheels.

Why real photos: pHash, CLIP and the quality scorers behave on photographs the way they
behave in production, and synthetic squares would let a broken stage pass. Why from wheels:
the demo and the tests must run offline, and those wheels are already dependencies.

`build_sample_landing` writes three daily landing folders that exercise every input kind
the DESIGN accepts (JSONL, CSV, Parquet manifests, a WebDataset shard, a captioned folder),
every ingest rejection reason, the image oddities a decoder must survive, and exact and
near-duplicates spread across partitions. It returns the truth list, one `SampleItem` per
row, so that tests and the demo can assert exact outcomes per stage. This module decides what
lands where and what must become of it; `landing_writers` writes each format.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date as Date
from itertools import combinations
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.ingest.image_decode import eight_bit
from dataplatform.core.samples.landing_writers import (
    LandingRow,
    Placed,
    write_captioned_folder,
    write_csv_manifest,
    write_jsonl_manifest,
    write_parquet_manifest,
    write_webdataset_shard,
)

# Originals must be further apart than this, so no two different photos look like copies.
DISTINCT_MIN_DISTANCE = 12

EDITS: tuple[str, ...] = (
    "byte_copy",
    "jpeg_reencode",
    "resize",
    "brightness",
    "grayscale",
    "watermark",
    "crop",
    "hflip",
)

# Raw ingest rejection reasons, exactly as the ingest stage writes them to the ledger.
REJECTION_REASONS: tuple[str, ...] = (
    "missing_file",
    "path_outside_landing",
    "empty_file",
    "truncated_image",
    "not_an_image",
    "decompression_bomb",
    "malformed_manifest_line",
    "missing_text",
    "missing_image",
    "duplicate_pair_id",
)

TRUTH_FILE_NAME = "sample_truth.json"
IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class SampleItem:
    """One row of the demo landing data and the outcome the pipeline must reach for it.

    `source` is relative to the date folder. `key` is the manifest id, the tar key or the
    captioned image's stem; for a manifest line that cannot be parsed it is "line-<n>", the
    1-based physical line number in the manifest (the CSV header is line 1).
    """

    date: str
    source: str
    key: str
    base: str | None
    kind: str
    expected: str


# Each photo's file in its wheel and a short caption that says what is in it.
# Left out on purpose:
# - motorcycle_right: the other half of a stereo pair, pHash distance 4 to motorcycle_left.
# - cat: skimage.data.cat() loads chelsea.png, the same photo as chelsea.
# - chessboard_GRAY/RGB, color, horse, logo, phantom: drawings, not photographs
#   (colorwheel is not in the installed wheel).
# - no_time_for_that_tiny.gif (14x25 px), multipage*.tif (10x15 px test stacks),
#   lfw_subset.npy, motorcycle_disp.npz: too small to be photos, or arrays, not images.
_PHOTO_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "moon": ("skimage", "data/moon.png"),
    "page": ("skimage", "data/page.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "brick": ("skimage", "data/brick.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "text": ("skimage", "data/text.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    # Oddity bases: each is used only for its oddity, so no oddity is a copy of anything.
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "cell": ("skimage", "data/cell.png"),
    "coins": ("skimage", "data/coins.png"),
    "microaneurysms": ("skimage", "data/microaneurysms.png"),
    "clock_motion": ("skimage", "data/clock_motion.png"),
}

CAPTIONS: dict[str, str] = {
    "astronaut": (
        "Astronaut Eileen Collins in an orange flight suit, smiling, with a US flag "
        "and a space shuttle model behind her."
    ),
    "camera": "Black-and-white photo of a man in a dark coat looking through a camera on a tripod.",
    "coffee": "A cup of espresso on a red saucer with a spoon, on a wooden table.",
    "rocket": "A SpaceX Falcon 9 rocket on its launch pad at dusk, between lit towers.",
    "chelsea": "Close-up of a tabby cat with green eyes.",
    "moon": "Grayscale close-up of craters on the surface of the Moon.",
    "page": "A photographed book page headed 'Region-based segmentation', unevenly lit.",
    "hubble_deep_field": "The Hubble Deep Field: hundreds of distant galaxies on a black sky.",
    "immunohistochemistry": "Colon tissue under a microscope: brown immunostaining, blue nuclei.",
    "brick": "A grey brick wall laid in long regular rows.",
    "retina": "Fundus photograph of a human retina showing the optic disc and blood vessels.",
    "text": "Handwritten numbers and symbols on a sheet of paper, photographed at an angle.",
    "grass": "Black-and-white close-up of dense grass blades.",
    "gravel": "Black-and-white close-up of small gravel stones.",
    "china": "A multi-storey Chinese pagoda among trees beside a lake.",
    "flower": "An orange dahlia in bloom against a dark green background.",
    "motorcycle_left": "A red motorcycle parked in a workshop with shelves behind it.",
    "cell": "Grayscale microscope image of a single round cell floating in liquid.",
    "coins": "Rows of ancient Greek coins on a black background.",
    "microaneurysms": "Grayscale close-up of retinal blood vessels with small microaneurysms.",
    "clock_motion": "A round wall clock blurred by camera motion against a grey wall.",
}

# How a copy's caption differs from the original's ("{subject}" is the caption without its
# final full stop); a byte copy and a re-encode reuse the caption unchanged.
_EDIT_CAPTIONS: dict[str, str] = {
    "byte_copy": "{caption}",
    "jpeg_reencode": "{caption}",
    "resize": "{subject} (small version).",
    "brightness": "{subject}, brightened.",
    "grayscale": "{subject}, in black and white.",
    "watermark": "{subject}, with a stock-site watermark.",
    "crop": "{subject}, cropped.",
    "hflip": "{subject}, mirrored.",
}


# Where each row lands. Carriers: "jsonl" (day 1), "csv" and "folder" (day 2), "tar" and
# "parquet" (day 3). A copy in the same partition as its original is only ever in the same
# manifest, with an id that sorts after the original's: dedup keeps the first by pair_id,
# and a tar or folder row's derived pair_id has no predictable order.
# Edits whose pHash distance to the original falls in 7..10 are left out, so the expected
# outcome does not flip on a one-bit difference between decoders.
_ORIGINALS: dict[str, str] = {
    "astronaut": "jsonl",
    "camera": "jsonl",
    "coffee": "jsonl",
    "rocket": "jsonl",
    "chelsea": "jsonl",
    "moon": "jsonl",
    "page": "jsonl",
    "hubble_deep_field": "jsonl",
    "immunohistochemistry": "jsonl",
    "brick": "jsonl",
    "retina": "jsonl",
    "text": "csv",
    "grass": "csv",
    "gravel": "csv",
    "china": "csv",
    "flower": "parquet",
}
_COPIES: dict[str, dict[str, str]] = {
    "astronaut": {
        "byte_copy": "jsonl",
        "jpeg_reencode": "csv",
        "resize": "folder",
        "brightness": "tar",
        "grayscale": "parquet",
        "watermark": "tar",
        "crop": "csv",
        "hflip": "parquet",
    },
    "camera": {
        "byte_copy": "csv",
        "jpeg_reencode": "tar",
        "resize": "jsonl",
        "brightness": "folder",
        "watermark": "folder",
        "hflip": "csv",
    },
    "coffee": {
        "byte_copy": "tar",
        "jpeg_reencode": "jsonl",
        "brightness": "csv",
        "grayscale": "folder",
        "watermark": "parquet",
        "crop": "tar",
        "hflip": "jsonl",
    },
    "rocket": {
        "byte_copy": "folder",
        "resize": "tar",
        "brightness": "parquet",
        "grayscale": "csv",
        "crop": "jsonl",
        "hflip": "tar",
    },
    "chelsea": {
        "byte_copy": "parquet",
        "jpeg_reencode": "folder",
        "resize": "csv",
        "grayscale": "tar",
        "hflip": "folder",
    },
    "moon": {
        "byte_copy": "tar",
        "jpeg_reencode": "csv",
        "brightness": "jsonl",
        "watermark": "parquet",
        "crop": "folder",
    },
    "page": {"jpeg_reencode": "parquet", "resize": "folder", "watermark": "csv", "crop": "tar"},
    "hubble_deep_field": {
        "byte_copy": "csv",
        "resize": "parquet",
        "brightness": "folder",
        "grayscale": "tar",
        "crop": "csv",
        "hflip": "parquet",
    },
    "immunohistochemistry": {
        "jpeg_reencode": "tar",
        "brightness": "csv",
        "grayscale": "jsonl",
        "watermark": "folder",
        "crop": "parquet",
        "hflip": "tar",
    },
    "brick": {
        "byte_copy": "folder",
        "jpeg_reencode": "csv",
        "resize": "tar",
        "watermark": "parquet",
    },
    "retina": {
        "jpeg_reencode": "folder",
        "resize": "csv",
        "brightness": "tar",
        "grayscale": "parquet",
        "hflip": "csv",
    },
    "text": {"byte_copy": "tar", "resize": "parquet", "watermark": "tar", "crop": "parquet"},
    "grass": {"jpeg_reencode": "tar", "brightness": "csv", "watermark": "tar", "crop": "parquet"},
    "gravel": {"byte_copy": "csv", "resize": "tar", "brightness": "parquet", "hflip": "tar"},
    "china": {
        "byte_copy": "parquet",
        "jpeg_reencode": "tar",
        "resize": "csv",
        "grayscale": "parquet",
        "watermark": "csv",
        "hflip": "parquet",
    },
    "flower": {
        "byte_copy": "parquet",
        "jpeg_reencode": "parquet",
        "resize": "parquet",
        "grayscale": "parquet",
        "watermark": "parquet",
        "hflip": "parquet",
    },
}
# Each carrier's landing day (0, 1, 2) and writer, in the order the truth lists them.
_CARRIER_DAY: dict[str, int] = {"jsonl": 0, "csv": 1, "folder": 1, "tar": 2, "parquet": 2}
_WRITERS: dict[str, Callable[[Path, Sequence[LandingRow]], list[Placed]]] = {
    "jsonl": write_jsonl_manifest,
    "csv": write_csv_manifest,
    "folder": write_captioned_folder,
    "tar": write_webdataset_shard,
    "parquet": write_parquet_manifest,
}
# Carriers that name a source site per record, in the order the site is drawn.
_SITE_CARRIERS = ("jsonl", "csv", "parquet")

_LICENSES: tuple[str | None, ...] = (
    "CC-BY-4.0",
    "CC-BY-4.0",
    "CC0-1.0",
    "CC0-1.0",
    "CC-BY-SA-4.0",
    "unknown",
    None,
)
_SOURCE_SITES: tuple[str, ...] = ("photos.example.com", "wiki.example.org", "forum.example.net")
_SEED = 20240101
_JPEG_QUALITY = 90
_REENCODE_QUALITY = 60
# A path that leaves the landing root, and a file there that exists once the build is done,
# so a pipeline that follows it finds a real file rather than a missing one.
_OUTSIDE_RELATIVE = f"../../{TRUTH_FILE_NAME}"


def wheel_photo_path(name: str) -> Path:
    """Path of a sample photo inside its installed wheel, without importing the package."""
    package, relative = _PHOTO_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"sample photo {name!r} ships with {package}; install it (pip install {package})"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"sample photo {name!r} not found at {path}; reinstall {package}")
    return path


def load_photo(name: str) -> Image.Image:
    """The photo as 8-bit RGB or L, fully loaded."""
    with Image.open(wheel_photo_path(name)) as image:
        return image.convert("L" if image.mode == "L" else "RGB")


def decode_for_phash(data: bytes) -> Image.Image:
    """Decode image bytes the way a dedup stage should before hashing.

    First frame, EXIF orientation applied, 16-bit samples scaled to 8 bits (Pillow's own
    I;16 -> L conversion clips everything above 255 to white), then RGB.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        upright = ImageOps.exif_transpose(image)
    return eight_bit(upright).convert("RGB")


def phash_of(data: bytes) -> imagehash.ImageHash:
    """pHash of image bytes after `decode_for_phash`."""
    return imagehash.phash(decode_for_phash(data))


def encode_jpeg(image: Image.Image, quality: int = _JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def add_watermark(
    image: Image.Image, label: str = "© stock.example.com", scale: float = 1.0
) -> Image.Image:
    """A semi-transparent text band in the bottom-right corner, about 5% of the area * scale².

    This is how stock-photo sites mark copies; it changes the pixels in one corner only.
    """
    width, height = image.size
    band_width = max(1, round(width * 0.36 * scale))
    band_height = max(1, round(height * 0.14 * scale))
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((width - band_width, height - band_height, width, height), fill=(0, 0, 0, 110))
    font = ImageFont.load_default(size=max(8, round(band_height * 0.45)))
    origin = (width - band_width + band_height * 0.2, height - band_height * 0.75)
    draw.text(origin, label, fill=(255, 255, 255, 200), font=font)
    marked = Image.alpha_composite(image.convert("RGBA"), overlay)
    return marked.convert(image.mode)


def apply_edit(image: Image.Image, edit: str) -> Image.Image:
    """The pixels of one edit of `image`; byte_copy and jpeg_reencode keep the pixels."""
    width, height = image.size
    if edit in ("byte_copy", "jpeg_reencode"):
        return image.copy()
    if edit == "resize":
        return image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    if edit == "brightness":
        return ImageEnhance.Brightness(image).enhance(1.25)
    if edit == "grayscale":
        return image.convert("L")
    if edit == "watermark":
        return add_watermark(image)
    if edit == "crop":
        margin_x, margin_y = round(width * 0.04), round(height * 0.04)
        return image.crop((margin_x, margin_y, width - margin_x, height - margin_y))
    if edit == "hflip":
        return ImageOps.mirror(image)
    raise ValueError(f"unknown edit {edit!r}; expected one of {EDITS}")


def edited_bytes(original: bytes, edit: str) -> bytes:
    """The file a copy site would serve for `edit` of the landing file `original`."""
    if edit == "byte_copy":
        return original
    with Image.open(io.BytesIO(original)) as image:
        pixels = apply_edit(image.convert(image.mode), edit)
    quality = _REENCODE_QUALITY if edit == "jpeg_reencode" else _JPEG_QUALITY
    return encode_jpeg(pixels, quality)


def decompression_bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG under 1 KB whose header claims `width` x `height` pixels.

    The IDAT holds a single valid row only; a decoder must refuse the image from its header,
    before it allocates 1.6 GB for the pixels.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    one_row = b"\x00" * (1 + (width + 7) // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(one_row, 9))
        + chunk(b"IEND", b"")
    )


def _cmyk_jpeg() -> bytes:
    return encode_jpeg(load_photo("motorcycle_left").convert("CMYK"))


def _uint16_png() -> bytes:
    # Microscopes write 16-bit grayscale; spread the 8-bit photo over the full 16-bit range.
    samples = np.asarray(load_photo("cell"), dtype=np.uint16) * 257
    return encode_png(Image.fromarray(samples))


def _palette_png() -> bytes:
    # A thumbnail with transparent rounded corners, the way cut-outs and icons are shipped.
    # Whether a decoder drops the alpha or flattens it onto white, the image stays far in
    # pHash from every other sample image (the tests check both).
    rgb = load_photo("coins").convert("RGB")
    palette_image = rgb.quantize(colors=63, dither=Image.Dither.NONE)
    palette = palette_image.getpalette() or []
    palette = (palette + [0] * 768)[: 63 * 3] + [0, 0, 0]
    palette_image.putpalette(palette)
    corners = Image.new("L", rgb.size, 255)
    radius = min(rgb.size) // 8
    ImageDraw.Draw(corners).rounded_rectangle((0, 0, *rgb.size), radius=radius, fill=0)
    palette_image.paste(63, mask=corners)
    return encode_png(palette_image, transparency=63)


def _animated_gif() -> bytes:
    first = load_photo("microaneurysms")
    frames = [first, ImageEnhance.Brightness(first).enhance(1.15), first.rotate(3)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0
    )
    return buffer.getvalue()


def _exif_rotated_jpeg() -> bytes:
    # Orientation 6 tells a viewer to turn the stored pixels 90 degrees clockwise, so the
    # pixels are stored turned 90 degrees counter-clockwise.
    stored = load_photo("clock_motion").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=_JPEG_QUALITY, exif=exif.tobytes())
    return buffer.getvalue()


def _one_pixel_png() -> bytes:
    return encode_png(Image.new("RGB", (1, 1), (214, 120, 38)))


_ODDITIES: dict[str, tuple[str | None, str, str]] = {
    # name: (base photo, file extension, carrier)
    "cmyk_jpeg": ("motorcycle_left", "jpg", "jsonl"),
    "exif_rotated_jpeg": ("clock_motion", "jpg", "jsonl"),
    "uint16_png": ("cell", "png", "csv"),
    "palette_transparent_png": ("coins", "png", "folder"),
    "animated_gif": ("microaneurysms", "gif", "parquet"),
    "one_pixel_png": (None, "png", "parquet"),
}
_ODDITY_CAPTIONS: dict[str, str] = {"one_pixel_png": "A single orange pixel."}


@dataclass(kw_only=True)
class _Entry(LandingRow):
    """A row on its way into a carrier, with the outcome it must reach; the carrier's writer
    fixes its key and source."""

    base: str | None
    kind: str
    expected: str
    # None: spread among the valid rows; "end": the last line; any other value: right after
    # the valid row with that key.
    place: str | None = None
    phash: imagehash.ImageHash | None = None


def _phash_expected(distance: int) -> str:
    """The truth follows the phash stage's default threshold, so the demo checks that default."""
    if distance <= DEFAULT_PHASH_THRESHOLD:
        return "phash_duplicate"
    return "not_phash_detectable"


class _SampleBuilder:
    """Collects the rows of the three partitions, then writes each carrier."""

    def __init__(self) -> None:
        self.rng = random.Random(_SEED)
        self.carriers: dict[str, list[_Entry]] = {c: [] for c in _CARRIER_DAY}
        self.broken: dict[str, list[_Entry]] = {c: [] for c in _CARRIER_DAY}
        self.photo_bytes: dict[str, bytes] = {}
        self.photo_hash: dict[str, imagehash.ImageHash] = {}

    def license(self) -> str | None:
        return self.rng.choice(_LICENSES)

    def valid(
        self,
        carrier: str,
        *,
        key: str | None,
        base: str | None,
        kind: str,
        expected: str,
        text: str,
        payload: bytes,
        ext: str = "jpg",
    ) -> None:
        width, height = decode_for_phash(payload).size
        name = key or f"{base}-{kind.removeprefix('oddity:')}"
        self.carriers[carrier].append(
            _Entry(
                base=base,
                kind=kind,
                expected=expected,
                key=key,
                text=text,
                url=f"https://example.org/{name}.{ext}",
                license=self.license(),
                image=f"{IMAGES_FOLDER}/{key}.{ext}" if key else None,
                payload=payload,
                ext=ext,
                phash=phash_of(payload),
                width=width,
                height=height,
            )
        )

    def reject(
        self,
        carrier: str,
        reason: str,
        key: str | None,
        *,
        image: str | None = None,
        payload: bytes | None = None,
        text: str = "A photo whose row is broken.",
        raw_line: str | None = None,
        symlink_to: str | None = None,
        place: str | None = None,
    ) -> None:
        width = height = None
        if payload:
            # Broken payloads have no size; the rest keep theirs for the shard's metadata.
            with contextlib.suppress(OSError, ValueError, Image.DecompressionBombError):
                width, height = decode_for_phash(payload).size
        self.broken[carrier].append(
            _Entry(
                base=None,
                kind=f"broken:{reason}",
                expected=f"rejected:{reason}",
                key=key,
                text=text,
                url=f"https://example.org/broken/{key or reason}.jpg",
                license=self.license(),
                image=image,
                payload=payload,
                raw_line=raw_line,
                symlink_to=symlink_to,
                place=place,
                width=width,
                height=height,
            )
        )

    def add_photos(self) -> None:
        for name in _PHOTO_FILES:
            encoded = encode_jpeg(load_photo(name))
            self.photo_hash[name] = phash_of(encoded)
            if name in _ORIGINALS:
                self.photo_bytes[name] = encoded
        for name in _ORIGINALS:
            self.valid(
                _ORIGINALS[name],
                key=f"{name}-00-original",
                base=name,
                kind="original",
                expected="kept",
                text=CAPTIONS[name],
                payload=self.photo_bytes[name],
            )
            for edit in EDITS:
                if edit in _COPIES[name]:
                    self.add_copy(_COPIES[name][edit], name, edit, self.photo_bytes[name])

    def add_copy(self, carrier: str, base: str, edit: str, original: bytes) -> None:
        payload = edited_bytes(original, edit)
        if edit == "byte_copy":
            expected = "exact_duplicate"
        elif edit == "hflip":
            expected = "not_phash_detectable"
        else:
            expected = _phash_expected(phash_of(payload) - phash_of(original))
        index = EDITS.index(edit) + 1
        in_manifest = carrier in ("jsonl", "csv", "parquet")
        self.valid(
            carrier,
            key=f"{base}-{index:02d}-{edit}" if in_manifest else None,
            base=base,
            kind=edit,
            expected=expected,
            text=_EDIT_CAPTIONS[edit].format(
                caption=CAPTIONS[base], subject=CAPTIONS[base].removesuffix(".")
            ),
            payload=payload,
        )

    def add_oddities(self) -> None:
        makers = {
            "cmyk_jpeg": _cmyk_jpeg,
            "exif_rotated_jpeg": _exif_rotated_jpeg,
            "uint16_png": _uint16_png,
            "palette_transparent_png": _palette_png,
            "animated_gif": _animated_gif,
            "one_pixel_png": _one_pixel_png,
        }
        payloads: dict[str, bytes] = {}
        for oddity, (base, ext, carrier) in _ODDITIES.items():
            payloads[oddity] = makers[oddity]()
            self.valid(
                carrier,
                key=f"{base or 'pixel'}-00-{oddity}" if carrier != "folder" else None,
                base=base,
                kind=f"oddity:{oddity}",
                expected="kept",
                text=_ODDITY_CAPTIONS.get(oddity) or CAPTIONS[str(base)],
                payload=payloads[oddity],
                ext=ext,
            )
        # Copies of oddities: a byte copy of the CMYK file, and the EXIF-rotated photo
        # re-encoded upright without the tag, which matches only if EXIF is applied.
        self.add_copy("tar", "motorcycle_left", "byte_copy", payloads["cmyk_jpeg"])
        upright = encode_jpeg(load_photo("clock_motion"), _REENCODE_QUALITY)
        distance = phash_of(upright) - phash_of(payloads["exif_rotated_jpeg"])
        self.valid(
            "csv",
            key="clock_motion-02-jpeg_reencode",
            base="clock_motion",
            kind="jpeg_reencode",
            expected=_phash_expected(distance),
            text=CAPTIONS["clock_motion"],
            payload=upright,
        )

    def add_broken(self) -> None:
        astronaut = self.photo_bytes["astronaut"]
        truncated = astronaut[: len(astronaut) * 6 // 10]
        not_image = b"This is not an image: a caption saved with a .jpg name by mistake.\n"
        spare = self.photo_bytes["page"]
        images = IMAGES_FOLDER

        # Day 1, JSONL.
        self.reject("jsonl", "missing_file", "broken-01", image=f"{images}/does-not-exist.jpg")
        self.reject("jsonl", "path_outside_landing", "broken-02", image=_OUTSIDE_RELATIVE)
        self.reject(
            "jsonl",
            "path_outside_landing",
            "broken-03",
            image=f"{images}/escape.jpg",
            symlink_to=f"../{_OUTSIDE_RELATIVE}",
        )
        self.reject("jsonl", "empty_file", "broken-04", image=f"{images}/empty.jpg", payload=b"")
        self.reject(
            "jsonl", "not_an_image", "broken-05", image=f"{images}/notes.jpg", payload=not_image
        )
        self.reject(
            "jsonl",
            "decompression_bomb",
            "broken-06",
            image=f"{images}/bomb.png",
            payload=decompression_bomb_png(),
        )
        self.reject(
            "jsonl",
            "malformed_manifest_line",
            None,
            raw_line='{"id": "broken-07", "image": "images/x.jpg", "text": "unterminated}',
        )
        self.reject(
            "jsonl", "missing_text", "broken-08", image=f"{images}/page-00-original.jpg", text="  "
        )
        self.reject("jsonl", "missing_image", "broken-09")

        # Day 2, CSV: the open quote is the last line, where it cannot swallow good rows.
        self.reject("csv", "path_outside_landing", "broken-10", image="/etc/hostname")
        self.reject(
            "csv",
            "truncated_image",
            "broken-11",
            image=f"{images}/truncated.jpg",
            payload=truncated,
        )
        self.reject(
            "csv",
            "malformed_manifest_line",
            None,
            raw_line="broken-12,images/text-00-original.jpg,Handwriting,"
            "https://example.org/a.jpg,CC0-1.0,wiki.example.org,an extra field",
        )
        self.reject(
            "csv",
            "duplicate_pair_id",
            "text-00-original",
            image=f"{images}/text-00-original.jpg",
            text="Handwritten numbers on paper (caption resubmitted).",
            place="text-00-original",
        )
        self.reject(
            "csv",
            "malformed_manifest_line",
            None,
            raw_line='broken-13,"images/grass-00-original.jpg,Grass,'
            "https://example.org/b.jpg,CC0-1.0,wiki.example.org",
            place="end",
        )

        # Day 2, captioned folder.
        self.reject("folder", "empty_file", None, payload=b"", text="A sunset over the sea.")
        self.reject("folder", "missing_text", None, payload=spare, text=" \n")

        # Day 3, WebDataset shard.
        self.reject("tar", "truncated_image", None, payload=truncated)
        self.reject("tar", "missing_text", None, payload=spare, text="")

        # Day 3, Parquet.
        self.reject("parquet", "missing_file", "broken-14", image=f"{images}/gone.jpg")
        self.reject(
            "parquet", "not_an_image", "broken-15", image=f"{images}/readme.jpg", payload=not_image
        )
        self.reject("parquet", "missing_image", "broken-16")

    def ordered(self, carrier: str) -> list[_Entry]:
        """Valid rows with the broken ones spread evenly among them, or placed as asked."""
        valid = self.carriers[carrier]
        spread = [entry for entry in self.broken[carrier] if entry.place is None]
        rows = list(valid)
        for position, entry in enumerate(spread):
            rows.insert(round((position + 1) * len(valid) / (len(spread) + 1)) + position, entry)
        for entry in self.broken[carrier]:
            if entry.place == "end":
                rows.append(entry)
            elif entry.place is not None:
                first = next(i for i, row in enumerate(rows) if row.key == entry.place)
                rows.insert(first + 1, entry)
        return rows


def _check_distinct(builder: _SampleBuilder) -> None:
    """Fail the build if two different photos, or two rows that should both survive pHash
    dedup, are near-duplicates: the truth would then be wrong, not the pipeline."""
    for first, second in combinations(builder.photo_hash, 2):
        distance = builder.photo_hash[first] - builder.photo_hash[second]
        if distance <= DISTINCT_MIN_DISTANCE:
            raise RuntimeError(
                f"sample photos {first} and {second} are {distance} apart in pHash; "
                f"drop one of them from _PHOTO_FILES"
            )
    survivors = [
        entry
        for rows in builder.carriers.values()
        for entry in rows
        if entry.expected in ("kept", "not_phash_detectable")
    ]
    for first, second in combinations(survivors, 2):
        assert first.phash is not None and second.phash is not None
        distance = first.phash - second.phash
        if distance <= DEFAULT_PHASH_THRESHOLD:
            raise RuntimeError(
                f"sample rows {first.base}/{first.kind} and {second.base}/{second.kind} are "
                f"{distance} apart in pHash but both are expected to survive; change the plan"
            )


def _check_dates(dates: Sequence[str]) -> list[str]:
    if len(dates) < 3:
        raise ValueError(f"build_sample_landing needs three dates, got {list(dates)}")
    chosen = [str(day) for day in dates[:3]]
    parsed = [Date.fromisoformat(day) for day in chosen]
    if parsed != sorted(set(parsed)):
        raise ValueError(f"sample dates must be distinct and ascending, got {chosen}")
    return chosen


def build_sample_landing(landing_root: Path, dates: Sequence[str]) -> list[SampleItem]:
    """Write the demo landing folders for dates[0..2] and return the truth, one item per row.

    The truth is also written to `landing_root.parent / "sample_truth.json"`, outside every
    date folder so that no ingest run mistakes it for input. The build is deterministic:
    two builds give byte-identical files. It refuses to write into a non-empty date folder
    rather than mix the demo with data that is already there.
    """
    days = _check_dates(dates)
    landing_root = Path(landing_root)
    date_dirs = [landing_root / day for day in days]
    for date_dir in date_dirs:
        if date_dir.exists() and any(date_dir.iterdir()):
            raise FileExistsError(
                f"{date_dir} is not empty; the sample landing data needs empty date folders, "
                f"remove it or pick other dates"
            )
        date_dir.mkdir(parents=True, exist_ok=True)

    builder = _SampleBuilder()
    builder.add_photos()
    builder.add_oddities()
    builder.add_broken()
    _check_distinct(builder)

    rows = {carrier: builder.ordered(carrier) for carrier in _CARRIER_DAY}
    site_rng = random.Random(_SEED + 1)
    for carrier in _SITE_CARRIERS:
        for entry in rows[carrier]:
            if entry.raw_line is None:
                entry.source_site = site_rng.choice(_SOURCE_SITES)
    items: list[SampleItem] = []
    for carrier, day in _CARRIER_DAY.items():
        placed = _WRITERS[carrier](date_dirs[day], rows[carrier])
        items += [
            SampleItem(days[day], source, key, entry.base, entry.kind, entry.expected)
            for (source, key), entry in zip(placed, rows[carrier], strict=True)
        ]

    truth = json.dumps([asdict(item) for item in items], indent=2, ensure_ascii=False)
    (landing_root.parent / TRUTH_FILE_NAME).write_text(truth + "\n", encoding="utf-8")
    return items
