"""Each landing format's writer: the exact files, and where each row went."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from dataplatform.core.samples.landing_writers import (
    CSV_MANIFEST,
    JSONL_MANIFEST,
    MANIFEST_COLUMNS,
    PARQUET_MANIFEST,
    WEBDATASET_SHARD,
    LandingRow,
    write_captioned_folder,
    write_csv_manifest,
    write_jsonl_manifest,
    write_parquet_manifest,
    write_webdataset_shard,
)


def _row(key: str | None, **fields) -> LandingRow:
    values = {
        "key": key,
        "text": f"caption {key}",
        "url": f"https://example.org/{key}.jpg",
        "license": "CC0-1.0",
        "image": f"images/{key}.jpg" if key else None,
        "source_site": "photos.example.com",
        "payload": b"jpeg bytes " + str(key).encode(),
    }
    return LandingRow(**{**values, **fields})


def test_jsonl_writes_records_and_images_and_keys_a_raw_line_by_its_number(tmp_path: Path):
    rows = [_row("a"), _row(None, raw_line="{not json", payload=None), _row("b", image=None)]
    placed = write_jsonl_manifest(tmp_path, rows)
    assert placed == [(JSONL_MANIFEST, "a"), (JSONL_MANIFEST, "line-2"), (JSONL_MANIFEST, "b")]
    lines = (tmp_path / JSONL_MANIFEST).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {
        "id": "a",
        "image": "images/a.jpg",
        "text": "caption a",
        "url": "https://example.org/a.jpg",
        "license": "CC0-1.0",
        "source_site": "photos.example.com",
    }
    assert lines[1] == "{not json"
    assert "image" not in json.loads(lines[2])
    assert (tmp_path / "images" / "a.jpg").read_bytes() == b"jpeg bytes a"
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.jpg"]


def test_csv_counts_the_header_as_line_one(tmp_path: Path):
    rows = [_row("a", license=None), _row(None, raw_line='x,"open quote', payload=None)]
    placed = write_csv_manifest(tmp_path, rows)
    assert placed == [(CSV_MANIFEST, "a"), (CSV_MANIFEST, "line-3")]
    text = (tmp_path / CSV_MANIFEST).read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert text.splitlines()[2] == 'x,"open quote'
    first = next(csv.DictReader(text.splitlines()[:2]))
    assert first["id"] == "a" and first["license"] == ""


def test_parquet_has_every_manifest_column_as_text(tmp_path: Path):
    placed = write_parquet_manifest(tmp_path, [_row("a"), _row("b", url=None)])
    assert placed == [(PARQUET_MANIFEST, "a"), (PARQUET_MANIFEST, "b")]
    table = pq.read_table(tmp_path / PARQUET_MANIFEST)
    assert table.column_names == list(MANIFEST_COLUMNS)
    assert {str(t) for t in table.schema.types} == {"string"}
    assert table.column("url").to_pylist() == ["https://example.org/a.jpg", None]


def test_captioned_folder_numbers_images_with_their_caption_beside(tmp_path: Path):
    placed = write_captioned_folder(tmp_path, [_row(None, ext="png"), _row(None, text="two")])
    assert placed == [
        ("captioned/img_0001.png", "img_0001"),
        ("captioned/img_0002.jpg", "img_0002"),
    ]
    assert (tmp_path / "captioned" / "img_0002.txt").read_text(encoding="utf-8") == "two"
    assert (tmp_path / "captioned" / "img_0001.png").read_bytes() == b"jpeg bytes None"


def test_webdataset_shard_is_byte_identical_between_builds(tmp_path: Path):
    rows = [_row(None, width=4, height=3), _row(None, payload=None, text="")]
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    placed = write_webdataset_shard(tmp_path / "one", rows)
    assert write_webdataset_shard(tmp_path / "two", rows) == placed
    assert placed == [(WEBDATASET_SHARD, "000000000"), (WEBDATASET_SHARD, "000000001")]
    one, two = (tmp_path / d / WEBDATASET_SHARD for d in ("one", "two"))
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as shard:
        assert shard.getnames() == [
            f"00000000{k}.{suffix}" for k in (0, 1) for suffix in ("jpg", "txt", "json")
        ]
        meta = json.loads(shard.extractfile("000000000.json").read())
        assert (meta["width"], meta["height"], meta["key"]) == (4, 3, "000000000")
        assert shard.extractfile("000000001.jpg").read() == b""
