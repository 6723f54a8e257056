"""Where a pair's image bytes live after ingest, and reading them back.

Later stages (CLIP, quality, tokens) read the original image again rather than a copy in the
warehouse. ``raw_pairs`` records an ``image_location``: a path relative to the landing root for
files, the member's byte range for tar shards (a URL row's image is the member the download
step stored in ``<day>/_downloads/``; no stage fetches a URL). Relative, so that a home can
be moved or mounted elsewhere without rewriting tables. An image on an object-store landing is
its full URL (``s3://bucket/prefix/<date>/img/a.jpg``, with ``#bytes=<offset>+<size>`` for a
shard member): a worker on any node reads it from the URL alone, and it is still refused unless
it lies inside a configured landing (``home.object_landings_for``).
"""

from __future__ import annotations

from pathlib import Path

from dataplatform.core.ingest.confined_files import FileRefused, open_confined
from dataplatform.core.ingest.image_decode import ImageRejected
from dataplatform.core.ingest.landing import MAX_IMAGE_BYTES, ImageRef
from dataplatform.core.ingest.object_landing import OBJECT_KINDS, landing_of, read_object
from dataplatform.core.ingest.remote_fetch import NOT_DOWNLOADED
from dataplatform.core.store.home import is_object_url, object_landings_for

TAR_MARK = "#bytes="


def location_of(ref: ImageRef, landing_root: Path | str) -> str:
    """The portable location of ``ref``: landing-relative for local files and tar members, the
    URL (and byte range) for objects, which name their landing themselves."""
    if ref.kind == "remote":
        return ref.uri
    if ref.kind == "object":
        return ref.uri
    if ref.kind == "object_range":
        return f"{ref.uri}{TAR_MARK}{ref.offset}+{ref.size}"
    landing_root = Path(landing_root)
    relative = Path(ref.path).resolve().relative_to(landing_root.resolve()).as_posix()
    if ref.kind == "tar":
        return f"{relative}{TAR_MARK}{ref.offset}+{ref.size}"
    return relative


def ref_of(location: str, landing_root: Path | str) -> ImageRef:
    """The ref that ``location`` (from ``location_of``) names, confined to ``landing_root``.

    An object URL must lie in one of ``object_landings_for(landing_root)``, else
    ``FileRefused`` (``path_outside_landing``) is raised.
    """
    if location.startswith(("http://", "https://")):
        return ImageRef(kind="remote", uri=location)
    if is_object_url(location):
        uri, mark, span = location.partition(TAR_MARK)
        root = landing_of(uri, object_landings_for(landing_root))
        if not mark:
            return ImageRef(kind="object", uri=uri, root=root)
        offset, _, size = span.partition("+")
        return ImageRef(kind="object_range", uri=uri, offset=int(offset), size=int(size), root=root)
    landing_root = Path(landing_root)
    if TAR_MARK in location:
        path, _, span = location.partition(TAR_MARK)
        offset, _, size = span.partition("+")
        return ImageRef(
            kind="tar",
            path=str(landing_root / path),
            offset=int(offset),
            size=int(size),
            root=str(landing_root.resolve()),
        )
    return ImageRef(
        kind="file", path=str(landing_root / location), root=str(landing_root.resolve())
    )


def read_location(location: str, landing_root: Path | str) -> bytes:
    """The bytes at ``location`` for a later stage; raises ``OSError`` on any failure.

    A location comes from a warehouse table, but is still checked to stay inside the landing
    root (an object URL: inside a configured object-store landing), so a rewritten or
    hand-edited table cannot make a stage read ``/etc/passwd`` or another bucket. A URL (from
    a table written before the download step) is an ``OSError`` too, never a fetch, because
    later stages treat every unreadable image alike.
    """
    ref = ref_of(location, landing_root)
    try:
        return read_ref(ref)
    except ImageRejected as exc:
        raise OSError(f"{exc.reason}: {exc.detail}") from exc


def read_ref(ref: ImageRef) -> bytes:
    """The bytes ``ref`` points at.

    Local files and tar members raise OSError on failure (``FileRefused`` with its ledger
    reason for anything but a regular file: a FIFO swapped in after discovery must not block
    the reader); so do objects, read by one ranged GET from the landing's endpoint. A remote URI
    is never fetched here: it raises ``ImageRejected`` (``not_downloaded``), since the day's
    URLs are fetched once by the download step and read from its shards after that.
    """
    root = Path(ref.root) if ref.root else _ANYWHERE
    if ref.kind == "file":
        with open_confined(root, ref.path) as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise FileRefused("image_too_large", f"{ref.path} is over {MAX_IMAGE_BYTES} bytes")
        return data
    if ref.kind == "tar":
        if ref.size > MAX_IMAGE_BYTES:
            raise FileRefused(
                "image_too_large", f"{ref.path} member is {ref.size} bytes, over {MAX_IMAGE_BYTES}"
            )
        with open_confined(root, ref.path) as fh:
            fh.seek(ref.offset)
            data = fh.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.path}: shard ends after {len(data)} of {ref.size} bytes")
        return data
    if ref.kind in OBJECT_KINDS:
        return read_object(ref, MAX_IMAGE_BYTES)
    if ref.kind == "remote":
        # URLs are fetched once, by the download step (url_download); a table that still names
        # one predates it, and reading it again here would be a second, unchecked-lineage fetch.
        raise ImageRejected(
            NOT_DOWNLOADED,
            f"{ref.uri[:200]} is a URL, which no stage after the download step fetches: "
            "materialize url_downloads and raw_pairs for its day again",
        )
    raise ValueError(f"cannot read an image reference of kind {ref.kind!r}")


# A ref without a root (built by hand) is still checked for its kind of file when opened.
_ANYWHERE = Path("/")
