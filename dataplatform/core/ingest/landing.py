"""Discovery of what arrived in one landing folder: manifests, WebDataset shards, captioned images.

The output is a flat list of ``LandingRecord``s, one per input row, in a stable order (source
path, then row). A row that cannot be read carries its ledger reason instead of failing the
folder, so rows in always equals rows kept plus rows rejected.

An img2dataset output folder is read as img2dataset writes it, per shard ``N``: ``N.tar`` holds
the samples it fetched, ``N.parquet`` is the shard's status table (one row per URL, fetched or
not) and ``N_stats.json`` its counts. The status table is not a manifest: its ``success`` rows
are the tar's samples, and every other row is the ledger row of a URL that img2dataset could
not fetch or resize, so each URL of the shard is accounted for exactly once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import unicodedata
import urllib.parse
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dataplatform.core.ingest.confined_files import (
    FileRefused,
    check_path_text,
    confined_path,
    open_confined,
    read_confined,
    regular_file,
)
from dataplatform.core.ingest.remote_fetch import (
    FAILED,
    HTTP_ERROR,
    MAX_REMOTE_BYTES,
    OPTED_OUT,
    TIMEOUT,
)
from dataplatform.core.ingest.tar_headers import TarMember, list_members
from dataplatform.core.ingest.text_normalize import DEFAULT_MAX_TEXT_CHARS, raw_text_cap

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
MANIFEST_SUFFIXES = {".jsonl", ".csv", ".parquet"}
SHARD_SUFFIXES = {".tar"}
# Fields with a meaning of their own; every other manifest field is kept in `extra`.
KNOWN_FIELDS = {"id", "image", "text", "url", "license"}
# A quoted CSV field may span lines; one whose quote never closes within this many lines is a
# broken row, not the start of a caption that swallows the rest of the file.
MAX_CSV_RECORD_LINES = 50
# Caps applied before any parsing, so one hostile row costs bounded time and memory. A manifest
# line or a caption file is a few hundred bytes in real data; a megabyte is already absurd.
MAX_MANIFEST_LINE_BYTES = 1 << 20
MAX_TEXT_BYTES = 1 << 20  # sidecar captions, shard .txt and .json members
MAX_JSON_DEPTH = 64
MAX_PAIR_ID_CHARS = 256
MAX_FOLDER_DEPTH = 64
# Local images and shard members are capped like remote ones: a sparse 3 GB "PNG" must not be
# read into memory.
MAX_IMAGE_BYTES = MAX_REMOTE_BYTES
# Small batches: a few kilobytes of dictionary-encoded Parquet can expand to gigabytes.
PARQUET_BATCH_ROWS = 256
# img2dataset's per-shard files beside ``N.tar``: its status table, and its counts (no rows).
STATUS_TABLE_SUFFIX = ".parquet"
STATUS_TABLE_COLUMNS = ("key", "status")  # a Parquet beside a shard without them is a manifest
SHARD_COMPANION_SUFFIXES = ("_stats.json",)
# The columns of a status table that discovery reads; the rest (exif, sizes, hashes) never
# become Python objects. Strings, except that an ``id`` may be a number, as in a manifest.
STATUS_READ_COLUMNS = ("key", "status", "error_message", "url", "caption", "id")
# img2dataset's own error text is attacker-influenced (a server's reason phrase): the ledger
# detail keeps a readable prefix of it.
MAX_STATUS_DETAIL_CHARS = 500
# A sample row of a shard, kept or not, is located as ``key <key>``.
_KEY_LOCATOR = "key "
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file, a member of a tar shard, or a remote URI.

    On an object-store landing, ``uri`` is the object's URL and ``root`` the prefix it must stay
    inside; an ``object_range`` (a shard member) is read as ``size`` bytes from ``offset``. A
    ref names everything its reader needs, so a worker on another node reads it as it is.
    """

    kind: str  # "file" | "tar" | "remote" | "object" | "object_range" | "invalid"
    path: str = ""
    offset: int = 0
    size: int = 0
    uri: str = ""
    root: str = ""  # the folder (or object prefix) it must stay inside when it is read again


@dataclass
class LandingRecord:
    source: str  # landing-relative path of the manifest, shard or image file
    row: int  # 0-based row (or member group) within the source
    manifest_id: str | None
    image_uri: str | None
    image: ImageRef | None
    text: Any
    url: str | None = None
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the row itself is unusable
    locator: str = ""  # where in the source, for people: "line 21", "key 000000008", "row 3"
    text_cut: bool = False  # the caption was cut at discovery (see ``raw_text_cap``)

    @property
    def where(self) -> str:
        """The source and the place in it, as an auditor would look it up."""
        return f"{self.source} {self.locator}".strip()


def derived_pair_id(date: str, source: str, row_key: str) -> str:
    """A stable id for a row that has none: the same file and row always give the same id."""
    key = f"{date}/{source}#{row_key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(key, digest_size=8).hexdigest()
    return f"p{digest}"


