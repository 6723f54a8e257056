"""Large synthetic landing sets for benchmarks, generated in code and never committed.

Why synthetic: the wheel photos are a few dozen images, and a benchmark needs thousands of
camera-sized JPEGs whose duplicate structure is known exactly. Each distinct image is a
smooth low-frequency colour field with random shapes and fine sensor-like noise, so that
pHashes of different images are independent (about 32 bits apart) while the copies made of
one image stay close to it. The truth file lets a benchmark compute the recall of byte and
perceptual copies and count distinct images that were wrongly removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from dataplatform.core.samples.sample_data import (
    EDITS,
    add_watermark,
    decode_for_phash,
    encode_jpeg,
)

# The sample edits a perceptual hash is meant to see: not byte copies (exact dedup's), not flips.
PERCEPTUAL_EDITS: tuple[str, ...] = tuple(e for e in EDITS if e not in ("byte_copy", "hflip"))
# Width / height ratios of common camera and phone sensors, landscape and portrait.
_ASPECTS: tuple[float, ...] = (4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)
_LICENSES: tuple[str, ...] = ("CC-BY-4.0", "CC0-1.0", "CC-BY-SA-4.0", "unknown")
_CAMERA_QUALITY = 90
_IMAGES_FOLDER = "images"
_MANIFEST = "pairs.jsonl"

_Task = TypeVar("_Task")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class _DistinctTask:
    path: Path
    seed: tuple[int, ...]
    megapixels: tuple[float, float]


@dataclass(frozen=True)
class _CopyTask:
    path: Path
    source: Path
    edit: str  # "byte_copy" or one of PERCEPTUAL_EDITS
    seed: tuple[int, ...]


def synthetic_photo(rng: np.random.Generator, megapixels: tuple[float, float]) -> Image.Image:
    """One camera-like RGB image drawn from `rng`, with a size in the megapixel range."""
    area = rng.uniform(*megapixels) * 1_000_000
    aspect = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    width = max(8, round(math.sqrt(area * aspect)))
    height = max(8, round(math.sqrt(area / aspect)))

    # The low-frequency field decides the pHash: a few random colours on a coarse grid,
    # upsampled smoothly, like sky, walls and out-of-focus background.
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3))
    image = Image.fromarray(grid.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        box_w = rng.uniform(0.05, 0.4) * width
        box_h = rng.uniform(0.05, 0.4) * height
        left, top = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = int(rng.integers(3))
        box = (left, top, left + box_w, top + box_h)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            points = [(left + rng.uniform(0, box_w), top + rng.uniform(0, box_h)) for _ in range(3)]
            draw.polygon(points, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 1500)))

    # Muted colours, as daylight photos have, then fine noise, so the JPEG has the
    # high-frequency content and file size of a real photo.
    pixels = np.asarray(image, dtype=np.float32)
    gray = pixels.mean(axis=2, keepdims=True)
    pixels = gray + (pixels - gray) * np.float32(rng.uniform(0.3, 0.8))
    pixels += rng.standard_normal(size=(height, width, 3), dtype=np.float32) * np.float32(4.0)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def perceptual_edit(image: Image.Image, edit: str, rng: np.random.Generator) -> Image.Image:
    """A mild edit of the kind copy sites make; the strength is drawn from `rng`."""
    width, height = image.size
    if edit == "jpeg_reencode":
        return image.copy()
    if edit == "resize":
        scale = rng.uniform(0.4, 0.7)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS)
    if edit == "brightness":
        return ImageEnhance.Brightness(image).enhance(rng.uniform(1.1, 1.3))
    if edit == "grayscale":
        return image.convert("L")
    if edit == "watermark":
        # About 1.3% to 3.2% of the area: a small logo band, not a banner.
        return add_watermark(image, scale=rng.uniform(0.5, 0.8))
    if edit == "crop":
        keep = rng.uniform(0.96, 0.99)
        left = rng.uniform(0, 1 - keep) * width
        top = rng.uniform(0, 1 - keep) * height
        return image.crop(
            (round(left), round(top), round(left + keep * width), round(top + keep * height))
        )
    raise ValueError(f"unknown perceptual edit {edit!r}; expected one of {PERCEPTUAL_EDITS}")


def _write_distinct(task: _DistinctTask) -> None:
    image = synthetic_photo(np.random.default_rng(task.seed), task.megapixels)
    task.path.write_bytes(encode_jpeg(image, _CAMERA_QUALITY))


def _write_copy(task: _CopyTask) -> int:
    """Write the copy; return its pHash distance to the source."""
    if task.edit == "byte_copy":
        shutil.copyfile(task.source, task.path)
        return 0
    rng = np.random.default_rng(task.seed)
    source_bytes = task.source.read_bytes()
    source = decode_for_phash(source_bytes)
    edited = perceptual_edit(source, task.edit, rng)
    quality = int(rng.integers(50, 71)) if task.edit == "jpeg_reencode" else _CAMERA_QUALITY
    payload = encode_jpeg(edited, quality)
    task.path.write_bytes(payload)
    distance = imagehash.phash(decode_for_phash(payload)) - imagehash.phash(source)
    return int(distance)


def _run(function: Callable[[_Task], _Result], tasks: list[_Task], workers: int) -> list[_Result]:
    if workers <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    chunksize = max(1, len(tasks) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, tasks, chunksize=chunksize))


def _check_arguments(
    n_distinct: int,
    byte_copies: int,
    perceptual_copies: int,
    megapixels: tuple[float, float],
    workers: int,
) -> None:
    if min(n_distinct, byte_copies, perceptual_copies) < 0:
        raise ValueError("n_distinct, byte_copies and perceptual_copies must be >= 0")
    if n_distinct == 0 and byte_copies + perceptual_copies > 0:
        raise ValueError("copies need at least one distinct image to copy; raise n_distinct")
    low, high = megapixels
    if not 0 < low <= high:
        raise ValueError(f"megapixels must be (low, high) with 0 < low <= high, got {megapixels}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def date_seed(date: str) -> int:
    """The seed of a date's synthetic set when none is given: stable across runs and machines
    (unlike ``hash()``), and different for every folder name."""
    return int.from_bytes(hashlib.sha256(date.encode()).digest()[:8], "big")


def write_synthetic_landing(
    date_dir: Path,
    *,
    n_distinct: int,
    byte_copies: int,
    perceptual_copies: int,
    megapixels: tuple[float, float] = (1.0, 4.0),
    seed: int | None = None,
    workers: int = 2,
) -> dict[str, dict[str, object]]:
    """Write `date_dir/images/*.jpg` and `date_dir/pairs.jsonl`; return the truth per row id.

    The date folder must be empty: files left from an earlier set would land unlisted.
    Without a `seed` the set is seeded from the folder's name (:func:`date_seed`), so every date
    gets other images: one seed for all dates would make a second day entirely exact copies of
    the first, which no real feed does. Give `seed` to reproduce a set whatever its date.

    Truth values: {"kind": "distinct" | "byte_copy" | "perceptual_copy", "of": the id of the
    distinct image copied, or None}; perceptual copies add "edit" and "phash_distance" so a
    benchmark can split recall by edit and by what pHash can see at all. The truth is also
    written to `date_dir.parent.parent / f"synthetic_truth_{date}.json"`, outside the landing
    folder. Every copy's id sorts after its source's id, because dedup keeps the first row
    by pair_id: a copy listed first would make the distinct image the one removed.
    """
    _check_arguments(n_distinct, byte_copies, perceptual_copies, megapixels, workers)
    date_dir = Path(date_dir)
    if date_dir.exists() and any(date_dir.iterdir()):
        raise FileExistsError(
            f"{date_dir} is not empty; a synthetic set needs an empty date folder, "
            f"remove it or pick another date"
        )
    date = date_dir.name
    if seed is None:
        seed = date_seed(date)
    images_dir = date_dir / _IMAGES_FOLDER
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])

    # Each row gets an order key; a copy's key lies after its source's key.
    kinds = ["distinct"] * n_distinct + ["byte_copy"] * byte_copies
    kinds += ["perceptual_copy"] * perceptual_copies
    sources = list(range(n_distinct)) + [0] * (len(kinds) - n_distinct)
    edits: list[str | None] = [None] * len(kinds)
    order_keys = [float(index) for index in range(n_distinct)]
    for row in range(n_distinct, len(kinds)):
        source = int(rng.integers(n_distinct))
        sources[row] = source
        order_keys.append(source + rng.uniform(0.01, n_distinct - source))
        if kinds[row] == "perceptual_copy":
            edits[row] = PERCEPTUAL_EDITS[int(rng.integers(len(PERCEPTUAL_EDITS)))]
    ranks = sorted(range(len(kinds)), key=lambda row: (order_keys[row], row))
    ids = [""] * len(kinds)
    for rank, row in enumerate(ranks):
        ids[row] = f"syn-{date}-{rank:07d}"
    paths = [images_dir / f"{row_id}.jpg" for row_id in ids]

    distinct_tasks = [
        _DistinctTask(paths[row], (seed, 1, row), megapixels) for row in range(n_distinct)
    ]
    _run(_write_distinct, distinct_tasks, workers)
    copy_tasks = [
        _CopyTask(
            path=paths[row],
            source=paths[sources[row]],
            edit=edits[row] or "byte_copy",
            seed=(seed, 2, row),
        )
        for row in range(n_distinct, len(kinds))
    ]
    distances = _run(_write_copy, copy_tasks, workers)

    truth: dict[str, dict[str, object]] = {}
    captions: dict[int, str] = {}
    for row in range(len(kinds)):
        source = sources[row]
        if kinds[row] == "distinct":
            captions[row] = f"Synthetic photo {row}: coloured shapes on a smooth background."
            truth[ids[row]] = {"kind": "distinct", "of": None}
            continue
        entry: dict[str, object] = {"kind": kinds[row], "of": ids[source]}
        if kinds[row] == "perceptual_copy":
            entry.update(edit=edits[row], phash_distance=distances[row - n_distinct])
        truth[ids[row]] = entry
        captions[row] = captions[source]

    lines = []
    for row in ranks:
        record = {
            "id": ids[row],
            "image": f"{_IMAGES_FOLDER}/{ids[row]}.jpg",
            "text": captions[row],
            "url": f"https://example.org/synthetic/{ids[row]}.jpg",
            "license": _LICENSES[row % len(_LICENSES)],
        }
        lines.append(json.dumps(record))
    (date_dir / _MANIFEST).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    truth_path = date_dir.parent.parent / f"synthetic_truth_{date}.json"
    ordered_truth = {ids[row]: truth[ids[row]] for row in ranks}
    truth_path.write_text(json.dumps(ordered_truth, indent=2) + "\n", encoding="utf-8")
    return ordered_truth
