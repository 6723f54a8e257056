"""Discovery of what arrived in one landing folder: manifests, WebDataset shards, captioned images.

The output is a flat list of ``LandingRecord``s, one per input row, in a stable order (source
path, then row). A row that cannot be read carries its ledger reason instead of failing the
folder, so rows in always equals rows kept plus rows rejected.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import tarfile
import unicodedata
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq

from dataplatform.core.confined_files import (
    FileRefused,
    check_path_text,
    confined_path,
    open_confined,
    read_confined,
    regular_file,
)

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
PARQUET_BATCH_ROWS = 4096
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes are: a file, a member of a tar shard, or a remote URI."""

    kind: str  # "file" | "tar" | "remote" | "invalid"
    path: str = ""
    offset: int = 0
    size: int = 0
    uri: str = ""


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

    @property
    def where(self) -> str:
        """The source and the place in it, as an auditor would look it up."""
        return f"{self.source} {self.locator}".strip()


def derived_pair_id(date: str, source: str, row_key: str) -> str:
    """A stable id for a row that has none: the same file and row always give the same id."""
    digest = hashlib.blake2b(f"{date}/{source}#{row_key}".encode(), digest_size=8).hexdigest()
    return f"p{digest}"


def discover(date_dir: Path) -> list[LandingRecord]:
    """Every input row under ``date_dir``, in stable order.

    Images that no manifest row or sidecar caption refers to become rows with reason
    ``orphan_image``, and unknown files ``unsupported_input``: nothing in the folder is
    silently ignored except hidden files and ``_``-prefixed markers such as ``_SUCCESS``.
    Every file is opened through ``confined_files``, so a symlink that leads outside the day
    folder, a FIFO, a socket or a device is a ledger row, never a read.
    """
    root = date_dir.resolve()
    entries = sorted(_walk(date_dir, root), key=lambda e: e.rel)
    names = {e.rel for e in entries}
    records: list[LandingRecord] = []
    referenced: set[str] = set()
    sidecar_texts: set[str] = set()
    sidecar_images: set[str] = set()
    for entry in entries:
        suffix = Path(entry.rel).suffix.lower()
        reader = _READERS.get(suffix)
        if entry.refusal is None and reader is not None:
            records.extend(_read_source(reader, root, entry.rel))
        elif suffix in IMAGE_SUFFIXES and _sidecar_of(entry.rel) in names:
            sidecar_texts.add(_sidecar_of(entry.rel))
            sidecar_texts.add(_relative_real(root, _sidecar_of(entry.rel)))
            sidecar_images.add(entry.rel)
            records.append(_sidecar_record(root, entry))
    # A refused file that a manifest row names is that row's ledger entry already.
    named = {os.path.normpath(r.image_uri) for r in records if r.image_uri}
    for record in records:
        if record.image is not None and record.image.kind == "file":
            referenced.add(os.path.realpath(record.image.path))
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
        elif suffix in IMAGE_SUFFIXES:
            if os.path.realpath(root / entry.rel) in referenced:
                continue
            error = ("orphan_image", "no manifest row or sidecar caption refers to this image")
        else:
            error = ("unsupported_input", f"not a manifest, shard or captioned image: {entry.rel}")
        records.append(_file_row(entry.rel, error))
    records.sort(key=lambda r: (r.source, r.row))
    return records


@dataclass(frozen=True)
class _Entry:
    """A name found in the day folder, and why it will not be read (``None``: it may be)."""

    rel: str
    refusal: tuple[str, str] | None = None


def _walk(date_dir: Path, root: Path) -> Iterator[_Entry]:
    """Every visible name below ``date_dir``; symlinked folders are listed, never entered."""
    problems: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(date_dir, onerror=problems.append):
        here = Path(dirpath)
        visible = sorted(d for d in dirnames if not d.startswith((".", "_")))
        dirnames[:] = [d for d in visible if not (here / d).is_symlink()]
        for name in visible:
            if (here / name).is_symlink():
                rel = (here / name).relative_to(date_dir).as_posix()
                yield _Entry(rel, _folder_link_refusal(root, rel))
        for name in filenames:
            if not name.startswith((".", "_")):
                rel = (here / name).relative_to(date_dir).as_posix()
                shown = _printable_name(rel)
                if shown != rel:
                    detail = f"the name {shown!r} is not valid UTF-8; rename the file"
                    yield _Entry(shown, ("invalid_path", detail))
                else:
                    yield _Entry(rel, _file_refusal(root, rel))
    for exc in problems:
        rel = _relative_or_name(date_dir, exc.filename)
        yield _Entry(rel, ("read_error", f"folder {rel} cannot be listed: {exc.strerror}"))


