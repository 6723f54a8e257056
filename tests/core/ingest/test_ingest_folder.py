import json
from pathlib import Path

import pytest

from dataplatform.core.engine.progress import PROGRESS_SECONDS_ENV
from dataplatform.core.ingest.ingest_folder import (
    CHUNK_SIZE,
    MIN_IMAGES_FOR_POOL,
    PROGRESS_LABEL,
    IngestOptions,
    ingest_folder,
)
from tests.conftest import encode, photo
from tests.core.ingest.test_image_decode import bomb_png


def _landing(day: Path) -> None:
    (day / "images").mkdir(parents=True)
    (day / "images" / "coffee.jpg").write_bytes(encode(photo("coffee")))
    (day / "images" / "rocket.png").write_bytes(encode(photo("rocket").resize((90, 60)), "PNG"))
    (day / "images" / "bomb.png").write_bytes(bomb_png(50000, 50000))
    (day / "images" / "cut.jpg").write_bytes(encode(photo("chelsea"))[:3000])
    (day / "images" / "empty.jpg").write_bytes(b"")
    rows = [
        {
            "id": "c1",
            "image": "images/coffee.jpg",
            "text": "  a cup\tof coffee ",
            "license": "CC0-1.0",
            "url": "https://e.org/c",
            "photographer": "anon",
        },
        {"id": "r1", "image": "images/rocket.png", "text": "a rocket"},
        {"id": "r1", "image": "images/rocket.png", "text": "same id again"},
        {"id": "b1", "image": "images/bomb.png", "text": "huge"},
        {"id": "t1", "image": "images/cut.jpg", "text": "cut short"},
        {"id": "e1", "image": "images/empty.jpg", "text": "nothing"},
        {"id": "n1", "image": "images/coffee.jpg", "text": "   "},
    ]
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n")


def test_every_row_is_kept_or_in_the_ledger(tmp_path: Path):
    day = tmp_path / "2025-01-01"
    _landing(day)
    result = ingest_folder(day, "2025-01-01", IngestOptions(workers=1))
    assert result.rows_in == 8
    assert result.kept.num_rows + result.rejected.num_rows == result.rows_in
    assert result.kept.column("pair_id").to_pylist() == ["c1", "r1"]
    reasons = dict(
        zip(
            result.rejected.column("pair_id").to_pylist(),
            result.rejected.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert {k: v for k, v in reasons.items() if not k.startswith("p")} == {
        "r1": "duplicate_pair_id",
        "b1": "decompression_bomb",
        "t1": "truncated_image",
        "e1": "empty_file",
        "n1": "missing_text",
    }
    assert sorted(reasons.values()).count("malformed_manifest_line") == 1
    coffee = result.kept.to_pylist()[0]
    assert coffee["text"] == "a cup of coffee"
    assert coffee["license"] == "CC0-1.0" and coffee["url"] == "https://e.org/c"
    assert json.loads(coffee["extra"]) == {"photographer": "anon"}
    assert coffee["source"] == "pairs.jsonl" and coffee["source_locator"] == "line 1"
    assert len(coffee["phash"]) == 16 and (coffee["width"], coffee["height"]) == (600, 400)
    assert set(result.rejected.column("stage").to_pylist()) == {"raw_pairs"}


def test_worker_pool_gives_the_same_rows(tmp_path: Path):
    day = tmp_path / "2025-01-01"
    (day / "img").mkdir(parents=True)
    base = photo("astronaut").resize((64, 64))
    rows = []
    for i in range(70):
        (day / "img" / f"{i}.png").write_bytes(encode(base.rotate(i * 5), "PNG"))
        rows.append({"id": f"id{i:03d}", "image": f"img/{i}.png", "text": f"astronaut {i}"})
    (day / "img" / "69.png").write_bytes(b"garbage")
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    serial = ingest_folder(day, "2025-01-01", IngestOptions(workers=1))
    pooled = ingest_folder(day, "2025-01-01", IngestOptions(workers=2))
    assert pooled.kept.equals(serial.kept)
    assert pooled.rejected.equals(serial.rejected)
    assert serial.kept.num_rows == 69
    assert serial.rejected.column("reason").to_pylist() == ["not_an_image"]


def test_missing_folder_is_an_empty_partition(tmp_path: Path):
    result = ingest_folder(tmp_path / "nope", "2025-01-01")
    assert (result.rows_in, result.kept.num_rows, result.rejected.num_rows) == (0, 0, 0)


def test_progress_counts_every_image_and_leaves_the_rows_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(PROGRESS_SECONDS_ENV, "0")
    day = tmp_path / "2025-01-01"
    (day / "img").mkdir(parents=True)
    base = photo("coffee").resize((48, 48))
    rows = []
    for i in range(MIN_IMAGES_FOR_POOL):
        (day / "img" / f"{i}.png").write_bytes(encode(base.rotate(i * 5), "PNG"))
        rows.append({"id": f"id{i:03d}", "image": f"img/{i}.png", "text": f"coffee {i}"})
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    quiet = ingest_folder(day, "2025-01-01", IngestOptions(workers=1))
    for workers in (1, 2):
        lines: list[str] = []
        logged = ingest_folder(day, "2025-01-01", IngestOptions(workers=workers), log=lines.append)
        assert logged.kept.equals(quiet.kept) and logged.rejected.equals(quiet.rejected)
        assert lines[0] == f"{PROGRESS_LABEL}: 0 of 64 images, starting"
        assert lines[-1].startswith(f"{PROGRESS_LABEL}: 64 of 64 images done, ")
        counts = [
            int(line.removeprefix(f"{PROGRESS_LABEL}: ").split(" of ")[0]) for line in lines[1:-1]
        ]
        # One line per image inline, one per finished chunk of CHUNK_SIZE from the pool.
        step = 1 if workers == 1 else CHUNK_SIZE
        assert counts == list(range(step, 64, step))
