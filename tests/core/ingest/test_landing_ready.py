"""A landing day is complete with its producer's _SUCCESS, or after a quiet period."""

from __future__ import annotations

import os
import time
from pathlib import Path

import boto3
import pytest

from dataplatform.core.ingest.landing import discover
from dataplatform.core.ingest.landing_ready import (
    DEFAULT_QUIET_SECONDS,
    MARKER,
    QUIET_SECONDS_ENV,
    day_readiness,
    landing_quiet_seconds,
)
from dataplatform.core.store.home import Home
from tests.core.store.test_object_store import (  # noqa: F401 - the moto fixtures
    BUCKET,
    s3_endpoint,
)

DAY = "2025-03-01"


def _day(home: Home) -> Path:
    folder = home.landing_date(DAY)
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.jpg").write_bytes(b"jpeg")
    (folder / "pairs.jsonl").write_text('{"image": "img/a.jpg", "text": "a"}\n')
    return folder


def _age(folder: Path, seconds: float, *, only: str | None = None) -> None:
    """Every path below ``folder`` (or just ``only``) last changed ``seconds`` ago."""
    then = time.time() - seconds
    paths = [folder / only] if only else [folder, *folder.rglob("*")]
    for path in paths:
        os.utime(path, (then, then))


def test_the_marker_makes_a_fresh_day_ready_at_once(tmp_path: Path):
    home = Home(tmp_path)
    folder = _day(home)
    assert not day_readiness(home, DAY, 600).ready
    (folder / MARKER).write_text("")
    readiness = day_readiness(home, DAY, 600)
    assert readiness.ready
    assert readiness.reason == f"{DAY} is complete: its producer wrote {MARKER}"
    # Ingest reads the marker as nothing: no record, no ledger row.
    assert [r.source for r in discover(folder)] == ["pairs.jsonl"]


def test_without_a_marker_the_day_waits_for_the_quiet_period(tmp_path: Path):
    home = Home(tmp_path)
    folder = _day(home)
    _age(folder, 100)
    _age(folder, 20, only="img/a.jpg")
    waiting = day_readiness(home, DAY, 60)
    assert not waiting.ready
    assert waiting.reason.startswith(f"{DAY} waits: no {MARKER} yet and img/a.jpg changed 20 s ago")
    assert "in 40 s at the earliest" in waiting.reason and QUIET_SECONDS_ENV in waiting.reason
    _age(folder, 100)
    ready = day_readiness(home, DAY, 60)
    assert ready.ready
    assert ready.reason.startswith(f"{DAY} has no {MARKER} but nothing in it changed for 100 s")


def test_a_removed_file_counts_as_a_change(tmp_path: Path):
    home = Home(tmp_path)
    folder = _day(home)
    _age(folder, 100)
    (folder / "img" / "a.jpg").unlink()
    waiting = day_readiness(home, DAY, 60)
    assert not waiting.ready and "img changed 0 s ago" in waiting.reason


def test_quiet_zero_starts_a_day_on_arrival_and_a_missing_day_never(tmp_path: Path):
    home = Home(tmp_path)
    _day(home)
    assert day_readiness(home, DAY, 0).ready
    missing = day_readiness(home, "2025-03-02", 0)
    assert (missing.ready, missing.reason) == (False, "nothing has landed for 2025-03-02")


def test_quiet_seconds_default_and_environment():
    assert landing_quiet_seconds({}) == DEFAULT_QUIET_SECONDS == 600
    assert landing_quiet_seconds({QUIET_SECONDS_ENV: " 0 "}) == 0
    assert landing_quiet_seconds({QUIET_SECONDS_ENV: "90"}) == 90
    for bad in ("-1", "ten minutes", "1.5"):
        with pytest.raises(ValueError, match=QUIET_SECONDS_ENV):
            landing_quiet_seconds({QUIET_SECONDS_ENV: bad})


def test_an_object_store_day_waits_for_its_marker_or_quiet(
    s3_endpoint: str,  # noqa: F811 - the fixture
    tmp_path: Path,
):
    url = f"s3://{BUCKET}/ready-landing"
    home = Home(tmp_path, landing_url=url)
    client = boto3.client("s3")
    assert day_readiness(home, DAY, 60).reason == f"nothing has landed for {DAY}"
    client.put_object(Bucket=BUCKET, Key=f"ready-landing/{DAY}/pairs.jsonl", Body=b"{}\n")
    waiting = day_readiness(home, DAY, 60)
    assert not waiting.ready and "pairs.jsonl changed" in waiting.reason
    # The same objects, 61 s later by the clock: quiet long enough.
    assert day_readiness(home, DAY, 60, now=time.time() + 61).ready
    client.put_object(Bucket=BUCKET, Key=f"ready-landing/{DAY}/{MARKER}", Body=b"")
    assert day_readiness(home, DAY, 60).reason == f"{DAY} is complete: its producer wrote {MARKER}"
