"""Text in images: RapidOCR (PP-OCRv4 detection and recognition, ONNX inside its wheel) on the CPU.

``OcrScorer.read`` gives one ``OcrResult`` per image:

- ``text``: the recognised lines in reading order (top to bottom, then left to right), joined by
  ``" | "``; "" when there are none.
- ``text_area``: the fraction of the image covered by the union of the recognised lines' boxes
  (the quadrilaterals are rasterised onto one mask, so overlapping boxes count once), in [0, 1].
- ``confidence``: the mean recognition confidence of those lines, None when there are none.
- ``lines``: how many lines were recognised. Only lines RapidOCR keeps (recognition confidence
  at least 0.5) count anywhere above.

Images are scaled down before OCR so that the shorter side is at most 736 px
(``MAX_SHORT_SIDE``) and the longer at most 2000 px (``MAX_LONG_SIDE``): the detector scales
every image whose shorter side is under 736 px up to 736 anyway, and RapidOCR itself caps the
longer side at 2000, so a 12 MP photo would otherwise cost the detector about 3 MP of work to
find the same captions, watermarks and overlays. Text smaller than about 1/50 of the image
height may be lost; that text does not make an image unreadable or spammy.

onnxruntime, rapidocr_onnxruntime and cv2 are imported inside functions: Dagster imports this
module in every step.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dataplatform.core.ingest.ingest_folder import available_cores

MAX_SHORT_SIDE = 736
"""The detector's working resolution (RapidOCR's ``Det.limit_side_len`` with limit type min)."""
MAX_LONG_SIDE = 2000
"""RapidOCR's own cap (``Global.max_side_len``)."""
LINE_SEPARATOR = " | "


@dataclass(frozen=True)
class OcrResult:
    """What OCR read in one image; ``error`` is set (and the rest empty) when it failed."""

    text: str
    text_area: float
    confidence: float | None
    lines: int
    error: str | None = None


NO_TEXT = OcrResult(text="", text_area=0.0, confidence=None, lines=0)


class OcrScorer:
    """One RapidOCR engine (three ONNX Runtime sessions), on the CPU."""

    def __init__(self, engine: Any):
        self._engine = engine

    def read(self, images: Sequence[Image.Image]) -> list[OcrResult]:
        """One ``OcrResult`` per image, in order; a failed image gets ``error`` and NaN area."""
        results = []
        for image in images:
            try:
                results.append(self._read_one(image))
            except Exception as exc:  # one bad image must not fail the batch
                results.append(
                    OcrResult(
                        text="",
                        text_area=math.nan,
                        confidence=None,
                        lines=0,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
        return results

    def _read_one(self, image: Image.Image) -> OcrResult:
        rgb = downscale(image if image.mode == "RGB" else image.convert("RGB"))
        # An ndarray goes into RapidOCR as BGR, the order its models were trained on.
        bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
        found, _ = self._engine(bgr)
        if not found:
            return NO_TEXT
        boxes = [box for box, _, _ in found]
        texts = [str(text).strip() for _, text, _ in found]
        confidences = [float(score) for _, _, score in found]
        return OcrResult(
            text=LINE_SEPARATOR.join(texts),
            text_area=covered_fraction(boxes, rgb.size),
            confidence=float(np.mean(confidences)),
            lines=len(texts),
        )


def downscale(image: Image.Image) -> Image.Image:
    """``image`` shrunk (never enlarged) to fit ``MAX_SHORT_SIDE`` and ``MAX_LONG_SIDE``."""
    width, height = image.size
    scale = min(1.0, MAX_SHORT_SIDE / min(width, height), MAX_LONG_SIDE / max(width, height))
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def covered_fraction(boxes: Sequence[Any], size: tuple[int, int]) -> float:
    """The fraction of a ``size`` image inside the union of quadrilaterals ``boxes``."""
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        draw.polygon([(float(x), float(y)) for x, y in box], fill=1)
    return float(np.count_nonzero(np.asarray(mask))) / (width * height)


_SCORER: OcrScorer | None = None
_SCORER_LOCK = threading.Lock()


def load_ocr() -> OcrScorer:
    """The process's OCR engine, loaded on the first call (about 0.3 s) and cached."""
    global _SCORER
    with _SCORER_LOCK:
        if _SCORER is None:
            from rapidocr_onnxruntime import RapidOCR

            engine = RapidOCR(intra_op_num_threads=available_cores())
            # RapidOCR logs every image it could not find text in at WARNING.
            logging.getLogger("RapidOCR").setLevel(logging.ERROR)
            _SCORER = OcrScorer(engine)
        return _SCORER
