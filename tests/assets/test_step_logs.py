"""A core loop's progress lines reach the run's event log (what the UI's run logs show)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import dagster as dg
import pytest

from dataplatform.assets.step_logs import progress_to
from dataplatform.core.engine.progress import PROGRESS_LOGGER, PROGRESS_SECONDS_ENV, Progress
from dataplatform.core.ingest.ingest_folder import PROGRESS_LABEL, IngestOptions, ingest_folder
from tests.conftest import encode, photo

DATE = "2025-01-01"
IMAGES = 5


def _landing(root: Path) -> Path:
    day = root / DATE
    (day / "img").mkdir(parents=True)
    rows = []
    for i in range(IMAGES):
        (day / "img" / f"{i}.png").write_bytes(encode(photo("rocket").rotate(i * 20), "PNG"))
        rows.append({"id": f"r{i}", "image": f"img/{i}.png", "text": f"a rocket {i}"})
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return day


def test_progress_of_a_step_is_in_its_runs_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    day = _landing(tmp_path)

    def other_thread_work() -> None:
        with Progress("someone else's work", 1, log=None) as progress:
            progress.advance()

    @dg.asset
    def ingested(context) -> dg.MaterializeResult:  # noqa: ANN001 - dagster reads the annotation
        with progress_to(context):
            # No log handed in: the lines go through the progress logger.
            result = ingest_folder(day, DATE, IngestOptions(workers=1))
            other = threading.Thread(target=other_thread_work)
            other.start()
            other.join()
        return dg.MaterializeResult(metadata={"kept": result.kept.num_rows})

    logger = logging.getLogger(PROGRESS_LOGGER)
    before = (logger.level, logger.propagate, list(logger.handlers))
    instance = dg.DagsterInstance.ephemeral()
    run = dg.materialize([ingested], instance=instance)

    assert run.success
    messages = [
        entry.user_message
        for entry in instance.all_logs(run.run_id)
        if entry.dagster_event is None and entry.step_key == "ingested"
    ]
    progress = [m for m in messages if m.startswith(f"{PROGRESS_LABEL}: ")]
    assert progress[0] == f"{PROGRESS_LABEL}: 0 of {IMAGES} images, starting"
    counts = [int(m.removeprefix(f"{PROGRESS_LABEL}: ").split(" of ")[0]) for m in progress[1:-1]]
    assert counts == list(range(1, IMAGES))
    # Rate and time left ("about 2 s left", or "under 1 s left" on a fast machine).
    assert all(" images/s, " in m and m.endswith(" left") for m in progress[1:-1])
    assert progress[-1].startswith(f"{PROGRESS_LABEL}: {IMAGES} of {IMAGES} images done, ")
    assert len(progress) == IMAGES + 1
    # Another thread's work is not this step's, and the logger is as it was afterwards.
    assert not any("someone else's work" in m for m in messages)
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_nested_and_concurrent_steps_each_restore_the_logger():
    class Context:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.log = self

        def info(self, line: str) -> None:
            self.lines.append(line)

    logger = logging.getLogger(PROGRESS_LOGGER)
    before = (logger.level, logger.propagate)
    first, second = Context(), Context()
    with progress_to(first):  # type: ignore[arg-type]
        with progress_to(second), Progress("inner", 1, every_s=0) as meter:  # type: ignore[arg-type]
            meter.advance()
        assert logger.level == logging.INFO and not logger.propagate
        with Progress("outer", 1, every_s=0) as meter:
            meter.advance()
    assert (logger.level, logger.propagate) == before and not logger.handlers
    # Both forwarded the thread's lines while they were open; only the first saw "outer".
    assert [line.split(":")[0] for line in first.lines] == ["inner"] * 2 + ["outer"] * 2
    assert [line.split(":")[0] for line in second.lines] == ["inner"] * 2