@dataclass(frozen=True)
class LandingEntry:
    """A name found in the day folder, and why it will not be read (``None``: it may be)."""

    rel: str
    refusal: tuple[str, str] | None = None


class LandingDay(ABC):
    """One day folder as discovery reads it, wherever it lies.

    ``LocalDay`` is a folder on this machine, ``object_landing.ObjectDay`` a prefix on an object
    store. The readers of every format reach the day through these methods only, so the same
    files give the same records, pair ids and ledger reasons in either place.
    """

    text_cap: int  # captions are cut to this many characters at discovery

    @abstractmethod
    def entries(self) -> list[LandingEntry]:
        """Every visible name in the day, sorted, each with its refusal if it will not be read."""

    @abstractmethod
    def open(self, rel: str) -> BinaryIO:
        """The file ``rel`` for reading (seekable); raises ``FileRefused``."""

    @abstractmethod
    def size(self, rel: str, fh: BinaryIO) -> int:
        """The byte size of the opened file ``rel``."""

    @abstractmethod
    def read_caption(self, rel: str) -> bytes:
        """The first ``MAX_TEXT_BYTES`` of the file ``rel``; raises ``FileRefused``."""

    @abstractmethod
    def image_ref(self, text: str) -> ImageRef | tuple[str, str]:
        """A manifest's ``image`` value as a ref, or the ledger reason it is refused."""

    @abstractmethod
    def file_image(self, rel: str) -> ImageRef:
        """The image file ``rel`` (one that ``entries`` did not refuse)."""

    @abstractmethod
    def member_images(self, rel: str) -> Callable[[int, int], ImageRef]:
        """For the shard ``rel``: a ref to the member body at ``(offset, size)``."""

    @abstractmethod
    def real_rel(self, rel: str) -> str:
        """The name inside the day that ``rel`` leads to (itself unless it is a link)."""

    @abstractmethod
    def target(self, rel: str) -> str:
        """Where ``rel`` leads; two names with one target are one file."""

    @abstractmethod
    def target_of(self, ref: ImageRef) -> str | None:
        """The ``target`` of a whole-file ref of this day; ``None`` for other kinds."""


