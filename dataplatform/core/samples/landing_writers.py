"""Writers of each landing format: JSONL, CSV and Parquet manifests, a WebDataset shard, and a
folder of captioned images.

Each writer lays rows into one date folder the way a producer of that format does, and returns
where each row went (its file and key), in row order, so that a caller can record what it
wrote. A row that is broken on purpose (a raw manifest line, a symlink, an empty or cut-off
payload) is written as given: the writers never repair their input.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_COLUMNS: tuple[str, ...] = ("id", "image", "text", "url", "license", "source_site")
JSONL_MANIFEST = "pairs.jsonl"
CSV_MANIFEST = "pairs.csv"
PARQUET_MANIFEST = "pairs.parquet"
WEBDATASET_SHARD = "shard-00000.tar"
CAPTIONED_FOLDER = "captioned"
# A fixed tar member time, so that two builds give byte-identical shards.
_TAR_MTIME = 1704067200

# Where a writer put one row: its file relative to the date folder, and its key there.
Placed = tuple[str, str]


@dataclass(kw_only=True)
class LandingRow:
    """One row as the landing formats store it.

    ``key`` is the manifest id (None for shard and folder rows: the writer numbers them),
    ``image`` the manifest's path to the image file. A row with ``raw_line`` is written as that
    line, unparsed, and a manifest line that cannot be parsed is keyed "line-<n>", its 1-based
    physical line number (the CSV header is line 1).
    """

    key: str | None
    text: str | None
    url: str | None
    license: str | None
    image: str | None
    source_site: str | None = None
    payload: bytes | None = None
    ext: str = "jpg"
    raw_line: str | None = None
    symlink_to: str | None = None
    width: int | None = None
    height: int | None = None


def _record(row: LandingRow, with_image: bool = True) -> dict[str, object]:
    record: dict[str, object] = {"id": row.key}
    if with_image:
        record["image"] = row.image
    record.update(text=row.text, url=row.url, license=row.license, source_site=row.source_site)
    return record


def _write_file(date_dir: Path, relative: str, row: LandingRow) -> None:
    path = date_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if row.symlink_to is not None:
        path.symlink_to(row.symlink_to)
    elif row.payload is not None:
        path.write_bytes(row.payload)


def _write_manifest_images(date_dir: Path, rows: Sequence[LandingRow]) -> None:
    for row in rows:
        if row.image is not None and (row.payload is not None or row.symlink_to):
            _write_file(date_dir, row.image, row)


def write_jsonl_manifest(date_dir: Path, rows: Sequence[LandingRow]) -> list[Placed]:
    """``pairs.jsonl``, one JSON object a line, and the image files it names."""
    _write_manifest_images(date_dir, rows)
    lines, placed = [], []
    for line_number, row in enumerate(rows, start=1):
        if row.raw_line is not None:
            lines.append(row.raw_line)
            placed.append((JSONL_MANIFEST, f"line-{line_number}"))
            continue
        lines.append(json.dumps(_record(row, with_image=row.image is not None), ensure_ascii=False))
        placed.append((JSONL_MANIFEST, str(row.key)))
    (date_dir / JSONL_MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return placed


def write_csv_manifest(date_dir: Path, rows: Sequence[LandingRow]) -> list[Placed]:
    """``pairs.csv`` with a header of MANIFEST_COLUMNS, and the image files it names."""
    _write_manifest_images(date_dir, rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    placed = []
    for line_number, row in enumerate(rows, start=2):
        if row.raw_line is not None:
            buffer.write(row.raw_line + "\n")
            placed.append((CSV_MANIFEST, f"line-{line_number}"))
            continue
        writer.writerow(["" if value is None else value for value in _record(row).values()])
        placed.append((CSV_MANIFEST, str(row.key)))
    (date_dir / CSV_MANIFEST).write_text(buffer.getvalue(), encoding="utf-8")
    return placed


def write_parquet_manifest(date_dir: Path, rows: Sequence[LandingRow]) -> list[Placed]:
    """``pairs.parquet``, every column a string, and the image files it names."""
    _write_manifest_images(date_dir, rows)
    schema = pa.schema([(name, pa.string()) for name in MANIFEST_COLUMNS])
    table = pa.Table.from_pylist([_record(row) for row in rows], schema=schema)
    pq.write_table(table, date_dir / PARQUET_MANIFEST)
    return [(PARQUET_MANIFEST, str(row.key)) for row in rows]


def write_captioned_folder(date_dir: Path, rows: Sequence[LandingRow]) -> list[Placed]:
    """``captioned/img_<n>.<ext>`` with its caption beside it in ``img_<n>.txt``."""
    placed = []
    for number, row in enumerate(rows, start=1):
        stem = f"img_{number:04d}"
        relative = f"{CAPTIONED_FOLDER}/{stem}.{row.ext}"
        _write_file(date_dir, relative, row)
        (date_dir / CAPTIONED_FOLDER / f"{stem}.txt").write_text(str(row.text), encoding="utf-8")
        placed.append((relative, stem))
    return placed


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
    return info, io.BytesIO(data)


def write_webdataset_shard(date_dir: Path, rows: Sequence[LandingRow]) -> list[Placed]:
    """An img2dataset shard: per sample `<key>.jpg`, `<key>.txt`, `<key>.json`."""
    placed = []
    with tarfile.open(date_dir / WEBDATASET_SHARD, "w", format=tarfile.USTAR_FORMAT) as shard:
        for index, row in enumerate(rows):
            key = f"{0:05d}{index:04d}"
            meta = {
                "key": key,
                "url": row.url,
                "caption": row.text,
                "license": row.license,
                "width": row.width,
                "height": row.height,
            }
            for suffix, data in (
                ("jpg", row.payload or b""),
                ("txt", str(row.text).encode("utf-8")),
                ("json", json.dumps(meta, ensure_ascii=False).encode("utf-8")),
            ):
                shard.addfile(*_tar_member(f"{key}.{suffix}", data))
            placed.append((WEBDATASET_SHARD, key))
    return placed
