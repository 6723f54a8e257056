"""Three days through every asset on a real Ray cluster, landing and warehouse on S3, equal
the local engine's tables and ledgers row for row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from dataplatform.assets.vq_tokenizer import TRAINED_DIR
from dataplatform.core.store.home import Home
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    SIDE_TABLES,
    partition_dates,
    read_partition,
)
from dataplatform.resources import ClipResource, EngineResource, QualityResource, TokenizerResource
from tests.assets.conftest import DAYS, build_three_days, materialize_cards, materialize_day
from tests.core.ingest.test_object_landing import upload
from tests.core.store.test_object_store import BUCKET, s3_endpoint  # noqa: F401

# The same batch sizes on both engines; two rows per chunk spreads five pairs over both actors.
CLIP = {"batch_size": 2, "num_workers": 0}
QUALITY = {"batch_size": 2}
TOKENIZER = {"device": "cpu", "batch_size": 2}
# A card names the Dagster runs behind it, which differ between any two materializations.
RUN_COLUMNS = {"stage_runs", "dataset_version"}


def _materialize(
    home: Home, engine: EngineResource, models: Path, tokenizer_path: str = ""
) -> dict[str, dict]:
    resources = {
        # One smoke CLIP file for both: its path is part of the model identity on every row.
        "clip": ClipResource(models_dir=str(models), **CLIP),
        "quality": QualityResource(**QUALITY),
        "engine": engine,
    }
    metadata: dict[str, dict] = {}
    results = []
    for day in DAYS:
        results.append((day, materialize_day(home, day, **resources)))
    # The tokenizer trains on what the days curated, then each day is tokenized and carded.
    for day in DAYS:
        tokenizer = TokenizerResource(tokenizer_path=tokenizer_path, **TOKENIZER)
        results.append((day, materialize_cards(home, day, tokenizer=tokenizer, engine=engine)))
    for day, result in results:
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            values = {k: v.value for k, v in mat.metadata.items()}
            metadata[f"{mat.asset_key.path[-1]}/{day}"] = values
    return metadata


def _tables(home: Home) -> dict[str, pa.Table]:
    out = {}
    for table in [*STAGE_ORDER, *SIDE_TABLES, LEDGER_TABLE]:
        for day in partition_dates(home, table):
            data = read_partition(home, table, day)
            out[f"{table}/{day}"] = data.drop_columns(
                [c for c in data.column_names if c in RUN_COLUMNS]
            )
    return out


def _in_landing(table: pa.Table, landing_url: str) -> list[dict]:
    """Rows with image_location as the local landing names it: relative to the landing root."""
    rows = table.to_pylist()
    for row in rows:
        if row.get("image_location"):
            assert row["image_location"].startswith(landing_url + "/"), row["image_location"]
            row["image_location"] = row["image_location"].removeprefix(landing_url + "/")
    return rows


@pytest.mark.timeout(900)
def test_three_days_on_ray_equal_the_local_engine_row_for_row(
    tmp_path: Path,
    ray_cluster,
    s3_endpoint: str,  # noqa: F811
):
    local = Home(tmp_path / "local")
    build_three_days(local.landing)
    local_meta = _materialize(local, EngineResource(engine="local"), tmp_path / "models")

    # Landing and warehouse on the S3-compatible server: the actors read the images from it.
    staged = tmp_path / "staged"
    build_three_days(staged)
    landing_url = f"s3://{BUCKET}/ray-engine/landing"
    upload(staged, landing_url)
    on_ray = Home(tmp_path / "ray", f"s3://{BUCKET}/ray-engine/warehouse", landing_url)
    # One tokenizer for both: training it is not engine work, and a second training could differ.
    # Its path is part of the identity every token row carries, so both name the same one.
    trained = local.root / "models" / TRAINED_DIR
    shutil.copytree(trained, on_ray.root / "models" / TRAINED_DIR)
    ray_meta = _materialize(
        on_ray,
        EngineResource(engine="ray", address=ray_cluster.address, chunk_rows=2),
        tmp_path / "models",
        tokenizer_path=str(trained),
    )

    expected, got = _tables(local), _tables(on_ray)
    assert sorted(got) == sorted(expected)
    assert len(expected) >= 2 * (len(STAGE_ORDER) + len(SIDE_TABLES)), sorted(expected)
    for name, table in expected.items():
        assert _in_landing(got[name], landing_url) == table.to_pylist(), name

    for stage in ("raw_pairs", "clip_scored", "quality_filtered", "tokens", "data_cards"):
        meta = ray_meta[f"{stage}/{DAYS[0]}"]
        assert meta["engine"] == "ray", stage
        assert meta["engine_nodes"] == 1 + ray_cluster.worker_nodes, stage
        assert local_meta[f"{stage}/{DAYS[0]}"]["engine"] == "local", stage
    for stage in ("exact_deduped", "phash_deduped", "semantic_deduped"):
        # Day 1 has no history to look up; later days shard their lookups on the workers.
        meta = ray_meta[f"{stage}/{DAYS[2]}"]
        assert (meta["engine"], meta["engine_nodes"]) == ("ray", 3), stage
        assert meta["engine_chunks"] > 0, stage
        assert local_meta[f"{stage}/{DAYS[2]}"]["engine_chunks"] == 0, stage
    # Five pairs in chunks of two: three chunks over both worker nodes' actors.
    assert ray_meta[f"raw_pairs/{DAYS[0]}"]["engine_chunks"] == 3
    assert ray_meta[f"raw_pairs/{DAYS[0]}"]["engine_workers"] == 2
