"""Every quality score of a partition, computed once and stored before any threshold.

Each image is read and decoded once per batch and handed to every image scorer (technical,
NudeNet, RapidOCR, watermark); the embedding heads (aesthetic, CLIP-based NSFW) score the CLIP
embeddings `clip_scored` already stored. A scorer that fails on one image leaves that score
null and says why in `scorer_errors`; it never fails the partition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from dataplatform.core.ingest.image_decode import decode_rgb
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.rejection import describe
from dataplatform.core.scoring.technical_quality import technical_scores

if TYPE_CHECKING:
    from dataplatform.core.scoring.embedding_heads import EmbeddingHead
    from dataplatform.core.scoring.nsfw_nudenet import NudeNetScorer
    from dataplatform.core.scoring.ocr_readability import OcrScorer
    from dataplatform.core.scoring.watermark_model import WatermarkScorer

# OCR wants a short side up to 736 px and the blur measure 512 px: decoding a camera JPEG at a
# reduced codec scale that keeps at least this size loses nothing either of them uses.
DECODE_DRAFT_SIZE = 1024

SCORES_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("aesthetic_score", pa.float32()),
        pa.field("nsfw_score", pa.float32()),
        pa.field("nudenet_score", pa.float32()),
        pa.field("nudenet_detections", pa.string()),
        pa.field("clip_nsfw_score", pa.float32()),
        pa.field("watermark_score", pa.float32()),
        pa.field("ocr_text", pa.string()),
        pa.field("ocr_text_area", pa.float32()),
        pa.field("ocr_confidence", pa.float32()),
        pa.field("ocr_lines", pa.int32()),
        pa.field("shortest_side", pa.int32()),
        pa.field("aspect_ratio", pa.float32()),
        pa.field("blur_variance", pa.float32()),
        pa.field("clipped_fraction", pa.float32()),
        pa.field("scorer_errors", pa.string()),
    ]
)
SCORE_NAMES = [f.name for f in SCORES_SCHEMA if f.name not in ("pair_id", "date")]


@dataclass
class Scorers:
    """The loaded models; None where a scorer is switched off or has no weights."""

    nudenet: NudeNetScorer | None = None
    ocr: OcrScorer | None = None
    watermark: WatermarkScorer | None = None
    aesthetic: EmbeddingHead | None = None
    clip_nsfw: EmbeddingHead | None = None
    notes: dict[str, str] = field(default_factory=dict)  # scorer -> why it did not run


def score_partition(
    rows: Sequence[dict],
    embeddings: np.ndarray,
    landing_root: Path,
    scorers: Scorers,
    batch_size: int = 32,
) -> pa.Table:
    """One row of scores per input row (same order), as ``SCORES_SCHEMA``."""
    out: dict[str, list] = {name: [None] * len(rows) for name in SCORES_SCHEMA.names}
    out["pair_id"] = [r["pair_id"] for r in rows]
    out["date"] = [r["date"] for r in rows]
    errors: list[list[str]] = [[] for _ in rows]
    for start in range(0, len(rows), batch_size):
        _score_batch(
            rows,
            range(start, min(start + batch_size, len(rows))),
            landing_root,
            scorers,
            out,
            errors,
        )
    for name, head in (
        ("aesthetic_score", scorers.aesthetic),
        ("clip_nsfw_score", scorers.clip_nsfw),
    ):
        if head is not None and len(rows):
            out[name] = [_opt(v) for v in head.score(embeddings)]
    out["nsfw_score"] = [
        _nan_max(a, b) for a, b in zip(out["nudenet_score"], out["clip_nsfw_score"], strict=True)
    ]
    out["scorer_errors"] = ["; ".join(e) or None for e in errors]
    return pa.Table.from_pydict(out, schema=SCORES_SCHEMA)


def _score_batch(rows, indices, landing_root, scorers, out, errors) -> None:
    images = {}
    for k in indices:
        row = rows[k]
        try:
            image = decode_rgb(
                read_location(row["image_location"], landing_root), DECODE_DRAFT_SIZE
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable image is that row's problem
            errors[k].append(f"decode: {describe(exc)}")
            continue
        images[k] = image
        tech = technical_scores(image, row["width"], row["height"])
        out["shortest_side"][k] = tech.shortest_side
        out["aspect_ratio"][k] = tech.aspect_ratio
        out["blur_variance"][k] = tech.blur_variance
        out["clipped_fraction"][k] = tech.clipped_fraction
    keys = list(images)
    batch = [images[k] for k in keys]
    if scorers.nudenet is not None and batch:
        for k, (score, detections) in zip(keys, scorers.nudenet.score(batch), strict=True):
            if math.isnan(score):
                errors[k].append(f"nudenet: {detections}")
            else:
                out["nudenet_score"][k] = score
                out["nudenet_detections"][k] = detections
    if scorers.ocr is not None and batch:
        for k, result in zip(keys, scorers.ocr.read(batch), strict=True):
            if result.error:
                errors[k].append(f"ocr: {result.error}")
                continue
            out["ocr_text"][k] = result.text
            out["ocr_text_area"][k] = result.text_area
            out["ocr_confidence"][k] = result.confidence
            out["ocr_lines"][k] = result.lines
    if scorers.watermark is not None and batch:
        try:
            for k, score in zip(keys, scorers.watermark.score(batch), strict=True):
                out["watermark_score"][k] = _opt(score)
        except Exception as exc:  # noqa: BLE001 - keep the other scores of the batch
            for k in keys:
                errors[k].append(f"watermark: {type(exc).__name__}: {exc}")


def _opt(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _nan_max(a: float | None, b: float | None) -> float | None:
    present = [v for v in (a, b) if v is not None]
    return max(present) if present else None
