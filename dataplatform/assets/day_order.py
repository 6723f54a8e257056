"""Global dedup stages decide a day against every earlier day: the guard that keeps that order.

Outside a backfill, a refused day is fixed by materializing the earlier days first. Inside one,
the backfill has (or should have) those days itself: the run queue must run a backfill's runs one
at a time, oldest first (``dagster/backfill`` limited to 1 per value in ``dagster.yaml``), and a
refusal names the backfill's earlier runs that are not done and says to re-execute them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from dataplatform.assets.partitions import START_DATE, daily_partitions
from dataplatform.resources.warehouse import WarehouseResource

BACKFILL_TAG = "dagster/backfill"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# The run-queue limit that keeps a backfill's runs in date order: one run per backfill at a time
# (the queue lets out the oldest first). docker/dagster.yaml, the Helm values and a local
# instance's dagster.yaml carry it under concurrency.runs.tag_concurrency_limits.
ONE_RUN_PER_BACKFILL = {
    "key": BACKFILL_TAG,
    "value": {"applyLimitPerUniqueValue": True},
    "limit": 1,
}
# The same, as a refusal names it.
QUEUE_SETTING = (
    "concurrency.runs.tag_concurrency_limits: {key: dagster/backfill, "
    "value: {applyLimitPerUniqueValue: true}, limit: 1}"
)
_SHOWN = 10


@dataclass(frozen=True)
class BackfillDay:
    """A missing earlier day and the run of the same backfill that has it, if any."""

    date: str
    run: dg.DagsterRun | None


def require_earlier_partitions(warehouse: WarehouseResource, asset: str, date: str) -> None:
    """Refuse a global dedup of ``date`` while an earlier landing day lacks ``asset``.

    The run being executed (``AssetExecutionContext.get()``) decides the advice: inside a
    backfill, which of the backfill's own earlier runs to re-execute; otherwise, what to
    materialize first.
    """
    missing = warehouse.missing_earlier_partitions(asset, date, START_DATE)
    if not missing:
        return
    head = (
        f"{asset} for {date} deduplicates against every earlier day, but these landing dates "
        f"have no {asset} partition yet: {_shown(missing)}."
    )
    context = _current_context()
    backfill_id = context.run.tags.get(BACKFILL_TAG) if context is not None else None
    if context is None or not backfill_id:
        advice = (
            " Materialize them first, or launch a backfill over the range: the run queue runs "
            "a backfill's runs one at a time, in date order."
        )
        raise dg.Failure(
            description=head + advice, metadata={"missing_partitions": ", ".join(missing)}
        )
    days = _backfill_days(context.instance, backfill_id, asset, missing)
    raise dg.Failure(
        description=head + " " + backfill_advice(backfill_id, context.run.run_id, days),
        metadata={
            "missing_partitions": ", ".join(missing),
            "backfill": backfill_id,
            "backfill_runs_to_redo": ", ".join(
                sorted({d.run.run_id for d in days if d.run is not None})
            )
            or "-",
        },
    )


def backfill_advice(backfill_id: str, run_id: str, days: Sequence[BackfillDay]) -> str:
    """What to do inside backfill ``backfill_id``, for its run ``run_id``, about ``days``."""
    failed: dict[str, list[str]] = {}
    unfinished: dict[str, list[str]] = {}
    for day in days:
        if day.run is None:
            continue
        target = failed if day.run.is_finished else unfinished
        target.setdefault(day.run.run_id, []).append(day.date)
    status = {d.run.run_id: d.run.status.value.lower() for d in days if d.run is not None}
    outside = [d.date for d in days if d.run is None]
    parts = [f"This run is part of backfill {backfill_id}."]
    if failed:
        runs = "; ".join(f"run {r} ({_shown(d)}, {status[r]})" for r, d in failed.items())
        parts.append(
            f"Its earlier days are not done: these runs of the backfill ended without them: "
            f"{runs}. Re-execute them (Re-execute > From failure), and after they "
            f"succeed re-execute this run ({run_id}); later runs of the backfill that failed "
            f"the same way need the same."
        )
    if unfinished:
        runs = "; ".join(f"run {r} ({_shown(d)}, {status[r]})" for r, d in unfinished.items())
        parts.append(
            f"These runs of the backfill have its earlier days and have not finished: {runs}. "
            f"This run started before them, so the run queue let two runs of one backfill run "
            f"at once: set {QUEUE_SETTING} in the instance's dagster.yaml (docs/deployment.md), "
            f"then re-execute this run after they succeed."
        )
    if outside:
        parts.append(
            f"{_shown(outside)} {'is' if len(outside) == 1 else 'are'} not in this backfill: "
            f"materialize {'it' if len(outside) == 1 else 'them'} first, or launch the backfill "
            f"from {outside[0]}, then re-execute this run."
        )
    return " ".join(parts)


def _backfill_days(
    instance: dg.DagsterInstance, backfill_id: str, asset: str, missing: list[str]
) -> list[BackfillDay]:
    """Each missing day with the newest run of the backfill that materializes it for
    ``asset``: one-day runs by ``dagster/partition``, range runs by their range tags."""
    key = dg.AssetKey(asset)
    owner: dict[str, dg.DagsterRun] = {}
    wanted = set(missing)
    # Newest first, so a re-executed run stands for its day rather than the failed original.
    for run in instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})):
        if run.asset_selection is not None and key not in run.asset_selection:
            continue
        for day in _run_days(run):
            if day in wanted and day not in owner:
                owner[day] = run
    return [BackfillDay(d, owner.get(d)) for d in missing]


def _run_days(run: dg.DagsterRun) -> list[str]:
    if PARTITION_TAG in run.tags:
        return [run.tags[PARTITION_TAG]]
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if not (start and end):
        return []
    return daily_partitions.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))


def _current_context() -> dg.AssetExecutionContext | None:
    """The asset step being executed, or ``None`` when called outside one (core tests, CLI)."""
    try:
        return dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None


def _shown(days: Sequence[str]) -> str:
    more = len(days) - _SHOWN
    return ", ".join(days[:_SHOWN]) + (f" and {more} more" if more > 0 else "")
