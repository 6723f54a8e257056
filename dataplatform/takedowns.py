"""Takedowns in Dagster: a job that applies every request, and a sensor that starts it.

The sensor watches ``landing/takedowns/`` and launches ``apply_takedowns`` when the request
files change, so a takedown reaches the written tables, the exports, the dataset cards and the
review sheets without anyone materializing anything; ``dataplatform takedown apply`` does the
same from a shell.
"""

import dagster as dg

from dataplatform.core.records.documents import refresh_documents
from dataplatform.core.records.takedown_apply import apply_takedowns
from dataplatform.core.records.takedown_requests import (
    TakedownRequestError,
    load_takedowns,
    requests_digest,
)
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.resources.warehouse import WarehouseResource

JOB_NAME = "apply_takedowns"


@dg.op(description="Remove every pair a takedown request names from every table and export.")
def apply_takedown_requests(
    context: dg.OpExecutionContext, warehouse: WarehouseResource
) -> dg.Output[dict]:
    home = warehouse.resolve()
    try:
        requests = load_takedowns(home)
    except TakedownRequestError as exc:
        raise dg.Failure(description=str(exc)) from exc
    report = apply_takedowns(home, requests)
    documents = (
        refresh_documents(home, report.dates, [m.pair_id for m in report.matches], STAGE_ORDER)
        if report.matches
        else []
    )
    summary = {
        "requests": len(requests),
        "removed": [m.pair_id for m in report.matches],
        "partitions_rewritten": report.partitions,
        "shards_rewritten": report.shards,
        "documents_rendered": len(documents),
        "remaining": report.remaining,
    }
    if not report.verified:
        raise dg.Failure(
            description="pairs are still present after the takedown: "
            + "; ".join(report.remaining),
            metadata={"receipt": dg.MetadataValue.path(str(report.receipt))},
        )
    context.log.info(f"{len(report.matches)} pair(s) removed; receipt {report.receipt}")
    return dg.Output(
        summary,
        metadata={
            "removed": len(report.matches),
            "pairs": ", ".join(summary["removed"][:50]) or "-",
            "receipt": dg.MetadataValue.path(str(report.receipt)),
            "verified": report.verified,
        },
    )


@dg.job(name=JOB_NAME, description="Apply the takedown requests under landing/takedowns/.")
def apply_takedowns_job() -> None:
    apply_takedown_requests()


@dg.sensor(
    job_name=JOB_NAME,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts apply_takedowns whenever the takedown request files change.",
)
def takedown_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    digest = requests_digest(warehouse.resolve())
    if not digest:
        return dg.SkipReason("no takedown requests under landing/takedowns/")
    if digest == context.cursor:
        return dg.SkipReason("takedown requests unchanged since the last run")
    context.update_cursor(digest)
    return dg.RunRequest(run_key=digest)
