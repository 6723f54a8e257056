"""A landing day on an object store (``s3://bucket/prefix/<date>/``), read where it lies.

Discovery lists the day's prefix once and reads each manifest and shard through fsspec by byte
range: a shard's headers in blocks of ``READ_BLOCK_BYTES``, and each member's body later, by the
worker that decodes it, as one ranged GET of exactly its bytes. Nothing is downloaded whole. The
records, pair ids and ledger reasons are those of the same files in a local day folder (both are
a ``landing.LandingDay``). Refs carry the object's URL, its byte range and the day's prefix, so
a worker on any node reads them with nothing but the endpoint and credentials of its
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...; see ``home.landing_filesystem``).

Confinement, as ``confined_files`` does it for local files:

- a manifest's image is a key relative to the day (``img/a.jpg``) or an ``s3://`` URL, and it
  must lie inside the day's prefix, in the landing's bucket, once ``..`` is resolved: ``../``,
  another bucket, an absolute path or a ``file://`` URI is ``path_outside_landing`` and is never
  requested. An ``http(s)`` URL goes through ``remote_fetch`` as from a local landing;
- a listed key with an empty, ``.`` or ``..`` segment is ``invalid_path``: S3 stores such a key
  as it is, but no path names it, so it could alias another key;
- every read is checked against the ref's prefix again, and asks for at most
  ``MAX_IMAGE_BYTES`` (a whole image) or the member's size (a shard member): an object over the
  cap is ``image_too_large`` from its listed size, before any GET.
"""

from __future__ import annotations

import errno
import posixpath
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from dataplatform.core.ingest.confined_files import FileRefused, MissingFile, check_path_text
from dataplatform.core.ingest.landing import (
    MAX_FOLDER_DEPTH,
    MAX_TEXT_BYTES,
    ImageRef,
    LandingDay,
    LandingEntry,
    LandingRecord,
    discover_day,
)
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS, raw_text_cap
from dataplatform.core.store.home import LANDING_URL_ENV, landing_filesystem, object_path

OBJECT_KINDS = ("object", "object_range")
# How much one GET reads ahead while manifests and shard headers are read. A shard of small
# members is read in about (size / block) GETs; one of large members costs a block per header.
READ_BLOCK_BYTES = 1 << 20


