"""The apply_takedowns job and the sensor that starts it when request files change."""

import json

import dagster as dg
import pytest

from dataplatform.core.records.takedown_requests import takedown_dir
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import read_ledger, read_partition
from dataplatform.definitions import defs
from dataplatform.resources import WarehouseResource
from dataplatform.takedowns import takedown_sensor
from tests.assets.conftest import DAYS, materialize_day


def _tick(home: Home, cursor: str | None):
    context = dg.build_sensor_context(
        cursor=cursor, resources={"warehouse": WarehouseResource(home=str(home.root))}
    )
    return takedown_sensor(context), context.cursor


def _file(home: Home, request: dict) -> None:
    folder = takedown_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "requests.jsonl").open("a") as handle:
        handle.write(json.dumps(request) + "\n")


def test_sensor_starts_a_run_only_when_requests_change(three_days: Home):
    result, cursor = _tick(three_days, None)
    assert isinstance(result, dg.SkipReason)
    _file(three_days, {"id": "T1", "kind": "pair_id", "value": "b1", "filed": DAYS[1]})
    result, cursor = _tick(three_days, None)
    assert isinstance(result, dg.RunRequest) and result.run_key == cursor
    again, _ = _tick(three_days, cursor)
    assert isinstance(again, dg.SkipReason)
    _file(three_days, {"id": "T2", "kind": "pair_id", "value": "c1", "filed": DAYS[1]})
    changed, new_cursor = _tick(three_days, cursor)
    assert isinstance(changed, dg.RunRequest) and new_cursor != cursor


def test_job_removes_the_pair_and_fails_on_a_bad_request(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    assert materialize_day(three_days, DAYS[0], selection=["raw_pairs", "exact_deduped"]).success
    monkeypatch.setenv("DATAPLATFORM_HOME", str(three_days.root))
    _file(three_days, {"id": "T1", "kind": "pair_id", "value": "b1", "filed": DAYS[1]})
    job = defs.resolve_job_def("apply_takedowns")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert result.output_for_node("apply_takedown_requests")["removed"] == ["b1"]
    for table in ("raw_pairs", "exact_deduped"):
        assert "b1" not in read_partition(three_days, table, DAYS[0]).column("pair_id").to_pylist()
    assert read_ledger(three_days, "takedown", DAYS[0]).column("pair_id").to_pylist() == ["b1"]

    _file(three_days, {"id": "T1", "kind": "url", "value": "x", "filed": DAYS[1]})
    failed = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not failed.success
    failure = failed.failure_data_for_node("apply_takedown_requests")
    assert "request id 'T1' already used" in failure.user_failure_data.description
