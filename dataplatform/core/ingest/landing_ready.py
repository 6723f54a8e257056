"""When a landing day is complete: its producer's ``_SUCCESS`` marker, or a quiet folder.

A day folder appears before its files are all copied. Starting ingest then would curate half a
day, and the missing half would arrive after the day's dedup was decided. Spark and img2dataset
write an empty ``_SUCCESS`` at the top of their output once it is complete, so that marker makes
a day ready at once. A producer that writes no marker is trusted once nothing in the day folder
changed for a quiet period (``DATAPLATFORM_LANDING_QUIET_SECONDS``): a copy that stalls for
longer than that looks complete, so a producer that can write the marker should.

Ingest never reads the marker as data: ``landing.discover`` and ``object_landing`` skip every
``_``-prefixed name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dataplatform.core.store.home import Home, landing_filesystem, object_path

MARKER = "_SUCCESS"
QUIET_SECONDS_ENV = "DATAPLATFORM_LANDING_QUIET_SECONDS"
# Ten minutes: longer than the pauses of a copy that is still running (a slow upload between two
# shards), short enough that a day without a marker still starts within the hour.
DEFAULT_QUIET_SECONDS = 600


def landing_quiet_seconds(environ: Mapping[str, str] = os.environ) -> int:
    """``DATAPLATFORM_LANDING_QUIET_SECONDS``, or 600; 0 makes a day ready as soon as it exists."""
    raw = environ.get(QUIET_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_QUIET_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError(
            f"{QUIET_SECONDS_ENV} is {raw!r}: set it to a whole number of seconds, 0 or more "
            f"(0 starts a day as soon as its folder exists; unset, {DEFAULT_QUIET_SECONDS})"
        )
    return seconds


@dataclass(frozen=True)
class DayReadiness:
    """Whether ``date``'s landing is complete, and why, in words a sensor tick shows."""

    date: str
    ready: bool
    reason: str


def day_readiness(
    home: Home, date: str, quiet_seconds: int, now: float | None = None
) -> DayReadiness:
    """Ready when ``<landing>/<date>/_SUCCESS`` exists, or when nothing below the day folder
    changed for ``quiet_seconds`` (0: at once). ``now`` is a Unix time, for tests."""
    now = time.time() if now is None else now
    if home.landing_url:
        found, has_marker, newest, newest_name = _object_day(f"{home.landing_url}/{date}")
    else:
        folder = home.landing_date(date)
        found, has_marker = folder.is_dir(), (folder / MARKER).is_file()
        newest, newest_name = None, ""
        if found and not has_marker and quiet_seconds > 0:
            newest, newest_name = _newest_change(folder, now - quiet_seconds)
    if not found:
        return DayReadiness(date, False, f"nothing has landed for {date}")
    if has_marker:
        return DayReadiness(date, True, f"{date} is complete: its producer wrote {MARKER}")
    if quiet_seconds == 0:
        return DayReadiness(date, True, f"{date} starts on arrival ({QUIET_SECONDS_ENV}=0)")
    if newest is None:
        # An object store that reports no modification times: only the marker can tell.
        return DayReadiness(
            date,
            False,
            f"{date} waits for {MARKER}: the landing store reports no modification times, so "
            f"a quiet period cannot be measured; have the producer write {MARKER} last",
        )
    age = max(0, int(now - newest))
    if age >= quiet_seconds:
        return DayReadiness(
            date,
            True,
            f"{date} has no {MARKER} but nothing in it changed for {age} s "
            f"(quiet period {quiet_seconds} s, {QUIET_SECONDS_ENV})",
        )
    return DayReadiness(
        date,
        False,
        f"{date} waits: no {MARKER} yet and {newest_name} changed {age} s ago; it starts "
        f"after {quiet_seconds} s without changes (in {quiet_seconds - age} s at the earliest, "
        f"{QUIET_SECONDS_ENV}) or as soon as its producer writes {MARKER}",
    )


def _newest_change(folder: Path, quiet_since: float) -> tuple[float, str]:
    """The newest modification time below ``folder`` and what changed then.

    Folders count as well as files: a file removed or renamed changes its folder's time. The
    walk stops at the first change newer than ``quiet_since``: the day is not ready either way,
    so a day that is still arriving costs a few stats, not a walk of everything copied so far.
    """
    newest, newest_name = folder.stat().st_mtime, "the folder"
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            try:
                mtime = os.lstat(path).st_mtime
            except FileNotFoundError:
                # Renamed away between the listing and the stat: the day is still moving.
                return time.time(), os.path.relpath(path, folder)
            if mtime > newest:
                newest, newest_name = mtime, os.path.relpath(path, folder)
            if newest > quiet_since:
                return newest, newest_name
    return newest, newest_name


# Where fsspec filesystems put an object's modification time: s3fs, adlfs, gcsfs, others.
_TIME_FIELDS = ("LastModified", "last_modified", "updated", "mtime")


def _object_day(day_url: str) -> tuple[bool, bool, float | None, str]:
    """(anything listed, marker present, newest modification time, its key) of a day prefix on
    an object store, from one recursive listing."""
    fs = landing_filesystem(day_url)
    base = object_path(day_url).rstrip("/") + "/"
    try:
        listing = fs.find(base, detail=True)
    except FileNotFoundError:
        listing = {}
    newest: float | None = None
    newest_name = ""
    for name, info in listing.items():
        rel = name[len(base) :] if name.startswith(base) else name
        if rel == MARKER:
            return True, True, None, ""
        mtime = _object_time(info)
        if mtime is not None and (newest is None or mtime > newest):
            newest, newest_name = mtime, rel
    return bool(listing), False, newest, newest_name


def _object_time(info: Mapping[str, Any]) -> float | None:
    for field in _TIME_FIELDS:
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None