def discover(date_dir: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> list[LandingRecord]:
    """Every input row under ``date_dir``, in stable order.

    Images that no manifest row or sidecar caption refers to become rows with reason
    ``orphan_image``, and unknown files ``unsupported_input``: nothing in the folder is
    silently ignored except hidden files, ``_``-prefixed markers such as ``_SUCCESS``, and
    img2dataset's ``N_stats.json`` beside its shard ``N.tar`` (counts of what ``N.parquet``
    lists row by row). That ``N.parquet``, when it has img2dataset's ``key`` and ``status``
    columns, is the shard's status table, not a manifest: its ``success`` rows are the shard's
    samples and give no row of their own, unless the shard lacks the sample (``missing_image``);
    each failed row is the ledger row of its URL (``fetch_http_error``, ``fetch_opted_out``,
    ``fetch_timeout``, ``fetch_failed``; ``decode_error`` where img2dataset could not resize).
    Every file is opened through ``confined_files``, so a symlink that leads outside the day
    folder, a FIFO, a socket or a device is a ledger row, never a read. Captions are cut to
    ``raw_text_cap(max_text_chars)`` characters here already, so a row costs bounded memory
    however large its caption.
    """
    return discover_day(LocalDay(date_dir.resolve(), raw_text_cap(max_text_chars)))


def discover_day(day: LandingDay) -> list[LandingRecord]:
    """Every input row of ``day``, in stable order (source path, then row); see ``discover``."""
    entries = day.entries()
    names = {e.rel for e in entries}
    shards = {_stem(e.rel): e.rel for e in entries if Path(e.rel).suffix.lower() in SHARD_SUFFIXES}
    records: list[LandingRecord] = []
    shard_rows: dict[str, list[LandingRecord]] = {}
    beside_shards: list[str] = []
    sidecar_texts: set[str] = set()
    sidecar_images: set[str] = set()
    for entry in entries:
        suffix = Path(entry.rel).suffix.lower()
        reader = _READERS.get(suffix)
        if entry.refusal is None and suffix == STATUS_TABLE_SUFFIX and _stem(entry.rel) in shards:
            beside_shards.append(entry.rel)  # read once the shard's samples are known
        elif entry.refusal is None and reader is not None:
            rows = _read_source(reader, day, entry.rel)
            if suffix in SHARD_SUFFIXES:
                shard_rows[entry.rel] = rows
            records.extend(rows)
        elif suffix in IMAGE_SUFFIXES and _sidecar_of(entry.rel) in names:
            sidecar_texts.add(_sidecar_of(entry.rel))
            sidecar_texts.add(day.real_rel(_sidecar_of(entry.rel)))
            sidecar_images.add(entry.rel)
            records.append(_sidecar_record(day, entry))
    for rel in beside_shards:
        shard = shards[_stem(rel)]
        keys = _sample_keys(shard_rows.get(shard, []))
        records.extend(_read_source(partial(_read_parquet_beside, shard, keys), day, rel))
    # A refused file that a manifest row names is that row's ledger entry already.
    named = {os.path.normpath(r.image_uri) for r in records if r.image_uri}
    referenced = {day.target_of(r.image) for r in records if r.image} - {None}
    for entry in entries:
        suffix = Path(entry.rel).suffix.lower()
        if entry.rel in sidecar_texts | sidecar_images or (
            entry.refusal is None and suffix in _READERS
        ):
            continue
        if entry.refusal is not None:
            if entry.rel in named:
                continue
            error = entry.refusal
        elif _is_shard_companion(entry.rel, shards):
            continue
        elif suffix in IMAGE_SUFFIXES:
            if day.target(entry.rel) in referenced:
                continue
            error = ("orphan_image", "no manifest row or sidecar caption refers to this image")
        else:
            error = ("unsupported_input", f"not a manifest, shard or captioned image: {entry.rel}")
        records.append(_file_row(entry.rel, error))
    records.sort(key=lambda r: (r.source, r.row))
    return records


@dataclass(frozen=True)
class LocalDay(LandingDay):
    """A day folder on this machine; every file is opened through ``confined_files``."""

    root: Path  # resolved
    text_cap: int

    def entries(self) -> list[LandingEntry]:
        return sorted(_walk(self.root), key=lambda e: e.rel)

    def open(self, rel: str) -> BinaryIO:
        return open_confined(self.root, self.root / rel)

    def size(self, rel: str, fh: BinaryIO) -> int:
        return os.fstat(fh.fileno()).st_size

    def read_caption(self, rel: str) -> bytes:
        return read_confined(self.root, self.root / rel, MAX_TEXT_BYTES, cut=True)

    def image_ref(self, text: str) -> ImageRef | tuple[str, str]:
        return _resolve_local(self.root, text)

    def file_image(self, rel: str) -> ImageRef:
        return ImageRef(kind="file", path=os.path.realpath(self.root / rel), root=str(self.root))

    def member_images(self, rel: str) -> Callable[[int, int], ImageRef]:
        path, root = str(confined_path(self.root, self.root / rel)), str(self.root)
        return lambda offset, size: ImageRef(
            kind="tar", path=path, offset=offset, size=size, root=root
        )

    def real_rel(self, rel: str) -> str:
        return _relative_real(self.root, rel)

    def target(self, rel: str) -> str:
        return os.path.realpath(self.root / rel)

    def target_of(self, ref: ImageRef) -> str | None:
        return os.path.realpath(ref.path) if ref.kind == "file" else None


def _walk(root: Path) -> Iterator[LandingEntry]:
    """Every visible name below ``root``, without recursion; symlinked folders are not entered.

    Iterative with a depth cap, so a folder nested thousands deep is one ledger row, not a
    ``RecursionError``.
    """
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        rel_folder = _rel(root, folder)
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield LandingEntry(
                rel_folder, ("read_error", f"folder {rel_folder} cannot be listed: {exc}")
            )
            continue
        for child in children:
            if child.name.startswith((".", "_")):
                continue
            path = Path(child.path)
            rel = _rel(root, path)
            shown = _printable(rel)
            if shown != rel:
                yield LandingEntry(
                    shown, ("invalid_path", f"{shown!r} is not valid UTF-8; rename it")
                )
                continue
            try:
                is_link = child.is_symlink()
                is_folder = child.is_dir(follow_symlinks=False)
            except OSError as exc:
                yield LandingEntry(rel, ("read_error", f"{rel}: {exc}"))
                continue
            if is_link and os.path.isdir(path):
                yield LandingEntry(rel, _folder_link_refusal(root, rel))
            elif is_folder:
                if depth + 1 >= MAX_FOLDER_DEPTH:
                    detail = f"folder {rel} is nested deeper than {MAX_FOLDER_DEPTH} levels"
                    yield LandingEntry(rel, ("invalid_path", detail))
                else:
                    stack.append((path, depth + 1))
            else:
                yield LandingEntry(rel, _file_refusal(root, rel))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


def _file_refusal(root: Path, rel: str) -> tuple[str, str] | None:
    try:
        regular_file(root, root / rel)
    except FileRefused as refused:
        return (refused.reason, refused.detail)
    return None


def _folder_link_refusal(root: Path, rel: str) -> tuple[str, str]:
    try:
        real = confined_path(root, str(root / rel))
    except FileRefused as refused:
        return (refused.reason, refused.detail)
    return (
        "symlinked_folder",
        f"{rel} is a symlink to {_rel(root, real)}; symlinked folders are not followed "
        "(their files would be read twice)",
    )


_SURROGATES = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable file-name bytes, ``"\\ud800"`` in JSON) replaced.

    Such a string cannot be stored in a Parquet string column; storing it replaced keeps the
    row, and callers that need the exact value (paths, ids) refuse it instead.
    """
    if text.isascii() or not _SURROGATES.search(text):
        return text
    return _SURROGATES.sub("\ufffd", text)


def _relative_real(root: Path, rel: str) -> str:
    """Where ``rel`` leads inside ``root`` (a caption reached through a link is used, too)."""
    real = os.path.realpath(root / rel)
    return os.path.relpath(real, root) if real.startswith(f"{root}/") else rel


def _stem(rel: str) -> str:
    """``rel`` without its last suffix: ``a/00000.tar`` and ``a/00000.parquet`` are ``a/00000``."""
    return rel[: len(rel) - len(Path(rel).suffix)]


def _is_shard_companion(rel: str, shards: dict[str, str]) -> bool:
    """Whether ``rel`` is a file img2dataset writes beside a shard that carries no rows."""
    return any(
        rel.endswith(suffix) and rel[: -len(suffix)] in shards
        for suffix in SHARD_COMPANION_SUFFIXES
    )


def _sample_keys(records: list[LandingRecord]) -> set[str]:
    """The keys of a shard's samples, kept or ledger rows (a refused member is not a sample)."""
    return {r.locator[len(_KEY_LOCATOR) :] for r in records if r.locator.startswith(_KEY_LOCATOR)}


