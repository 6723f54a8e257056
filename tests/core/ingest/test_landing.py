import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.ingest.landing import derived_pair_id, discover
from tests.conftest import encode, photo


def _img(path: Path, name: str = "coffee") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(name).resize((64, 48))))
    return path


def _errors(records):
    return {(r.source, r.row): r.error[0] for r in records if r.error}


def test_jsonl_rows_paths_and_malformed_lines(tmp_path: Path):
    day = tmp_path / "2025-01-01"
    _img(day / "images" / "a.jpg")
    outside = _img(tmp_path / "secret.jpg")
    os.symlink(outside, day / "images" / "link.jpg")
    lines = [
        json.dumps(
            {
                "id": "a",
                "image": "images/a.jpg",
                "text": "cup",
                "license": "CC0-1.0",
                "source_site": "example.org",
            }
        ),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "b", "image": "../secret.jpg", "text": "x"}),
        json.dumps({"id": "c", "image": "/etc/hostname", "text": "x"}),
        json.dumps({"id": "d", "image": "images/link.jpg", "text": "x"}),
        json.dumps({"id": "e", "image": "images/missing.jpg", "text": "x"}),
        json.dumps({"id": "f", "text": "no image"}),
        json.dumps({"id": "g", "image": "s3://bucket/key.jpg", "text": "x"}),
        "",
    ]
    (day / "pairs.jsonl").write_text("\n".join(lines))
    records = discover(day)
    assert len(records) == 9
    assert _errors(records) == {
        ("pairs.jsonl", 1): "malformed_manifest_line",
        ("pairs.jsonl", 2): "malformed_manifest_line",
        ("pairs.jsonl", 3): "path_outside_landing",
        ("pairs.jsonl", 4): "path_outside_landing",
        ("pairs.jsonl", 5): "path_outside_landing",
        ("pairs.jsonl", 6): "missing_file",
        ("pairs.jsonl", 7): "missing_image",
        ("pairs.jsonl", 8): "unsupported_uri",
    }
    first = records[0]
    assert (first.manifest_id, first.text, first.license) == ("a", "cup", "CC0-1.0")
    assert first.extra == {"source_site": "example.org"}
    assert first.image.kind == "file" and first.image.path == str((day / "images/a.jpg").resolve())


def test_csv_broken_quote_does_not_swallow_following_rows(tmp_path: Path):
    day = tmp_path / "d"
    _img(day / "a.jpg")
    (day / "pairs.csv").write_text(
        "id,image,text\n"
        "1,a.jpg,plain\n"
        '2,"a.jpg,broken quote\n'
        '3,a.jpg,"a caption\nover two lines"\n'
        "4,a.jpg\n"
        "5,a.jpg,last\n"
    )
    records = discover(day)
    by_row = {r.row: r for r in records}
    assert _errors(records) == {
        ("pairs.csv", 2): "malformed_manifest_line",
        ("pairs.csv", 5): "malformed_manifest_line",
    }
    assert by_row[3].text == "a caption\nover two lines"
    assert [r.manifest_id for r in records if not r.error] == ["1", "3", "5"]


def test_parquet_manifest(tmp_path: Path):
    day = tmp_path / "d"
    _img(day / "img" / "x.png")
    table = pa.table(
        {"image": ["img/x.png"], "text": ["a cup"], "url": ["https://e.org/x"], "score": [0.5]}
    )
    pq.write_table(table, day / "m.parquet")
    (record,) = discover(day)
    assert (record.manifest_id, record.url, record.extra) == (
        None,
        "https://e.org/x",
        {"score": 0.5},
    )
    assert record.error is None


def test_webdataset_shard(tmp_path: Path):
    day = tmp_path / "d"
    day.mkdir()
    members = {
        "000000001.jpg": encode(photo("rocket").resize((32, 32))),
        "000000001.txt": b"a rocket on the pad",
        "000000001.json": json.dumps(
            {"key": "000000001", "url": "https://e.org/r.jpg", "license": "CC-BY-4.0", "width": 32}
        ).encode(),
        "000000002.txt": b"caption without an image",
    }
    with tarfile.open(day / "shard-00000.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            import io

            tar.addfile(info, io.BytesIO(data))
    first, second = discover(day)
    assert first.text == "a rocket on the pad" and first.url == "https://e.org/r.jpg"
    assert first.extra == {"shard_key": "000000001", "width": 32}
    assert first.image.kind == "tar" and first.image.size == len(members["000000001.jpg"])
    with open(first.image.path, "rb") as fh:
        fh.seek(first.image.offset)
        assert fh.read(first.image.size) == members["000000001.jpg"]
    assert second.error[0] == "missing_image"


def test_sidecar_folder_orphans_and_unknown_files(tmp_path: Path):
    day = tmp_path / "d"
    _img(day / "captioned" / "cup.jpg")
    (day / "captioned" / "cup.txt").write_text("a cup of coffee")
    _img(day / "captioned" / "lonely.jpg")
    (day / "notes.md").write_text("hello")
    (day / "_SUCCESS").write_text("")
    (day / ".DS_Store").write_text("")
    records = discover(day)
    assert [(r.source, r.error[0] if r.error else None) for r in records] == [
        ("captioned/cup.jpg", None),
        ("captioned/lonely.jpg", "orphan_image"),
        ("notes.md", "unsupported_input"),
    ]
    assert records[0].text == "a cup of coffee"


def test_derived_pair_id_is_stable_and_distinct():
    a = derived_pair_id("2025-01-01", "pairs.jsonl", "3")
    assert a == derived_pair_id("2025-01-01", "pairs.jsonl", "3")
    assert a != derived_pair_id("2025-01-02", "pairs.jsonl", "3")
    assert a.startswith("p") and len(a) == 17
