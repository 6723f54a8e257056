"""Each curated image cropped to the token resolution and encoded to VQ codebook indices.

The per-row work of ``tokens``: read the image, plan the crop on its upright size (so the stored
box is in source pixels), apply it to the decode (which may be a reduced JPEG draft), and encode
full batches through the tokenizer. On the Ray engine each actor loads the tokenizer once and
takes chunks of rows; an image that cannot be read is that row's failure, never the chunk's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.ingest.image_decode import decode_rgb
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.rejection import describe
from dataplatform.core.tokens.crop_policy import apply, plan

# The columns of a row the encoding reads; only these travel to a Ray actor.
ROW_FIELDS = ("pair_id", "image_location", "width", "height")
PROGRESS_LABEL = "VQ token encoding"


@dataclass(frozen=True)
class EncodeSettings:
    """Which tokenizer, where it runs, and the crop: plain values, so they travel to actors."""

    tokenizer_path: Path
    device: str
    batch_size: int
    resolution: int
    crop: str
    seed: int = 0


@dataclass
class EncodedRows:
    """Per input row index: its token grid and crop box, or why it could not be encoded."""

    grids: dict[int, np.ndarray]
    boxes: dict[int, list[int]]
    failures: dict[int, str]
    identity: dict[str, str]
    run: ChunkRun


def _encode(
    model: Any,
    rows: Sequence[dict],
    landing_root: Path,
    settings: EncodeSettings,
    progress: Progress | None = None,
):
    grids: dict[int, np.ndarray] = {}
    boxes: dict[int, list[int]] = {}
    failures: dict[int, str] = {}
    batch: list[int] = []
    pixels: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            for k, grid in zip(batch, model.encode(np.stack(pixels)), strict=True):
                grids[k] = grid
            if progress is not None:
                progress.advance(len(batch))
            batch.clear()
            pixels.clear()

    for k, row in enumerate(rows):
        try:
            image = decode_rgb(
                read_location(row["image_location"], landing_root), settings.resolution
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable image is that row's problem
            failures[k] = describe(exc)
            if progress is not None:
                progress.advance()
            continue
        placement = plan(
            row["width"],
            row["height"],
            settings.resolution,
            settings.crop,
            seed=settings.seed,
            key=row["pair_id"],
        )
        on_decode = dataclasses.replace(
            placement,
            crop=scale_box(placement.crop, row["width"], row["height"], image.width, image.height),
        )
        pixels.append(np.asarray(apply(image, on_decode, settings.resolution)))
        box = placement.crop
        boxes[k] = [box.left, box.top, box.right, box.bottom]
        batch.append(k)
        if len(batch) >= settings.batch_size:
            flush()
    flush()
    return grids, boxes, failures


def _load(settings: EncodeSettings) -> Any:
    from dataplatform.core.tokens.vq_tokenizer import auto_device, load_tokenizer

    return load_tokenizer(settings.tokenizer_path, auto_device(settings.device))


class _ChunkEncoder:
    """The Ray engine's worker: loads the tokenizer once per actor, then encodes chunks."""

    def __init__(self, settings: EncodeSettings, landing_root: Path) -> None:
        self._model = _load(settings)
        self._settings = settings
        self._landing_root = landing_root

    def __call__(self, rows: Sequence[dict]):
        grids, boxes, failures = _encode(self._model, rows, self._landing_root, self._settings)
        return grids, boxes, failures, self._model.identity


def encode_rows(
    rows: Sequence[dict],
    landing_root: Path,
    settings: EncodeSettings,
    engine: EngineSpec | None = None,
    log: Callable[[str], None] | None = None,
) -> EncodedRows:
    """Token grids for ``rows`` (dicts with ``ROW_FIELDS``), on the engine; GPU actors on Ray.

    Progress goes to ``log`` (the progress logger without it): images here, chunks on Ray."""
    engine = engine or EngineSpec()
    if not engine.is_ray or not rows:
        started = time.monotonic()
        model = _load(settings)
        with Progress(PROGRESS_LABEL, len(rows), unit="images", log=log) as progress:
            grids, boxes, failures = _encode(model, rows, landing_root, settings, progress)
        run = ChunkRun("local", 1, 1, time.monotonic() - started)
        return EncodedRows(grids, boxes, failures, model.identity, run)
    slim = [{f: row[f] for f in ROW_FIELDS} for row in rows]
    size = engine.chunk_rows
    starts = range(0, len(slim), size)
    parts, run = map_chunks(
        engine,
        partial(_ChunkEncoder, settings, Path(landing_root)),
        [slim[i : i + size] for i in starts],
        gpu=True,
        log=log,
    )
    out = EncodedRows({}, {}, {}, parts[0][3], run)
    for offset, (grids, boxes, failures, _) in zip(starts, parts, strict=True):
        out.grids.update({offset + k: v for k, v in grids.items()})
        out.boxes.update({offset + k: v for k, v in boxes.items()})
        out.failures.update({offset + k: v for k, v in failures.items()})
    return out


def scale_box(box, width: int, height: int, decoded_w: int, decoded_h: int):
    """A crop box planned on the original size, mapped onto a reduced (draft) decode."""
    if (decoded_w, decoded_h) == (width, height):
        return box
    sx, sy = decoded_w / width, decoded_h / height
    return dataclasses.replace(
        box,
        left=round(box.left * sx),
        top=round(box.top * sy),
        right=round(box.right * sx),
        bottom=round(box.bottom * sy),
    )
