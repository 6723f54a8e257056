"""Takedowns in Dagster: a job that applies every request, and a sensor that starts it.

The sensor watches ``landing/takedowns/`` and launches ``apply_takedowns`` when the request
files change, so a takedown reaches the written tables, the exports, the dataset cards and the
review sheets without anyone materializing anything; ``dataplatform takedown apply`` does the
same from a shell.

Both record a Dagster event for every asset partition the takedown rewrote
(:func:`record_takedown`), naming the requests, so that the asset's page says who changed the
partition and why.
"""

from collections.abc import Callable

import dagster as dg

from dataplatform.assets.reporting import ledger_key
from dataplatform.core.records.documents import refresh_documents
from dataplatform.core.records.takedown_apply import (
    PartitionRewrite,
    TakedownReport,
    apply_takedowns,
)
from dataplatform.core.records.takedown_requests import (
    TakedownRequestError,
    load_takedowns,
    requests_digest,
)
from dataplatform.core.store.content_version import combined_version
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import LEDGER_TABLE
from dataplatform.resources.warehouse import WarehouseResource

JOB_NAME = "apply_takedowns"
# Metadata of each takedown event: the ids of the requests that rewrote the partition.
REQUESTS_METADATA = "takedown_requests"
_PAIRS_SHOWN = 50
_SYSTEM_TAG_PREFIXES = (
    "dagster/code_version",
    "dagster/input_data_version/",
    "dagster/input_event_pointer/",
)
_DATA_VERSION_TAG = "dagster/data_version"
_POINTER_PREFIX = "dagster/input_event_pointer/"
_INPUT_VERSION_PREFIX = "dagster/input_data_version/"


def _asset_key(rewrite: PartitionRewrite, known: set[dg.AssetKey]) -> dg.AssetKey | None:
    """The asset that holds the rewritten table (a ledger stage: its own asset, else the
    ledger's); None when the table is no asset of the code location."""
    candidates = (
        [ledger_key(rewrite.stage), dg.AssetKey(LEDGER_TABLE)]
        if rewrite.stage is not None
        else [dg.AssetKey(rewrite.table)]
    )
    return next((k for k in candidates if k in known), None)


def _requests_table(report: TakedownReport, rewrites: list[PartitionRewrite]) -> str:
    rows = {}
    for rewrite in rewrites:
        for r in report.requests_for(rewrite):
            rows.setdefault(r.request_id, r)
    cells = [
        f"| {r.request_id} | {r.kind} | {r.value[:80]} | {r.reason or '-'} | {r.filed} |"
        for r in rows.values()
    ]
    head = "| request | by | value | reason | filed |\n| --- | --- | --- | --- | --- |"
    return "\n".join([head, *(c.replace("\n", " ") for c in cells)])


def record_takedown(
    instance: dg.DagsterInstance,
    report: TakedownReport,
    asset_graph,
    emit: Callable[[dg.AssetMaterialization], None],
) -> list[dg.AssetMaterialization]:
    """One AssetMaterialization per asset partition the takedown rewrote, naming the requests.

    A materialization, not an observation: the partition's rows changed, and a materialization
    is what Dagster's consumers of a partition see (the asset's latest version, asset sensors,
    automation conditions); an observation of a materializable asset is invisible to staleness
    and automation, so nothing downstream would learn of the change. So that the event does not
    make Dagster's data versions lie, each carries the code version and inputs of the
    materialization it supersedes and the rewritten partition's content version (the digest
    its stage reports, so a later re-run that keeps the same rows shows no change); an input
    pointer to a partition rewritten in the same takedown points at its new event. The
    rewritten partitions then stay fresh against each other (they were rewritten together),
    while a downstream partition that held none of the pairs, and was not rewritten,
    shows that its input changed. Events go upstream first, since each may point at an earlier
    one. ``emit`` logs an event: ``context.log_event`` in a run, the instance's runless report
    from the CLI. Tables that are not assets of ``asset_graph`` are skipped.
    """
    known = set(asset_graph.materializable_asset_keys)
    order = {k: i for i, k in enumerate(asset_graph.toposorted_asset_keys)}
    grouped: dict[tuple[str, dg.AssetKey], list[PartitionRewrite]] = {}
    for rewrite in report.rewrites:
        key = _asset_key(rewrite, known)
        if key is not None:
            grouped.setdefault((rewrite.date, key), []).append(rewrite)
    superseded: dict[str, tuple[str, str]] = {}  # old storage id -> (new storage id, version)
    events = []
    for date, key in sorted(grouped, key=lambda dk: (dk[0], order[dk[1]])):
        rewrites = grouped[(date, key)]
        partition = date if asset_graph.get(key).is_partitioned else None
        records_filter = dg.AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition else None
        )
        previous = instance.fetch_materializations(records_filter, limit=1).records
        pairs = sorted({p for r in rewrites for p in r.pair_ids})
        requests = sorted({q.request_id for r in rewrites for q in report.requests_for(r)})
        tags = {}
        if previous:
            old = previous[0].event_log_entry.tags or {}
            tags = {k: v for k, v in old.items() if k.startswith(_SYSTEM_TAG_PREFIXES)}
            for tag, pointer in list(tags.items()):
                if tag.startswith(_POINTER_PREFIX) and pointer in superseded:
                    dep = tag.removeprefix(_POINTER_PREFIX)
                    tags[tag], tags[_INPUT_VERSION_PREFIX + dep] = superseded[pointer]
        # Several ledger stages in one asset partition: one digest of theirs, in order.
        versions = [r.version for r in rewrites]
        tags[_DATA_VERSION_TAG] = versions[0] if len(versions) == 1 else combined_version(versions)
        parts = ", ".join(
            f"{r.table}" + (f" stage={r.stage}" if r.stage else "") + f" {r.rows}" for r in rewrites
        )
        event = dg.AssetMaterialization(
            asset_key=key,
            partition=partition,
            description=f"Takedown {', '.join(requests)}: rewrote {parts} row(s).",
            metadata={
                REQUESTS_METADATA: ", ".join(requests),
                "requests": dg.MetadataValue.md(_requests_table(report, rewrites)),
                "rows_changed": sum(r.rows for r in rewrites),
                "pairs": ", ".join(pairs[:_PAIRS_SHOWN])
                + (f" (+{len(pairs) - _PAIRS_SHOWN})" if len(pairs) > _PAIRS_SHOWN else ""),
                **(
                    {"receipt": dg.MetadataValue.path(str(report.receipt))}
                    if report.receipt
                    else {}
                ),
            },
            tags=tags,
        )
        emit(event)
        events.append(event)
        if previous:
            latest = instance.fetch_materializations(records_filter, limit=1).records
            if latest:
                superseded[str(previous[0].storage_id)] = (
                    str(latest[0].storage_id),
                    tags[_DATA_VERSION_TAG],
                )
    return events


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
    # The code location's graph (imported here: definitions imports this module). A run that
    # executes in process has no repository on its context.
    from dataplatform.definitions import defs

    events = record_takedown(
        context.instance, report, defs.resolve_asset_graph(), context.log_event
    )
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
        "asset_partitions_recorded": len(events),
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
            "asset_partitions_recorded": len(events),
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
