"""Review-sheet links in asset metadata; a rendering error never fails the stage."""

import threading
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

import dataplatform.assets.review as review
from dataplatform.core.records.review_sheet import REVIEW_URL_ENV
from dataplatform.core.store.home import Home
from dataplatform.review_server import make_server
from tests.assets.conftest import DAYS, materialize_day


def test_each_stage_links_its_sheet_on_the_review_server(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    server = make_server(three_days, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(REVIEW_URL_ENV, base + "/")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = materialize_day(three_days, DAYS[0], selection=["raw_pairs", "exact_deduped"])
        assert result.success
        for stage in ("raw_pairs", "exact_deduped"):
            metadata = result.asset_materializations_for_node(stage)[0].metadata
            path = metadata["review_sheet_path"]
            assert isinstance(path, dg.PathMetadataValue)
            assert path.value.endswith(f"review/date={DAYS[0]}/{stage}.html")
            url = metadata["review_sheet_url"]
            assert isinstance(url, dg.UrlMetadataValue)
            assert url.value == f"{base}/date={DAYS[0]}/{stage}.html"
            with urllib.request.urlopen(url.value, timeout=10) as response:  # loopback only
                assert response.read() == Path(path.value).read_bytes()
            assert "<html" in Path(path.value).read_text(encoding="utf-8").lower()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_without_a_review_url_the_path_is_a_path_and_there_is_no_file_link(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(REVIEW_URL_ENV, raising=False)
    metadata = _materialize_raw_pairs(three_days)
    assert isinstance(metadata["review_sheet_path"], dg.PathMetadataValue)
    assert "review_sheet_url" not in metadata
    assert not any("file://" in str(getattr(v, "value", "")) for v in metadata.values())
    monkeypatch.setenv(REVIEW_URL_ENV, "127.0.0.1:8070")
    assert review.review_sheet_metadata(three_days, "raw_pairs", DAYS[0])[
        "review_sheet_url"
    ].value.startswith(f"not linked: {REVIEW_URL_ENV}='127.0.0.1:8070' is not an http(s) URL")


def test_the_stages_threshold_reaches_its_sheets_near_miss_band(three_days: Home):
    assert review.stage_threshold({"threshold": dg.MetadataValue.float(0.93)}) == 0.93
    assert review.stage_threshold({"rows_in": 3}) is None
    selection = ["raw_pairs", "exact_deduped", "phash_deduped"]
    assert materialize_day(three_days, DAYS[0], selection=selection).success
    metadata = review.review_sheet_metadata(
        three_days, "phash_deduped", DAYS[0], {"threshold_bits": 6, "rows_in": 3}
    )
    sheet = Path(metadata["review_sheet_path"].value).read_text(encoding="utf-8")
    assert 'data-threshold="6.0"' in sheet and "(6 &lt; bits ≤ 12)" in sheet


def _materialize_raw_pairs(home: Home) -> dict:
    result = materialize_day(home, DAYS[0], selection=["raw_pairs"])
    assert result.success
    return result.asset_materializations_for_node("raw_pairs")[0].metadata


def test_a_rendering_error_is_reported_not_raised(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    def broken(*_args, **_kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(review, "render_review_sheet", broken)
    metadata = _materialize_raw_pairs(three_days)
    assert metadata["review_sheet"].value == "not rendered: RuntimeError: renderer broke"
    assert "review_sheet_path" not in metadata
