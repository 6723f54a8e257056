"""Review-sheet links in asset metadata; a rendering error never fails the stage."""

from pathlib import Path

import pytest

import dataplatform.assets.review as review
from dataplatform.core.store.home import Home
from tests.assets.conftest import DAYS, materialize_day


def test_each_stage_links_its_sheet(three_days: Home):
    result = materialize_day(three_days, DAYS[0], selection=["raw_pairs", "exact_deduped"])
    assert result.success
    for stage in ("raw_pairs", "exact_deduped"):
        metadata = result.asset_materializations_for_node(stage)[0].metadata
        path = metadata["review_sheet"].value
        assert path.endswith(f"review/date={DAYS[0]}/{stage}.html")
        assert metadata["review_sheet_url"].value.startswith("file://")
        assert "<html" in Path(path).read_text(encoding="utf-8").lower()


def test_a_rendering_error_is_reported_not_raised(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    def broken(*_args, **_kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(review, "render_review_sheet", broken)
    result = materialize_day(three_days, DAYS[0], selection=["raw_pairs"])
    assert result.success
    metadata = result.asset_materializations_for_node("raw_pairs")[0].metadata
    assert metadata["review_sheet"].value == "not rendered: RuntimeError: renderer broke"
