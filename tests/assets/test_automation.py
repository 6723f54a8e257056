import datetime as dt
import json

import dagster as dg

from dataplatform.automation import landing_sensor
from dataplatform.core.store.home import Home
from dataplatform.definitions import defs
from dataplatform.resources import WarehouseResource
from tests.assets.conftest import DAYS, materialize_day


def _tick(home: Home, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"warehouse": WarehouseResource(home=str(home.root))},
    )
    return landing_sensor(context)


def test_sensor_requests_new_landing_dates_oldest_first(three_days: Home):
    with dg.instance_for_test() as instance:
        first = _tick(three_days, instance, None)
        assert [r.partition_key for r in first.run_requests] == [DAYS[0]]
        assert json.loads(first.cursor) == [DAYS[0]]
        second = _tick(three_days, instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == [DAYS[1]]


def test_sensor_skips_dates_already_curated(three_days: Home):
    with dg.instance_for_test() as instance:
        for day in DAYS:
            assert materialize_day(three_days, day, instance).success
        skipped = _tick(three_days, instance, None)
        assert isinstance(skipped, dg.SkipReason)
        (three_days.landing / "2025-01-04").mkdir()
        fresh = _tick(three_days, instance, None)
        assert [r.partition_key for r in fresh.run_requests] == ["2025-01-04"]


def test_schedule_targets_the_day_that_just_closed():
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2025, 1, 4, 1, 0, tzinfo=dt.UTC)
    )
    schedule = defs.resolve_schedule_def("curate_daily_schedule")
    requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2025-01-03"]
