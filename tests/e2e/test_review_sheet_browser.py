"""Review sheets in a real browser: headless Chromium opens them from disk (file://) and over
HTTP from the review server on loopback, at the URL the asset metadata links.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` dev extra.
Without them the test skips, unless ``DATAPLATFORM_REQUIRE_BROWSER=1`` (CI sets it), where a
missing browser is a failure. Screenshots go to ``DATAPLATFORM_TEST_ARTIFACTS`` when set, else
to the test's temporary folder; their paths are printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplatform.assets import STAGE_ASSETS
from dataplatform.assets.review import review_sheet_metadata
from dataplatform.core.records.review_sheet import (
    REVIEW_URL_ENV,
    render_partition_review,
    render_review_sheet,
    review_path,
    sheet_url,
)
from dataplatform.core.samples.sample_data import build_sample_landing
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import read_ledger, read_partition
from dataplatform.review_server import ReviewServer, make_server
from tests.assets.conftest import materialize_day
from tests.core.records.test_review_sheet import INJECTION, build_review_warehouse

REQUIRE_ENV = "DATAPLATFORM_REQUIRE_BROWSER"
ARTIFACTS_ENV = "DATAPLATFORM_TEST_ARTIFACTS"
DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]
# The stages that need no model: enough for every kind of section and every odd image format.
STAGES = [a.node_def.name for a in STAGE_ASSETS[:3]]
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires the browser test to run)")
    pytest.skip(reason)


def _executable(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = _executable("/usr/bin/chromium", "chromium", "chromium-browser")
    driver_path = _executable("/usr/bin/chromedriver", "chromedriver")
    if chromium is None or driver_path is None:
        _unavailable("headless Chromium is not installed: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed: pip install -e '.[dev]'")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as env:
        # Both paths are given, so Selenium Manager has nothing to resolve; offline regardless.
        env.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The demo's sample landing (real photos, odd formats, broken inputs) through pHash dedup."""
    home = Home(tmp_path_factory.mktemp("review") / "home")
    build_sample_landing(home.landing, DAYS)
    for day in DAYS:
        result = materialize_day(home, day, selection=STAGE_ASSETS[:3])
        assert result.success, day
        render_partition_review(home, day, STAGES)
    return home


@contextlib.contextmanager
def _serving(home: Home) -> Iterator[str]:
    """The review server for ``home`` on a free loopback port; yields its base URL."""
    server: ReviewServer = make_server(home, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _open(browser, path: Path | str) -> dict:
    """Load ``path`` from disk, or a URL; return what the page shows and what the console
    said."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path if isinstance(path, str) else path.resolve().as_uri())
    return _state(browser)


def _state(browser) -> dict:
    state = browser.execute_script(
        "return {ready: document.readyState, title: document.title,"
        " text: document.body.innerText,"
        " images: Array.from(document.images).map(i => ["
        "   i.alt, i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]),"
        " placeholders: document.querySelectorAll('div.thumb').length,"
        " url: document.location.href,"
        " profile: (document.querySelector('p.profile') || {}).textContent}"
    )
    state["severe"] = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return state


def _near_misses(browser) -> list[list]:
    """(pair_id, neighbour, margin) of each near miss the page shows."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('.cluster.near-miss'))"
        ".map(c => [c.dataset.pairId, c.dataset.neighbour, Number(c.dataset.margin)])"
    )


