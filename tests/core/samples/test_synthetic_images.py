"""Synthetic benchmark landing sets: rows, truth, and pHash structure on a small set."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from dataplatform.core.samples.sample_data import phash_of
from dataplatform.core.samples.synthetic_images import PERCEPTUAL_EDITS, write_synthetic_landing

DATE = "2024-02-01"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    home = tmp_path_factory.mktemp("home")
    date_dir = home / "landing" / DATE
    truth = write_synthetic_landing(
        date_dir,
        n_distinct=12,
        byte_copies=3,
        perceptual_copies=6,
        megapixels=(0.05, 0.1),
        seed=7,
        workers=2,
    )
    return date_dir, truth


def test_rows_and_truth_agree(synthetic: tuple[Path, dict[str, dict]]) -> None:
    date_dir, truth = synthetic
    records = [json.loads(line) for line in (date_dir / "pairs.jsonl").read_text().splitlines()]

    assert [record["id"] for record in records] == list(truth)
    assert [record["id"] for record in records] == sorted(truth)
    assert Counter(entry["kind"] for entry in truth.values()) == {
        "distinct": 12,
        "byte_copy": 3,
        "perceptual_copy": 6,
    }
    assert all(record.keys() == {"id", "image", "text", "url", "license"} for record in records)
    assert sorted(path.name for path in (date_dir / "images").iterdir()) == [
        f"{row_id}.jpg" for row_id in sorted(truth)
    ]
    saved = json.loads((date_dir.parent.parent / f"synthetic_truth_{DATE}.json").read_text())
    assert saved == truth
    assert sorted(path.name for path in date_dir.iterdir()) == ["images", "pairs.jsonl"]


def test_copies_point_at_an_earlier_distinct_image(synthetic: tuple[Path, dict[str, dict]]) -> None:
    _, truth = synthetic

    for row_id, entry in truth.items():
        if entry["kind"] == "distinct":
            assert entry == {"kind": "distinct", "of": None}
        else:
            assert truth[entry["of"]]["kind"] == "distinct"
            assert entry["of"] < row_id


def test_byte_copies_are_byte_equal(synthetic: tuple[Path, dict[str, dict]]) -> None:
    date_dir, truth = synthetic

    byte_copies = [row_id for row_id, entry in truth.items() if entry["kind"] == "byte_copy"]
    assert len(byte_copies) == 3
    for row_id in byte_copies:
        copy = (date_dir / "images" / f"{row_id}.jpg").read_bytes()
        source = (date_dir / "images" / f"{truth[row_id]['of']}.jpg").read_bytes()
        assert copy == source


def test_perceptual_copies_record_their_real_distance(
    synthetic: tuple[Path, dict[str, dict]],
) -> None:
    date_dir, truth = synthetic

    def phash(row_id: str) -> imagehash.ImageHash:
        return phash_of((date_dir / "images" / f"{row_id}.jpg").read_bytes())

    copies = {row_id: e for row_id, e in truth.items() if e["kind"] == "perceptual_copy"}
    assert len(copies) == 6
    for row_id, entry in copies.items():
        assert entry.keys() == {"kind", "of", "edit", "phash_distance"}
        assert entry["edit"] in PERCEPTUAL_EDITS
        assert phash(row_id) - phash(str(entry["of"])) == entry["phash_distance"]
    # On images this small, a watermark band moves the pHash past the duplicate threshold;
    # the truth says so, and a benchmark scores recall against it.
    assert [(entry["edit"], entry["phash_distance"]) for entry in copies.values()] == [
        ("watermark", 14),
        ("brightness", 0),
        ("grayscale", 0),
        ("jpeg_reencode", 0),
        ("watermark", 14),
        ("crop", 6),
    ]


def test_distinct_images_are_far_apart_and_camera_sized(
    synthetic: tuple[Path, dict[str, dict]],
) -> None:
    date_dir, truth = synthetic

    distinct = [row_id for row_id, entry in truth.items() if entry["kind"] == "distinct"]
    hashes = [phash_of((date_dir / "images" / f"{row_id}.jpg").read_bytes()) for row_id in distinct]
    assert min(first - second for first, second in combinations(hashes, 2)) > 12
    for row_id in distinct:
        with Image.open(date_dir / "images" / f"{row_id}.jpg") as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert 45_000 <= image.width * image.height <= 105_000


def test_same_seed_gives_the_same_files(
    synthetic: tuple[Path, dict[str, dict]], tmp_path: Path
) -> None:
    date_dir, truth = synthetic

    again = write_synthetic_landing(
        tmp_path / "landing" / DATE,
        n_distinct=12,
        byte_copies=3,
        perceptual_copies=6,
        megapixels=(0.05, 0.1),
        seed=7,
        workers=1,
    )
    assert again == truth
    for row_id in truth:
        name = f"images/{row_id}.jpg"
        assert (tmp_path / "landing" / DATE / name).read_bytes() == (date_dir / name).read_bytes()


def test_rejects_copies_without_distinct_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raise n_distinct"):
        write_synthetic_landing(
            tmp_path / "landing" / DATE, n_distinct=0, byte_copies=1, perceptual_copies=0
        )


def test_refuses_a_non_empty_date_folder(synthetic: tuple[Path, dict[str, dict]]) -> None:
    date_dir, _ = synthetic

    with pytest.raises(FileExistsError, match=f"{DATE} is not empty"):
        write_synthetic_landing(date_dir, n_distinct=1, byte_copies=0, perceptual_copies=0)


def _small_day(landing: Path, date: str, seed: int | None) -> dict[str, dict]:
    return write_synthetic_landing(
        landing / date,
        n_distinct=3,
        byte_copies=1,
        perceptual_copies=1,
        megapixels=(0.01, 0.02),
        seed=seed,
        workers=1,
    )


def _images(date_dir: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((date_dir / "images").iterdir())]


def test_dates_without_a_seed_get_other_images(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    _small_day(landing, "2024-02-01", None)
    _small_day(landing, "2024-02-02", None)

    first, second = _images(landing / "2024-02-01"), _images(landing / "2024-02-02")
    # Not one image of the second day is a byte copy of one of the first.
    assert len(first) == len(second) == 5
    assert not set(first) & set(second)


def test_a_date_without_a_seed_reproduces_and_a_seed_overrides_the_date(tmp_path: Path) -> None:
    _small_day(tmp_path / "a", "2024-02-01", None)
    _small_day(tmp_path / "b", "2024-02-01", None)
    assert _images(tmp_path / "a" / "2024-02-01") == _images(tmp_path / "b" / "2024-02-01")

    # The same --seed gives the same images on any date.
    _small_day(tmp_path / "c", "2024-02-01", 5)
    _small_day(tmp_path / "c", "2024-02-02", 5)
    _small_day(tmp_path / "d", "2024-02-02", 5)
    seeded = _images(tmp_path / "c" / "2024-02-01")
    assert (
        seeded == _images(tmp_path / "c" / "2024-02-02") == _images(tmp_path / "d" / "2024-02-02")
    )
    assert seeded != _images(tmp_path / "a" / "2024-02-01")
