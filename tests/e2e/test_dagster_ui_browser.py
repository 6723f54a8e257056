"""What the Dagster UI shows, seen in headless Chromium against a real ``dagster-webserver``.

The state is made in process first, on a sqlite instance in a temporary ``DAGSTER_HOME`` that
the webserver (loopback, a free port, the ``dataplatform.definitions`` code location) then
reads: three days of the cheap stages, day 4 with a failed blocking conservation check on
exact_deduped, and day 1 of phash_deduped run again. The browser then checks the global graph,
the history check on the later days, the blocked run, a step's progress lines and the check
pages.

Same browser, skips and screenshots as ``test_review_sheet_browser.py`` (its ``browser``
fixture is reused): without Chromium the module skips unless ``DATAPLATFORM_REQUIRE_BROWSER=1``;
screenshots go to ``DATAPLATFORM_TEST_ARTIFACTS`` or the test's temporary folder, paths printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest

from dataplatform.assets import ALL_ASSETS, reporting
from dataplatform.assets.reporting import (
    CHECK_DECIDED_AFTER_EARLIER_DAYS,
    CHECK_ROWS_CONSERVED,
)
from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV
from dataplatform.core.ingest.ingest_folder import PROGRESS_LABEL
from dataplatform.core.store.home import HOME_ENV, Home
from tests.assets.conftest import (
    DAYS,
    build_three_days,
    lost_a_row_on_exact_deduped,
    materialize_day,
)
from tests.e2e import test_review_sheet_browser as review_sheet_browser

ARTIFACTS_ENV = review_sheet_browser.ARTIFACTS_ENV
# The same headless Chromium fixture: found, skipped or required the same way.
browser = review_sheet_browser.browser
STAGES = ["raw_pairs", "exact_deduped", "phash_deduped"]
# Day 3's landing again: every pair_id is already kept, so exact_deduped removes all three.
BLOCKED_DAY = "2025-01-04"
WEBSERVER_START_S = 90
PAGE_S = 30
# Dismissed once per browser profile, as a first-time visitor would by clicking "Skip".
COMMUNITY_DIALOG_KEY = "communityNux"


@dataclass(frozen=True)
class DagsterUI:
    base: str
    day_runs: dict[str, str]
    blocked_run: str
    rerun: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(home: Home, instance: dg.DagsterInstance) -> tuple[dict[str, str], str, str]:
    build_three_days(home.landing)
    shutil.copytree(home.landing / DAYS[2], home.landing / BLOCKED_DAY)
    day_runs = {}
    for day in DAYS:
        result = materialize_day(home, day, instance=instance, selection=STAGES)
        assert result.success, day
        day_runs[day] = result.run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            reporting,
            "conservation_check",
            lost_a_row_on_exact_deduped(reporting.conservation_check),
        )
        blocked = materialize_day(home, BLOCKED_DAY, instance=instance, selection=STAGES)
    assert not blocked.success
    rerun = materialize_day(home, DAYS[0], instance=instance, selection=["phash_deduped"])
    assert rerun.success
    return day_runs, blocked.run_id, rerun.run_id


def _wait_until_serving(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WEBSERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"dagster-webserver not serving after {WEBSERVER_START_S} s:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    """The webserver and the code server it started (its process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture(scope="module")
def ui(browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """The webserver on the prepared instance; the browser already on its origin."""
    started = time.monotonic()
    root = tmp_path_factory.mktemp("dagster-ui")
    home = Home(root / "home")
    dagster_home = root / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    settings = {
        "DAGSTER_HOME": str(dagster_home),
        HOME_ENV: str(home.root),
        "DATAPLATFORM_PROFILE": "smoke",
        "HF_HUB_OFFLINE": "1",
        # Every update a line, so raw_pairs' five images log their counts between first and last.
        PROGRESS_SECONDS_ENV: "0",
    }
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = root / "webserver.log"
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings.items():
            env.setenv(name, value)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            # The storage exists before the webserver opens it; it starts while the runs run.
            webserver = Path(sys.executable).with_name("dagster-webserver")
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(webserver), "-h", "127.0.0.1", "-p", str(port)]
                    + ["-m", "dataplatform.definitions"],
                    env={**os.environ, **settings},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                day_runs, blocked, rerun = _prepare(home, instance)
                prepared = time.monotonic()
                _wait_until_serving(base, process, log)
                print(
                    f"\nstate prepared in {prepared - started:.1f} s, "
                    f"webserver serving at {time.monotonic() - started:.1f} s"
                )
                browser.get(f"{base}/server_info")
                browser.execute_script(
                    "localStorage.setItem(arguments[0], JSON.stringify('1'))",
                    COMMUNITY_DIALOG_KEY,
                )
                yield DagsterUI(base, day_runs, blocked, rerun)
            finally:
                _stop(process)
    print(f"webserver stopped; module took {time.monotonic() - started:.1f} s")


def _text(browser) -> str:
    return browser.execute_script("return document.body.innerText")


def _open(browser, url: str, *expected: str) -> str:
    """Load ``url`` and wait until the page's text holds every one of ``expected``."""
    started = time.monotonic()
    browser.get(url)
    text = _wait_for(browser, *expected)
    print(f"{url} ready in {time.monotonic() - started:.1f} s")
    return text


def _wait_for(browser, *expected: str) -> str:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, PAGE_S, poll_frequency=0.2).until(
            lambda d: all(e in _text(d) for e in expected)
        )
    except TimeoutException:
        text = _text(browser)
        missing = [e for e in expected if e not in text]
        pytest.fail(f"{browser.current_url} never showed {missing}; it shows:\n{text[:3000]}")
    return _text(browser)