def _sidecar_of(rel: str) -> str:
    return Path(rel).with_suffix(".txt").as_posix()


def _sidecar_record(day: LandingDay, entry: LandingEntry) -> LandingRecord:
    """An image with a ``.txt`` caption beside it; either file may be refused."""
    record = LandingRecord(
        source=entry.rel, row=0, manifest_id=None, image_uri=entry.rel, image=None, text=None
    )
    if entry.refusal is not None:
        record.error = entry.refusal
        return record
    try:
        raw = day.read_caption(_sidecar_of(entry.rel))
    except FileRefused as refused:
        record.error = (refused.reason, f"caption file: {refused.detail}")
        return record
    _set_text(record, raw.decode("utf-8", errors="replace"), day.text_cap)
    record.image = day.file_image(entry.rel)
    return record


def _set_text(record: LandingRecord, text: str | None, cap: int) -> None:
    if text is not None and len(text) > cap:
        text, record.text_cut = text[:cap], True
    record.text = _printable(text) if text is not None else None


def _file_row(rel: str, error: tuple[str, str], row: int = 0, locator: str = "") -> LandingRecord:
    return LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=rel if not locator else None,
        image=None,
        text=None,
        error=error,
        locator=locator,
    )


def _read_source(
    reader: Callable[[LandingDay, str, BinaryIO], Iterator[LandingRecord]],
    day: LandingDay,
    rel: str,
) -> list[LandingRecord]:
    """All rows of one manifest or shard; a failure part-way keeps the rows read before it.

    Whatever goes wrong inside one file (a refusal, a parser bug, a truncated stream) becomes
    one more ledger row naming the file and the place, never an exception out of discovery.
    """
    records: list[LandingRecord] = []
    try:
        with day.open(rel) as fh:
            for record in reader(day, rel, fh):
                records.append(record)
    except FileRefused as refused:
        records.append(_file_row(rel, (refused.reason, refused.detail)))
    except Exception as exc:  # noqa: BLE001 - the rest of one file is one ledger row
        row = max(r.row for r in records) + 1 if records else 0
        place = f"after {records[-1].where}" if records else "from its start"
        records.append(
            _file_row(
                rel,
                ("unreadable_rest", f"{rel} cannot be read {place}: {type(exc).__name__}: {exc}"),
                row=row,
                locator=f"row {row}",
            )
        )
    return records


def _resolve_local(root: Path, ref: str) -> ImageRef | tuple[str, str]:
    """A manifest's image reference as an ``ImageRef``, or the ledger reason it is refused."""
    try:
        check_path_text(ref)
    except FileRefused as refused:
        return (refused.reason, refused.detail)
    parsed = urllib.parse.urlparse(ref)
    if parsed.scheme in ("http", "https"):
        return ImageRef(kind="remote", uri=ref)
    if parsed.scheme == "file":
        candidate = urllib.parse.unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        return ("unsupported_uri", f"scheme {parsed.scheme!r} is not readable here: {ref}")
    else:
        if os.path.isabs(ref):
            return (
                "path_outside_landing",
                f"absolute path {ref!r} is not inside the landing folder",
            )
        candidate = str(root / ref)
    try:
        real = regular_file(root, candidate)
    except FileRefused as refused:
        if refused.reason == "missing_file":
            return ("missing_file", f"{ref!r} does not exist in the landing folder")
        return (refused.reason, refused.detail)
    return ImageRef(kind="file", path=str(real), root=str(root))


def _record_from_mapping(
    day: LandingDay, rel: str, row: int, obj: dict[str, Any], locator: str
) -> LandingRecord:
    """One manifest row; any surprise in its values is this row's ledger reason."""
    try:
        return _mapping_record(day, rel, row, obj, locator)
    except Exception as exc:  # noqa: BLE001 - one odd value never fails the folder
        return _malformed(rel, row, f"unusable row: {type(exc).__name__}: {exc}", locator)


