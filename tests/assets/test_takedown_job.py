"""The apply_takedowns job and the sensor that starts it when request files change."""

import json

import dagster as dg
import pytest

from dataplatform.core.records.takedown_requests import takedown_dir
from dataplatform.core.store.content_version import content_version
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


def _latest(instance: dg.DagsterInstance, key: str, date: str):
    records_filter = dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[date])
    return instance.fetch_materializations(records_filter, limit=1).records[0]


def test_job_records_a_materialization_per_rewritten_partition_naming_the_request(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    instance = dg.DagsterInstance.ephemeral()
    selection = ["raw_pairs", "exact_deduped"]
    for day in DAYS[:2]:
        assert materialize_day(three_days, day, selection=selection, instance=instance).success
    before = {t: _latest(instance, t, DAYS[0]) for t in selection}
    monkeypatch.setenv("DATAPLATFORM_HOME", str(three_days.root))
    _file(three_days, {"id": "T1", "kind": "pair_id", "value": "b1", "filed": DAYS[1]})
    _file(three_days, {"id": "T2", "kind": "url", "value": "nowhere", "filed": DAYS[1]})
    result = defs.resolve_job_def("apply_takedowns").execute_in_process(instance=instance)
    assert result.success

    events = [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events()
    ]
    # Upstream first; one event per rewritten partition; nothing for the untouched day.
    assert [
        (e.asset_key.to_user_string(), e.partition)
        for e in events
        if e.asset_key.to_user_string() in selection
    ] == [("raw_pairs", DAYS[0]), ("exact_deduped", DAYS[0])]
    assert all(e.partition == DAYS[0] for e in events)
    for event in events:
        assert event.metadata["takedown_requests"].value == "T1"
        assert "| T1 | pair_id | b1 |" in event.metadata["requests"].value
        assert event.metadata["pairs"].value == "b1"
    assert result.output_for_node("apply_takedown_requests")["asset_partitions_recorded"] == len(
        events
    )

    # The new versions chain: exact_deduped's input is raw_pairs' takedown event, and both
    # keep the code version of what they supersede, with the new content's version.
    after = {t: _latest(instance, t, DAYS[0]) for t in selection}
    tags = {t: after[t].event_log_entry.tags for t in selection}
    for t in selection:
        old = before[t].event_log_entry.tags
        assert tags[t]["dagster/code_version"] == old["dagster/code_version"]
        assert tags[t]["dagster/data_version"] != old["dagster/data_version"]
        # The content's digest, as the stage reports it for the rows it keeps.
        assert tags[t]["dagster/data_version"] == content_version(
            read_partition(three_days, t, DAYS[0])
        )
    assert tags["exact_deduped"]["dagster/input_event_pointer/raw_pairs"] == str(
        after["raw_pairs"].storage_id
    )
    assert (
        tags["exact_deduped"]["dagster/input_data_version/raw_pairs"]
        == tags["raw_pairs"]["dagster/data_version"]
    )


def test_cli_apply_records_the_same_events_outside_a_run(
    three_days: Home, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from dataplatform import cli

    dagster_home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    cli._local_instance(three_days)
    with dg.DagsterInstance.get() as instance:
        selection = ["raw_pairs", "exact_deduped"]
        assert materialize_day(three_days, DAYS[0], selection=selection, instance=instance).success
    _file(three_days, {"id": "T1", "kind": "pair_id", "value": "b1", "filed": DAYS[1]})
    assert cli.main(["--home", str(three_days.root), "takedown", "apply"]) == 0
    assert "recorded 2 asset partition(s) in the Dagster instance" in capsys.readouterr().out
    with dg.DagsterInstance.get() as instance:
        for table in selection:
            record = _latest(instance, table, DAYS[0])
            assert record.run_id == ""  # reported by the CLI, in no run
            materialization = record.asset_materialization
            assert materialization.metadata["takedown_requests"].value == "T1"


def test_a_removed_pairs_ledger_rows_are_recorded_on_the_stages_ledger_asset(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    instance = dg.DagsterInstance.ephemeral()
    selection = ["raw_pairs", "exact_deduped"]
    assert materialize_day(three_days, DAYS[0], selection=selection, instance=instance).success
    monkeypatch.setenv("DATAPLATFORM_HOME", str(three_days.root))
    # a2 is a byte copy of a1: exact dedup dropped it, so it is in raw_pairs and in exact
    # dedup's rows of the ledger, not in exact_deduped.
    _file(three_days, {"id": "T3", "kind": "pair_id", "value": "a2", "filed": DAYS[1]})
    result = defs.resolve_job_def("apply_takedowns").execute_in_process(instance=instance)
    assert result.success
    events = [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events()
    ]
    assert [(e.asset_key.to_user_string(), e.partition) for e in events] == [
        ("raw_pairs", DAYS[0]),
        ("exact_deduped_rejections", DAYS[0]),
    ]
    assert all(e.metadata["takedown_requests"].value == "T3" for e in events)