def _click(browser, xpath: str) -> None:
    """Click as a user would; from script, since the UI's split-pane hit areas lie over some
    labels and would take a native click."""
    browser.execute_script("arguments[0].click()", browser.find_element("xpath", xpath))


def _screenshot(browser, name: str, fallback: Path) -> Path:
    """The window as a reviewer sees it (the UI scrolls inside its panes, not the page)."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _settle(browser, condition_js: str) -> None:
    """Wait a little for what only the screenshot needs (colours, counts loaded later); the
    assertions do not depend on it."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    with contextlib.suppress(TimeoutException):
        WebDriverWait(browser, 5, poll_frequency=0.2).until(
            lambda d: d.execute_script(f"return {condition_js}")
        )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def _check_spec(asset: str, check: str) -> dg.AssetCheckSpec:
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    return next(spec for a in ALL_ASSETS for spec in a.check_specs if spec.key == key)


def _blocking_label(spec: dg.AssetCheckSpec) -> str:
    """How the check page's About section says whether the check blocks downstream."""
    return f"This is a {'blocking' if spec.blocking else 'non-blocking'} asset check."


def _check_page(ui: DagsterUI, asset: str, check: str) -> str:
    return f"{ui.base}/assets/{asset}?view=checks&checkDetail={check}"


def test_the_global_graph_shows_the_side_tables_and_each_stages_ledger_rows(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    _open(browser, f"{ui.base}/asset-groups", "Global asset lineage", "curation")
    # With several groups the graph opens them collapsed; its settings menu expands them all.
    settings = "(//button[not(normalize-space())][.//*[@aria-label='settings']])[last()]"
    _click(browser, settings)
    menu = _wait_for(browser, "Change graph to vertical orientation")
    if "Expand all groups" in menu:
        _click(browser, "//*[normalize-space(text())='Expand all groups']")
        _wait_for(browser, "Collapse all groups")
    # The browser keeps the groups open: loaded again, the graph shows without the menu.
    text = _open(browser, f"{ui.base}/asset-groups", "embeddings", "quality_scores")
    # For the screenshot: the failed exact_deduped and phash_deduped drawn red.
    _settle(browser, "document.querySelectorAll('[class*=minimalAssetNodeBox][style*=red]').length")
    names = _lines(text)
    # Each stage and, beside it, its ledger rows under a name of their own (the catalog below
    # shows the names whole).
    for stage in STAGES + ["clip_scored", "quality_filtered", "semantic_deduped"]:
        assert stage in names, stage
        # The graph cuts a long name in the middle: "phash_…_rejections".
        ledger = {f"{stage}_rejections", f"{stage[:6]}…_rejections"}
        assert ledger & set(names), "|".join(names)
    _screenshot(browser, "ui_global_lineage_expanded", tmp_path)

    catalog = _lines(_open(browser, f"{ui.base}/assets?view=list", "raw_pairs_rejections"))
    _settle(browser, "!document.body.innerText.includes('- partitions')")  # statuses loaded
    for key in ["embeddings", "quality_scores"] + [f"{s}_rejections" for s in STAGES]:
        assert key in catalog, key
    _screenshot(browser, "ui_catalog_side_tables_and_ledgers", tmp_path)

    # Who writes and reads embeddings: clip_scored's input upstream, its readers downstream.
    lineage = _lines(
        _open(browser, f"{ui.base}/assets/embeddings?view=lineage", "semantic_deduped")
    )
    assert {"phash_deduped", "quality_scores", "quality_filtered", "semantic_deduped"} <= set(
        lineage
    )
    _screenshot(browser, "ui_embeddings_lineage", tmp_path)


def test_a_rerun_first_day_fails_the_history_check_of_the_later_days_naming_it(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    later = DAYS[1:]

    def reason(day: str) -> str:
        return (
            f"{DAYS[0]} was materialized again after this day was deduplicated against it: "
            f"re-materialize phash_deduped from {day} on, in date order"
        )

    spec = _check_spec("phash_deduped", CHECK_DECIDED_AFTER_EARLIER_DAYS)
    page = _check_page(ui, "phash_deduped", CHECK_DECIDED_AFTER_EARLIER_DAYS)
    overview = _open(browser, page, _blocking_label(spec), spec.description)
    assert "Latest execution" in overview
    _screenshot(browser, "ui_check_decided_after_earlier_days_overview", tmp_path)

    _click(browser, "//button[@role='tab' and @id='execution-history']")
    _wait_for(browser, *(reason(day) for day in later))
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('table tbody tr')).map(r => r.innerText)"
    )
    # Newest first: the rerun's evaluations (the later days failed, day 1 passed), then the
    # blocked run's phash_deduped, which never ran, then the first evaluations of each day.
    failed = [r for r in rows if r.lstrip().startswith("Failed")]
    assert len(failed) == len(later)
    for day in later:
        assert any(day in r and reason(day) in r for r in failed), day
    passed_first_day = [r for r in rows if r.lstrip().startswith("Passed") and DAYS[0] in r]
    assert len(passed_first_day) == 2  # its first run and the rerun
    _screenshot(browser, "ui_check_decided_after_earlier_days_history", tmp_path)

    # The check's partitions: picking a later day shows its failed evaluation and the day.
    _click(browser, "//button[@role='tab' and @id='partitions']")
    _wait_for(browser, "Partitions Selected")
    browser.find_element(
        "xpath", "//input[contains(@placeholder, 'Filter by partition')]"
    ).send_keys("2025-01-0")
    _wait_for(browser, "9 Partitions Selected")
    _click(browser, f"(//*[normalize-space(text())='{DAYS[1]}'])[1]")
    detail = _wait_for(browser, reason(DAYS[1]), "earlier_day_rerun")
    assert "Failed" in detail and ui.rerun[:8] in detail
    metadata = _lines(detail)
    assert metadata[metadata.index("earlier_day_rerun") + 1] == DAYS[0]
    _screenshot(browser, "ui_check_decided_after_earlier_days_partition_2025-01-02", tmp_path)