def _mapping_record(
    day: LandingDay, rel: str, row: int, obj: dict[str, Any], locator: str
) -> LandingRecord:
    record = LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=None,
        image=None,
        text=None,
        url=_opt_str(obj.get("url")),
        license=_opt_str(obj.get("license")),
        extra={_printable(str(k)): _storable(v) for k, v in obj.items() if k not in KNOWN_FIELDS},
        locator=locator,
    )
    manifest_id, id_problem = _pair_id(obj.get("id"))
    image, image_problem = _field_text("image", obj.get("image"))
    text, text_problem = _field_text("text", obj.get("text"))
    record.manifest_id = manifest_id
    record.image_uri = _printable(image) if image else None
    _set_text(record, text, day.text_cap)
    if id_problem is not None:
        record.error = ("invalid_pair_id", id_problem)
    elif image_problem or text_problem:
        record.error = ("malformed_manifest_line", f"{locator}: {image_problem or text_problem}")
    elif not image:
        record.error = ("missing_image", "the row has no `image` field")
    else:
        resolved = day.image_ref(image)
        if isinstance(resolved, ImageRef):
            record.image = resolved
        else:
            record.error = resolved
    return record


def _field_text(name: str, value: Any) -> tuple[str | None, str | None]:
    """A string field's value, or the problem with it; numbers are their decimal text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace"), None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value), None
    return None, f"`{name}` is a {type(value).__name__}, not a string"


def _pair_id(value: Any) -> tuple[str | None, str | None]:
    """A manifest's ``id`` as a pair_id, or why it cannot be one (printed, joined, indexed)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    text, problem = _field_text("id", value)
    if problem is not None:
        return None, problem
    if text is None or text == "":
        return None, None
    if len(text) > MAX_PAIR_ID_CHARS:
        return None, f"id is {len(text)} characters, over {MAX_PAIR_ID_CHARS}"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in text):
        return None, f"id contains control, format or surrogate characters: {_printable(text)!r}"
    return text, None


def _opt_str(value: Any) -> str | None:
    text, _ = _field_text("", value)
    if text is None:
        return None
    return _printable(text.strip()) or None


def _storable(value: Any) -> Any:
    """A manifest value as JSON that Parquet can store (strings without lone surrogates)."""
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_printable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _printable(str(value))


def _malformed(
    rel: str, row: int, detail: str, locator: str = "", reason: str = "malformed_manifest_line"
) -> LandingRecord:
    return LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=None,
        image=None,
        text=None,
        error=(reason, f"{locator}: {detail}" if locator else detail),
        locator=locator,
    )


def _bounded_lines(fh: BinaryIO, limit: int) -> Iterator[tuple[int, str | None, int]]:
    """``(index, line, length)`` for each line; ``line`` is ``None`` when over ``limit``.

    Universal newlines (``\\n``, ``\\r\\n`` or a lone ``\\r``), UTF-8 with a BOM accepted and
    undecodable bytes replaced. An over-long line is skipped in chunks, never held whole: a
    manifest that is one 10 GB line costs 64 KiB of memory.
    """
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline=None)
    index = 0
    try:
        while True:
            line = text.readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith("\n"):
                length = len(line)
                while True:
                    more = text.readline(1 << 16)
                    length += len(more)
                    if not more or more.endswith("\n"):
                        break
                yield index, None, length
            else:
                yield index, line, len(line)
            index += 1
    finally:
        text.detach()


def _too_long(rel: str, index: int, length: int) -> LandingRecord:
    return _malformed(
        rel,
        index,
        f"the line is {length} characters, over {MAX_MANIFEST_LINE_BYTES}",
        f"line {index + 1}",
        reason="manifest_line_too_long",
    )


