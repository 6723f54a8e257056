import math

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.scoring.quality_rules import (
    REASONS,
    SCORE_COLUMNS,
    QualityThresholds,
    Rejection,
    evaluate,
    evaluate_table,
)

DEFAULTS = QualityThresholds()

# The built-in rules' reasons in ledger order. A scorer registered later adds its own reason
# wherever its rule sits in `_RULES`; these tests pin the built-in ones and their order, and
# every other score column is left unscored (None), which skips its rule, so a new rule does
# not have to be named here again.
BUILT_IN_REASONS = (
    "low_aesthetic",
    "nsfw",
    "watermark",
    "too_small",
    "extreme_aspect_ratio",
    "blurry",
    "badly_exposed",
    "unreadable_text",
)
UNSCORED = dict.fromkeys(SCORE_COLUMNS)

# A row that passes every default rule, with room on each side.
CLEAN = {
    **UNSCORED,
    "aesthetic_score": 6.0,
    "nsfw_score": 0.01,
    "watermark_score": 0.1,
    "shortest_side": 512,
    "aspect_ratio": 1.5,
    "blur_variance": 500.0,
    "clipped_fraction": 0.05,
    "ocr_text_area": 0.0,
    "ocr_confidence": None,
}


def with_(**scores: object) -> dict[str, object]:
    return {**CLEAN, **scores}


def reasons(row: dict[str, object], t: QualityThresholds = DEFAULTS) -> list[str]:
    return [rejection.reason for rejection in evaluate(row, t)]


def test_clean_row_is_kept():
    assert evaluate(CLEAN, DEFAULTS) == []


def test_reasons_are_in_the_documented_order():
    built_in = [reason for reason in REASONS if reason in BUILT_IN_REASONS]
    assert tuple(built_in) == BUILT_IN_REASONS
    assert len(set(REASONS)) == len(REASONS)


# (column, value kept, value rejected, reason): min_* keep the threshold itself, max_* reject it.
EDGES = [
    ("aesthetic_score", 5.0, 4.99, "low_aesthetic"),
    ("nsfw_score", 0.0999, 0.1, "nsfw"),
    ("watermark_score", 0.4999, 0.5, "watermark"),
    ("shortest_side", 200, 199, "too_small"),
    ("aspect_ratio", 2.999, 3.0, "extreme_aspect_ratio"),
    ("blur_variance", 30.0, 29.99, "blurry"),
    ("clipped_fraction", 0.4999, 0.5, "badly_exposed"),
]


@pytest.mark.parametrize(("column", "kept", "rejected", "reason"), EDGES)
def test_each_rule_alone_at_its_threshold(column, kept, rejected, reason):
    assert reasons(with_(**{column: kept})) == []
    assert reasons(with_(**{column: rejected})) == [reason]


def test_rejection_carries_value_threshold_and_detail():
    assert evaluate(with_(nsfw_score=0.4), DEFAULTS) == [
        Rejection(
            reason="nsfw",
            score_name="nsfw_score",
            value=0.4,
            threshold=0.1,
            detail="nsfw_score 0.4 >= max 0.1",
        )
    ]
    assert evaluate(with_(shortest_side=120), DEFAULTS)[0].detail == "shortest_side 120 < min 200"


def test_unreadable_text_needs_a_text_image_and_low_confidence():
    assert reasons(with_(ocr_text_area=0.3, ocr_confidence=0.6)) == []
    assert reasons(with_(ocr_text_area=0.29, ocr_confidence=0.1)) == []
    assert reasons(with_(ocr_text_area=0.3, ocr_confidence=0.59)) == ["unreadable_text"]
    assert evaluate(with_(ocr_text_area=0.45, ocr_confidence=0.2), DEFAULTS) == [
        Rejection(
            reason="unreadable_text",
            score_name="ocr_confidence",
            value=0.2,
            threshold=0.6,
            detail="ocr_confidence 0.2 < min 0.6 on a text image (ocr_text_area 0.45 >= 0.3)",
        )
    ]


@pytest.mark.parametrize("missing", [None, math.nan, np.float32("nan")])
def test_unscored_values_skip_their_rule(missing):
    unscored = {column: missing for column in SCORE_COLUMNS}
    assert evaluate(unscored, DEFAULTS) == []
    # A text image without a confidence, or a low confidence without a text area, is not judged.
    assert reasons(with_(ocr_text_area=0.9, ocr_confidence=missing)) == []
    assert reasons(with_(ocr_text_area=missing, ocr_confidence=0.1)) == []


def test_all_failures_are_returned_in_order_and_the_first_lists_the_rest():
    row = with_(nsfw_score=0.5, aesthetic_score=3.0, blur_variance=4.0)
    rejections = evaluate(row, DEFAULTS)
    assert [r.reason for r in rejections] == ["low_aesthetic", "nsfw", "blurry"]
    assert rejections[0].detail == (
        "aesthetic_score 3 < min 5; also nsfw: nsfw_score 0.5 >= max 0.1; "
        "blurry: blur_variance 4 < min 30"
    )
    assert rejections[1].detail == "nsfw_score 0.5 >= max 0.1"
    assert rejections[2].detail == "blur_variance 4 < min 30"


