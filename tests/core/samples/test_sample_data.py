"""The demo landing data: what lands where, and that its truth holds for the real files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import tarfile
from collections import Counter
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

import imagehash
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.samples.landing_writers import MANIFEST_COLUMNS
from dataplatform.core.samples.sample_data import (
    EDITS,
    SampleItem,
    build_sample_landing,
    phash_of,
)

DATES = ("2024-01-01", "2024-01-02", "2024-01-03")


class Landing:
    """A built sample landing and the bytes behind each truth item."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.items = build_sample_landing(root, DATES)
        day3 = root / DATES[2]
        with tarfile.open(day3 / "shard-00000.tar") as shard:
            self.tar_members = [member.name for member in shard.getmembers()]
            self.tar = {
                member.name: shard.extractfile(member).read()  # type: ignore[union-attr]
                for member in shard.getmembers()
            }
        self.rows: dict[tuple[str, str], dict[str, str | None]] = {}
        for line in (root / DATES[0] / "pairs.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.rows.setdefault(("pairs.jsonl", record["id"]), record)
        with open(root / DATES[1] / "pairs.csv", newline="") as handle:
            for record in csv.DictReader(handle):
                self.rows.setdefault(("pairs.csv", record["id"]), record)
        for record in pq.read_table(day3 / "pairs.parquet").to_pylist():
            self.rows.setdefault(("pairs.parquet", record["id"]), record)

    def image_bytes(self, item: SampleItem) -> bytes:
        date_dir = self.root / item.date
        if item.source == "shard-00000.tar":
            return self.tar[f"{item.key}.jpg"]
        if item.source.startswith("captioned/"):
            return (date_dir / item.source).read_bytes()
        return (date_dir / str(self.rows[(item.source, item.key)]["image"])).read_bytes()

    def original_of(self, item: SampleItem) -> bytes:
        original = next(
            other
            for other in self.items
            if other.base == item.base
            and (other.kind == "original" or other.kind.startswith("oddity:"))
        )
        return self.image_bytes(original)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Landing:
    return Landing(tmp_path_factory.mktemp("first") / "landing")


def _file_digests(home: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(home.rglob("*")):
        name = str(path.relative_to(home))
        if path.is_symlink():
            digests[name] = "link:" + str(path.readlink())
        elif path.is_file():
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_two_builds_are_byte_identical(landing: Landing, tmp_path: Path) -> None:
    build_sample_landing(tmp_path / "landing", DATES)

    first, second = _file_digests(landing.root.parent), _file_digests(tmp_path)
    assert len(first) == 116
    assert first == second


def test_expected_outcomes_per_date(landing: Landing) -> None:
    per_date = {
        day: dict(Counter(item.expected for item in landing.items if item.date == day))
        for day in DATES
    }

    assert per_date == {
        "2024-01-01": {
            "kept": 13,
            "exact_duplicate": 1,
            "phash_duplicate": 4,
            "not_phash_detectable": 2,
            "rejected:missing_file": 1,
            "rejected:path_outside_landing": 2,
            "rejected:empty_file": 1,
            "rejected:not_an_image": 1,
            "rejected:decompression_bomb": 1,
            "rejected:malformed_manifest_line": 1,
            "rejected:missing_text": 1,
            "rejected:missing_image": 1,
        },
        "2024-01-02": {
            "kept": 6,
            "exact_duplicate": 5,
            "phash_duplicate": 21,
            "not_phash_detectable": 7,
            "rejected:path_outside_landing": 1,
            "rejected:truncated_image": 1,
            "rejected:malformed_manifest_line": 2,
            "rejected:duplicate_pair_id": 1,
            "rejected:empty_file": 1,
            "rejected:missing_text": 1,
        },
        "2024-01-03": {
            "kept": 3,
            "exact_duplicate": 7,
            "phash_duplicate": 27,
            "not_phash_detectable": 14,
            "rejected:truncated_image": 1,
            "rejected:missing_text": 1,
            "rejected:missing_file": 1,
            "rejected:not_an_image": 1,
            "rejected:missing_image": 1,
        },
    }


def test_kinds_and_sources(landing: Landing) -> None:
    kinds = Counter(item.kind for item in landing.items)
    sources = Counter((item.date, item.source.split("/")[0]) for item in landing.items)

    assert len(landing.items) == 131
    assert kinds == {
        "original": 16,
        "byte_copy": 13,
        "jpeg_reencode": 13,
        "resize": 12,
        "brightness": 10,
        "grayscale": 9,
        "watermark": 11,
        "crop": 9,
        "hflip": 11,
        "oddity:cmyk_jpeg": 1,
        "oddity:exif_rotated_jpeg": 1,
        "oddity:uint16_png": 1,
        "oddity:palette_transparent_png": 1,
        "oddity:animated_gif": 1,
        "oddity:one_pixel_png": 1,
        "broken:missing_file": 2,
        "broken:path_outside_landing": 3,
        "broken:empty_file": 2,
        "broken:truncated_image": 2,
        "broken:not_an_image": 2,
        "broken:decompression_bomb": 1,
        "broken:malformed_manifest_line": 3,
        "broken:missing_text": 3,
        "broken:missing_image": 2,
        "broken:duplicate_pair_id": 1,
    }
    assert sources == {
        ("2024-01-01", "pairs.jsonl"): 29,
        ("2024-01-02", "pairs.csv"): 30,
        ("2024-01-02", "captioned"): 16,
        ("2024-01-03", "shard-00000.tar"): 25,
        ("2024-01-03", "pairs.parquet"): 31,
    }
    originals = {item.base: item.date for item in landing.items if item.kind == "original"}
    assert Counter(originals.values()) == {"2024-01-01": 11, "2024-01-02": 4, "2024-01-03": 1}


def test_truth_json_is_written_beside_the_landing_root(landing: Landing) -> None:
    truth = json.loads((landing.root.parent / "sample_truth.json").read_text())

    assert truth == [asdict(item) for item in landing.items]
    assert sorted(path.name for path in landing.root.iterdir()) == list(DATES)


def test_jsonl_manifest_parses_except_the_malformed_line(landing: Landing) -> None:
    lines = (landing.root / DATES[0] / "pairs.jsonl").read_text().splitlines()
    failing = []
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            failing.append(f"line-{number}")

    jsonl_items = [item for item in landing.items if item.source == "pairs.jsonl"]
    malformed = [item.key for item in jsonl_items if item.kind == "broken:malformed_manifest_line"]
    assert len(lines) == 29
    assert failing == malformed == ["line-21"]
    assert [record["id"] for record in records] == [
        item.key for item in jsonl_items if item.key not in malformed
    ]
    assert all(record.keys() == set(MANIFEST_COLUMNS) for record in records if "image" in record)
    assert [record["id"] for record in records if "image" not in record] == ["broken-09"]


def test_csv_manifest_has_exactly_the_malformed_rows(landing: Landing) -> None:
    with open(landing.root / DATES[1] / "pairs.csv", newline="") as handle:
        rows = list(csv.reader(handle))

    bad = [f"line-{number}" for number, row in enumerate(rows, start=1) if len(row) != 6]
    assert rows[0] == list(MANIFEST_COLUMNS)
    assert len(rows) == 31
    assert bad == ["line-24", "line-31"]
    assert bad == [
        item.key
        for item in landing.items
        if item.source == "pairs.csv" and "malformed" in item.kind
    ]
    ids = Counter(row[0] for row in rows[1:] if len(row) == 6)
    assert [key for key, count in ids.items() if count > 1] == ["text-00-original"]


def test_parquet_manifest_rows_match_the_truth(landing: Landing) -> None:
    table = pq.read_table(landing.root / DATES[2] / "pairs.parquet")

    items = [item for item in landing.items if item.source == "pairs.parquet"]
    assert table.column_names == list(MANIFEST_COLUMNS)
    assert table.column("id").to_pylist() == [item.key for item in items]
    missing_image = [row["id"] for row in table.to_pylist() if row["image"] is None]
    assert missing_image == ["broken-16"]


def test_webdataset_shard_has_jpg_txt_json_per_key(landing: Landing) -> None:
    keys = [item.key for item in landing.items if item.source == "shard-00000.tar"]

    assert keys[:2] == ["000000000", "000000001"]
    assert landing.tar_members == [
        f"{key}.{suffix}" for key in keys for suffix in ("jpg", "txt", "json")
    ]
    for key in keys:
        meta = json.loads(landing.tar[f"{key}.json"])
        assert meta.keys() == {"key", "url", "caption", "license", "width", "height"}
        assert meta["key"] == key
        assert meta["caption"] == landing.tar[f"{key}.txt"].decode()


def test_captioned_folder_has_a_sidecar_per_image(landing: Landing) -> None:
    folder = landing.root / DATES[1] / "captioned"

    images = sorted(path.name for path in folder.iterdir() if path.suffix != ".txt")
    sidecars = sorted(path.stem for path in folder.glob("*.txt"))
    items = [item for item in landing.items if item.source.startswith("captioned/")]
    assert images == [Path(item.source).name for item in items]
    assert sidecars == [item.key for item in items]
    assert images[-1] == "img_0016.png"
    assert not list((landing.root / DATES[1] / "images").glob("*.txt"))


def test_byte_copies_are_byte_equal_to_their_original(landing: Landing) -> None:
    copies = [item for item in landing.items if item.expected == "exact_duplicate"]

    assert len(copies) == 13
    for item in copies:
        assert item.kind == "byte_copy"
        assert landing.image_bytes(item) == landing.original_of(item), item


def test_edit_distances_match_the_expected_outcome(landing: Landing) -> None:
    outcomes = Counter()
    for item in landing.items:
        if item.kind not in EDITS or item.kind == "byte_copy":
            continue
        distance = phash_of(landing.image_bytes(item)) - phash_of(landing.original_of(item))
        if item.expected == "phash_duplicate":
            assert distance <= DEFAULT_PHASH_THRESHOLD - 2, item
        else:
            assert item.expected == "not_phash_detectable", item
            assert distance > DEFAULT_PHASH_THRESHOLD + 2, item
        outcomes[(item.kind, item.expected)] += 1

    assert outcomes == {
        ("jpeg_reencode", "phash_duplicate"): 13,
        ("resize", "phash_duplicate"): 12,
        ("brightness", "phash_duplicate"): 10,
        ("grayscale", "phash_duplicate"): 9,
        ("watermark", "phash_duplicate"): 6,
        ("watermark", "not_phash_detectable"): 5,
        ("crop", "phash_duplicate"): 2,
        ("crop", "not_phash_detectable"): 7,
        ("hflip", "not_phash_detectable"): 11,
    }


def test_rows_that_survive_phash_dedup_are_far_apart(landing: Landing) -> None:
    survivors = [
        (item, phash_of(landing.image_bytes(item)))
        for item in landing.items
        if item.expected in ("kept", "not_phash_detectable")
    ]

    assert len(survivors) == 45
    closest = min(
        first_hash - second_hash for (_, first_hash), (_, second_hash) in combinations(survivors, 2)
    )
    assert closest == 12
    kept = [(item, item_hash) for item, item_hash in survivors if item.expected == "kept"]
    closest_kept = min(a_hash - b_hash for (_, a_hash), (_, b_hash) in combinations(kept, 2))
    assert closest_kept == 20


def test_palette_png_stays_distinct_when_alpha_is_flattened(landing: Landing) -> None:
    item = next(item for item in landing.items if item.kind == "oddity:palette_transparent_png")
    with Image.open(io.BytesIO(landing.image_bytes(item))) as image:
        assert (image.mode, image.info["transparency"]) == ("P", 63)
        rgba = image.convert("RGBA")
    flattened = imagehash.phash(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba))

    others = [
        phash_of(landing.image_bytes(other))
        for other in landing.items
        if other.expected in ("kept", "not_phash_detectable") and other != item
    ]
    assert min(flattened - other for other in others) == 24


def test_oddities_have_the_modes_a_decoder_must_handle(landing: Landing) -> None:
    oddities = {
        item.kind.removeprefix("oddity:"): landing.image_bytes(item)
        for item in landing.items
        if item.kind.startswith("oddity:")
    }

    described = {}
    for name, data in oddities.items():
        with Image.open(io.BytesIO(data)) as image:
            described[name] = (image.format, image.mode, image.size, getattr(image, "n_frames", 1))
    assert described == {
        "cmyk_jpeg": ("JPEG", "CMYK", (741, 500), 1),
        "exif_rotated_jpeg": ("JPEG", "L", (300, 400), 1),
        "uint16_png": ("PNG", "I;16", (550, 660), 1),
        "palette_transparent_png": ("PNG", "P", (384, 303), 1),
        "animated_gif": ("GIF", "P", (102, 102), 3),
        "one_pixel_png": ("PNG", "RGB", (1, 1), 1),
    }
    with Image.open(io.BytesIO(oddities["exif_rotated_jpeg"])) as image:
        assert image.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(image).size == (400, 300)
    upright = next(item for item in landing.items if item.key == "clock_motion-02-jpeg_reencode")
    assert upright.expected == "phash_duplicate"
    assert phash_of(landing.image_bytes(upright)) - phash_of(oddities["exif_rotated_jpeg"]) == 0


def test_bomb_png_claims_40000_by_40000_in_under_a_kilobyte(landing: Landing) -> None:
    bomb = (landing.root / DATES[0] / "images" / "bomb.png").read_bytes()

    assert len(bomb) < 1024
    assert bomb[12:16] == b"IHDR"
    assert struct.unpack(">II", bomb[16:24]) == (40_000, 40_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))