def test_the_checks_partition_status_counts_the_later_days_as_failed(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    """The later days' failed evaluations name their materialization (flag_later_days), so the
    Partitions tab counts them failed, not missing."""
    _open(browser, _check_page(ui, "phash_deduped", CHECK_DECIDED_AFTER_EARLIER_DAYS), "About")
    _click(browser, "//button[@role='tab' and @id='partitions']")
    _wait_for(browser, "Partitions Selected")
    browser.find_element(
        "xpath", "//input[contains(@placeholder, 'Filter by partition')]"
    ).send_keys("2025-01-0")
    text = _wait_for(browser, "9 Partitions Selected")
    _screenshot(browser, "ui_check_decided_after_earlier_days_partition_status", tmp_path)
    assert "Failed (2)" in _lines(text)


def test_a_failed_blocking_check_stops_the_stage_downstream(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    run = f"{ui.base}/runs/{ui.blocked_run}"
    text = _open(
        browser,
        f"{run}?logs={quote('type:STEP_FAILURE')}",
        "Failure",
        f"partition: {BLOCKED_DAY}",
        "Errored (1)",
        "Not executed (1)",
        "1 blocking asset check failed with ERROR severity:",
    )
    lines = _lines(text)
    assert lines[lines.index("Errored (1)") + 1] == "exact_deduped"
    assert f"exact_deduped: {CHECK_ROWS_CONSERVED}" in lines
    _screenshot(browser, "ui_run_blocked_by_failed_check", tmp_path)

    _open(
        browser,
        f"{run}?logs={quote('step:phash_deduped')}",
        "Dependencies for step phash_deduped failed: ['exact_deduped']. Not executing.",
    )
    _click(browser, "//*[normalize-space(text())='Not executed (1)']")
    lines = _lines(_wait_for(browser, "Not executed (1)\nphash_deduped"))
    assert "STEP_START" not in lines
    _screenshot(browser, "ui_run_blocked_phash_deduped_not_executed", tmp_path)


def test_a_steps_progress_lines_are_in_its_runs_logs(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    images = 5  # day 1 of the three-day landing
    text = _open(
        browser,
        f"{ui.base}/runs/{ui.day_runs[DAYS[0]]}?logs={quote(PROGRESS_LABEL)}",
        f"partition: {DAYS[0]}",
        f"{PROGRESS_LABEL}: 0 of {images} images, starting",
        f"{PROGRESS_LABEL}: {images} of {images} images done, ",
    )
    lines = [line for line in _lines(text) if line.startswith(f"{PROGRESS_LABEL}: ")]
    assert len(lines) == images + 1
    assert all(" images/s" in line for line in lines[1:])
    assert any(f"2 of {images} images (40%)" in line for line in lines)
    _screenshot(browser, "ui_run_raw_pairs_progress_lines", tmp_path)


def test_a_check_page_shows_its_description_and_the_evaluated_partition(
    browser,
    ui: DagsterUI,
    tmp_path: Path,
):
    spec = _check_spec("exact_deduped", CHECK_ROWS_CONSERVED)
    assert spec.blocking
    text = _open(
        browser,
        _check_page(ui, "exact_deduped", CHECK_ROWS_CONSERVED),
        _blocking_label(spec),
        spec.description,
        "Latest execution",
        "Partition",
    )
    lines = _lines(text)
    latest = lines[lines.index("Latest execution") :]
    assert latest.index("Failed") < latest.index("Partition")
    assert latest[latest.index("Partition") + 1] == BLOCKED_DAY
    assert "rows in = rows kept + rows in the ledger" in latest
    _screenshot(browser, "ui_check_rows_conserved_failed_2025-01-04", tmp_path)
