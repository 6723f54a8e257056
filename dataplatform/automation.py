"""The job, schedule and sensor that keep the newest partitions curated."""

import json

import dagster as dg

from dataplatform.assets import ALL_ASSETS, STAGE_ASSETS
from dataplatform.assets.partitions import daily_partitions
from dataplatform.core.store.warehouse import partition_dates
from dataplatform.resources.warehouse import WarehouseResource

JOB_NAME = "curate_daily"
TRIGGER_TAG = "dataplatform/trigger"

curate_daily = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    description="Every curation stage and the tokens for one ingest date.",
)

# Runs shortly after midnight UTC for the day that just closed.
curate_daily_schedule = dg.build_schedule_from_partitioned_job(
    curate_daily, hour_of_day=1, minute_of_hour=0, tags={TRIGGER_TAG: "schedule"}
)

_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    job=curate_daily,
    minimum_interval_seconds=30,
    description="Starts a run for each new landing/<date>/ folder (local or s3://), oldest first.",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def landing_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult | dg.SkipReason:
    """One run at a time, oldest date first: dedup of a day needs every earlier day done."""
    home = warehouse.resolve()
    valid = set(daily_partitions.get_partition_keys(dynamic_partitions_store=None))
    requested = set(json.loads(context.cursor)) if context.cursor else set()
    done = set(partition_dates(home, STAGE_ASSETS[-1].key.path[-1]))
    pending = [d for d in home.landing_dates() if d in valid and d not in requested | done]
    if not pending:
        return dg.SkipReason("no new landing folder for an open partition")
    busy = context.instance.get_runs(
        dg.RunsFilter(job_name=JOB_NAME, statuses=_IN_PROGRESS), limit=1
    )
    if busy:
        return dg.SkipReason(f"waiting for run {busy[0].run_id} before starting {pending[0]}")
    date = pending[0]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"landing-{date}", partition_key=date, tags={TRIGGER_TAG: "sensor"}
            )
        ],
        cursor=json.dumps(sorted(requested | {date})),
    )
