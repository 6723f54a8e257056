"""The landing sensor and the daily schedule: complete days only, oldest first, never twice."""

import datetime as dt
import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id

from dataplatform.automation import (
    CURATED_TABLE,
    JOB_NAME,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    TRIGGER_TAG,
    landing_sensor,
)
from dataplatform.core.ingest.landing_ready import MARKER, QUIET_SECONDS_ENV
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import PART_FILE
from dataplatform.definitions import defs
from dataplatform.resources import WarehouseResource
from tests.assets.conftest import DAYS, materialize_day

# The schedule's tick for the day that just closed, DAYS[2].
TICK = dt.datetime(2025, 1, 4, 1, 0, tzinfo=dt.UTC)


def _resources(home: Home) -> dict:
    return {"warehouse": WarehouseResource(home=str(home.root))}


def _tick(home: Home, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=_resources(home))
    return landing_sensor(context)


def _schedule_tick(home: Home, instance: dg.DagsterInstance):
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources=_resources(home),
        repository_def=defs.get_repository_def(),
    )
    schedule = defs.resolve_schedule_def("curate_daily_schedule")
    return schedule.evaluate_tick(context)


def _complete(home: Home, *days: str) -> None:
    """The producer's marker in each day: the day is complete."""
    for day in days:
        (home.landing_date(day) / MARKER).write_text("")


def _age(home: Home, day: str, seconds: float) -> None:
    """Everything in ``day`` last changed ``seconds`` ago."""
    then = time.time() - seconds
    folder = home.landing_date(day)
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then))


def _run(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]
) -> dg.DagsterRun:
    """A run of curate_daily in ``status``, as the run queue and the run worker leave it."""
    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="dataplatform.definitions")
    )
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), JOB_NAME)
    return instance.add_run(
        dg.DagsterRun(
            job_name=JOB_NAME,
            run_id=make_new_run_id(),
            status=status,
            tags=tags,
            remote_job_origin=origin,
        )
    )


def _day_run(instance: dg.DagsterInstance, day: str, status: dg.DagsterRunStatus, trigger: str):
    return _run(instance, status, {PARTITION_TAG: day, TRIGGER_TAG: trigger})


