"""A scorer registered only here reaches the stage's columns, metadata and the data cards.

Nothing outside this file names ``brightness``: the quality stage computes it, keeps it beside
the other scores, checks its range and draws its histogram; the data cards carry, summarise
and plot it, and the review sheets show it, all from one registration.
"""

import json

import dagster as dg
import numpy as np
import pytest

from dataplatform.core.records.review_sheet import review_path
from dataplatform.core.scoring import scores as registry
from dataplatform.core.scoring.scores import (
    EVERYWHERE,
    IMAGES,
    QUALITY_STAGE,
    Batch,
    Histogram,
    Score,
    Scorer,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import read_partition
from tests.assets.conftest import DAYS, build_three_days, materialize_cards, materialize_day

DAY = DAYS[0]


def _luma(image) -> float:
    return float(np.asarray(image.convert("L"), dtype=np.float64).mean())


def brightness(batch: Batch) -> list[dict]:
    """Mean luma on [0, 1]; and on 0-255 as ``luma``, which says it is on [0, 1] (it is not)."""
    return [{"brightness": _luma(im) / 255, "luma": _luma(im)} for im in batch.images]


BRIGHTNESS = Scorer(
    "brightness",
    QUALITY_STAGE,
    (
        Score("brightness", value_range=(0.0, 1.0), histogram=Histogram(), shown=EVERYWHERE),
        Score("luma", value_range=(0.0, 1.0)),
    ),
    IMAGES,
    brightness,
)


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory):
    """Three days through every stage (the tokenizer trains on them all), cards for the first."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAPLATFORM_PROFILE", "smoke")
    mp.setenv("HF_HUB_OFFLINE", "1")
    home = Home(tmp_path_factory.mktemp("registry") / "home")
    build_three_days(home.landing)
    registry.register(BRIGHTNESS)
    try:
        instance = dg.DagsterInstance.ephemeral()
        runs = [materialize_day(home, day, instance) for day in DAYS]
        assert all(run.success for run in runs)
        stages = runs[0]
        cards = materialize_cards(home, DAY, instance)
        assert cards.success
        yield home, stages, cards
    finally:
        registry.unregister(BRIGHTNESS.name)
        mp.undo()


def test_the_stage_stores_and_keeps_the_registered_score(curated):
    home, _, _ = curated
    stored = read_partition(home, "quality_scores", DAY)
    kept = read_partition(home, QUALITY_STAGE, DAY)
    assert {"brightness", "luma"} <= set(stored.column_names)
    assert {"brightness", "luma"} <= set(kept.column_names)
    values = {r["pair_id"]: r["brightness"] for r in kept.to_pylist()}
    assert values and all(0.0 < v < 1.0 for v in values.values())
    luma = {r["pair_id"]: r["luma"] for r in kept.to_pylist()}
    assert all(luma[k] == pytest.approx(255 * v, rel=1e-5) for k, v in values.items())


def test_its_histogram_and_range_check_are_in_the_stage_metadata(curated):
    _, stages, _ = curated
    metadata = stages.asset_materializations_for_node(QUALITY_STAGE)[0].metadata
    assert "**brightness**\n\n![brightness](data:image/png;base64," in metadata["histograms"].value
    assert "**luma**" not in metadata["histograms"].value  # declared without a histogram
    (check,) = [
        c for c in stages.get_asset_check_evaluations() if c.check_name == "scores_in_range"
    ]
    # brightness is inside its declared range; luma, on 0-255, is not, and is named.
    out_of_range = check.metadata["out_of_range"].value
    assert not check.passed
    assert out_of_range.startswith("luma [") and "brightness" not in out_of_range


def test_the_data_cards_carry_summarise_and_plot_it(curated):
    home, _, _ = curated
    kept = {r["pair_id"]: r["brightness"] for r in read_partition(home, "tokens", DAY).to_pylist()}
    cards = read_partition(home, "data_cards", DAY).to_pylist()
    assert cards and {c["pair_id"]: c["brightness"] for c in cards} == kept
    assert "luma" not in cards[0]  # not shown on cards
    folder = home.warehouse / "dataset_cards" / f"date={DAY}"
    card = json.loads((folder / "card.json").read_text())
    assert card["scores"]["brightness"]["count"] == len(cards)
    assert card["scores"]["brightness"]["max"] == pytest.approx(max(kept.values()), abs=1e-6)
    assert (folder / "plots" / "brightness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![brightness](plots/brightness.png)" in (folder / "card.md").read_text()
    for stage in (QUALITY_STAGE, "tokens"):
        assert "brightness" in review_path(home, DAY, stage).read_text()
