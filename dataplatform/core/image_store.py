"""Where a pair's image bytes live after ingest, and reading them back.

Later stages (CLIP, quality, tokens) read the original image again rather than a copy in the
warehouse. ``raw_pairs`` records an ``image_location``: a path relative to the landing root for
files, the member's byte range for tar shards, or the remote URI. Relative, so that a home can
be moved or mounted elsewhere without rewriting tables.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from dataplatform.core.landing import ImageRef

TAR_MARK = "#bytes="
MAX_REMOTE_BYTES = 64 * 1024 * 1024


def location_of(ref: ImageRef, landing_root: Path) -> str:
    """The portable location of ``ref``: landing-relative for local files and tar members."""
    if ref.kind == "remote":
        return ref.uri
    relative = Path(ref.path).resolve().relative_to(landing_root.resolve()).as_posix()
    if ref.kind == "tar":
        return f"{relative}{TAR_MARK}{ref.offset}+{ref.size}"
    return relative


def ref_of(location: str, landing_root: Path) -> ImageRef:
    if location.startswith(("http://", "https://")):
        return ImageRef(kind="remote", uri=location)
    if TAR_MARK in location:
        path, _, span = location.partition(TAR_MARK)
        offset, _, size = span.partition("+")
        return ImageRef(
            kind="tar", path=str(landing_root / path), offset=int(offset), size=int(size)
        )
    return ImageRef(kind="file", path=str(landing_root / location))


def read_location(location: str, landing_root: Path, timeout_s: float = 20.0) -> bytes:
    """The bytes at ``location``; raises OSError on failure."""
    return read_ref(ref_of(location, landing_root), timeout_s)


def read_ref(ref: ImageRef, timeout_s: float = 20.0) -> bytes:
    """The bytes ``ref`` points at; raises OSError (urllib's errors are OSErrors) on failure."""
    if ref.kind == "file":
        return Path(ref.path).read_bytes()
    if ref.kind == "tar":
        with open(ref.path, "rb") as fh:
            fh.seek(ref.offset)
            data = fh.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.path}: shard ends after {len(data)} of {ref.size} bytes")
        return data
    if ref.kind == "remote":
        with urllib.request.urlopen(ref.uri, timeout=timeout_s) as resp:  # noqa: S310
            data = resp.read(MAX_REMOTE_BYTES + 1)
        if len(data) > MAX_REMOTE_BYTES:
            raise OSError(f"{ref.uri} is over {MAX_REMOTE_BYTES} bytes")
        return data
    raise ValueError(f"cannot read an image reference of kind {ref.kind!r}")
