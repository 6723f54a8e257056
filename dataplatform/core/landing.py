"""Discovery of what arrived in one landing folder: manifests, WebDataset shards, captioned images.

The output is a flat list of ``LandingRecord``s, one per input row, in a stable order (source
path, then row). A row that cannot be read carries its ledger reason instead of failing the
folder, so rows in always equals rows kept plus rows rejected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
MANIFEST_SUFFIXES = {".jsonl", ".csv", ".parquet"}
SHARD_SUFFIXES = {".tar"}
# Fields with a meaning of their own; every other manifest field is kept in `extra`.
KNOWN_FIELDS = {"id", "image", "text", "url", "license"}
# A quoted CSV field may span lines; one whose quote never closes within this many lines is a
# broken row, not the start of a caption that swallows the rest of the file.
MAX_CSV_RECORD_LINES = 50


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
    """
    root = date_dir.resolve()
    files = sorted(_walk(date_dir), key=lambda p: p.relative_to(date_dir).as_posix())
    records: list[LandingRecord] = []
    referenced: set[str] = set()
    sidecar_images: list[Path] = []
    for path in files:
        rel = path.relative_to(date_dir).as_posix()
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records.extend(_read_jsonl(date_dir, root, path, rel))
        elif suffix == ".csv":
            records.extend(_read_csv(date_dir, root, path, rel))
        elif suffix == ".parquet":
            records.extend(_read_parquet(date_dir, root, path, rel))
        elif suffix in SHARD_SUFFIXES:
            records.extend(_read_tar(path, rel))
        elif suffix in IMAGE_SUFFIXES and path.with_suffix(".txt").is_file():
            sidecar_images.append(path)
    for record in records:
        if record.image is not None and record.image.kind == "file":
            referenced.add(os.path.realpath(record.image.path))
    sidecar_texts = set()
    for path in sidecar_images:
        rel = path.relative_to(date_dir).as_posix()
        txt = path.with_suffix(".txt")
        sidecar_texts.add(txt)
        referenced.add(os.path.realpath(path))
        ref = _resolve_local(root, date_dir, rel)
        records.append(
            LandingRecord(
                source=rel,
                row=0,
                manifest_id=None,
                image_uri=rel,
                image=ref if isinstance(ref, ImageRef) else None,
                text=txt.read_text(encoding="utf-8", errors="replace"),
                error=None if isinstance(ref, ImageRef) else ref,
            )
        )
    for path in files:
        rel = path.relative_to(date_dir).as_posix()
        suffix = path.suffix.lower()
        if suffix in MANIFEST_SUFFIXES | SHARD_SUFFIXES or path in sidecar_texts:
            continue
        if suffix in IMAGE_SUFFIXES:
            if os.path.realpath(path) in referenced or path.is_symlink():
                continue
            error = ("orphan_image", "no manifest row or sidecar caption refers to this image")
        else:
            error = ("unsupported_input", f"not a manifest, shard or captioned image: {rel}")
        records.append(
            LandingRecord(
                source=rel,
                row=0,
                manifest_id=None,
                image_uri=rel,
                image=None,
                text=None,
                error=error,
            )
        )
    records.sort(key=lambda r: (r.source, r.row))
    return records