def test_sensor_requests_complete_landing_dates_oldest_first(three_days: Home):
    _complete(three_days, *DAYS)
    with dg.instance_for_test() as instance:
        first = _tick(three_days, instance, None)
        assert [r.partition_key for r in first.run_requests] == [DAYS[0]]
        assert first.run_requests[0].tags == {TRIGGER_TAG: "sensor"}
        assert json.loads(first.cursor) == [DAYS[0]]
        second = _tick(three_days, instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == [DAYS[1]]


def test_sensor_waits_for_the_marker_of_a_fresh_day(three_days: Home):
    """Files still arriving (just written, no marker): the oldest day waits, and says why."""
    with dg.instance_for_test() as instance:
        waiting = _tick(three_days, instance, None)
        assert isinstance(waiting, dg.SkipReason)
        assert waiting.skip_message.startswith(f"{DAYS[0]} waits: no {MARKER} yet and ")
        assert "after 600 s without changes" in waiting.skip_message
        # A later complete day does not jump the queue: dedup needs the days in order.
        _complete(three_days, DAYS[1])
        assert isinstance(_tick(three_days, instance, None), dg.SkipReason)
        _complete(three_days, DAYS[0])
        ready = _tick(three_days, instance, None)
        assert [r.partition_key for r in ready.run_requests] == [DAYS[0]]


def test_sensor_starts_a_day_without_marker_after_the_quiet_period(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(QUIET_SECONDS_ENV, "60")
    with dg.instance_for_test() as instance:
        _age(three_days, DAYS[0], 30)
        waiting = _tick(three_days, instance, None)
        assert isinstance(waiting, dg.SkipReason)
        assert "changed 30 s ago" in waiting.skip_message
        assert "after 60 s without changes (in 30 s at the earliest" in waiting.skip_message
        _age(three_days, DAYS[0], 90)
        ready = _tick(three_days, instance, None)
        assert [r.partition_key for r in ready.run_requests] == [DAYS[0]]
        monkeypatch.setenv(QUIET_SECONDS_ENV, "0")
        on_arrival = _tick(three_days, instance, ready.cursor)
        assert [r.partition_key for r in on_arrival.run_requests] == [DAYS[1]]


def test_sensor_skips_dates_already_curated(three_days: Home):
    _complete(three_days, *DAYS)
    with dg.instance_for_test() as instance:
        for day in DAYS:
            assert materialize_day(three_days, day, instance).success
        skipped = _tick(three_days, instance, None)
        assert isinstance(skipped, dg.SkipReason)
        (three_days.landing / "2025-01-04").mkdir()
        _complete(three_days, "2025-01-04")
        fresh = _tick(three_days, instance, None)
        assert [r.partition_key for r in fresh.run_requests] == ["2025-01-04"]


def test_schedule_targets_the_day_that_just_closed(three_days: Home):
    _complete(three_days, DAYS[2])
    with dg.instance_for_test() as instance:
        (request,) = _schedule_tick(three_days, instance).run_requests
    assert request.partition_key == DAYS[2]
    assert request.tags[TRIGGER_TAG] == "schedule"
    schedule = defs.resolve_schedule_def("curate_daily_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * *", "UTC")
    assert schedule.job_name == JOB_NAME


def test_schedule_skips_a_day_that_is_not_complete(three_days: Home):
    with dg.instance_for_test() as instance:
        result = _schedule_tick(three_days, instance)
    assert not result.run_requests
    assert result.skip_message.startswith(f"{DAYS[2]} waits: no {MARKER} yet")
    assert "switch on landing_sensor" in result.skip_message


def test_a_day_the_schedule_launched_is_not_launched_by_the_sensor(three_days: Home):
    _complete(three_days, *DAYS)
    with dg.instance_for_test() as instance:
        (request,) = _schedule_tick(three_days, instance).run_requests
        queued = _day_run(instance, request.partition_key, dg.DagsterRunStatus.QUEUED, "schedule")
        # The sensor has already requested the two earlier days.
        cursor = json.dumps(DAYS[:2])
        waiting = _tick(three_days, instance, cursor)
        assert waiting.skip_message == (
            f"{DAYS[2]} waits for run {queued.run_id} ({DAYS[2]}, started by the schedule, "
            f"queued) to finish"
        )
        # The run finished: it still holds the day.
        instance.delete_run(queued.run_id)
        done = _day_run(instance, DAYS[2], dg.DagsterRunStatus.SUCCESS, "schedule")
        skipped = _tick(three_days, instance, cursor)
        assert skipped.skip_message == (
            f"{DAYS[2]} already has run {done.run_id} ({DAYS[2]}, started by the schedule, success)"
        )
        # And the schedule does not launch it a second time either.
        assert _schedule_tick(three_days, instance).skip_message == skipped.skip_message


def test_a_day_the_sensor_launched_is_not_launched_by_the_schedule(three_days: Home):
    _complete(three_days, *DAYS)
    with dg.instance_for_test() as instance:
        started = _day_run(instance, DAYS[2], dg.DagsterRunStatus.STARTED, "sensor")
        result = _schedule_tick(three_days, instance)
        assert not result.run_requests
        assert result.skip_message == (
            f"{DAYS[2]} already has run {started.run_id} ({DAYS[2]}, started by the sensor, "
            f"started)"
        )
        # A failed run does not hold the day: the schedule may start it again.
        instance.delete_run(started.run_id)
        _day_run(instance, DAYS[2], dg.DagsterRunStatus.FAILURE, "sensor")
        (request,) = _schedule_tick(three_days, instance).run_requests
        assert request.partition_key == DAYS[2]


def test_a_job_backfill_range_run_holds_its_days(three_days: Home):
    """A range run of a job backfill carries no dagster/partition, only its range."""
    _complete(three_days, *DAYS)
    with dg.instance_for_test() as instance:
        ranged = _run(
            instance,
            dg.DagsterRunStatus.STARTED,
            {"dagster/backfill": "b1", RANGE_START_TAG: DAYS[0], RANGE_END_TAG: DAYS[2]},
        )
        result = _schedule_tick(three_days, instance)
        assert result.skip_message == (
            f"{DAYS[2]} already has run {ranged.run_id} ({DAYS[0]}...{DAYS[2]}, started by the "
            f"backfill, started)"
        )


def test_the_schedule_skips_a_day_already_in_the_warehouse(three_days: Home):
    """Curated by a run the instance no longer shows as holding it: the warehouse decides."""
    _complete(three_days, DAYS[2])
    part = Path(three_days.warehouse) / CURATED_TABLE / f"date={DAYS[2]}" / PART_FILE
    part.parent.mkdir(parents=True)
    part.write_bytes(b"")
    with dg.instance_for_test() as instance:
        result = _schedule_tick(three_days, instance)
    assert result.skip_message == (
        f"{DAYS[2]} is already curated: {CURATED_TABLE} has its partition"
    )
