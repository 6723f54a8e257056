"""NSFW scores from NudeNet's body-part detector (the 320n ONNX model inside the nudenet wheel).

``NudeNetScorer.score`` turns each image into ``(nsfw_score, nsfw_detections)``:

- ``nsfw_score``: the highest confidence of any detection of an exposed intimate part
  (``EXPOSED_CLASSES``), 0.0 when there is none. Detections below 0.25 are dropped by the
  detector itself, so a score is either 0.0 or in [0.25, 1].
- ``nsfw_detections``: every detection of every class (faces and covered parts included) as
  compact JSON, ``[{"class": ..., "score": ..., "box": [x, y, w, h]}, ...]`` with the box in the
  input image's pixels, so that a threshold on any class can be applied later without rescoring.

Pre- and post-processing are nudenet 3.4.2's (``NudeDetector.detect``), redone here so that a
whole batch goes through one ONNX call and images never pass through cv2: the image is scaled
so that its longer side is the model's 320 px input (Pillow's antialiased bilinear filter rather
than cv2's aliasing one), padded at the right or bottom to a black square, and fed in BGR order
as ``NudeDetector`` feeds a file it read. Scaling down first is all the downscaling an image
needs: the network sees 320 x 320 pixels whatever the input size.

onnxruntime and cv2 are imported inside functions: Dagster imports this module in every step.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dataplatform.core.ingest.ingest_folder import available_cores

if TYPE_CHECKING:
    import onnxruntime

INPUT_SIZE = 320
"""The side of the square the 320n model was trained on."""
# The order of the model's class outputs; tests check it against the installed nudenet.
LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
EXPOSED_CLASSES = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
# nudenet's thresholds: candidates from 0.2, kept after non-maximum suppression from 0.25.
_CANDIDATE_SCORE = 0.2
_KEEP_SCORE = 0.25
_NMS_IOU = 0.45
DEFAULT_BATCH_SIZE = 16
"""Images per ONNX call: large enough to amortise the call, small enough to stay under 100 MB."""


def model_path() -> Path:
    """The 320n ONNX file inside the installed nudenet package."""
    import nudenet

    return Path(nudenet.__file__).parent / "320n.onnx"


class NudeNetScorer:
    """One ONNX Runtime session over NudeNet's 320n detector, on the CPU."""

    def __init__(self, session: onnxruntime.InferenceSession, batch_size: int = DEFAULT_BATCH_SIZE):
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self.batch_size = batch_size

    def score(self, images: Sequence[Image.Image]) -> list[tuple[float, str]]:
        """``(nsfw_score, detections_json)`` per image; a failure gives ``(nan, "error: …")``."""
        results: list[tuple[float, str]] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._score_batch(images[start : start + self.batch_size]))
        return results

    def _score_batch(self, images: Sequence[Image.Image]) -> list[tuple[float, str]]:
        results: list[tuple[float, str] | None] = [None] * len(images)
        blobs, scales, sizes, rows = [], [], [], []
        for i, image in enumerate(images):
            try:
                blob, scale = _letterbox(image)
            except Exception as exc:  # one bad image must not fail the batch
                results[i] = _error(exc)
                continue
            blobs.append(blob)
            scales.append(scale)
            sizes.append(image.size)
            rows.append(i)
        if blobs:
            try:
                output = self._session.run(None, {self._input_name: np.stack(blobs)})[0]
            except Exception as exc:
                for i in rows:
                    results[i] = _error(exc)
            else:
                for j, i in enumerate(rows):
                    try:
                        detections = _detections(output[j], scales[j], sizes[j])
                    except Exception as exc:
                        results[i] = _error(exc)
                        continue
                    results[i] = (nsfw_score(detections), _to_json(detections))
        return [r for r in results if r is not None]


def nsfw_score(detections: Sequence[dict[str, Any]]) -> float:
    """The highest score among detections of ``EXPOSED_CLASSES``; 0.0 when there is none."""
    return max((d["score"] for d in detections if d["class"] in EXPOSED_CLASSES), default=0.0)


_SCORER: NudeNetScorer | None = None
_SCORER_LOCK = threading.Lock()


def load_nudenet() -> NudeNetScorer:
    """The process's NudeNet scorer, loaded on the first call (about 0.3 s) and cached."""
    global _SCORER
    with _SCORER_LOCK:
        if _SCORER is None:
            import onnxruntime

            path = model_path()
            if not path.is_file():
                raise FileNotFoundError(
                    f"NudeNet model {path} is missing: reinstall the nudenet package "
                    "(its wheel ships 320n.onnx)"
                )
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = available_cores()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            _SCORER = NudeNetScorer(session)
        return _SCORER


def _letterbox(image: Image.Image) -> tuple[np.ndarray, float]:
    """The model's (3, 320, 320) float input for ``image``, and the scale from image to input."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    scale = INPUT_SIZE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    square = Image.new("RGB", (INPUT_SIZE, INPUT_SIZE))
    square.paste(rgb.resize(size, Image.Resampling.BILINEAR), (0, 0))
    bgr = np.asarray(square, dtype=np.float32)[:, :, ::-1] / 255.0
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)), scale


def _detections(output: np.ndarray, scale: float, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Decode one image's (4 + classes, anchors) output into boxes in the image's pixels."""
    import cv2

    candidates = output.T
    class_scores = candidates[:, 4:]
    best = class_scores.max(axis=1)
    keep = best >= _CANDIDATE_SCORE
    if not keep.any():
        return []
    cx, cy, w, h = (candidates[keep, k] / scale for k in range(4))
    classes = class_scores[keep].argmax(axis=1)
    scores = best[keep]
    width, height = size
    x = np.clip(cx - w / 2, 0, width)
    y = np.clip(cy - h / 2, 0, height)
    w = np.minimum(w, width - x)
    h = np.minimum(h, height - y)
    boxes = np.stack([x, y, w, h], axis=1)
    kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), _KEEP_SCORE, _NMS_IOU)
    return [
        {
            "class": LABELS[int(classes[k])],
            "score": round(float(scores[k]), 4),
            "box": [int(v) for v in boxes[k]],
        }
        for k in np.asarray(kept, dtype=int).reshape(-1)
    ]


def _to_json(detections: list[dict[str, Any]]) -> str:
    return json.dumps(detections, separators=(",", ":"))


def _error(exc: Exception) -> tuple[float, str]:
    return math.nan, f"error: {type(exc).__name__}: {exc}"