def json_depth_problem(text: str, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``text`` is nested too deep to parse, or ``None``; strings are skipped, not counted.

    Checked before ``json.loads``, whose recursion a deep document would exhaust.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return None
    depth = 0
    for ch in _JSON_STRING.sub('""', text):
        if ch in "[{":
            depth += 1
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
        elif ch in "]}":
            depth -= 1
    return None


def parse_json_object(text: str) -> tuple[dict[str, Any] | None, str, str]:
    """``(object, reason, detail)``: the parsed object, or ``None`` with the ledger reason."""
    problem = json_depth_problem(text)
    if problem is not None:
        return None, "manifest_json_too_deep", problem
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, "malformed_manifest_line", f"invalid JSON ({exc.msg})"
    except (ValueError, RecursionError) as exc:
        return None, "malformed_manifest_line", f"unparseable JSON value: {exc}"
    if not isinstance(obj, dict):
        return None, "malformed_manifest_line", f"not a JSON object (a {type(obj).__name__})"
    return obj, "", ""


def _read_jsonl(day: LandingDay, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    for row, raw, length in _bounded_lines(fh, MAX_MANIFEST_LINE_BYTES):
        if raw is None:
            yield _too_long(rel, row, length)
            continue
        line = raw.strip()
        if not line:
            continue
        locator = f"line {row + 1}"
        obj, reason, detail = parse_json_object(line)
        if obj is None:
            yield _malformed(rel, row, detail, locator, reason=reason)
            continue
        yield _record_from_mapping(day, rel, row, obj, locator)


def ends_inside_quotes(line: str, inside: bool) -> bool:
    """Whether a CSV record is still inside a quoted field at the end of ``line``.

    A quote opens a quoted field only at the start of a field; inside one, ``""`` is an escaped
    quote and a lone quote closes it. A quote in the middle of an unquoted field
    (``5" screen``) is a literal character and opens nothing.
    """
    if '"' not in line:
        return inside
    at_field_start = not inside
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if inside:
            if ch == '"':
                if i + 1 < n and line[i + 1] == '"':
                    i += 1
                else:
                    inside = False
        elif ch == '"' and at_field_start:
            inside = True
        at_field_start = ch == "," and not inside
        i += 1
    return inside


def _read_csv(day: LandingDay, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    lines = _bounded_lines(fh, MAX_MANIFEST_LINE_BYTES)
    first = next(lines, None)
    if first is None:
        return
    if first[1] is None:
        yield _too_long(rel, 0, first[2])
        return
    try:
        header = next(csv.reader([first[1]]), [])
    except csv.Error as exc:
        yield _malformed(rel, 0, f"unreadable CSV header: {exc}", "line 1")
        return
    pending: deque[tuple[int, str | None, int]] = deque()

    def take() -> tuple[int, str | None, int] | None:
        return pending.popleft() if pending else next(lines, None)

    while (line := take()) is not None:
        start, chunk, length = line
        if chunk is None:
            yield _too_long(rel, start, length)
            continue
        consumed = [line]
        inside = ends_inside_quotes(chunk, False)
        # A quoted field may span lines; one that never closes within this many lines (or
        # bytes) is a broken row, not the start of a caption that swallows the file.
        while (
            inside
            and len(consumed) <= MAX_CSV_RECORD_LINES
            and len(chunk) <= (MAX_MANIFEST_LINE_BYTES)
        ):
            more = take()
            if more is None:
                break
            consumed.append(more)
            if more[1] is None:
                break
            chunk += more[1]
            inside = ends_inside_quotes(more[1], True)
        if not chunk.strip():
            continue
        problem = None
        values: list[str] = []
        if inside:
            problem = "unbalanced quote"
        else:
            try:
                parsed = list(csv.reader(io.StringIO(chunk), strict=True))
            except csv.Error as exc:
                problem = str(exc)
            else:
                if len(parsed) != 1:
                    problem = f"{len(parsed)} records where one was expected"
                else:
                    values = parsed[0]
                    if len(values) != len(header):
                        problem = f"{len(values)} fields, header has {len(header)}"
        if problem is not None:
            yield _malformed(rel, start, problem, f"line {start + 1}")
            # A broken quote must not take the following lines down with it.
            pending.extendleft(reversed(consumed[1:]))
            continue
        yield _record_from_mapping(
            day, rel, start, dict(zip(header, values, strict=True)), f"line {start + 1}"
        )


def _read_parquet(day: LandingDay, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    try:
        parquet = pq.ParquetFile(fh)
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest is one ledger row
        yield _malformed(rel, 0, f"unreadable Parquet manifest: {type(exc).__name__}: {exc}")
        return
    yield from _manifest_rows(day, rel, parquet)


def _manifest_rows(day: LandingDay, rel: str, parquet: pq.ParquetFile) -> Iterator[LandingRecord]:
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for obj in _capped(batch, day.text_cap).to_pylist():
            yield _record_from_mapping(day, rel, row, obj, f"row {row}")
            row += 1


def _read_parquet_beside(
    shard: str, shard_keys: set[str], day: LandingDay, rel: str, fh: BinaryIO
) -> Iterator[LandingRecord]:
    """A Parquet file beside the shard ``shard``: its img2dataset status table, or a manifest.

    It is the status table when it has img2dataset's ``key`` and ``status`` columns; a row whose
    key ``shard_keys`` holds is that sample's (the shard's row accounts for it), any other is
    the ledger row of its URL (see ``_status_record``).
    """
    try:
        parquet = pq.ParquetFile(fh)
    except Exception as exc:  # noqa: BLE001 - an unreadable table is one ledger row
        yield _malformed(rel, 0, f"unreadable Parquet file: {type(exc).__name__}: {exc}")
        return
    schema = parquet.schema_arrow
    if not all(name in schema.names for name in STATUS_TABLE_COLUMNS):
        yield from _manifest_rows(day, rel, parquet)
        return
    columns = [name for name in STATUS_READ_COLUMNS if name in schema.names]
    for name in columns:
        problem = _status_column_problem(name, schema.field(name).type)
        if problem is not None:
            detail = (
                f"{rel} is the img2dataset status table of {shard}, but {problem}; "
                "write it again with img2dataset, or remove it to ingest the shard alone"
            )
            yield _malformed(rel, 0, detail)
            return
    first_row: dict[str, int] = {}
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for values in _capped(batch, day.text_cap).to_pylist():
            record = _status_record(day, rel, shard, row, values, shard_keys, first_row)
            if record is not None:
                yield record
            row += 1


def _status_column_problem(name: str, kind: pa.DataType) -> str | None:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return None
    if name == "id" and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return None
    return f"its column `{name}` is {kind}, not a string"


def _status_record(
    day: LandingDay,
    rel: str,
    shard: str,
    row: int,
    values: dict[str, Any],
    shard_keys: set[str],
    first_row: dict[str, int],
) -> LandingRecord | None:
    """One status-table row: ``None`` where the shard has its sample, else its ledger row."""
    key, status = values.get("key") or "", values.get("status")
    if key in shard_keys:
        return None  # whatever the status says, the sample is there and is the shard's row
    locator = f"{_KEY_LOCATOR}{key}" if key else f"row {row}"
    url = _opt_str(values.get("url"))
    record = LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=url,
        image=None,
        text=None,
        url=url,
        locator=locator,
    )
    caption, _ = _field_text("caption", values.get("caption"))
    _set_text(record, caption, day.text_cap)
    record.manifest_id, id_problem = _pair_id(values.get("id"))
    message = _bounded(_printable(str(values.get("error_message") or "")))
    if id_problem is not None:
        record.error = ("invalid_pair_id", id_problem)
    elif not key:
        record.error = ("malformed_manifest_line", f"row {row}: the status row has no key")
    elif key in first_row:
        detail = f"{locator}: listed again (first at row {first_row[key]})"
        record.error = ("malformed_manifest_line", detail)
    elif status == "success":
        detail = (
            f"the img2dataset status table lists key {key} as fetched, but {shard} has no "
            "sample of that key"
        )
        record.error = ("missing_image", detail)
    elif status == "failed_to_download":
        record.error = (_download_reason(message), f"img2dataset: {message or status}")
    elif status == "failed_to_resize":
        record.error = ("decode_error", f"img2dataset could not resize it: {message or status}")
    else:
        shown = repr(_bounded(_printable(status))) if status is not None else "missing"
        detail = (
            f"{locator}: status {shown} is not one img2dataset writes "
            "(success, failed_to_download, failed_to_resize)"
        )
        record.error = ("malformed_manifest_line", detail)
    if key:
        first_row.setdefault(key, row)
    return record


def _download_reason(message: str) -> str:
    """The ledger reason for img2dataset's download error text (urllib's, or its own)."""
    if "X-Robots-Tag" in message:
        return OPTED_OUT
    if re.search(r"\bHTTP Error \d{3}\b", message):
        return HTTP_ERROR
    if "timed out" in message.lower():
        return TIMEOUT
    return FAILED


def _bounded(text: str, limit: int = MAX_STATUS_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _capped(batch: pa.RecordBatch, cap: int) -> pa.RecordBatch:
    """String cells cut to ``cap`` characters before they become Python objects."""
    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.utf8_slice_codeunits(column, 0, cap)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def webdataset_key(name: str) -> tuple[str, str]:
    """``(key, extension)`` as WebDataset groups a member: the basename splits at its *first* dot.

    ``a/000002.left.jpg`` is key ``a/000002``, extension ``left.jpg``; a basename with no dot,
    or one that starts with a dot, has no key (``("", "")``).
    """
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return "", ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _is_image_ext(ext: str) -> bool:
    return "." + ext.rsplit(".", 1)[-1] in IMAGE_SUFFIXES


def _read_tar(day: LandingDay, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    """img2dataset / WebDataset shards: members ``<key>.<ext>`` grouped as WebDataset groups them.

    Every member is accounted for: it belongs to a kept sample (its image, caption, metadata, or
    another field listed in ``extra["shard_members"]``) or it is a ledger row of its own
    (duplicated name, no extension, a link, a sparse member, a second image, a truncated body).
    A shard that cannot be read to its end keeps the samples before the break and adds one row
    for the rest. Headers are read by ``tar_headers``, not ``tarfile`` (see there why).
    """
    size = day.size(rel, fh)
    image_at = day.member_images(rel)
    listing = list_members(fh, size)
    if not listing.members and listing.broken is not None:
        yield _malformed(rel, 0, f"unreadable tar shard: {listing.broken}")
        return
    records = _shard_records(day, rel, fh, size, image_at, listing.members)
    yield from records
    if listing.broken is not None:
        yield _file_row(
            rel,
            (
                "truncated_shard",
                f"{rel} cannot be read from byte {listing.broken_at} of {size}: {listing.broken}",
            ),
            row=len(records),
            locator=f"byte {listing.broken_at}",
        )


def _shard_records(
    day: LandingDay,
    rel: str,
    fh: BinaryIO,
    size: int,
    image_at: Callable[[int, int], ImageRef],
    members: list[TarMember],
) -> list[LandingRecord]:
    last_of: dict[bytes, int] = {}
    for i, m in enumerate(members):
        last_of[m.raw_name] = i
    groups: dict[str, dict[str, TarMember]] = {}
    refused: list[tuple[TarMember, str, str]] = []
    for i, m in enumerate(members):
        if m.kind == "folder":
            continue  # structure, not data: img2dataset writes none
        if last_of[m.raw_name] != i:
            refused.append(
                (m, "duplicate_shard_member", "a later member of the same name replaces it")
            )
        elif m.name is None:
            refused.append((m, "invalid_path", "the member name is not valid UTF-8"))
        elif m.kind != "file":
            refused.append((m, "unsupported_shard_member", f"a {m.kind} member is not read"))
        elif not webdataset_key(m.name)[0]:
            refused.append(
                (m, "shard_member_without_extension", "no <key>.<extension> name to group it by")
            )
        else:
            key, ext = webdataset_key(m.name)
            groups.setdefault(key, {})[ext] = m
    records = []
    for row, key in enumerate(sorted(groups)):
        record, extra_images = _sample_record(day, rel, fh, size, image_at, row, key, groups[key])
        records.append(record)
        refused.extend(extra_images)
    for m, reason, detail in refused:
        records.append(
            _file_row(
                rel,
                (reason, f"member {m.shown_name!r}: {detail}"),
                row=len(records),
                locator=f"member {m.shown_name}",
            )
        )
    return records


def _sample_record(
    day: LandingDay,
    rel: str,
    fh: BinaryIO,
    size: int,
    image_at: Callable[[int, int], ImageRef],
    row: int,
    key: str,
    parts: dict[str, TarMember],
) -> tuple[LandingRecord, list[tuple[TarMember, str, str]]]:
    locator = f"{_KEY_LOCATOR}{key}"
    images = sorted((e for e in parts if _is_image_ext(e)), key=lambda e: ("." in e, e))
    image = parts[images[0]] if images else None
    extra_images = [
        (parts[e], "extra_image_member", f"sample {key} already has image {image.name!r}")
        for e in images[1:]
        if image is not None
    ]
    for m in parts.values():
        if m.offset_data + m.size > size:
            detail = f"member {m.name!r} claims {m.size} bytes but the shard ends at byte {size}"
            return _malformed(rel, row, detail, locator, "truncated_shard"), extra_images
    if image is not None and image.size > MAX_IMAGE_BYTES:
        detail = f"member {image.name!r} is {image.size} bytes, over {MAX_IMAGE_BYTES}"
        return _malformed(rel, row, detail, locator, "image_too_large"), extra_images
    meta: dict[str, Any] = {}
    if "json" in parts:
        raw = _member_bytes(fh, parts["json"], MAX_TEXT_BYTES)
        if raw is None:
            detail = f"{key}.json is over {MAX_TEXT_BYTES} bytes"
            return _malformed(rel, row, detail, locator), extra_images
        obj, reason, detail = parse_json_object(raw.decode("utf-8", errors="replace"))
        if obj is None:
            return _malformed(rel, row, f"{key}.json: {detail}", locator, reason), extra_images
        meta = obj
    record = LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=f"{rel}#{image.name}" if image else None,
        image=image_at(image.offset_data, image.size) if image else None,
        text=None,
        url=_opt_str(meta.get("url")),
        license=_opt_str(meta.get("license")),
        extra={
            _printable(str(k)): _storable(v)
            for k, v in meta.items()
            if k not in KNOWN_FIELDS | {"caption", "key"}
        },
        locator=locator,
    )
    record.extra["shard_key"] = key
    used = {"txt", "json", *images}
    others = sorted(parts[e].name for e in parts if e not in used)
    if others:
        record.extra["shard_members"] = others
    if "txt" in parts:
        raw_text = _member_bytes(fh, parts["txt"], MAX_TEXT_BYTES, cut=True) or b""
        text, text_problem = raw_text.decode("utf-8", "replace"), None
    else:
        text, text_problem = _field_text("caption", meta.get("caption"))
    _set_text(record, text, day.text_cap)
    record.manifest_id, id_problem = _pair_id(meta.get("id"))
    if id_problem is not None:
        record.error = ("invalid_pair_id", id_problem)
    elif text_problem is not None:
        record.error = ("malformed_manifest_line", f"{key}.json: {text_problem}")
    elif image is None:
        record.error = ("missing_image", f"shard key {key} has no image member")
    return record, extra_images


def _member_bytes(fh: BinaryIO, member: TarMember, limit: int, cut: bool = False) -> bytes | None:
    """A member's body, at most ``limit`` bytes: cut there, or ``None`` if over and not ``cut``."""
    fh.seek(member.offset_data)
    data = fh.read(min(member.size, limit + 1))
    if len(data) > limit:
        return data[:limit] if cut else None
    return data


_READERS: dict[str, Callable[[LandingDay, str, BinaryIO], Iterator[LandingRecord]]] = {
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".tar": _read_tar,
}