def test_symlink_resolves_outside_the_landing_root(landing: Landing) -> None:
    link = landing.root / DATES[0] / "images" / "escape.jpg"

    assert link.is_symlink()
    target = link.resolve()
    assert target.exists()
    assert not target.is_relative_to(landing.root.resolve())
    assert target == (landing.root.parent / "sample_truth.json").resolve()


def test_broken_files_fail_the_way_their_reason_says(landing: Landing) -> None:
    day1, day2 = landing.root / DATES[0], landing.root / DATES[1]

    assert (day1 / "images" / "empty.jpg").stat().st_size == 0
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(day1 / "images" / "notes.jpg")
    with pytest.raises(OSError, match="truncated"), Image.open(day2 / "images/truncated.jpg") as im:
        im.load()
    assert not (day1 / "images" / "does-not-exist.jpg").exists()
    outside = [
        landing.rows[(item.source, item.key)]["image"]
        for item in landing.items
        if item.kind == "broken:path_outside_landing" and item.key != "broken-03"
    ]
    assert outside == ["../../sample_truth.json", "/etc/hostname"]


def test_refuses_to_write_into_a_non_empty_date_folder(tmp_path: Path) -> None:
    (tmp_path / "landing" / DATES[1]).mkdir(parents=True)
    (tmp_path / "landing" / DATES[1] / "pairs.jsonl").write_text("{}\n")

    with pytest.raises(FileExistsError, match="2024-01-02 is not empty"):
        build_sample_landing(tmp_path / "landing", DATES)


def test_needs_three_ascending_dates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs three dates"):
        build_sample_landing(tmp_path, DATES[:2])
    with pytest.raises(ValueError, match="distinct and ascending"):
        build_sample_landing(tmp_path, (DATES[1], DATES[0], DATES[2]))