def test_every_built_in_rule_can_fail_at_once():
    row = {
        **UNSCORED,
        "aesthetic_score": 1.0,
        "nsfw_score": 0.9,
        "watermark_score": 0.9,
        "shortest_side": 10,
        "aspect_ratio": 10.0,
        "blur_variance": 1.0,
        "clipped_fraction": 0.9,
        "ocr_text_area": 0.9,
        "ocr_confidence": 0.1,
    }
    assert reasons(row) == list(BUILT_IN_REASONS)


def test_missing_column_is_an_error_not_a_skipped_rule():
    row = dict(CLEAN)
    del row["blur_variance"]
    with pytest.raises(ValueError, match=r"\['blur_variance'\]"):
        evaluate(row, DEFAULTS)
    with pytest.raises(ValueError, match=r"\['blur_variance'\]"):
        evaluate_table(pa.Table.from_pylist([row]), DEFAULTS)


def test_non_numeric_score_is_an_error():
    with pytest.raises(ValueError, match="nsfw_score holds 'high'"):
        evaluate(with_(nsfw_score="high"), DEFAULTS)
    with pytest.raises(ValueError, match="nsfw_score has type string"):
        evaluate_table(pa.Table.from_pylist([with_(nsfw_score="high")]), DEFAULTS)


def test_nan_threshold_is_refused():
    with pytest.raises(ValueError, match="max_nsfw is NaN"):
        QualityThresholds(max_nsfw=math.nan)


def test_infinite_threshold_turns_a_rule_off():
    t = QualityThresholds(min_aesthetic=-math.inf)
    assert reasons(with_(aesthetic_score=-1e9), t) == []


_SCORED = pa.table(
    {
        "aesthetic_score": pa.array([6.0, 4.0, None, 5.5, 5.0, 7.0, 4.5], pa.float32()),
        "nsfw_score": pa.array([0.01, 0.2, 0.05, None, 0.0, 0.02, 0.3], pa.float32()),
        "watermark_score": [0.1, 0.1, 0.8, None, 0.2, 0.1, None],
        "shortest_side": pa.array([512, 150, 300, 256, 200, 1024, None], pa.int32()),
        "aspect_ratio": [1.0, 1.2, 3.5, 1.0, 2.0, 1.33, 1.0],
        "blur_variance": [400.0, 12.0, 80.0, 35.0, 30.0, 900.0, math.nan],
        "clipped_fraction": [0.0, 0.6, 0.1, 0.0, 0.2, 0.0, 0.0],
        "ocr_text_area": [0.0, 0.0, 0.5, 0.4, None, 0.1, 0.0],
        "ocr_confidence": [None, None, 0.3, 0.9, 0.1, 0.2, None],
    }
)
# Every score column the rules read, in their order; a column no built-in rule reads stays null.
SCORES = pa.table(
    {
        "pair_id": ["a", "b", "c", "d", "e", "f", "g"],
        **{
            name: _SCORED[name]
            if name in _SCORED.column_names
            else pa.nulls(_SCORED.num_rows, pa.float64())
            for name in SCORE_COLUMNS
        },
    }
)


def test_table_decisions():
    keep, rejections = evaluate_table(SCORES, DEFAULTS)
    assert keep.tolist() == [True, False, False, True, True, True, False]
    assert [[r.reason for r in row] for row in rejections] == [
        [],
        ["low_aesthetic", "nsfw", "too_small", "blurry", "badly_exposed"],
        ["watermark", "extreme_aspect_ratio", "unreadable_text"],
        [],
        [],
        [],
        ["low_aesthetic", "nsfw"],
    ]


@pytest.mark.parametrize(
    "t",
    [
        DEFAULTS,
        QualityThresholds(min_aesthetic=4.0, max_nsfw=0.5, min_blur_variance=10.0),
        QualityThresholds(min_shortest_side=300, max_aspect_ratio=1.5, min_ocr_confidence=0.95),
    ],
)
def test_table_matches_row_by_row(t):
    keep, rejections = evaluate_table(SCORES, t)
    rows = SCORES.to_pylist()
    assert rejections == [evaluate(row, t) for row in rows]
    assert keep.tolist() == [evaluate(row, t) == [] for row in rows]


def test_thresholds_are_reapplied_to_stored_scores_without_rescoring():
    # The table holds only score columns: no image, no model, nothing to recompute.
    strict = QualityThresholds(
        min_aesthetic=6.0, min_shortest_side=300, max_aspect_ratio=1.5, min_blur_variance=100.0
    )
    lenient = QualityThresholds(
        min_aesthetic=0.0,
        max_nsfw=1.0,
        max_watermark=1.0,
        min_shortest_side=0,
        max_aspect_ratio=10.0,
        min_blur_variance=0.0,
        max_clipped_fraction=1.0,
        min_ocr_confidence=0.0,
    )
    assert SCORES.column_names == ["pair_id", *SCORE_COLUMNS]

    def kept(t: QualityThresholds) -> list[bool]:
        return evaluate_table(SCORES, t)[0].tolist()

    assert kept(DEFAULTS) == [True, False, False, True, True, True, False]
    assert kept(strict) == [True, False, False, False, False, True, False]
    assert kept(lenient) == [True] * 7


def test_empty_table():
    keep, rejections = evaluate_table(SCORES.slice(0, 0), DEFAULTS)
    assert keep.tolist() == []
    assert rejections == []
