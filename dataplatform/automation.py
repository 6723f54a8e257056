"""The job, schedule and sensor that keep the newest partitions curated.

Both the schedule and the sensor start a day only when its landing is complete
(``core.ingest.landing_ready``: the producer's ``_SUCCESS``, or a quiet folder), and only when
no run of ``curate_daily`` for that day is queued, in progress or done, so the two never both
launch a day.
"""

from __future__ import annotations

import json

import dagster as dg

from dataplatform.assets import ALL_ASSETS, STAGE_ASSETS, vq_tokenizer
from dataplatform.assets.partitions import daily_partitions
from dataplatform.freshness import freshness_checks
from dataplatform.resources.warehouse import WarehouseResource

JOB_NAME = "curate_daily"
TRIGGER_TAG = "dataplatform/trigger"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# A day is curated once the last curation stage has its partition.
CURATED_TABLE = STAGE_ASSETS[-1].node_def.name

curate_daily = dg.define_asset_job(
    JOB_NAME,
    # Not the tokenizer: it is trained once and runs only when asked (its own materialization,
    # or `dataplatform materialize`); `tokens` reads the one trained last. Not the freshness
    # checks: they are judged by their sensor against the deadline, not by the run of a day.
    selection=(
        dg.AssetSelection.assets(*ALL_ASSETS)
        - dg.AssetSelection.assets(vq_tokenizer)
        - dg.AssetSelection.checks(*freshness_checks)
    ),
    description=(
        "Every curation stage, the tokens and the data cards for one ingest date (the "
        "tokenizer is materialized on its own, when asked)."
    ),
)

_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
# A run in one of these states already has the day: a second launch would curate it twice.
_LAUNCHED = [*_IN_PROGRESS, dg.DagsterRunStatus.SUCCESS]


def launched_run(instance: dg.DagsterInstance, date: str) -> dg.DagsterRun | None:
    """A ``curate_daily`` run that is queued, in progress or succeeded for ``date``, if any.

    One-day runs carry ``dagster/partition``; a range run of a job backfill carries the range
    tags instead and is looked for among the unfinished runs only, which are few (a finished
    range has its partitions in the warehouse, which the sensor checks).
    """
    runs = instance.get_runs(
        dg.RunsFilter(job_name=JOB_NAME, tags={PARTITION_TAG: date}, statuses=_LAUNCHED),
        limit=1,
    )
    if runs:
        return runs[0]
    for candidate in instance.get_runs(dg.RunsFilter(job_name=JOB_NAME, statuses=_IN_PROGRESS)):
        start, end = candidate.tags.get(RANGE_START_TAG), candidate.tags.get(RANGE_END_TAG)
        if start and end and start <= date <= end:
            return candidate
    return None


def _describe(run: dg.DagsterRun) -> str:
    """``run <id> (<days>, started by the <trigger>, <status>)``, for a skip reason."""
    days = run.tags.get(PARTITION_TAG) or (
        f"{run.tags.get(RANGE_START_TAG)}...{run.tags.get(RANGE_END_TAG)}"
        if RANGE_START_TAG in run.tags
        else "no partition"
    )
    trigger = run.tags.get(TRIGGER_TAG) or ("backfill" if "dagster/backfill" in run.tags else "")
    by = f", started by the {trigger}" if trigger else ""
    return f"run {run.run_id} ({days}{by}, {run.status.value.lower()})"


@dg.schedule(
    cron_schedule="0 1 * * *",
    job=curate_daily,
    execution_timezone="UTC",
    name="curate_daily_schedule",
    description=(
        "Curates the day that just closed at 01:00 UTC, once its landing is complete and no "
        "other run has it."
    ),
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def curate_daily_schedule(
    context: dg.ScheduleEvaluationContext, warehouse: WarehouseResource
) -> dg.RunRequest | dg.SkipReason:
    """The day before the tick, as ``build_schedule_from_partitioned_job`` picks it."""
    from dataplatform.core.ingest.landing_ready import day_readiness, landing_quiet_seconds
    from dataplatform.core.store.warehouse import partition_dates

    with dg.partition_loading_context(effective_dt=context.scheduled_execution_time):
        date = daily_partitions.get_last_partition_key()
    if date is None:
        return dg.SkipReason("no partition has closed yet (the partitions start later)")
    existing = launched_run(context.instance, date)
    if existing is not None:
        return dg.SkipReason(f"{date} already has {_describe(existing)}")
    home = warehouse.resolve()
    if date in partition_dates(home, CURATED_TABLE):
        # Curated by a run this check cannot see (a finished backfill range, another instance).
        return dg.SkipReason(f"{date} is already curated: {CURATED_TABLE} has its partition")
    readiness = day_readiness(home, date, landing_quiet_seconds())
    if not readiness.ready:
        return dg.SkipReason(
            f"{readiness.reason}. The schedule does not try again: switch on landing_sensor to "
            f"start {date} when it is complete, or launch it by hand."
        )
    return dg.RunRequest(partition_key=date, tags={TRIGGER_TAG: "schedule"})


@dg.sensor(
    job=curate_daily,
    minimum_interval_seconds=30,
    description=(
        "Starts a run for each complete landing/<date>/ folder (local or s3://), oldest first: "
        "complete once its producer wrote _SUCCESS, or after DATAPLATFORM_LANDING_QUIET_SECONDS "
        "(600) without changes."
    ),
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def landing_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult | dg.SkipReason:
    """One run at a time, oldest date first: dedup of a day needs every earlier day done."""
    from dataplatform.core.ingest.landing_ready import day_readiness, landing_quiet_seconds
    from dataplatform.core.store.warehouse import partition_dates

    home = warehouse.resolve()
    valid = set(daily_partitions.get_partition_keys(dynamic_partitions_store=None))
    requested = set(json.loads(context.cursor)) if context.cursor else set()
    done = set(partition_dates(home, CURATED_TABLE))
    pending = [d for d in home.landing_dates() if d in valid and d not in requested | done]
    if not pending:
        return dg.SkipReason("no new landing folder for an open partition")
    busy = context.instance.get_runs(
        dg.RunsFilter(job_name=JOB_NAME, statuses=_IN_PROGRESS), limit=1
    )
    if busy:
        return dg.SkipReason(f"{pending[0]} waits for {_describe(busy[0])} to finish")
    # A day another trigger already ran (the schedule, a hand-launched run) is passed over; the
    # oldest day left is the only one that may start now.
    notes = []
    for date in pending:
        existing = launched_run(context.instance, date)
        if existing is not None:
            notes.append(f"{date} already has {_describe(existing)}")
            continue
        readiness = day_readiness(home, date, landing_quiet_seconds())
        if not readiness.ready:
            return dg.SkipReason("; ".join([*notes, readiness.reason]))
        context.log.info(readiness.reason)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"landing-{date}", partition_key=date, tags={TRIGGER_TAG: "sensor"}
                )
            ],
            cursor=json.dumps(sorted(requested | {date})),
        )
    return dg.SkipReason("; ".join(notes))
