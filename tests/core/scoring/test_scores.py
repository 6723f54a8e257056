"""The score registry: every list of scores derives from it, and a scorer registers in one call."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from dataplatform.core.records.audit import stage_columns
from dataplatform.core.records.data_cards import card_columns, card_scores
from dataplatform.core.records.review_rows import review_columns
from dataplatform.core.scoring import scores as registry
from dataplatform.core.scoring.quality_rules import _RULES, SCORE_COLUMNS, QualityThresholds
from dataplatform.core.scoring.quality_scoring import Scorers, score_partition, scores_schema
from dataplatform.core.scoring.scores import (
    CARD,
    DATASET_CARD,
    EVERYWHERE,
    EXPLAIN,
    IMAGES,
    QUALITY_STAGE,
    REVIEW,
    SCORES,
    Histogram,
    Score,
    Scorer,
    Unscored,
)
from tests.conftest import encode, photo

DATE = "2025-01-01"


def _brightness(batch: registry.Batch) -> list[registry.Result]:
    return [{"brightness": np.asarray(image.convert("L")).mean() / 255} for image in batch.images]


BRIGHTNESS = Scorer(
    "brightness",
    QUALITY_STAGE,
    (Score("brightness", value_range=(0.0, 1.0), histogram=Histogram(), shown=EVERYWHERE),),
    IMAGES,
    _brightness,
)


@pytest.fixture
def brightness():
    registry.register(BRIGHTNESS)
    yield BRIGHTNESS
    registry.unregister(BRIGHTNESS.name)


@pytest.fixture
def landing(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Three photos, one black square and one file that is no image, as quality rows."""
    images = {
        "astronaut": photo("astronaut"),
        "coffee": photo("coffee"),
        "black": Image.new("RGB", (320, 240)),
    }
    rows = []
    for name, image in images.items():
        (tmp_path / f"{name}.jpg").write_bytes(encode(image, quality=92))
        rows.append(_row(name, image.width, image.height))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows.append(_row("broken", 10, 10))
    return tmp_path, rows


def _row(name: str, width: int, height: int) -> dict:
    return {
        "pair_id": name,
        "date": DATE,
        "image_location": f"{name}.jpg",
        "width": width,
        "height": height,
    }


def _names(scores) -> list[str]:
    return [s.name for s in scores]


def _in_order(expected, got) -> bool:
    """Every item of ``expected`` is in ``got`` in that order; a later scorer's may sit between."""
    rest = iter(got)
    return all(item in rest for item in expected)


def test_the_built_in_scores_give_every_list_its_columns():
    assert _in_order(
        [
            "pair_id",
            "date",
            "aesthetic_score",
            "nsfw_score",
            "nudenet_score",
            "nudenet_detections",
            "clip_nsfw_score",
            "watermark_score",
            "ocr_text",
            "ocr_text_area",
            "ocr_confidence",
            "ocr_lines",
            "shortest_side",
            "aspect_ratio",
            "blur_variance",
            "clipped_fraction",
        ],
        scores_schema().names,
    )
    assert scores_schema().names[-1] == "scorer_errors"
    shown_everywhere = [
        "clip_score",
        "aesthetic_score",
        "nsfw_score",
        "watermark_score",
        "ocr_text_area",
        "ocr_confidence",
        "blur_variance",
        "clipped_fraction",
    ]
    assert _in_order(shown_everywhere, _names(card_scores()))
    assert _in_order(
        [*shown_everywhere[:6], "shortest_side", "aspect_ratio", *shown_everywhere[6:]],
        review_columns(),
    )
    assert review_columns()[-1] == "token_count"
    assert stage_columns("clip_scored") == ("clip_score", "clip_model")
    assert _in_order(
        [
            "aesthetic_score",
            "nsfw_score",
            "watermark_score",
            "ocr_text",
            "ocr_text_area",
            "ocr_confidence",
            "shortest_side",
            "aspect_ratio",
            "blur_variance",
            "clipped_fraction",
            "scorer_errors",
        ],
        stage_columns("quality_filtered"),
    )
    assert stage_columns("phash_deduped") == ("phash",)
    assert {"clip_model", "ocr_text", "shortest_side", "aspect_ratio"} <= set(card_columns())
    histograms = {
        s.name: (s.plot_range, s.histogram.threshold)
        for s in registry.scores(QUALITY_STAGE)
        if s.histogram is not None
    }
    assert {
        "aesthetic_score": ((1.0, 10.0), "min_aesthetic"),
        "nsfw_score": ((0.0, 1.0), "max_nsfw"),
        "watermark_score": ((0.0, 1.0), "max_watermark"),
        "ocr_text_area": ((0.0, 1.0), "ocr_text_area_for_text_images"),
        "blur_variance": (None, "min_blur_variance"),
        "clipped_fraction": ((0.0, 1.0), "max_clipped_fraction"),
    }.items() <= histograms.items()
    checked = {
        s.name: s.value_range
        for s in registry.scores(QUALITY_STAGE)
        if s.value_range is not None and s.bounded
    }
    assert {
        "nsfw_score": (0.0, 1.0),
        "nudenet_score": (0.0, 1.0),
        "clip_nsfw_score": (0.0, 1.0),
        "watermark_score": (0.0, 1.0),
        "ocr_text_area": (0.0, 1.0),
        "ocr_confidence": (0.0, 1.0),
        "aspect_ratio": (1.0, float("inf")),
        "clipped_fraction": (0.0, 1.0),
    }.items() <= checked.items()
    assert "aesthetic_score" not in checked  # a regression head's 1-10 is a scale, not a bound


