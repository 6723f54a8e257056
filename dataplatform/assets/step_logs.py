"""A step's progress lines in its run's logs, so the Dagster UI shows a long step moving.

Core loops write progress to the ``dataplatform.progress`` logger when no ``log`` callable was
handed to them (``dataplatform.core.engine.progress``). Inside ``progress_to(context)`` those
records go to ``context.log.info``, which the run's event log keeps and the UI shows. On the
Ray engine the driver counts chunks as actors finish them, so actor work reaches the step's
log the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from dataplatform.core.engine.progress import PROGRESS_LOGGER, THREAD_ATTRIBUTE


class _StepLogHandler(logging.Handler):
    """Hands the progress records of one thread's work to a step's log."""

    def __init__(self, write: Callable[[str], None], thread: int) -> None:
        super().__init__(logging.INFO)
        self._write = write
        self._thread = thread

    def emit(self, record: logging.LogRecord) -> None:
        # Two steps in one process (threads of an in-process executor) each take their own.
        if getattr(record, THREAD_ATTRIBUTE, record.thread) != self._thread:
            return
        try:
            self._write(record.getMessage())
        except Exception:  # noqa: BLE001 - a progress line must never fail the step
            self.handleError(record)


_lock = threading.Lock()
_active = 0
_saved: tuple[int, bool] = (logging.NOTSET, True)


@contextmanager
def progress_to(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> Iterator[None]:
    """Forward progress lines written in this thread to ``context.log.info`` until the end.

    While any step forwards, the progress logger passes INFO (unless a level was set on it)
    and does not propagate, so a line reaches the run's logs once, however Python logging is
    configured; both are restored when the last step leaves.
    """
    global _active, _saved
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = _StepLogHandler(context.log.info, threading.get_ident())
    with _lock:
        if _active == 0:
            _saved = (logger.level, logger.propagate)
            if logger.level == logging.NOTSET:  # a level set on purpose is kept
                logger.setLevel(logging.INFO)
            logger.propagate = False
        _active += 1
        logger.addHandler(handler)
    try:
        yield
    finally:
        with _lock:
            logger.removeHandler(handler)
            _active -= 1
            if _active == 0:
                logger.setLevel(_saved[0])
                logger.propagate = _saved[1]