def discover_objects(
    day_url: str, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> list[LandingRecord]:
    """Every input row under the object-store prefix ``day_url``, as ``landing.discover`` gives
    them for a local folder; none when nothing is there."""
    return discover_day(ObjectDay(day_url, raw_text_cap(max_text_chars)))


def split_url(url: str) -> tuple[str, str, str]:
    """``(scheme, bucket, key)``; by hand, since ``#`` and ``?`` are plain characters in a key."""
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    return scheme.lower(), bucket, key


class ObjectDay(LandingDay):
    """The objects below one day's prefix, listed once when it is made."""

    def __init__(self, day_url: str, text_cap: int) -> None:
        self.url = day_url.rstrip("/")
        self.scheme, self.bucket, self.prefix = split_url(self.url)
        self.text_cap = text_cap
        self.fs = landing_filesystem(self.url)
        base = object_path(self.url) + "/"
        self._sizes: dict[str, int] = {}
        for name, info in self.fs.find(base, detail=True).items():
            # A key ending in "/" is a folder marker that consoles write: structure, not data.
            if name.startswith(base) and not name.endswith("/") and info.get("type") != "directory":
                self._sizes[name[len(base) :]] = int(info.get("size") or 0)
        self._folders = {
            "/".join(rel.split("/")[:i])
            for rel in self._sizes
            for i in range(1, rel.count("/") + 1)
        }

    def entries(self) -> list[LandingEntry]:
        found: dict[str, LandingEntry] = {}
        for rel in sorted(self._sizes):
            entry = self._entry(rel)
            if entry is not None:
                found.setdefault(entry.rel, entry)
        return sorted(found.values(), key=lambda e: e.rel)

    def _entry(self, rel: str) -> LandingEntry | None:
        """The entry a local walk would give for this key; ``None`` where it skips it."""
        parts = rel.split("/")
        if any(part in ("", ".", "..") for part in parts):
            detail = f"{rel!r} has an empty, '.' or '..' segment, which no path can name; rename it"
            return LandingEntry(rel, ("invalid_path", detail))
        for depth, name in enumerate(parts):
            if name.startswith((".", "_")):
                return None
            if depth < len(parts) - 1 and depth + 1 >= MAX_FOLDER_DEPTH:
                folder = "/".join(parts[: depth + 1])
                detail = f"folder {folder} is nested deeper than {MAX_FOLDER_DEPTH} levels"
                return LandingEntry(folder, ("invalid_path", detail))
        try:
            check_path_text(rel)
        except FileRefused as refused:
            return LandingEntry(rel, (refused.reason, refused.detail))
        return LandingEntry(rel)

    def open(self, rel: str) -> BinaryIO:
        self._check_listed(rel)
        try:
            return self.fs.open(
                object_path(self._url(rel)),
                "rb",
                block_size=READ_BLOCK_BYTES,
                cache_type="readahead",
                size=self._sizes[rel],
            )
        except FileNotFoundError as exc:
            raise MissingFile(
                "missing_file", f"{rel} does not exist in the landing folder"
            ) from exc

    def size(self, rel: str, fh: BinaryIO) -> int:
        return self._sizes[rel]

    def read_caption(self, rel: str) -> bytes:
        self._check_listed(rel)
        return _get_range(self.fs, self._url(rel), 0, MAX_TEXT_BYTES)

    def image_ref(self, text: str) -> ImageRef | tuple[str, str]:
        try:
            check_path_text(text)
        except FileRefused as refused:
            return (refused.reason, refused.detail)
        scheme = urllib.parse.urlparse(text).scheme
        if scheme in ("http", "https"):
            return ImageRef(kind="remote", uri=text)
        if scheme == self.scheme:
            _, bucket, key = split_url(text)
            inside = posixpath.normpath(key) if key else ""
            if bucket != self.bucket or not inside.startswith(f"{self.prefix}/"):
                return (
                    "path_outside_landing",
                    f"{text} is not inside the landing folder {self.url}",
                )
            return self._listed(inside[len(self.prefix) + 1 :], text)
        if scheme == "file":
            return (
                "path_outside_landing",
                f"{text} names a file on one machine; the landing folder is {self.url}",
            )
        if scheme and len(scheme) > 1:
            return ("unsupported_uri", f"scheme {scheme!r} is not readable here: {text}")
        if text.startswith("/"):
            return (
                "path_outside_landing",
                f"absolute path {text!r} is not inside the landing folder",
            )
        rel = posixpath.normpath(text)
        if rel in (".", "..") or rel.startswith("../"):
            return ("path_outside_landing", f"{text!r} leads outside the landing folder {self.url}")
        return self._listed(rel, text)

    def _listed(self, rel: str, text: str) -> ImageRef | tuple[str, str]:
        if rel in self._sizes:
            return self.file_image(rel)
        if rel in self._folders:
            return ("not_a_regular_file", f"{rel} is a folder; only regular files are read")
        return ("missing_file", f"{text!r} does not exist in the landing folder")

    def file_image(self, rel: str) -> ImageRef:
        return ImageRef(kind="object", uri=self._url(rel), size=self._sizes[rel], root=self.url)

    def member_images(self, rel: str) -> Callable[[int, int], ImageRef]:
        uri, root = self._url(rel), self.url
        return lambda offset, size: ImageRef(
            kind="object_range", uri=uri, offset=offset, size=size, root=root
        )

    def real_rel(self, rel: str) -> str:
        return rel  # an object store has no links

    def target(self, rel: str) -> str:
        return self._url(rel)

    def target_of(self, ref: ImageRef) -> str | None:
        return ref.uri if ref.kind == "object" else None

    def _url(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def _check_listed(self, rel: str) -> None:
        if rel not in self._sizes:
            raise MissingFile("missing_file", f"{rel} does not exist in the landing folder")


def confined_object(uri: str, root: str) -> None:
    """Refuse ``uri`` (``path_outside_landing``) unless it is a key below the prefix ``root``,
    in its bucket, named without ``.``, ``..`` or empty segments."""
    scheme, bucket, key = split_url(uri)
    root_scheme, root_bucket, root_key = split_url(root.rstrip("/"))
    inside = (
        (scheme, bucket) == (root_scheme, root_bucket)
        and bool(key)
        and posixpath.normpath(key) == key
        and (not root_key or key.startswith(f"{root_key}/"))
    )
    if not inside:
        raise FileRefused("path_outside_landing", f"{uri} is not inside the landing {root}")


def landing_of(uri: str, landings: Sequence[str]) -> str:
    """The landing URL among ``landings`` that ``uri`` lies in; ``path_outside_landing`` if none."""
    for root in landings:
        try:
            confined_object(uri, root)
        except FileRefused:
            continue
        return root
    known = ", ".join(landings) or f"none: {LANDING_URL_ENV} is not set"
    raise FileRefused(
        "path_outside_landing", f"{uri} is not inside the object-store landing ({known})"
    )


def read_object(ref: ImageRef, max_bytes: int) -> bytes:
    """The bytes of an ``object`` or ``object_range`` ref: one ranged GET, checked first.

    Raises ``FileRefused`` (``path_outside_landing``, ``image_too_large``, ``missing_file``) or
    ``OSError``, as reading a local file does.
    """
    confined_object(ref.uri, ref.root)
    fs = landing_filesystem(ref.root)
    if ref.kind == "object_range":
        if ref.size > max_bytes:
            raise FileRefused(
                "image_too_large", f"{ref.uri} member is {ref.size} bytes, over {max_bytes}"
            )
        data = _get_range(fs, ref.uri, ref.offset, ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.uri}: shard ends after {len(data)} of {ref.size} bytes")
        return data
    # The listed size refuses a huge object before any GET; the capped range covers an object
    # replaced since it was listed, and a ref read back from a table, whose size is not known.
    if ref.size > max_bytes:
        raise FileRefused("image_too_large", f"{ref.uri} is {ref.size} bytes, over {max_bytes}")
    data = _get_range(fs, ref.uri, 0, max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused("image_too_large", f"{ref.uri} is over {max_bytes} bytes")
    return data


def _get_range(fs: Any, uri: str, offset: int, length: int) -> bytes:
    """At most ``length`` bytes from ``offset``: one GET with a Range header."""
    if length <= 0:
        return b""  # fsspec reads a whole object for an empty range
    try:
        return fs.cat_file(object_path(uri), start=offset, end=offset + length)
    except FileNotFoundError as exc:
        raise MissingFile("missing_file", f"{uri} does not exist in the landing") from exc
    except PermissionError as exc:
        raise FileRefused("read_error", f"{uri}: access denied ({exc})") from exc
    except OSError as exc:
        # S3 answers 416 for a range over an empty object: it has no byte 0 to start from.
        if exc.errno == errno.EINVAL and offset == 0:
            return b""
        raise
