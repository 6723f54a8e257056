"""semantic_deduped against a reference computed from the stored embeddings, across days."""

from pathlib import Path

import numpy as np
import pytest

from dataplatform.core.scoring.clip_model import SMOKE_MODEL_NAME, build_smoke_checkpoint
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, read_partition
from dataplatform.resources import ClipResource
from tests.assets.conftest import DAYS, materialize_day

THRESHOLD = 0.9


def _reference(home: Home) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Greedy by clip_score (then pair_id), day by day, earlier days' kept pairs always win."""
    kept_vectors: list[np.ndarray] = []
    kept_ids: list[str] = []
    kept_by_day: dict[str, list[str]] = {}
    duplicate_of: dict[str, str] = {}
    for day in DAYS:
        rows = read_partition(home, "clip_scored", day).to_pylist()
        emb = read_partition(home, "embeddings", day).to_pylist()
        vec = {r["pair_id"]: np.asarray(r["image_embedding"], dtype=np.float32) for r in emb}
        kept_by_day[day] = []
        for row in sorted(rows, key=lambda r: (-r["clip_score"], r["pair_id"])):
            v = vec[row["pair_id"]]
            sims = [float(v @ k) for k in kept_vectors]
            if sims and max(sims) >= THRESHOLD:
                duplicate_of[row["pair_id"]] = kept_ids[int(np.argmax(sims))]
                continue
            kept_vectors.append(v)
            kept_ids.append(row["pair_id"])
            kept_by_day[day].append(row["pair_id"])
    return {d: sorted(ids) for d, ids in kept_by_day.items()}, duplicate_of


@pytest.mark.usefixtures("three_days")
def test_semantic_dedup_matches_the_reference(three_days: Home, monkeypatch, tmp_path: Path):
    # The production path with local weights: thresholds come from run config, not the profile.
    monkeypatch.delenv("DATAPLATFORM_PROFILE")
    clip = ClipResource(
        model=SMOKE_MODEL_NAME,
        pretrained=str(build_smoke_checkpoint(tmp_path / "models")),
        num_workers=0,
    )
    run_config = {
        "ops": {
            "clip_scored": {"config": {"mode": "percentile", "keep_top_percent": 100.0}},
            "semantic_deduped": {"config": {"threshold": THRESHOLD}},
        }
    }
    for day in DAYS:
        result = materialize_day(three_days, day, clip=clip, run_config=run_config)
        assert result.success
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["no_kept_pair_above_similarity"] and checks["embeddings_unit_norm"]
    expected_kept, expected_dups = _reference(three_days)
    got_kept = {
        d: sorted(read_partition(three_days, "semantic_deduped", d).column("pair_id").to_pylist())
        for d in DAYS
    }
    con = connect(three_days)
    got_dups = dict(
        con.execute(
            "SELECT pair_id, duplicate_of FROM rejections WHERE stage = 'semantic_deduped'"
        ).fetchall()
    )
    sims = con.execute(
        "SELECT min(similarity), max(threshold) FROM rejections WHERE stage = 'semantic_deduped'"
    ).fetchone()
    con.close()
    assert got_kept == expected_kept
    assert got_dups == expected_dups
    # With a random tiny model at 0.9 most pairs collapse together: the test has teeth.
    assert len(got_dups) >= 3
    assert sims[0] >= THRESHOLD and sims[1] == THRESHOLD