def _printable_name(rel: str) -> str:
    """``rel`` with undecodable bytes (surrogate escapes from the file system) replaced.

    Such a name cannot be stored in a Parquet string column, so the file becomes a ledger row
    under its replaced name instead of failing the partition's write.
    """
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return rel


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
        f"{rel} is a symlink to {real.relative_to(root).as_posix() or '.'}; symlinked folders "
        "are not followed (their files would be read twice)",
    )


def _relative_or_name(date_dir: Path, filename: str | None) -> str:
    if not filename:
        return "."
    try:
        return Path(filename).relative_to(date_dir).as_posix()
    except ValueError:
        return str(filename)


def _relative_real(root: Path, rel: str) -> str:
    """Where ``rel`` leads inside ``root`` (a caption reached through a link is used, too)."""
    real = os.path.realpath(root / rel)
    return os.path.relpath(real, root) if real.startswith(f"{root}/") else rel


def _sidecar_of(rel: str) -> str:
    return Path(rel).with_suffix(".txt").as_posix()


def _sidecar_record(root: Path, entry: _Entry) -> LandingRecord:
    """An image with a ``.txt`` caption beside it; either file may be refused."""
    record = LandingRecord(
        source=entry.rel, row=0, manifest_id=None, image_uri=entry.rel, image=None, text=None
    )
    if entry.refusal is not None:
        record.error = entry.refusal
        return record
    try:
        record.text = read_confined(root, root / _sidecar_of(entry.rel), MAX_TEXT_BYTES, cut=True)
    except FileRefused as refused:
        record.error = (refused.reason, f"caption file: {refused.detail}")
        return record
    record.text = record.text.decode("utf-8", errors="replace")  # type: ignore[union-attr]
    record.image = ImageRef(kind="file", path=os.path.realpath(root / entry.rel))
    return record


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
    reader: Callable[[Path, str, BinaryIO], Iterator[LandingRecord]], root: Path, rel: str
) -> list[LandingRecord]:
    """All rows of one manifest or shard; a failure part-way keeps the rows read before it.

    Whatever goes wrong inside one file (a refusal, a parser bug, a truncated stream) becomes
    one more ledger row naming the file and the place, never an exception out of discovery.
    """
    records: list[LandingRecord] = []
    try:
        with open_confined(root, root / rel) as fh:
            for record in reader(root, rel, fh):
                records.append(record)
    except FileRefused as refused:
        records.append(_file_row(rel, (refused.reason, refused.detail)))
    except Exception as exc:  # noqa: BLE001 - the rest of one file is one ledger row
        row = records[-1].row + 1 if records else 0
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
    return ImageRef(kind="file", path=str(real))


def _record_from_mapping(
    root: Path, rel: str, row: int, obj: dict[str, Any], locator: str
) -> LandingRecord:
    """One manifest row; any surprise in its values is this row's ledger reason."""
    try:
        return _mapping_record(root, rel, row, obj, locator)
    except Exception as exc:  # noqa: BLE001 - one odd value never fails the folder
        return _malformed(rel, row, f"unusable row: {type(exc).__name__}: {exc}", locator)


def _mapping_record(
    root: Path, rel: str, row: int, obj: dict[str, Any], locator: str
) -> LandingRecord:
    image = obj.get("image")
    manifest_id = obj.get("id")
    manifest_id = None if manifest_id in (None, "") else str(manifest_id)
    extra = {str(k): _jsonable(v) for k, v in obj.items() if k not in KNOWN_FIELDS}
    record = LandingRecord(
        source=rel,
        row=row,
        manifest_id=manifest_id,
        image_uri=None if image in (None, "") else str(image),
        image=None,
        text=obj.get("text"),
        url=_opt_str(obj.get("url")),
        license=_opt_str(obj.get("license")),
        extra=extra,
        locator=locator,
    )
    id_problem = _pair_id_problem(manifest_id)
    if id_problem is not None:
        record.manifest_id = None
        record.error = ("invalid_pair_id", id_problem)
        return record
    if record.image_uri is None:
        record.error = ("missing_image", "the row has no `image` field")
        return record
    resolved = _resolve_local(root, record.image_uri)
    if isinstance(resolved, ImageRef):
        record.image = resolved
    else:
        record.error = resolved
    return record