def test_every_rule_cuts_a_registered_number_and_every_marker_is_a_rules_threshold():
    numbers = {
        s.name
        for s in registry.scores()
        if pa.types.is_floating(s.type) or pa.types.is_integer(s.type)
    }
    assert set(SCORE_COLUMNS) <= numbers
    cuts = {(r.score_name, r.threshold_name) for r in _RULES}
    cuts |= {(r.gate_score, r.gate_threshold_name) for r in _RULES if r.gate_score}
    settings = {f.name for f in dataclasses.fields(QualityThresholds)}
    for score in registry.scores():
        if score.histogram is not None and score.histogram.threshold is not None:
            assert score.histogram.threshold in settings
            assert (score.name, score.histogram.threshold) in cuts


def test_a_registered_scorer_joins_every_list_and_leaves_with_unregister(brightness):
    assert scores_schema().names[-1] == "brightness"
    assert "brightness" in _names(card_scores()) and "brightness" in card_columns()
    assert "brightness" in review_columns()
    assert stage_columns(QUALITY_STAGE)[-1] == "brightness"
    assert registry.score("brightness") is brightness.scores[0]
    registry.unregister("brightness")
    try:
        assert "brightness" not in scores_schema().names
        assert "brightness" not in card_columns()
        with pytest.raises(KeyError, match="no score named brightness"):
            registry.score("brightness")
    finally:
        registry.register(BRIGHTNESS)  # for the fixture's teardown


def test_a_registered_scorer_is_computed_from_the_decoded_image(brightness, landing):
    root, rows = landing
    table = score_partition(rows, np.zeros((len(rows), 4), np.float32), root, Scorers())
    by_id = {r["pair_id"]: r for r in table.to_pylist()}
    assert by_id["black"]["brightness"] == 0.0
    expected = np.asarray(photo("coffee").convert("L")).mean() / 255
    assert by_id["coffee"]["brightness"] == pytest.approx(expected, abs=0.01)
    assert 0.0 < by_id["astronaut"]["brightness"] < 1.0
    # The image that cannot be decoded has no score, and the decode error says why.
    assert by_id["broken"]["brightness"] is None
    assert by_id["broken"]["scorer_errors"].startswith("decode: ")
    # The built-in technical scorer ran beside it; no model was loaded, so those stay null.
    assert by_id["black"]["shortest_side"] == 240
    assert by_id["black"]["nudenet_score"] is None and by_id["black"]["scorer_errors"] is None


def test_a_failing_scorer_costs_its_scores_and_names_itself_never_the_partition(landing):
    root, rows = landing

    def half(batch):
        return [
            Unscored("too dark") if row["pair_id"] == "black" else {"half": 0.5}
            for row in batch.rows
        ]

    def fails(batch):
        raise RuntimeError("no GPU")

    registered = [
        Scorer("half", QUALITY_STAGE, (Score("half"),), IMAGES, half),
        Scorer("fails", QUALITY_STAGE, (Score("fails"),), IMAGES, fails),
        # Skipped: the model it names is not loaded.
        Scorer("needs", QUALITY_STAGE, (Score("needs"),), IMAGES, fails, model="watermark"),
        # Combines what the others wrote, after them.
        Scorer(
            "double",
            QUALITY_STAGE,
            (Score("double"),),
            SCORES,
            lambda b: [{"double": None if v is None else 2 * v} for v in b.scores["half"]],
        ),
    ]
    for scorer in registered:
        registry.register(scorer)
    try:
        table = score_partition(rows, np.zeros((len(rows), 4), np.float32), root, Scorers())
    finally:
        for scorer in registered:
            registry.unregister(scorer.name)
    by_id = {r["pair_id"]: r for r in table.to_pylist()}
    assert [by_id["coffee"][c] for c in ("half", "fails", "needs", "double")] == [
        0.5,
        None,
        None,
        1.0,
    ]
    assert by_id["coffee"]["scorer_errors"] == "fails: RuntimeError: no GPU"
    assert by_id["black"]["half"] is None and by_id["black"]["double"] is None
    assert by_id["black"]["scorer_errors"] == "half: too dark; fails: RuntimeError: no GPU"


def test_registration_refuses_what_would_break_a_list():
    with pytest.raises(ValueError, match="already declared"):
        registry.register(Scorer("again", QUALITY_STAGE, (Score("nsfw_score"),)))
    with pytest.raises(ValueError, match="registered already"):
        registry.register(Scorer("ocr", QUALITY_STAGE, (Score("other"),)))
    with pytest.raises(ValueError, match="not one of"):
        Scorer("lost", "quality", (Score("lost"),))
    with pytest.raises(ValueError, match="both reads and compute"):
        Scorer("half", QUALITY_STAGE, (Score("half"),), IMAGES)
    with pytest.raises(ValueError, match="only a number"):
        Score("caption", pa.string(), shown=frozenset({REVIEW}))
    with pytest.raises(ValueError, match="places are"):
        Score("x", shown=frozenset({"ui"}))
    with pytest.raises(KeyError, match="no scorer named"):
        registry.unregister("never")
    assert Score("x", shown=frozenset({DATASET_CARD})).shown == {DATASET_CARD, CARD}
    assert Score("x", value_range=(1.0, float("inf"))).plot_range is None
    assert EXPLAIN in EVERYWHERE
