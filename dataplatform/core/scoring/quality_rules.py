"""Quality thresholds applied to stored score columns, never to images.

Every score (model-backed and technical) is written as a column before any filtering, so a
threshold can be changed and the filter re-run over the same table without decoding or scoring
a single image again. This module is that filter: a row of scores in, the rules it fails out.

Semantics, the same for every rule: a ``min_*`` threshold keeps values at or above it (the
score equal to the minimum passes); a ``max_*`` threshold is an exclusive upper bound (the
score equal to the maximum is rejected), so ``max_nsfw=0.1`` means "keep NSFW < 0.1" and
``max_aspect_ratio=3.0`` means "keep aspect ratio < 3" as in DataComp's basic filter. A null or
NaN score means the stage did not score that row, and its rule is skipped rather than failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from dataplatform.core.scoring.scores import score

REASON_LOW_AESTHETIC = "low_aesthetic"
REASON_NSFW = "nsfw"
REASON_WATERMARK = "watermark"
REASON_TOO_SMALL = "too_small"
REASON_EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
REASON_BLURRY = "blurry"
REASON_BADLY_EXPOSED = "badly_exposed"
REASON_UNREADABLE_TEXT = "unreadable_text"


@dataclass(frozen=True)
class QualityThresholds:
    """Where each rule cuts; the defaults are the reviewed choice for the training set.

    ``min_blur_variance`` sits in the measured gap (table in ``technical_quality``): all 16
    sharp scikit-image / scikit-learn photos score >= 65.1, every radius-3 Gaussian-blurred
    copy <= 16.6, and skimage's motion-blurred clock 24.3; 30 leaves about a factor of two to
    either side of the gap.
    """

    # shared/seeds/003, section 7.3: keep aesthetic score above 5.0 on the 1-10 scale.
    min_aesthetic: float = 5.0
    # shared/seeds/003 (the design chapter), section 7.3: keep NSFW < 0.1.
    max_nsfw: float = 0.1
    max_watermark: float = 0.5
    # DataComp's basic filter: shorter side >= 200 px, aspect ratio < 3.
    min_shortest_side: int = 200
    max_aspect_ratio: float = 3.0
    min_blur_variance: float = 30.0
    # More than half the pixels crushed black or blown white leaves little image to learn from.
    max_clipped_fraction: float = 0.5
    # shared/seeds/003, section 7.3: a text-dominated image (OCR boxes cover at least this share)
    # is rejected when OCR cannot read it (mean confidence below the minimum): its caption
    # cannot be checked against its text, and it is usually a screenshot or scan gone wrong.
    ocr_text_area_for_text_images: float = 0.3
    min_ocr_confidence: float = 0.6

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(
                    f"threshold {field.name} is NaN, which would silently disable its rule; "
                    "use +/-inf to turn a rule off on purpose"
                )


@dataclass(frozen=True)
class Rejection:
    reason: str
    score_name: str
    value: float
    threshold: float
    detail: str


def _below(values: np.ndarray, threshold: float) -> np.ndarray:
    return values < threshold


def _at_or_above(values: np.ndarray, threshold: float) -> np.ndarray:
    return values >= threshold


@dataclass(frozen=True)
class _Rule:
    reason: str
    score_name: str
    threshold_name: str
    fails: Callable[[np.ndarray, float], np.ndarray]
    # A second score that must be at or above its threshold for the rule to apply at all.
    gate_score: str | None = None
    gate_threshold_name: str | None = None

    def __post_init__(self) -> None:
        # A rule cuts a registered score, by a setting of QualityThresholds.
        settings = {f.name for f in fields(QualityThresholds)}
        for name in (self.score_name, self.gate_score):
            if name is not None:
                score(name)
        for setting in (self.threshold_name, self.gate_threshold_name):
            if setting is not None and setting not in settings:
                raise ValueError(f"rule {self.reason}: {setting} is not a QualityThresholds field")

    def failures(self, scores: Mapping[str, np.ndarray], t: QualityThresholds) -> np.ndarray:
        # NaN compares False both ways, so an unscored row never fails (nor opens a gate).
        failed = self.fails(scores[self.score_name], getattr(t, self.threshold_name))
        if self.gate_score is not None and self.gate_threshold_name is not None:
            gate = getattr(t, self.gate_threshold_name)
            failed &= _at_or_above(scores[self.gate_score], gate)
        return failed

    def describe(self, scores: Mapping[str, float], t: QualityThresholds) -> str:
        value = scores[self.score_name]
        threshold = getattr(t, self.threshold_name)
        bound = "< min" if self.fails is _below else ">= max"
        text = f"{self.score_name} {value:g} {bound} {threshold:g}"
        if self.gate_score is not None and self.gate_threshold_name is not None:
            gate = getattr(t, self.gate_threshold_name)
            text += f" on a text image ({self.gate_score} {scores[self.gate_score]:g} >= {gate:g})"
        return text


# Evaluation order is the reporting order: the first failure becomes the ledger reason.
_RULES = (
    _Rule(REASON_LOW_AESTHETIC, "aesthetic_score", "min_aesthetic", _below),
    _Rule(REASON_NSFW, "nsfw_score", "max_nsfw", _at_or_above),
    _Rule(REASON_WATERMARK, "watermark_score", "max_watermark", _at_or_above),
    _Rule(REASON_TOO_SMALL, "shortest_side", "min_shortest_side", _below),
    _Rule(REASON_EXTREME_ASPECT_RATIO, "aspect_ratio", "max_aspect_ratio", _at_or_above),
    _Rule(REASON_BLURRY, "blur_variance", "min_blur_variance", _below),
    _Rule(REASON_BADLY_EXPOSED, "clipped_fraction", "max_clipped_fraction", _at_or_above),
    _Rule(
        REASON_UNREADABLE_TEXT,
        "ocr_confidence",
        "min_ocr_confidence",
        _below,
        gate_score="ocr_text_area",
        gate_threshold_name="ocr_text_area_for_text_images",
    ),
)

REASONS = tuple(rule.reason for rule in _RULES)
# The registered scores the rules read (a gate before the score it opens), in rule order.
SCORE_COLUMNS = tuple(
    dict.fromkeys(
        name for rule in _RULES for name in (rule.gate_score, rule.score_name) if name is not None
    )
)


def evaluate(row: Mapping[str, object], t: QualityThresholds) -> list[Rejection]:
    """Every rule ``row`` fails, in ``REASONS`` order; empty when the row is kept.

    The first rejection is the one the ledger records, so its ``detail`` also lists the other
    failures ("...; also nsfw: nsfw_score 0.4 >= max 0.1"): a reviewer sees every reason a row
    was dropped, and the ledger keeps one row per dropped pair.
    """
    missing = [name for name in SCORE_COLUMNS if name not in row]
    if missing:
        raise ValueError(
            f"row lacks score columns {missing}; add them as nulls to skip those rules"
        )
    scores = {name: _as_float(name, row[name]) for name in SCORE_COLUMNS}
    arrays = {name: np.array([value]) for name, value in scores.items()}
    failing = [rule for rule in _RULES if bool(rule.failures(arrays, t)[0])]
    return _rejections(failing, scores, t)


def evaluate_table(
    table: pa.Table, t: QualityThresholds
) -> tuple[np.ndarray, list[list[Rejection]]]:
    """Keep mask and per-row rejections for a whole table of scores, identical to ``evaluate``.

    The comparisons run column-wise; only rows that fail something are visited one by one to
    build their ledger detail.
    """
    missing = [name for name in SCORE_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(
            f"table lacks score columns {missing}; add them as nulls to skip those rules"
        )
    arrays = {name: _as_float_array(table, name) for name in SCORE_COLUMNS}
    failed = np.zeros((len(_RULES), table.num_rows), dtype=bool)
    for index, rule in enumerate(_RULES):
        failed[index] = rule.failures(arrays, t)
    keep = ~failed.any(axis=0)
    rejections: list[list[Rejection]] = [[] for _ in range(table.num_rows)]
    for row_index in np.flatnonzero(~keep):
        scores = {name: float(arrays[name][row_index]) for name in SCORE_COLUMNS}
        failing = [rule for index, rule in enumerate(_RULES) if failed[index, row_index]]
        rejections[row_index] = _rejections(failing, scores, t)
    return keep, rejections


def _rejections(
    failing: Sequence[_Rule], scores: Mapping[str, float], t: QualityThresholds
) -> list[Rejection]:
    details = [rule.describe(scores, t) for rule in failing]
    out = []
    for index, (rule, detail) in enumerate(zip(failing, details, strict=True)):
        if index == 0 and len(failing) > 1:
            others = "; ".join(
                f"{other.reason}: {other_detail}"
                for other, other_detail in zip(failing[1:], details[1:], strict=True)
            )
            detail = f"{detail}; also {others}"
        out.append(
            Rejection(
                reason=rule.reason,
                score_name=rule.score_name,
                value=scores[rule.score_name],
                threshold=float(getattr(t, rule.threshold_name)),
                detail=detail,
            )
        )
    return out


def _as_float(name: str, value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"score column {name} holds {value!r}, not a number") from None


def _as_float_array(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    try:
        column = column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ValueError(f"score column {name} has type {column.type}, not a number") from None
    return column.to_numpy().astype(np.float64, copy=False)