def _pair_id_problem(manifest_id: str | None) -> str | None:
    """Why a manifest's ``id`` cannot be a pair_id (printed, joined and indexed everywhere)."""
    if manifest_id is None:
        return None
    if len(manifest_id) > MAX_PAIR_ID_CHARS:
        return f"id is {len(manifest_id)} characters, over {MAX_PAIR_ID_CHARS}"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in manifest_id):
        return f"id contains control or format characters: {manifest_id!r}"
    return None


def _opt_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, RecursionError):
        return str(value)


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


def _bounded_lines(fh: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(index, line, length)`` for each line; ``line`` is ``None`` when over ``limit`` bytes.

    An over-long line is skipped in chunks, never held whole: a manifest that is one 10 GB
    line costs 64 KiB of memory.
    """
    index = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            length = len(line)
            while True:
                more = fh.readline(1 << 16)
                length += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield index, None, length
        else:
            if index == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            yield index, line, len(line)
        index += 1


def _too_long(rel: str, index: int, length: int) -> LandingRecord:
    return _malformed(
        rel,
        index,
        f"the line is {length} bytes, over {MAX_MANIFEST_LINE_BYTES}",
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


def _read_jsonl(root: Path, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    for row, raw, length in _bounded_lines(fh, MAX_MANIFEST_LINE_BYTES):
        if raw is None:
            yield _too_long(rel, row, length)
            continue
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        locator = f"line {row + 1}"
        obj, reason, detail = parse_json_object(line)
        if obj is None:
            yield _malformed(rel, row, detail, locator, reason=reason)
            continue
        yield _record_from_mapping(root, rel, row, obj, locator)


def _read_csv(root: Path, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    lines = _bounded_lines(fh, MAX_MANIFEST_LINE_BYTES)
    first = next(lines, None)
    if first is None:
        return
    if first[1] is None:
        yield _too_long(rel, 0, first[2])
        return
    try:
        header = next(csv.reader([first[1].decode("utf-8", errors="replace")]), [])
    except csv.Error as exc:
        yield _malformed(rel, 0, f"unreadable CSV header: {exc}", "line 1")
        return
    pending: deque[tuple[int, bytes | None, int]] = deque()

    def take() -> tuple[int, bytes | None, int] | None:
        return pending.popleft() if pending else next(lines, None)

    while (line := take()) is not None:
        start, raw, length = line
        if raw is None:
            yield _too_long(rel, start, length)
            continue
        chunk = raw.decode("utf-8", errors="replace")
        consumed = [line]
        # Extend over lines while a quoted field is still open (an odd number of quotes).
        while (
            chunk.count('"') % 2 == 1
            and len(consumed) <= MAX_CSV_RECORD_LINES
            and len(chunk) <= MAX_MANIFEST_LINE_BYTES
        ):
            more = take()
            if more is None:
                break
            consumed.append(more)
            if more[1] is None:
                break
            chunk += more[1].decode("utf-8", errors="replace")
        if not chunk.strip():
            continue
        problem = None
        values: list[str] = []
        if chunk.count('"') % 2 == 1:
            problem = "unbalanced quote"
        else:
            try:
                values = next(csv.reader(io.StringIO(chunk), strict=True))
            except csv.Error as exc:
                problem = str(exc)
            else:
                if len(values) != len(header):
                    problem = f"{len(values)} fields, header has {len(header)}"
        if problem is not None:
            yield _malformed(rel, start, problem, f"line {start + 1}")
            # A broken quote must not take the following lines down with it.
            pending.extendleft(reversed(consumed[1:]))
            continue
        yield _record_from_mapping(
            root, rel, start, dict(zip(header, values, strict=True)), f"line {start + 1}"
        )


def _read_parquet(root: Path, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    try:
        parquet = pq.ParquetFile(fh)
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest is one ledger row
        yield _malformed(rel, 0, f"unreadable Parquet manifest: {type(exc).__name__}: {exc}")
        return
    row = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for obj in batch.to_pylist():
            yield _record_from_mapping(root, rel, row, obj, f"row {row}")
            row += 1


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


def _read_tar(root: Path, rel: str, fh: BinaryIO) -> Iterator[LandingRecord]:
    """img2dataset / WebDataset shards: members ``<key>.<ext>`` grouped as WebDataset groups them.

    Every member is accounted for: it belongs to a kept sample (its image, caption, metadata, or
    another field listed in ``extra["shard_members"]``) or it is a ledger row of its own
    (duplicated name, no extension, a link, a second image, a truncated body). A shard that
    cannot be read to its end keeps the samples before the break and adds one row for the rest.
    """
    size = os.fstat(fh.fileno()).st_size
    path = str(confined_path(root, root / rel))
    members: list[tarfile.TarInfo] = []
    broken: str | None = None
    try:
        tar = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        yield _malformed(rel, 0, f"unreadable tar shard: {type(exc).__name__}: {exc}")
        return
    try:
        while (member := tar.next()) is not None:
            members.append(member)
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError) as exc:
        broken = f"{type(exc).__name__}: {exc}"
    end = tar.offset
    tar.close()
    if broken is None and end < size:
        fh.seek(end)
        if fh.read(2 * tarfile.BLOCKSIZE).strip(b"\0"):
            broken = "bytes after the last readable member are not a tar header"
    records = _shard_records(rel, fh, size, path, members)
    yield from records
    if broken is not None:
        yield _file_row(
            rel,
            ("truncated_shard", f"{rel} cannot be read from byte {end} of {size}: {broken}"),
            row=len(records),
            locator=f"byte {end}",
        )


def _shard_records(
    rel: str, fh: BinaryIO, size: int, path: str, members: list[tarfile.TarInfo]
) -> list[LandingRecord]:
    last_of: dict[str, int] = {}
    for i, m in enumerate(members):
        last_of[m.name] = i
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    refused: list[tuple[tarfile.TarInfo, str, str]] = []
    for i, m in enumerate(members):
        if m.isdir():
            continue  # structure, not data: img2dataset writes none
        if last_of[m.name] != i:
            refused.append(
                (m, "duplicate_shard_member", "a later member of the same name replaces it")
            )
        elif not m.isfile():
            refused.append(
                (m, "unsupported_shard_member", "links and special members are not followed")
            )
        elif not webdataset_key(m.name)[0]:
            refused.append(
                (m, "shard_member_without_extension", "no <key>.<extension> name to group it by")
            )
        else:
            key, ext = webdataset_key(m.name)
            groups.setdefault(key, {})[ext] = m
    records = []
    for row, key in enumerate(sorted(groups)):
        record, extra_images = _sample_record(rel, fh, size, path, row, key, groups[key])
        records.append(record)
        refused.extend(extra_images)
    for m, reason, detail in refused:
        records.append(
            _file_row(
                rel,
                (reason, f"member {m.name!r}: {detail}"),
                row=len(records),
                locator=f"member {m.name}",
            )
        )
    return records


def _sample_record(
    rel: str,
    fh: BinaryIO,
    size: int,
    path: str,
    row: int,
    key: str,
    parts: dict[str, tarfile.TarInfo],
) -> tuple[LandingRecord, list[tuple[tarfile.TarInfo, str, str]]]:
    locator = f"key {key}"
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
    if "txt" in parts:
        text: Any = (_member_bytes(fh, parts["txt"], MAX_TEXT_BYTES, cut=True) or b"").decode(
            "utf-8", "replace"
        )
    else:
        text = meta.get("caption")
    extra = {
        str(k): _jsonable(v) for k, v in meta.items() if k not in KNOWN_FIELDS | {"caption", "key"}
    }
    extra["shard_key"] = key
    used = {"txt", "json", *images}
    others = sorted(parts[e].name for e in parts if e not in used)
    if others:
        extra["shard_members"] = others
    record = LandingRecord(
        source=rel,
        row=row,
        manifest_id=_opt_str(meta.get("id")),
        image_uri=f"{rel}#{image.name}" if image else None,
        image=ImageRef(kind="tar", path=path, offset=image.offset_data, size=image.size)
        if image
        else None,
        text=text,
        url=_opt_str(meta.get("url")),
        license=_opt_str(meta.get("license")),
        extra=extra,
        locator=locator,
    )
    id_problem = _pair_id_problem(record.manifest_id)
    if id_problem is not None:
        record.manifest_id = None
        record.error = ("invalid_pair_id", id_problem)
    elif image is None:
        record.error = ("missing_image", f"shard key {key} has no image member")
    return record, extra_images


def _member_bytes(
    fh: BinaryIO, member: tarfile.TarInfo, limit: int, cut: bool = False
) -> bytes | None:
    """A member's body, at most ``limit`` bytes: cut there, or ``None`` if over and not ``cut``."""
    fh.seek(member.offset_data)
    data = fh.read(min(member.size, limit + 1))
    if len(data) > limit:
        return data[:limit] if cut else None
    return data


_READERS: dict[str, Callable[[Path, str, BinaryIO], Iterator[LandingRecord]]] = {
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".tar": _read_tar,
}
