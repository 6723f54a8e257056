"""A landing day that is an img2dataset output folder: every URL of its shards accounted for.

The fixture is written in img2dataset's own layout (``writer.WebDatasetSampleWriter``,
``downloader.Downloader``, ``logger.write_stats``): per shard ``N`` a tar of the samples it
fetched, in the order the downloads finished, a Parquet status table with one row per URL of
the shard, successes and failures alike, and ``N_stats.json`` with the counts.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataplatform.core.ingest.ingest_folder import IngestOptions, ingest_folder
from dataplatform.core.ingest.landing import MAX_STATUS_DETAIL_CHARS, LandingRecord, discover
from dataplatform.core.ingest.object_landing import discover_objects
from dataplatform.core.ingest.remote_fetch import FAILED, HTTP_ERROR, OPTED_OUT, TIMEOUT
from tests.conftest import encode, photo
from tests.core.ingest.test_object_landing import landing_url, upload  # noqa: F401 - fixture
from tests.core.store.test_object_store import s3_endpoint  # noqa: F401 - the moto fixture

DATE = "2025-03-01"
# img2dataset's defaults: 10 000 samples per shard, shard ids of 5 digits, so keys of 9.
OOM_SHARD_COUNT = 5
OOM_SAMPLE_PER_SHARD = 4
SUCCESS, NOT_FETCHED, NOT_RESIZED = "success", "failed_to_download", "failed_to_resize"


def _jpeg(name: str, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(photo(name).resize(size))


# An extra, non-image field of a sample (a saved embedding), named with two dots.
CLIP_EMBEDDING = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'shape': (4,)}" + bytes(16)
# The shard's one row that is about a tar member, not a URL (see the multi-dot test below).
EXTRA_MASK = ("00001.tar", "member 000010000.seg.png", "extra_image_member")


def _mask_png() -> bytes:
    """A segmentation mask, saved as an extra ``<key>.seg.png`` member of its sample."""
    mask = Image.new("L", (64, 48))
    mask.paste(255, (16, 12, 48, 36))
    return encode(mask, "PNG")


def _key(shard_id: int, index: int) -> str:
    true_key = 10**OOM_SAMPLE_PER_SHARD * shard_id + index
    return f"{true_key:0{OOM_SAMPLE_PER_SHARD + OOM_SHARD_COUNT}d}"


def write_shard(folder: Path, shard_id: int, rows: list[dict]) -> None:
    """Shard ``shard_id`` as img2dataset writes it; ``rows`` in the order downloads finished.

    A row has the input columns (``id``, ``caption``, ``url``), its ``status`` and
    ``error_message``, the ``image`` bytes of a success, and optionally ``members``: further
    ``ext -> bytes`` of the sample, or ``lost=True`` for a success whose sample is not in the tar.
    """
    shard = f"{shard_id:0{OOM_SHARD_COUNT}d}"
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("caption", pa.string()),
            ("url", pa.string()),
            ("key", pa.string()),
            ("status", pa.string()),
            ("error_message", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("original_width", pa.int32()),
            ("original_height", pa.int32()),
            ("exif", pa.string()),
            ("sha256", pa.string()),
        ]
    )
    table: list[dict] = []
    counts = {SUCCESS: 0, NOT_FETCHED: 0, NOT_RESIZED: 0}
    status_dict: dict[str, int] = {}
    with tarfile.open(folder / f"{shard}.tar", "w") as tar:
        for row in rows:
            ok = row["status"] == SUCCESS
            meta = {
                "id": row["id"],
                "caption": row["caption"],
                "url": row["url"],
                "key": row["key"],
                "status": row["status"],
                "error_message": row.get("error_message"),
                "width": 64 if ok else None,
                "height": 48 if ok else None,
                "original_width": 640 if ok else None,
                "original_height": 480 if ok else None,
                "exif": "{}" if ok else None,
                "sha256": "0" * 64 if ok else None,
            }
            table.append(meta)
            counts[row["status"]] += 1
            label = row.get("error_message") or SUCCESS
            status_dict[label] = status_dict.get(label, 0) + 1
            if not ok or row.get("lost"):
                continue
            sample = {
                "jpg": row["image"],
                "txt": row["caption"].encode(),
                "json": json.dumps(meta, indent=4).encode(),
                **row.get("members", {}),
            }
            for ext in sorted(sample):  # webdataset's TarWriter writes a sample's fields sorted
                info = tarfile.TarInfo(f"{row['key']}.{ext}")
                info.size, info.mode, info.uname = len(sample[ext]), 0o444, "bigdata"
                tar.addfile(info, io.BytesIO(sample[ext]))
    pq.write_table(pa.Table.from_pylist(table, schema=schema), folder / f"{shard}.parquet")
    stats = {
        "count": len(rows),
        "successes": counts[SUCCESS],
        "failed_to_download": counts[NOT_FETCHED],
        "failed_to_resize": counts[NOT_RESIZED],
        "duration": 1.5,
        "start_time": 1700000000.0,
        "end_time": 1700000001.5,
        "status_dict": status_dict,
    }
    (folder / f"{shard}_stats.json").write_text(json.dumps(stats, indent=4))


def _row(shard_id: int, index: int, status: str, error: str | None = None, **more) -> dict:
    return {
        "id": f"photo-{shard_id}-{index}",
        "caption": f"photo {index} of shard {shard_id}",
        "url": f"https://images.example.org/{shard_id}/{index}.jpg",
        "key": _key(shard_id, index),
        "status": status,
        "error_message": error,
        **more,
    }


# What each URL of the fixture must become: a kept pair (None) or its exact ledger reason.
OUTCOMES = {
    (0, 0): None,
    (0, 1): None,
    (0, 2): HTTP_ERROR,
    (1, 0): None,
    (1, 1): HTTP_ERROR,
    (1, 2): None,
    (1, 3): OPTED_OUT,
    (1, 4): TIMEOUT,
    (1, 5): "decode_error",
    (1, 6): "missing_image",
    (1, 7): FAILED,
}


def _url(shard_id: int, index: int) -> str:
    return f"https://images.example.org/{shard_id}/{index}.jpg"


@pytest.fixture
def i2d_day(tmp_path: Path) -> Path:
    day = tmp_path / "landing" / DATE
    day.mkdir(parents=True)
    write_shard(
        day,
        0,
        [
            _row(0, 1, SUCCESS, image=_jpeg("chelsea")),
            _row(0, 2, NOT_FETCHED, "HTTP Error 404: Not Found"),
            _row(0, 0, SUCCESS, image=_jpeg("rocket")),
        ],
    )
    write_shard(
        day,
        1,
        [
            _row(1, 3, NOT_FETCHED, "Use of image disallowed by X-Robots-Tag directive"),
            _row(1, 2, SUCCESS, image=_jpeg("coffee"), members={"clip.npy": CLIP_EMBEDDING}),
            _row(1, 1, NOT_FETCHED, "HTTP Error 404: Not Found"),
            _row(1, 0, SUCCESS, image=_jpeg("astronaut"), members={"seg.png": _mask_png()}),
            _row(1, 4, NOT_FETCHED, "<urlopen error timed out>"),
            _row(1, 5, NOT_RESIZED, "image too small"),
            _row(1, 6, SUCCESS, image=_jpeg("camera"), lost=True),
            _row(1, 7, NOT_FETCHED, "<urlopen error [Errno -2] Name or service not known>"),
        ],
    )
    return day


def _status_rows(day: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in day.glob("*.parquet"))


def _outcomes(records: list[LandingRecord]) -> dict[str, str | None]:
    """Every record of a URL by its URL: ``None`` for a usable sample, else its ledger reason."""
    by_url: dict[str, str | None] = {}
    for r in _of_urls(records):
        assert r.url not in by_url, f"{r.url} is accounted for twice"
        by_url[r.url] = r.error[0] if r.error else None
    return by_url


def _of_urls(records: list[LandingRecord]) -> list[LandingRecord]:
    """The records of URLs: all but the extra mask member, which is checked to be the only other."""
    others = [(r.source, r.locator, r.error and r.error[0]) for r in records if r.url is None]
    assert others == [EXTRA_MASK]
    return [r for r in records if r.url is not None]


def test_status_table_rows_are_the_shard_samples_and_the_ledger_of_the_rest(i2d_day: Path):
    records = discover(i2d_day)
    assert _outcomes(records) == {_url(*k): v for k, v in OUTCOMES.items()}
    # The tars give the four samples; each status table gives only the URLs its tar lacks.
    samples = [r for r in _of_urls(records) if r.source.endswith(".tar")]
    assert [(r.source, r.locator) for r in samples] == [
        ("00000.tar", "key 000000000"),
        ("00000.tar", "key 000000001"),
        ("00001.tar", "key 000010000"),
        ("00001.tar", "key 000010002"),
    ]
    assert all(r.error is None and r.image is not None for r in samples)
    assert [r.manifest_id for r in samples] == ["photo-0-0", "photo-0-1", "photo-1-0", "photo-1-2"]
    # Conservation: every status-table row is a sample of its tar or one ledger row.
    urls = _of_urls(records)
    kept = [r for r in urls if r.error is None]
    ledger = [r for r in urls if r.error is not None]
    assert _status_rows(i2d_day) == len(kept) + len(ledger) == 11
    assert (len(kept), len(ledger)) == (4, 7)
    # Nothing is read as a manifest row, and the stats files give no row at all.
    assert {r.source for r in records} == {
        "00000.tar",
        "00000.parquet",
        "00001.tar",
        "00001.parquet",
    }
    assert not any(r.error and r.error[0] == "unsupported_input" for r in records)
    assert not any(r.source.endswith(".parquet") and r.error is None for r in records)


def test_multi_dot_members_group_by_the_first_dot_beside_the_status_table(i2d_day: Path):
    """``000010002.clip.npy`` is a field of sample 000010002; ``000010000.seg.png`` belongs to
    sample 000010000 too, and as that sample's second image it is a ledger row of its own."""
    records = discover(i2d_day)
    by_locator = {(r.source, r.locator): r for r in records}
    coffee = by_locator[("00001.tar", "key 000010002")]
    assert coffee.error is None and coffee.extra["shard_members"] == ["000010002.clip.npy"]
    astronaut = by_locator[("00001.tar", "key 000010000")]
    assert astronaut.error is None and astronaut.text == "photo 0 of shard 1"
    assert "shard_members" not in astronaut.extra
    with open(astronaut.image.path, "rb") as fh:
        fh.seek(astronaut.image.offset)
        assert fh.read(astronaut.image.size) == _jpeg("astronaut")
    mask = by_locator[EXTRA_MASK[:2]]
    assert mask.error == (
        "extra_image_member",
        "member '000010000.seg.png': sample 000010000 already has image '000010000.jpg'",
    )


