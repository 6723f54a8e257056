"""raw_pairs and clip_scored through Dagster, the landing and the warehouse both on s3 (moto)."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pyarrow as pa

from dataplatform.assets import STAGE_ASSETS
from dataplatform.automation import landing_sensor
from dataplatform.core.store.home import LANDING_URL_ENV, Home
from dataplatform.core.store.warehouse import read_ledger, read_partition
from dataplatform.resources import ClipResource, WarehouseResource
from tests.assets.conftest import DAYS, build_three_days, stage_resources, with_written_tables
from tests.core.ingest.test_object_landing import put, upload
from tests.core.store.test_object_store import (  # noqa: F401 - the moto fixtures
    BUCKET,
    s3_endpoint,
)

STAGES = ["raw_pairs", "exact_deduped", "phash_deduped", "clip_scored"]


def _warehouse(home: Home) -> WarehouseResource:
    return WarehouseResource(
        home=str(home.root), warehouse_url=home.warehouse_url, landing_url=home.landing_url
    )


def _materialize(home: Home, date: str, models: Path):
    # One models folder for both runs: clip_model names the checkpoint's path.
    clip = ClipResource(models_dir=str(models), num_workers=0)
    return dg.materialize(
        STAGE_ASSETS,
        partition_key=date,
        selection=with_written_tables(STAGES),
        resources=stage_resources(home, warehouse=_warehouse(home), clip=clip),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _rows(table: pa.Table) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "image_location"} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: (r["pair_id"], str(r.get("reason"))))


def test_clip_scored_reads_back_images_that_landed_on_the_object_store(
    s3_endpoint: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch,
):
    """The resource's landing_url alone (no environment): the step's own read-back honours it."""
    monkeypatch.delenv(LANDING_URL_ENV, raising=False)
    staged = tmp_path / "staged"
    build_three_days(staged)
    landing_url = f"s3://{BUCKET}/asset-landing/landing"
    upload(staged, landing_url)
    local = Home(tmp_path / "local")
    shutil.copytree(staged, local.landing)
    remote = Home(tmp_path / "remote", f"s3://{BUCKET}/asset-landing/warehouse", landing_url)
    for day in DAYS[:2]:
        assert _materialize(local, day, tmp_path / "models").success
        assert _materialize(remote, day, tmp_path / "models").success
    # Nothing of the remote run touched its home's local landing folder: it read the bucket.
    assert not remote.landing.exists()
    for stage in STAGES:
        for day in DAYS[:2]:
            there, here = read_partition(remote, stage, day), read_partition(local, stage, day)
            assert there.num_rows > 0
            assert _rows(there) == _rows(here)
            assert _rows(read_ledger(remote, stage, day)) == _rows(read_ledger(local, stage, day))
            for row in there.to_pylist():
                assert row["image_location"].startswith(f"{landing_url}/{day}/img/")
    # clip_scored read every image back from the bucket: none is image_unreadable.
    for day in DAYS[:2]:
        reasons = read_ledger(remote, "clip_scored", day).column("reason").to_pylist()
        assert "image_unreadable" not in reasons


def test_the_landing_sensor_sees_days_that_arrive_on_the_object_store(
    s3_endpoint: str,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch,
):
    monkeypatch.delenv(LANDING_URL_ENV, raising=False)
    staged = tmp_path / "staged"
    build_three_days(staged)
    landing_url = f"s3://{BUCKET}/sensor-landing"
    home = Home(tmp_path / "home", landing_url=landing_url)

    def tick(cursor: str | None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"warehouse": _warehouse(home)}
        )
        return landing_sensor(context)

    with dg.instance_for_test() as instance:
        assert isinstance(tick(None), dg.SkipReason)
        upload(staged / DAYS[1], f"{landing_url}/{DAYS[1]}")
        upload(staged / DAYS[0], f"{landing_url}/{DAYS[0]}")
        # Copied but not yet declared complete: the sensor waits (quiet period unmet).
        assert isinstance(tick(None), dg.SkipReason)
        for day in DAYS[:2]:
            put(f"{landing_url}/{day}/_SUCCESS", b"")
        first = tick(None)
        assert [r.partition_key for r in first.run_requests] == [DAYS[0]]
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == [DAYS[1]]
        assert isinstance(tick(second.cursor), dg.SkipReason)
