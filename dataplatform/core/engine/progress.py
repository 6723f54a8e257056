"""A progress meter for a stage's long loops: counts, rate and time left, every so often.

A step that embeds a day of images runs for hours; without this its log says nothing between
its start and its end. The meter writes a first line when the work starts, a line at most every
``DEFAULT_PROGRESS_SECONDS`` (``DATAPLATFORM_PROGRESS_SECONDS`` overrides it for a deployment)
and a last line at the end::

    CLIP image embeddings: 0 of 12,000 images, starting
    CLIP image embeddings: 3,210 of 12,000 images (27%), 107 images/s, about 1 min 22 s left
    CLIP image embeddings: 12,000 of 12,000 images done, 104 images/s, in 1 min 55 s

Time, not item counts, decides when a line is written, so a slow loop and a fast one both say
something every interval and nothing more; an update costs a clock read and a comparison.

Lines go to the ``log`` callable when given (the step's ``context.log.info``), else to the
``dataplatform.progress`` logger, which ``dataplatform.assets.step_logs.progress_to`` forwards
to the run's logs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

PROGRESS_LOGGER = "dataplatform.progress"
PROGRESS_SECONDS_ENV = "DATAPLATFORM_PROGRESS_SECONDS"
# Often enough that an operator sees a long step move, rare enough that a 2-hour step writes
# a few hundred lines, not a flood.
DEFAULT_PROGRESS_SECONDS = 30.0
THREAD_ATTRIBUTE = "progress_thread"
"""Log records carry the thread that started the meter, so that a step's log takes the lines
of its own work, from whichever thread advanced the meter."""


def progress_seconds() -> float:
    """Seconds between progress lines: ``DATAPLATFORM_PROGRESS_SECONDS``, else the default."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(
            f"{PROGRESS_SECONDS_ENV}={raw!r} is not a number of seconds; set it to 0 or more "
            f"(0 logs every update) or unset it for {DEFAULT_PROGRESS_SECONDS:g} s"
        )
    return seconds


class Progress:
    """Counts work done out of ``total`` and logs it as ``label`` every ``every_s`` seconds.

    Use it as a context manager around the loop and call ``advance`` as items finish; the
    first line is written on entering, the last on leaving (saying where it stopped if the
    loop raised). Safe to advance from several threads. A meter of no items writes nothing.
    ``note`` adds a clause of its own to every line (a download's failures so far).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "items",
        every_s: float | None = None,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        note: Callable[[], str] | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.every_s = progress_seconds() if every_s is None else every_s
        self.done = 0
        self._log = log
        self._clock = clock
        self._note = note
        self._lock = threading.Lock()
        self._thread = threading.get_ident()
        self._started: float | None = None
        self._next_line = 0.0
        self._finished = False

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    def start(self) -> None:
        """Start the clock and write the first line."""
        with self._lock:
            self._started = self._clock()
            self._next_line = self._started + self.every_s
        self._write(f"{self.label}: 0 of {self.total:,} {self.unit}, starting")

    def advance(self, n: int = 1) -> None:
        """``n`` more items done; writes a line when the interval has passed since the last."""
        with self._lock:
            self.done += n
            now = self._clock()
            if self._started is None:
                self._started = now
                self._next_line = now + self.every_s
            if now < self._next_line or self.done >= self.total:
                return
            self._next_line = now + self.every_s
            line = self._line(now)
        self._write(line)

    def finish(self) -> None:
        """Write the last line: done, with the rate and the time taken, or where it stopped."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            now = self._clock()
            elapsed = now - (self._started if self._started is not None else now)
            rate = self._rate(elapsed)
            if self.done >= self.total:
                line = (
                    f"{self.label}: {self.done:,} of {self.total:,} {self.unit} done, "
                    f"{rate}, in {duration(elapsed)}"
                )
            else:
                line = (
                    f"{self.label}: stopped at {self.done:,} of {self.total:,} {self.unit} "
                    f"({self._percent()}), {rate}, after {duration(elapsed)}"
                )
        self._write(line)

    def _line(self, now: float) -> str:
        elapsed = now - (self._started or now)
        per_second = self.done / elapsed if elapsed > 0 else 0.0
        remaining = duration((self.total - self.done) / per_second) if per_second > 0 else ""
        left = (
            "time left unknown"
            if not remaining
            # "under 1 s" is already a bound: not "about under 1 s".
            else f"{remaining} left"
            if remaining.startswith("under")
            else f"about {remaining} left"
        )
        return (
            f"{self.label}: {self.done:,} of {self.total:,} {self.unit} ({self._percent()}), "
            f"{self._rate(elapsed)}, {left}"
        )

    def _percent(self) -> str:
        return f"{100 * self.done // self.total}%"

    def _rate(self, elapsed: float) -> str:
        per_second = self.done / elapsed if elapsed > 0 else 0.0
        if per_second >= 100:
            shown = f"{per_second:,.0f}"
        elif per_second >= 10:
            shown = f"{per_second:.1f}"
        else:
            shown = f"{per_second:.2f}"
        return f"{shown} {self.unit}/s"

    def _write(self, line: str) -> None:
        if self.total <= 0:
            return
        if self._note is not None:
            line = f"{line}; {self._note()}"
        if self._log is not None:
            self._log(line)
        else:
            logging.getLogger(PROGRESS_LOGGER).info(line, extra={THREAD_ATTRIBUTE: self._thread})


def duration(seconds: float) -> str:
    """``seconds`` for reading: "under 1 s", "42 s", "3 min 05 s", "2 h 07 min"."""
    whole = round(seconds)
    if whole < 1:
        return "under 1 s"
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