def test_a_failed_url_is_a_ledger_row_of_its_status_table(i2d_day: Path):
    by_url = {r.url: r for r in discover(i2d_day)}
    not_found = by_url[_url(1, 1)]
    assert (not_found.source, not_found.row, not_found.locator) == (
        "00001.parquet",
        2,
        "key 000010001",
    )
    assert not_found.where == "00001.parquet key 000010001"
    assert not_found.error == (HTTP_ERROR, "img2dataset: HTTP Error 404: Not Found")
    assert not_found.image_uri == _url(1, 1) and not_found.image is None
    assert not_found.text == "photo 1 of shard 1"
    assert not_found.manifest_id == "photo-1-1"
    assert by_url[_url(1, 3)].error == (
        OPTED_OUT,
        "img2dataset: Use of image disallowed by X-Robots-Tag directive",
    )
    assert by_url[_url(1, 4)].error == (TIMEOUT, "img2dataset: <urlopen error timed out>")
    assert by_url[_url(1, 5)].error == (
        "decode_error",
        "img2dataset could not resize it: image too small",
    )
    assert by_url[_url(1, 6)].error == (
        "missing_image",
        "the img2dataset status table lists key 000010006 as fetched, "
        "but 00001.tar has no sample of that key",
    )
    assert by_url[_url(1, 7)].error[0] == FAILED


