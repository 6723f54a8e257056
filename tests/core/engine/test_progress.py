"""The progress meter: a first line, a line per interval with rate and time left, a last line."""

from __future__ import annotations

import logging
import threading

import pytest

from dataplatform.core.engine.progress import (
    DEFAULT_PROGRESS_SECONDS,
    PROGRESS_LOGGER,
    PROGRESS_SECONDS_ENV,
    THREAD_ATTRIBUTE,
    Progress,
    duration,
    progress_seconds,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _meter(total: int, lines: list[str], clock: Clock, every_s: float = 30.0) -> Progress:
    return Progress("embed", total, unit="images", every_s=every_s, log=lines.append, clock=clock)


def test_lines_at_start_every_interval_and_at_the_end():
    clock, lines = Clock(), []
    with _meter(1000, lines, clock) as progress:
        assert lines == ["embed: 0 of 1,000 images, starting"]
        for _ in range(10):
            clock.now += 2.0
            progress.advance(10)  # 20 s, 100 images: within the interval, nothing written
        assert len(lines) == 1
        clock.now += 10.0
        progress.advance(150)  # 30 s, 250 images
        clock.now += 29.0
        progress.advance(100)  # 59 s: 29 s after the last line, nothing
        clock.now += 1.0
        progress.advance(50)  # 60 s, 400 images
        clock.now += 90.0
        progress.advance(600)  # 150 s, all done: the last line says it
    assert lines == [
        "embed: 0 of 1,000 images, starting",
        "embed: 250 of 1,000 images (25%), 8.33 images/s, about 1 min 30 s left",
        "embed: 400 of 1,000 images (40%), 6.67 images/s, about 1 min 30 s left",
        "embed: 1,000 of 1,000 images done, 6.67 images/s, in 2 min 30 s",
    ]


def test_a_loop_that_raises_says_where_it_stopped():
    clock, lines = Clock(), []
    with pytest.raises(RuntimeError, match="model fell over"), _meter(40, lines, clock) as meter:
        clock.now += 4.0
        meter.advance(12)
        raise RuntimeError("model fell over")
    assert lines[-1] == "embed: stopped at 12 of 40 images (30%), 3.00 images/s, after 4 s"


def test_no_items_write_nothing_and_finish_writes_once():
    clock, lines = Clock(), []
    with _meter(0, lines, clock):
        pass
    assert lines == []
    progress = _meter(2, lines, clock)
    progress.start()
    progress.advance(2)
    progress.finish()
    progress.finish()
    assert lines == [
        "embed: 0 of 2 images, starting",
        "embed: 2 of 2 images done, 0.00 images/s, in under 1 s",
    ]


def test_interval_zero_writes_every_update():
    clock, lines = Clock(), []
    with _meter(3, lines, clock, every_s=0) as progress:
        for _ in range(3):
            clock.now += 1.0
            progress.advance()
    assert lines == [
        "embed: 0 of 3 images, starting",
        "embed: 1 of 3 images (33%), 1.00 images/s, about 2 s left",
        "embed: 2 of 3 images (66%), 1.00 images/s, about 1 s left",
        "embed: 3 of 3 images done, 1.00 images/s, in 3 s",
    ]


def test_less_than_a_second_left_is_not_about_under_a_second():
    clock, lines = Clock(), []
    with _meter(5, lines, clock, every_s=0) as progress:
        clock.now += 0.1
        progress.advance(4)
    assert lines[1] == "embed: 4 of 5 images (80%), 40.0 images/s, under 1 s left"


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(PROGRESS_SECONDS_ENV, raising=False)
    assert progress_seconds() == DEFAULT_PROGRESS_SECONDS == 30.0
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "5")
    assert progress_seconds() == 5.0
    assert Progress("x", 1).every_s == 5.0
    assert Progress("x", 1, every_s=2.0).every_s == 2.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PROGRESS_SECONDS_ENV, bad)
        with pytest.raises(ValueError, match=f"{PROGRESS_SECONDS_ENV}='{bad}'.*0 or more"):
            Progress("x", 1)


def test_without_a_log_lines_go_to_the_progress_logger(caplog: pytest.LogCaptureFixture):
    clock = Clock()
    with (
        caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER),
        Progress("decode", 2, every_s=0, clock=clock) as progress,
    ):
        clock.now += 1.0
        progress.advance()
        clock.now += 1.0
        progress.advance()
    records = [r for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert [r.getMessage() for r in records] == [
        "decode: 0 of 2 items, starting",
        "decode: 1 of 2 items (50%), 1.00 items/s, about 1 s left",
        "decode: 2 of 2 items done, 1.00 items/s, in 2 s",
    ]
    assert {getattr(r, THREAD_ATTRIBUTE) for r in records} == {threading.get_ident()}


def test_advancing_from_many_threads_counts_every_item():
    lines: list[str] = []
    progress = Progress("hash", 8000, every_s=3600, log=lines.append)
    with progress:
        threads = [
            threading.Thread(target=lambda: [progress.advance() for _ in range(1000)])
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert progress.done == 8000
    assert lines[-1].startswith("hash: 8,000 of 8,000 items done, ")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.2, "under 1 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")],
)
def test_durations_read_as_time(seconds: float, shown: str):
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    ("done", "shown"), [(12_345, "12,345 items/s"), (123, "12.3 items/s"), (34, "3.40 items/s")]
)
def test_rates_read_as_figures(done: int, shown: str):
    clock, lines = Clock(), []
    with Progress("p", 100_000, every_s=1, log=lines.append, clock=clock) as progress:
        clock.now += 10.0 if done < 1000 else 1.0
        progress.advance(done)
    assert lines[1].split(", ")[1] == shown
