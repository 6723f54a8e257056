"""Write token grids as WebDataset tar shards, byte-for-byte reproducible.

Each sample is three tar members that share a key::

    <key>.json        {"pair_id", "shape", "dtype", ...metadata}  (sorted keys, UTF-8)
    <key>.tokens.npy  np.save of the uint16 token grid
    <key>.txt         the caption, UTF-8

WebDataset groups members by the part of the file name before the first dot, so the key may
contain no dot (and no slash, which would make a directory). :func:`sample_key` maps a pair id
to a key reversibly: ASCII letters, digits, ``_`` and ``-`` stay, every other UTF-8 byte
becomes ``~`` plus two lowercase hex digits (``laion/000.jpg`` -> ``laion~2f000~2ejpg``).
Distinct pair ids give distinct keys, and the JSON keeps the pair id as it was.

Shards are POSIX (pax) tars written with the standard library, every header fixed (mtime 0,
uid/gid 0, mode 0644, no user names), so the same records give the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

TOKENS_DTYPE = np.dtype(np.uint16)
RESERVED_FIELDS = ("pair_id", "text", "tokens", "shape", "dtype")

_SAFE = re.compile(rb"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"~([0-9a-f]{2})")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ENCODING = "utf-8"
# Shards of a few hundred MiB and at most 10k samples: large enough that a loader streams
# rather than seeks, small enough to spread over workers and to rewrite one for a takedown.
DEFAULT_SHARD_MAX_BYTES = 256 * 1024**2
DEFAULT_SHARD_MAX_SAMPLES = 10_000


def sample_key(pair_id: str) -> str:
    """The tar-safe, reversible key for ``pair_id`` (see the module docstring)."""
    if not pair_id:
        raise ValueError("pair_id must be a non-empty string")
    return "".join(
        chr(byte) if _SAFE.fullmatch(bytes([byte])) else f"~{byte:02x}"
        for byte in pair_id.encode(_ENCODING)
    )


def pair_id_from_key(key: str) -> str:
    """The inverse of :func:`sample_key`."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(key):
        raw += key[position : match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += key[position:].encode("ascii")
    return raw.decode(_ENCODING)


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _archive_size(content_bytes: int) -> int:
    """Bytes on disk: members, two zero end blocks, padded to tarfile's record size."""
    return -(-(content_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes, int]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.PAX_FORMAT, _ENCODING, "surrogateescape")
    return info, data, len(header) + _padded(len(data))


def _sample_members(record: dict) -> tuple[str, list[tuple[tarfile.TarInfo, bytes, int]]]:
    pair_id = record.get("pair_id")
    if not isinstance(pair_id, str):
        raise ValueError(f"record has no string pair_id: keys {sorted(record)}")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"record {pair_id!r}: text must be a str, got {type(text).__name__}")
    tokens = record.get("tokens")
    if not isinstance(tokens, np.ndarray) or tokens.dtype != TOKENS_DTYPE or tokens.ndim != 2:
        described = (
            f"{tokens.dtype} array of shape {tokens.shape}"
            if isinstance(tokens, np.ndarray)
            else type(tokens).__name__
        )
        raise ValueError(f"record {pair_id!r}: tokens must be a 2-D uint16 array, got {described}")
    metadata = {k: v for k, v in record.items() if k not in ("pair_id", "text", "tokens")}
    clashes = sorted(set(metadata) & set(RESERVED_FIELDS))
    if clashes:
        raise ValueError(f"record {pair_id!r}: metadata fields {clashes} are reserved")
    document = {"pair_id": pair_id, "shape": list(tokens.shape), "dtype": str(tokens.dtype)}
    document.update(metadata)
    try:
        json_bytes = json.dumps(
            document, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode(_ENCODING)
    except TypeError as error:
        raise ValueError(
            f"record {pair_id!r}: metadata is not JSON-serialisable: {error}"
        ) from error
    npy = io.BytesIO()
    np.save(npy, np.ascontiguousarray(tokens), allow_pickle=False)
    key = sample_key(pair_id)
    members = [
        _member(f"{key}.json", json_bytes),
        _member(f"{key}.tokens.npy", npy.getvalue()),
        _member(f"{key}.txt", text.encode(_ENCODING)),
    ]
    return key, members  # already in sorted name order: json < tokens.npy < txt


class _ShardWriter:
    """One open shard, written under a temporary name and renamed into place on close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.temp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.tar = tarfile.TarFile(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.content_bytes = 0

    def add(self, members: list[tuple[tarfile.TarInfo, bytes, int]]) -> None:
        for info, data, size in members:
            self.tar.addfile(info, io.BytesIO(data))
            self.content_bytes += size
        self.samples += 1

    def close(self) -> Path:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def export_shards(
    records: Iterable[dict],
    out_dir: Path,
    *,
    shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
    shard_max_samples: int = DEFAULT_SHARD_MAX_SAMPLES,
    prefix: str = "tokens",
) -> list[Path]:
    """Write ``records`` to ``out_dir/<prefix>-000000.tar``, ... and return the shard paths.

    Each record has ``pair_id`` (str), ``text`` (str), ``tokens`` (2-D uint16 array) and any
    other JSON-serialisable fields, which go to the sample's JSON. A shard closes before a
    sample that would take it past ``shard_max_samples`` or ``shard_max_bytes`` (its size on
    disk); a single sample bigger than ``shard_max_bytes`` gets a shard of its own. Records are
    written in the order given. Shards from an earlier export with the same prefix and a higher
    index are removed, so the directory holds exactly this export.
    """
    if shard_max_samples < 1 or shard_max_bytes < 1:
        raise ValueError(
            f"shard limits must be positive, got {shard_max_samples} samples, "
            f"{shard_max_bytes} bytes"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ValueError(f"prefix {prefix!r} must be letters, digits, '_' or '-'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    writer: _ShardWriter | None = None
    try:
        for record in records:
            key, members = _sample_members(record)
            if key in seen:
                raise ValueError(
                    f"pair_id {record['pair_id']!r} appears twice; WebDataset would merge "
                    "the two samples, so deduplicate before exporting"
                )
            seen.add(key)
            sample_bytes = sum(size for _, _, size in members)
            if writer is not None and (
                writer.samples + 1 > shard_max_samples
                or _archive_size(writer.content_bytes + sample_bytes) > shard_max_bytes
            ):
                written.append(writer.close())
                writer = None
            if writer is None:
                writer = _ShardWriter(out_dir / f"{prefix}-{len(written):06d}.tar")
            writer.add(members)
        if writer is not None:
            written.append(writer.close())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    keep = set(written)
    for stale in out_dir.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale not in keep:
            stale.unlink()
    return written


def read_shards(paths: Sequence[Path]) -> Iterator[dict]:
    """Samples from shards written by :func:`export_shards`, as the records that went in.

    Each yields ``pair_id``, ``text``, ``tokens`` and the metadata fields, read with the
    standard library only (no ``webdataset`` needed).
    """
    for path in paths:
        with tarfile.open(path, mode="r") as tar:
            key: str | None = None
            parts: dict[str, bytes] = {}
            for info in tar:
                if not info.isfile():
                    continue
                name_key, _, suffix = info.name.partition(".")
                if key is not None and name_key != key:
                    yield _record_from_parts(path, key, parts)
                    parts = {}
                key = name_key
                extracted = tar.extractfile(info)
                assert extracted is not None  # isfile() above
                parts[suffix] = extracted.read()
            if key is not None:
                yield _record_from_parts(path, key, parts)


def _record_from_parts(path: Path, key: str, parts: dict[str, bytes]) -> dict:
    missing = sorted({"json", "tokens.npy", "txt"} - set(parts))
    if missing:
        raise ValueError(f"{path}: sample {key!r} lacks members {missing}")
    document = json.loads(parts["json"].decode(_ENCODING))
    tokens = np.load(io.BytesIO(parts["tokens.npy"]), allow_pickle=False)
    if list(tokens.shape) != document["shape"] or str(tokens.dtype) != document["dtype"]:
        raise ValueError(
            f"{path}: sample {key!r} tokens are {tokens.dtype} {tokens.shape}, "
            f"its JSON says {document['dtype']} {document['shape']}"
        )
    record = {"pair_id": document["pair_id"], "text": parts["txt"].decode(_ENCODING)}
    record["tokens"] = tokens
    record.update({k: v for k, v in document.items() if k not in ("pair_id", "shape", "dtype")})
    return record


def remove_samples(shard: Path, keys: set[str]) -> int:
    """Rewrite ``shard`` without the samples whose key is in ``keys``; return how many went.

    Headers are copied as they were, so the shard stays byte-identical to an export that never
    held those samples. The rewrite is atomic: a reader sees the old shard or the new one.
    """
    shard = Path(shard)
    with tarfile.open(shard, mode="r") as source:
        members = [(info, source.extractfile(info).read()) for info in source if info.isfile()]
    kept = [(info, data) for info, data in members if info.name.partition(".")[0] not in keys]
    removed = {info.name.partition(".")[0] for info, _ in members} - {
        info.name.partition(".")[0] for info, _ in kept
    }
    if not removed:
        return 0
    writer = _ShardWriter(shard)
    try:
        for info, data in kept:
            writer.tar.addfile(info, io.BytesIO(data))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return len(removed)