def _screenshot(browser, name: str, fallback: Path) -> Path:
    """A full-page PNG (the window grown to the page's height, at most 12000 px)."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(int(height), 12000))
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path))
    browser.set_window_size(1400, 1000)
    print(f"screenshot: {path}")
    return path


def _assert_rendered(state: dict, expected_images: int) -> None:
    assert state["ready"] == "complete"
    assert state["severe"] == []
    assert len(state["images"]) == expected_images
    broken = [i for i in state["images"] if not (i[1] and i[2] > 0 and i[3] > 0 and i[4] > 0)]
    assert broken == []


def test_review_sheets_load_from_disk_with_every_thumbnail_rendered(
    browser, sample_home: Home, tmp_path: Path
):
    folder = sample_home.warehouse / "review" / f"date={DAYS[1]}"

    index = _open(browser, folder / "index.html")
    _assert_rendered(index, 0)
    assert index["title"] == "2025-01-02 review"
    assert "phash_deduped\t34\t13\t21" in index["text"]

    # Day 2 of the sample: 13 kept, and 21 pHash copies next to their originals.
    originals = set(read_ledger(sample_home, "phash_deduped", DAYS[1])["duplicate_of"].to_pylist())
    assert len(originals) == 14
    phash = _open(browser, folder / "phash_deduped.html")
    # Beside them, both pairs of each near miss (kept, just outside the threshold).
    _assert_rendered(phash, 13 + 21 + len(originals) + 2 * len(_near_misses(browser)))
    assert phash["placeholders"] == 0
    assert "Hamming bits" in phash["text"] and "kept 2025-01-01" in phash["text"]
    shot = _screenshot(browser, "review_phash_deduped_2025-01-02", tmp_path)
    assert shot.stat().st_size > 50_000

    # raw_pairs: the broken inputs are listed, not drawn; every ingested image draws: CMYK and
    # EXIF-rotated JPEGs (day 1), 16-bit and palette PNGs (day 2), an animated GIF and a 1x1 PNG
    # (day 3).
    for day in DAYS:
        raw = _open(browser, review_path(sample_home, day, "raw_pairs"))
        _assert_rendered(raw, read_partition(sample_home, "raw_pairs", day).num_rows)
        assert raw["placeholders"] == 0
        reasons = set(read_ledger(sample_home, "raw_pairs", day)["reason"].to_pylist())
        assert reasons and all(reason in raw["text"] for reason in reasons)
    _screenshot(browser, "review_raw_pairs_2025-01-03", tmp_path)


def test_injected_markup_is_shown_as_text_and_takedowns_as_placeholders(browser, tmp_path: Path):
    home = Home(tmp_path / "home")
    build_review_warehouse(home)
    path = render_review_sheet(home, "phash_deduped", "2025-01-02")

    state = _open(browser, path)
    # No alert opened (an open alert would make this script call fail), and the caption reads
    # as the text it is.
    assert INJECTION in state["text"]
    _assert_rendered(state, 5 + 71)
    assert state["placeholders"] == 2  # t1 taken down; `gone` lost its file
    assert "taken down\nt1" in state["text"]
    assert "SECRET-CAPTION-T1" not in state["text"]
    _screenshot(browser, "review_takedown_and_injection", tmp_path)

    # What the asset reports: the sheet's path, labelled as a path, and the review server's
    # URL, which opens the same page over HTTP as a reviewer's browser would from the UI.
    with _serving(home) as base, pytest.MonkeyPatch.context() as env:
        env.setenv(REVIEW_URL_ENV, base)
        metadata = review_sheet_metadata(home, "phash_deduped", "2025-01-02")
        assert metadata["review_sheet_path"].path == str(path)
        url = metadata["review_sheet_url"].url
        assert url == f"{base}/date=2025-01-02/phash_deduped.html"
        served = _open(browser, url)
        assert served["url"] == url and INJECTION in served["text"]
        _assert_rendered(served, 5 + 71)
        assert served["placeholders"] == 2
        browser.find_element("link text", "all stages of this date").click()
        index = _state(browser)
        assert index["url"] == f"{base}/date=2025-01-02/index.html"
    assert index["severe"] == [] and "phash_deduped\t75\t72\t3" in index["text"]
    assert "tokens\tnot materialized for this date" in index["text"]


def test_review_sheets_open_over_http_from_the_review_server_as_the_ui_links_them(
    browser, sample_home: Home, tmp_path: Path
):
    """From the index to a dedup sheet over HTTP: the profile, the near misses, every image."""
    with _serving(sample_home) as base:
        listing = _open(browser, f"{base}/")
        assert listing["severe"] == [] and all(day in listing["text"] for day in DAYS)
        browser.find_element("link text", DAYS[1]).click()
        index = _state(browser)
        assert index["url"] == sheet_url(base, DAYS[1], "index")
        assert "Production profile" in index["profile"] or "Smoke profile" in index["profile"]
        browser.find_element("link text", "phash_deduped").click()
        phash = _state(browser)
        assert phash["url"] == sheet_url(base, DAYS[1], "phash_deduped")
        originals = set(
            read_ledger(sample_home, "phash_deduped", DAYS[1])["duplicate_of"].to_pylist()
        )
        near = _near_misses(browser)
        # Two thumbnails per near miss, beside the kept sample, copies and their originals.
        _assert_rendered(phash, 13 + 21 + len(originals) + 2 * len(near))
        assert "Near misses" in phash["text"] and "threshold" in phash["text"]
        margins = [m for _, _, m in near]
        assert margins == sorted(margins) and all(0 < m <= 8 for m in margins)
        _screenshot(browser, "review_phash_deduped_over_http", tmp_path)
        # Outside the review folder nothing is served, whatever the browser asks for.
        refused = _open(browser, f"{base}/date={DAYS[1]}/..%2f..%2fcatalog.duckdb")
        assert refused["text"].startswith("404 Not Found") and "DUCK" not in refused["text"]