def _walk(date_dir: Path):
    for dirpath, dirnames, filenames in os.walk(date_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for name in filenames:
            if not name.startswith((".", "_")):
                yield Path(dirpath) / name


def _resolve_local(root: Path, date_dir: Path, ref: str) -> ImageRef | tuple[str, str]:
    """A manifest's image reference as an ``ImageRef``, or the ledger reason it is refused."""
    parsed = urllib.parse.urlparse(ref)
    if parsed.scheme in ("http", "https"):
        return ImageRef(kind="remote", uri=ref)
    if parsed.scheme == "file":
        candidate = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        return ("unsupported_uri", f"scheme {parsed.scheme!r} is not readable here: {ref}")
    else:
        if os.path.isabs(ref):
            return (
                "path_outside_landing",
                f"absolute path {ref!r} is not inside the landing folder",
            )
        candidate = date_dir / ref
    real = Path(os.path.realpath(candidate))
    if real != root and root not in real.parents:
        return ("path_outside_landing", f"{ref!r} resolves to {real}, outside {root}")
    if not real.is_file():
        return ("missing_file", f"{ref!r} does not exist in the landing folder")
    return ImageRef(kind="file", path=str(real))


def _record_from_mapping(
    date_dir: Path, root: Path, rel: str, row: int, obj: dict[str, Any], locator: str
) -> LandingRecord:
    image = obj.get("image")
    manifest_id = obj.get("id")
    manifest_id = None if manifest_id in (None, "") else str(manifest_id)
    extra = {k: _jsonable(v) for k, v in obj.items() if k not in KNOWN_FIELDS}
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
    if record.image_uri is None:
        record.error = ("missing_image", "the row has no `image` field")
        return record
    resolved = _resolve_local(root, date_dir, record.image_uri)
    if isinstance(resolved, ImageRef):
        record.image = resolved
    else:
        record.error = resolved
    return record


def _opt_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _malformed(rel: str, row: int, detail: str, locator: str = "") -> LandingRecord:
    return LandingRecord(
        source=rel,
        row=row,
        manifest_id=None,
        image_uri=None,
        image=None,
        text=None,
        error=("malformed_manifest_line", f"{locator}: {detail}" if locator else detail),
        locator=locator,
    )


def _read_jsonl(date_dir: Path, root: Path, path: Path, rel: str) -> list[LandingRecord]:
    records = []
    with path.open("rb") as fh:
        for row, raw in enumerate(fh):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                records.append(_malformed(rel, row, f"invalid JSON ({exc.msg})", f"line {row + 1}"))
                continue
            if not isinstance(obj, dict):
                records.append(_malformed(rel, row, "not a JSON object", f"line {row + 1}"))
                continue
            records.append(_record_from_mapping(date_dir, root, rel, row, obj, f"line {row + 1}"))
    return records


def _read_csv(date_dir: Path, root: Path, path: Path, rel: str) -> list[LandingRecord]:
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines(keepends=True)
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    records = []
    i = 1
    while i < len(lines):
        start = i
        chunk = lines[i]
        # Extend over lines while a quoted field is still open (an odd number of quotes).
        while chunk.count('"') % 2 == 1 and i + 1 < len(lines) and i - start < MAX_CSV_RECORD_LINES:
            i += 1
            chunk += lines[i]
        i += 1
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
            records.append(_malformed(rel, start, problem, f"line {start + 1}"))
            # A broken quote must not take the following lines down with it.
            i = start + 1
            continue
        records.append(
            _record_from_mapping(
                date_dir,
                root,
                rel,
                start,
                dict(zip(header, values, strict=True)),
                f"line {start + 1}",
            )
        )
    return records


def _read_parquet(date_dir: Path, root: Path, path: Path, rel: str) -> list[LandingRecord]:
    try:
        rows = pq.read_table(path, partitioning=None).to_pylist()
    except Exception as exc:  # noqa: BLE001 - an unreadable manifest is one ledger row
        return [_malformed(rel, 0, f"unreadable Parquet manifest: {type(exc).__name__}: {exc}")]
    return [
        _record_from_mapping(date_dir, root, rel, i, row, f"row {i}") for i, row in enumerate(rows)
    ]


def _read_tar(path: Path, rel: str) -> list[LandingRecord]:
    """img2dataset shards: members ``<key>.<image ext>``, ``<key>.txt``, ``<key>.json``."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in members:
                name = m.name
                stem, dot, ext = name.rpartition(".")
                if not dot:
                    continue
                groups.setdefault(stem, {})[ext.lower()] = m
            records = []
            for row, key in enumerate(sorted(groups)):
                parts = groups[key]
                meta: dict[str, Any] = {}
                if "json" in parts:
                    try:
                        meta = json.loads(_member_bytes(tar, parts["json"]).decode("utf-8"))
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        records.append(_malformed(rel, row, f"{key}.json: {exc}", f"key {key}"))
                        continue
                image_member = next(
                    (parts[e] for e in sorted(parts) if f".{e}" in IMAGE_SUFFIXES), None
                )
                text = (
                    _member_bytes(tar, parts["txt"]).decode("utf-8", "replace")
                    if "txt" in parts
                    else meta.get("caption")
                )
                extra = {
                    k: _jsonable(v)
                    for k, v in meta.items()
                    if k not in KNOWN_FIELDS | {"caption", "key"}
                }
                extra["shard_key"] = key
                record = LandingRecord(
                    source=rel,
                    row=row,
                    manifest_id=_opt_str(meta.get("id")),
                    image_uri=f"{rel}#{image_member.name}" if image_member else None,
                    image=ImageRef(
                        kind="tar",
                        path=str(path.resolve()),
                        offset=image_member.offset_data,
                        size=image_member.size,
                    )
                    if image_member
                    else None,
                    text=text,
                    url=_opt_str(meta.get("url")),
                    license=_opt_str(meta.get("license")),
                    extra=extra,
                    locator=f"key {key}",
                )
                if image_member is None:
                    record.error = ("missing_image", f"shard key {key} has no image member")
                records.append(record)
            return records
    except (tarfile.TarError, OSError) as exc:
        return [_malformed(rel, 0, f"unreadable tar shard: {type(exc).__name__}: {exc}")]


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    return fh.read() if fh is not None else b""
