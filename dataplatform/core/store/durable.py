"""Writes that survive a crash: fsync a file or folder, and replace a JSON file atomically.

Every commit point in the platform (the warehouse's commit records, the dedup state's
manifests) is a small file renamed over the old one; this is the one place that does it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename is durable once its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_json(path: Path, body: object, *, temp_prefix: str = ".") -> None:
    """Write ``body`` to a temp file beside ``path``, fsync it, rename it over ``path`` and
    fsync the folder: a reader sees the old file or the new one, never part of one."""
    temp = path.parent / f"{temp_prefix}{path.name}.{uuid.uuid4().hex}"
    with open(temp, "w") as handle:
        json.dump(body, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_path(path.parent)
