"""quality_filtered through Dagster: real NudeNet and RapidOCR, technical rules, re-thresholding."""

import json
from pathlib import Path

import pytest
from PIL import ImageFilter

from dataplatform.core.scoring.clip_model import build_smoke_checkpoint
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, partition_dir, read_partition
from dataplatform.resources import ClipResource, QualityResource
from tests.assets.conftest import materialize_day
from tests.conftest import PEERDATA, encode, photo

DAY = "2025-01-01"


@pytest.fixture
def quality_day(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    day = home.landing / DAY
    (day / "img").mkdir(parents=True)
    files = {
        "astronaut.jpg": encode(photo("astronaut"), quality=92),
        "rocket_blurred.jpg": encode(
            photo("rocket").filter(ImageFilter.GaussianBlur(4)), quality=92
        ),
        "coffee_small.jpg": encode(photo("coffee").resize((150, 100)), quality=92),
        "china.jpg": encode(photo("china"), quality=92),
    }
    rows = []
    for name, data in files.items():
        (day / "img" / name).write_bytes(data)
        rows.append({"id": name.split(".")[0], "image": f"img/{name}", "text": name})
    (day / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return home


def _quality_ledger(home: Home) -> dict[str, str]:
    con = connect(home)
    rows = con.execute(
        "SELECT pair_id, reason FROM rejections WHERE stage = 'quality_filtered'"
    ).fetchall()
    con.close()
    return dict(rows)


def test_scores_stored_rules_applied_and_rethresholded_without_rescoring(quality_day: Home):
    first = materialize_day(quality_day, DAY)
    assert first.success
    assert _quality_ledger(quality_day) == {"coffee_small": "too_small", "rocket_blurred": "blurry"}
    scores = {
        r["pair_id"]: r for r in read_partition(quality_day, "quality_scores", DAY).to_pylist()
    }
    assert sorted(scores) == ["astronaut", "china", "coffee_small", "rocket_blurred"]
    assert all(s["nsfw_score"] is not None and s["nsfw_score"] < 0.1 for s in scores.values())
    # (RapidOCR reads one spurious glyph in the 150x100 coffee thumbnail; the photos have none.)
    for name in ("astronaut", "china", "rocket_blurred"):
        assert (scores[name]["ocr_lines"], scores[name]["ocr_text_area"]) == (0, 0.0)
    assert scores["coffee_small"]["shortest_side"] == 100
    assert scores["rocket_blurred"]["blur_variance"] < 30 < scores["astronaut"]["blur_variance"]
    # No weights are configured for these: null, never an invented score.
    assert all(
        s["aesthetic_score"] is None and s["watermark_score"] is None for s in scores.values()
    )
    kept = read_partition(quality_day, "quality_filtered", DAY)
    assert sorted(kept.column("pair_id").to_pylist()) == ["astronaut", "china"]
    assert {"nsfw_score", "ocr_text", "blur_variance", "aesthetic_score"} <= set(kept.column_names)

    stored = partition_dir(quality_day, "quality_scores", DAY) / "part-0.parquet"
    before = (stored.stat().st_mtime_ns, stored.read_bytes())
    lenient = {
        "ops": {
            "quality_filtered": {"config": {"min_blur_variance": 0.0, "min_shortest_side": 100}}
        }
    }
    second = materialize_day(quality_day, DAY, run_config=lenient)
    assert second.success
    assert _quality_ledger(quality_day) == {}
    assert (stored.stat().st_mtime_ns, stored.read_bytes()) == before  # not rescored
    notes = second.asset_materializations_for_node("quality_filtered")[0].metadata
    assert "re-used" in notes["scorers_not_run"].value


@pytest.mark.skipif(not (PEERDATA / "laion-heads").is_dir(), reason="../shared/peerdata absent")
def test_aesthetic_head_scores_when_it_matches_the_clip_model(
    quality_day: Home, monkeypatch, tmp_path: Path
):
    import open_clip
    import torch

    monkeypatch.delenv("DATAPLATFORM_PROFILE")
    checkpoint = tmp_path / "vit_b_32_random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
    clip = ClipResource(model="ViT-B-32", pretrained=str(checkpoint), num_workers=0)
    head = PEERDATA / "laion-heads" / "LAION-AI_aesthetic-predictor" / "sa_0_4_vit_b_32_linear.pth"
    quality = QualityResource(aesthetic_head=str(head), use_ocr=False)
    run_config = {
        "ops": {
            "clip_scored": {"config": {"mode": "percentile", "keep_top_percent": 100.0}},
            "quality_filtered": {"config": {"min_aesthetic": -100.0}},
        }
    }
    assert materialize_day(
        quality_day, DAY, clip=clip, quality=quality, run_config=run_config
    ).success
    scores = read_partition(quality_day, "quality_scores", DAY).to_pylist()
    assert len(scores) == 4 and all(s["aesthetic_score"] is not None for s in scores)
    assert all(s["ocr_lines"] is None for s in scores)  # OCR switched off: null, not zero

    # The smoke CLIP (64-d) matches no head: null aesthetic, and the metadata says why.
    monkeypatch.setenv("DATAPLATFORM_PROFILE", "smoke")
    smoke_clip = ClipResource(models_dir=str(tmp_path / "m"), num_workers=0)
    build_smoke_checkpoint(tmp_path / "m")
    rescore = {"ops": {"quality_filtered": {"config": {"rescore": True}}}}
    result = materialize_day(quality_day, DAY, clip=smoke_clip, quality=quality, run_config=rescore)
    assert result.success
    note = result.asset_materializations_for_node("quality_filtered")[0].metadata["scorers_not_run"]
    assert "sa_0_4_vit_b_32_linear.pth" in note.value and "score is null" in note.value
    scores = read_partition(quality_day, "quality_scores", DAY).to_pylist()
    assert all(s["aesthetic_score"] is None for s in scores)
