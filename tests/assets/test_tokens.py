"""vq_tokenizer and tokens through Dagster: trained once, reused, exact crop geometry, export."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np

from dataplatform.assets import STAGE_ASSETS, TOKEN_ASSETS
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import read_partition
from dataplatform.core.tokens.crop_policy import DEFAULT_POLICY, DEFAULT_RESOLUTION, plan
from dataplatform.core.tokens.webdataset_export import read_shards
from dataplatform.resources import (
    TokenizerResource,
)
from tests.assets.conftest import DAYS, materialize_day, stage_resources

SMALL = {"steps": 30, "crops_per_image": 2, "min_psnr": 0.0, "max_dead_code_share": 1.0}


def _tokens_run(
    home: Home, date: str, tokens_config: dict | None = None, train: dict | None = None
):
    return dg.materialize(
        STAGE_ASSETS + TOKEN_ASSETS,
        selection=[k for a in TOKEN_ASSETS for k in a.keys],
        partition_key=date,
        resources=stage_resources(home, tokenizer=TokenizerResource(device="cpu", batch_size=2)),
        run_config={
            "ops": {
                "vq_tokenizer": {"config": {**SMALL, **(train or {})}},
                "tokens": {"config": tokens_config or {}},
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_tokens_for_every_kept_pair_reused_tokenizer_and_export(three_days: Home, tmp_path: Path):
    for day in DAYS:
        assert materialize_day(three_days, day).success
    first = _tokens_run(three_days, DAYS[0])
    assert first.success
    trained = first.asset_materializations_for_node("vq_tokenizer")[0].metadata
    assert trained["reused"].value is False and trained["train_images"].value > 0

    kept = read_partition(three_days, "semantic_deduped", DAYS[0]).to_pylist()
    table = read_partition(three_days, "tokens", DAYS[0]).to_pylist()
    assert sorted(r["pair_id"] for r in table) == sorted(r["pair_id"] for r in kept)
    by_id = {r["pair_id"]: r for r in kept}
    for row in table:
        # downsample 8 at the default 256 px: a 32 x 32 grid of uint16 ids below the codebook.
        side = DEFAULT_RESOLUTION // 8
        assert row["token_grid"] == [side, side] and row["token_count"] == side * side
        assert len(row["tokens"]) == side * side and max(row["tokens"]) < 512
        src = by_id[row["pair_id"]]
        box = plan(src["width"], src["height"], DEFAULT_RESOLUTION, DEFAULT_POLICY).crop
        assert row["crop_box"] == [box.left, box.top, box.right, box.bottom]
        assert row["resolution"] == DEFAULT_RESOLUTION and row["crop_policy"] == DEFAULT_POLICY
        assert "kind=dataplatform-vqvae" in row["tokenizer"]

    # The second day reuses the trained tokenizer; the same image gives the same tokens.
    second = _tokens_run(three_days, DAYS[0])
    assert second.asset_materializations_for_node("vq_tokenizer")[0].metadata["reused"].value
    again = {
        r["pair_id"]: r["tokens"] for r in read_partition(three_days, "tokens", DAYS[0]).to_pylist()
    }
    assert again == {r["pair_id"]: r["tokens"] for r in table}
    budget = second.asset_materializations_for_node("tokens")[0].metadata["token_budget"].value
    assert budget.records[-1].data["images"] == len(table)

    letterbox = _tokens_run(three_days, DAYS[0], {"crop": "letterbox", "resolution": 336})
    assert letterbox.success
    rows = read_partition(three_days, "tokens", DAYS[0]).to_pylist()
    assert all(r["token_grid"] == [42, 42] for r in rows)  # 336 / 8
    assert all(
        r["crop_box"] == [0, 0, by_id[r["pair_id"]]["width"], by_id[r["pair_id"]]["height"]]
        for r in rows
    )

    out = tmp_path / "shards"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "dataplatform"),
            "--home",
            str(three_days.root),
            "export",
            "--format",
            "webdataset",
            "--out",
            str(out),
            "--date",
            DAYS[0],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    exported = {r["pair_id"]: r for r in read_shards(sorted(out.glob("*.tar")))}
    assert sorted(exported) == sorted(r["pair_id"] for r in rows)
    for row in rows:
        sample = exported[row["pair_id"]]
        assert sample["tokens"].dtype == np.uint16 and sample["tokens"].shape == (42, 42)
        assert sample["tokens"].reshape(-1).tolist() == row["tokens"]
        assert sample["text"] == row["text"]