def test_ingest_keeps_the_samples_and_ledgers_every_other_url(i2d_day: Path):
    result = ingest_folder(i2d_day, DATE, IngestOptions(workers=1))
    assert result.rows_in == result.kept.num_rows + result.rejected.num_rows == 11 + 1
    assert sorted(result.kept.column("pair_id").to_pylist()) == [
        "photo-0-0",
        "photo-0-1",
        "photo-1-0",
        "photo-1-2",
    ]
    ledger = result.rejected.select(["url", "reason", "pair_id", "source"]).to_pylist()
    assert sorted((r["url"] or "", r["reason"]) for r in ledger) == sorted(
        [("", "extra_image_member")] + [(_url(*k), v) for k, v in OUTCOMES.items() if v is not None]
    )
    assert {r["pair_id"] for r in ledger if r["url"]} == {
        f"photo-{s}-{i}" for (s, i), v in OUTCOMES.items() if v is not None
    }
    assert {r["source"] for r in ledger if r["reason"] == TIMEOUT} == {
        "00001.parquet key 000010004"
    }


def test_a_parquet_beside_a_shard_without_status_columns_is_still_a_manifest(tmp_path: Path):
    day = tmp_path / "d"
    day.mkdir()
    write_shard(day, 0, [_row(0, 0, SUCCESS, image=_jpeg("rocket"))])
    (day / "00000_stats.json").unlink()
    pq.write_table(
        pa.table({"image": ["https://images.example.org/x.jpg"], "text": ["a manifest row"]}),
        day / "00000.parquet",
    )
    records = discover(day)
    manifest = [r for r in records if r.source == "00000.parquet"]
    assert [(r.locator, r.text, r.image.kind, r.error) for r in manifest] == [
        ("row 0", "a manifest row", "remote", None)
    ]
    assert len(records) == 2


def test_stats_json_without_its_shard_is_unsupported_input(tmp_path: Path):
    day = tmp_path / "d"
    day.mkdir()
    (day / "00003_stats.json").write_text("{}")
    [record] = discover(day)
    assert record.error[0] == "unsupported_input"


def test_hostile_status_rows_are_ledger_rows_with_a_bounded_detail(tmp_path: Path):
    day = tmp_path / "d"
    day.mkdir()
    write_shard(day, 0, [_row(0, 0, SUCCESS, image=_jpeg("rocket"))])
    huge = "HTTP Error 500: " + "x" * 100_000
    rows = [
        {"key": "000000000", "status": SUCCESS, "url": _url(0, 0)},
        {"key": "000000001", "status": NOT_FETCHED, "error_message": huge, "url": _url(0, 1)},
        {"key": None, "status": NOT_FETCHED, "error_message": "timed out", "url": _url(0, 2)},
        {"key": "000000003", "status": "exploded", "url": _url(0, 3)},
        {"key": "000000004", "status": None, "url": _url(0, 4)},
        {"key": "000000001", "status": NOT_FETCHED, "url": _url(0, 5)},
        {"key": "000000006", "status": NOT_FETCHED, "url": _url(0, 6), "id": "bad\nid"},
    ]
    columns = ("key", "status", "error_message", "url", "id")
    schema = pa.schema([(name, pa.string()) for name in columns])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), day / "00000.parquet")
    errors = {r.url: r.error for r in discover(day) if r.source == "00000.parquet"}
    assert {url: error[0] for url, error in errors.items()} == {
        _url(0, 1): HTTP_ERROR,
        _url(0, 2): "malformed_manifest_line",
        _url(0, 3): "malformed_manifest_line",
        _url(0, 4): "malformed_manifest_line",
        _url(0, 5): "malformed_manifest_line",
        _url(0, 6): "invalid_pair_id",
    }
    assert len(errors[_url(0, 1)][1]) < MAX_STATUS_DETAIL_CHARS + 100
    assert errors[_url(0, 2)][1] == "row 2: the status row has no key"
    assert errors[_url(0, 3)][1].startswith("key 000000003: status 'exploded' is not one")
    assert errors[_url(0, 5)][1] == "key 000000001: listed again (first at row 1)"


def test_a_status_column_of_the_wrong_type_is_one_ledger_row(tmp_path: Path):
    day = tmp_path / "d"
    day.mkdir()
    write_shard(day, 0, [_row(0, 0, SUCCESS, image=_jpeg("rocket"))])
    pq.write_table(
        pa.table({"key": ["000000000"], "status": [[1, 2]], "url": [_url(0, 0)]}),
        day / "00000.parquet",
    )
    records = discover(day)
    assert [(r.source, r.error and r.error[0]) for r in records] == [
        ("00000.parquet", "malformed_manifest_line"),
        ("00000.tar", None),
    ]
    assert "its column `status` is list<element: int64>, not a string" in records[0].error[1]


def test_an_img2dataset_day_on_an_object_store_reads_as_the_local_one(
    i2d_day: Path,
    landing_url: str,  # noqa: F811
):
    upload(i2d_day, f"{landing_url}/{DATE}")
    there = discover_objects(f"{landing_url}/{DATE}")
    here = discover(i2d_day)

    def comparable(records: list[LandingRecord]) -> list[tuple]:
        return [(r.source, r.row, r.locator, r.url, r.manifest_id, r.error) for r in records]

    assert comparable(there) == comparable(here)
    assert _outcomes(there) == {_url(*k): v for k, v in OUTCOMES.items()}
    assert {r.image.kind for r in there if r.image} == {"object_range"}
