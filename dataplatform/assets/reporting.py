"""What every stage does the same way: read its input, commit its output, report metadata."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.assets.day_order import require_earlier_partitions
from dataplatform.assets.partitions import daily_partitions
from dataplatform.assets.review import review_sheet_metadata
from dataplatform.assets.step_logs import progress_to
from dataplatform.core.records.funnel import StageFunnel, stage_funnel
from dataplatform.core.store.content_version import combined_version, content_version
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    SIDE_TABLES,
    CorruptPartitionError,
    Location,
    commit_stage,
    ledger_file,
    partition_dates,
    partition_file,
    read_history,
    read_partition,
    refresh_catalog,
)
from dataplatform.resources.warehouse import WarehouseResource

OWNERS = ["team:data-curation"]
CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_PAIR_ID_UNIQUE = "pair_id_unique"
# A global dedup day is decided against every earlier day: re-running an earlier day fails this
# check on every later day (Dagster ignores a self-dependency for staleness at 100 or more
# partitions, so "stale" would never show it).
CHECK_DECIDED_AFTER_EARLIER_DAYS = "decided_after_earlier_days"
# The checks every stage reports; a failed one blocks the stages downstream of the day.
SHARED_CHECKS = {
    CHECK_ROWS_CONSERVED: (
        "Blocking. Rows in = rows kept + rows in the rejection ledger: no pair is lost silently."
    ),
    CHECK_PAIR_ID_UNIQUE: (
        "Blocking. pair_id is unique among the kept pairs (for a global dedup stage: across "
        "every kept pair up to this day)."
    ),
}
DECIDED_DESCRIPTION = (
    "This day was deduplicated after the latest materialization of every earlier "
    "day. Fails, naming the earlier day, when an earlier day is materialized again: then "
    "re-materialize this day and the later ones in date order."
)
# Where a global stage checks pair_id (and hash) uniqueness: its history and the day together.
GLOBAL_SCOPE = "all kept pairs up to this day"
# The funnel counts every stage's metadata has (stage_metadata), summed over a range run.
_FUNNEL = ("rows_in", "rows_kept", "rows_removed")


LEDGER_SUFFIX = "_rejections"


def ledger_key(stage: str) -> dg.AssetKey:
    """The asset of ``stage``'s rows of the rejection ledger (``rejections/stage=<stage>``).

    ``<stage>_rejections``, one flat name: the graph labels a node with its key's last part, so
    ``rejections/<stage>`` read as the stage itself, side by side in the stage's group.
    """
    return dg.AssetKey(f"{stage}{LEDGER_SUFFIX}")


def ledger_stage(key: dg.AssetKey) -> str | None:
    """The stage whose ledger rows ``key`` is, or None for any other asset."""
    name = key.path[-1]
    return (
        name[: -len(LEDGER_SUFFIX)] if len(key.path) == 1 and name.endswith(LEDGER_SUFFIX) else None
    )


def stage_specs(
    key: dg.AssetKey,
    *,
    deps: Sequence[dg.AssetKey | dg.AssetDep],
    description: str,
    kinds: set[str],
    code_version: str,
    group_name: str,
    side_tables: Mapping[str, str] | None = None,
) -> list[dg.AssetSpec]:
    """What one stage writes, as the assets the UI's graph shows: the stage's table, its rows of
    the rejection ledger, and its side tables (``side_tables``: name -> description).

    They are committed together (``write_stage``), so they are one multi-asset: one step, one
    run, no subsetting. A side table is skippable: a day that re-uses it (stored quality
    scores) does not report it rewritten. Readers of a side table depend on its key.
    """
    stage = key.path[-1]
    # The ledger rows and side tables are computed from the stage's input, not from its own
    # earlier days: they show the same upstream edges, without the self-dependency.
    # (Nor the ledgers a stage reads to count the funnel: its own ledger rows come from its
    # input rows.)
    inputs = [
        d
        for d in deps
        if (k := d.asset_key if isinstance(d, dg.AssetDep) else d) != key
        and ledger_stage(k) is None
    ]
    common = {"owners": OWNERS, "code_version": code_version, "deps": inputs}
    specs = [
        dg.AssetSpec(
            key,
            description=description,
            kinds=kinds,
            group_name=group_name,
            **{**common, "deps": deps},
        ),
        dg.AssetSpec(
            ledger_key(stage),
            description=(
                f"The rejection-ledger rows of {stage}: one per pair it dropped, with the "
                "reason, the detail and the pair it duplicates (view `rejections`)."
            ),
            kinds={"parquet"},
            # Beside its stage: `--select group:curation` then selects whole steps.
            group_name=group_name,
            **common,
        ),
    ]
    for name, text in (side_tables or {}).items():
        if SIDE_TABLES.get(name) != stage:
            raise ValueError(f"{stage} declares side table {name}: add it to SIDE_TABLES")
        specs.append(
            dg.AssetSpec(
                dg.AssetKey(name),
                description=text,
                kinds={"parquet"},
                group_name=group_name,
                skippable=True,
                **common,
            )
        )
    return specs


@dataclass(frozen=True)
class StageDay:
    """The day one stage is materializing: where it writes, as which stage, for which date."""

    home: Home
    stage: str
    date: str
    global_dedup: bool = False


def open_stage_day(
    warehouse: WarehouseResource, stage: str, date: str, *, global_dedup: bool = False
) -> StageDay:
    """The head every stage shares: its home and the day's date, ready for ``finish_stage``.

    A global dedup stage (``global_dedup``) compares the day with every earlier day's kept
    pairs, so it first refuses to run while an earlier landing day lacks its partition.
    """
    home = warehouse.resolve()
    if global_dedup:
        require_earlier_partitions(warehouse, stage, date)
    return StageDay(home, stage, date, global_dedup)


def for_each_day(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    materialize_day: Callable[[str], Sequence[dg.MaterializeResult]],
) -> Iterator[dg.MaterializeResult]:
    """Materialize every day of the run, oldest first, and yield one result per asset written.

    ``key`` is the stage's own asset; ``materialize_day`` returns ``finish_stage``'s results
    (the stage's, its ledger's, its side tables'). A run of one day yields them unchanged. A
    backfill run over a range (``partitions.daily_backfill_policy``) commits day after day, so
    a global dedup stage finds every earlier day done and earlier days win, exactly as in one
    run per day. Dagster records one materialization per day of the range, all with the one
    result's metadata, so each day's own metadata and check outcomes go on an observation and
    on check evaluations of its partition, and the yielded results sum the range
    (``range_result``). A day that raises fails the run: the days before it stay committed, and
    a re-run replaces them.
    """
    days = sorted(context.partition_keys)
    # A long step's progress lines (core loops without a log of their own) go to the run's logs.
    with progress_to(context):
        if len(days) == 1:
            yield from materialize_day(days[0])
            return
        done: list[tuple[str, Sequence[dg.MaterializeResult]]] = []
        for number, date in enumerate(days, 1):
            context.log.info(f"{key.to_user_string()}: day {number} of {len(days)}, {date}")
            results = materialize_day(date)
            for result in results:
                context.log_event(day_observation(result.asset_key or key, date, result))
            # The yielded result's checks have no partition in a range run: each day's own
            # outcome goes on its partition, where the check's page and the asset's show it.
            for evaluation in day_check_evaluations(context, key, date, results[0]):
                context.log_event(evaluation)
            done.append((date, results))
    yield range_result(key, [(date, results[0]) for date, results in done])
    yield from _range_side_results(context, done)


def _range_side_results(
    context: dg.AssetExecutionContext, done: Sequence[tuple[str, Sequence[dg.MaterializeResult]]]
) -> Iterator[dg.MaterializeResult]:
    """The ledger's and side tables' results of a range run, each with its days' versions.

    A side table written on only some days (stored scores re-used on the others) is reported
    as materialized on exactly those days' partitions, not on the whole range.
    """
    by_key: dict[dg.AssetKey, list[tuple[str, dg.MaterializeResult]]] = {}
    for date, results in done:
        for result in results[1:]:
            by_key.setdefault(result.asset_key, []).append((date, result))
    for key, written in by_key.items():
        if len(written) < len(done):
            for date, result in written:
                context.log_event(
                    dg.AssetMaterialization(
                        asset_key=key, partition=date, metadata=result.metadata or {}
                    )
                )
            continue
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "days": len(written),
                "first_day": written[0][0],
                "last_day": written[-1][0],
                "range_rows": sum(
                    _metadata_int(r, "dagster/partition_row_count") for _, r in written
                ),
            },
            data_version=dg.DataVersion(
                combined_version(r.data_version.value for _, r in written if r.data_version)
            ),
        )


def stage_checks(
    key: dg.AssetKey,
    own: Mapping[str, str] | None = None,
    *,
    global_dedup: bool = False,
    blocking: Collection[str] = (),
) -> list[dg.AssetCheckSpec]:
    """A stage's check specs, each with its description, evaluated per daily partition.

    The shared ones (``SHARED_CHECKS``) block: when one fails, the stages downstream of the day
    do not run. The stage's ``own`` (name: description) report, and block too when named in
    ``blocking`` (a uniqueness check is as fatal downstream as a lost row). A global dedup
    stage also declares ``CHECK_DECIDED_AFTER_EARLIER_DAYS``: it fails on later days from the
    run of an earlier one, where blocking has no step to stop, so it does not block.
    """
    shared = dict(SHARED_CHECKS)
    unknown = set(blocking) - set(own or {})
    if unknown:
        raise ValueError(f"blocking names checks the stage does not declare: {sorted(unknown)}")
    named = [(name, text, True) for name, text in shared.items()]
    if global_dedup:
        named.append((CHECK_DECIDED_AFTER_EARLIER_DAYS, DECIDED_DESCRIPTION, False))
    named += [(name, text, name in blocking) for name, text in (own or {}).items()]
    return [
        dg.AssetCheckSpec(
            name,
            asset=key,
            description=("Blocking. " + text if block and name not in SHARED_CHECKS else text),
            blocking=block,
            partitions_def=daily_partitions,
        )
        for name, text, block in named
    ]


def day_check_evaluations(
    context: dg.AssetExecutionContext, key: dg.AssetKey, date: str, result: dg.MaterializeResult
) -> list[dg.AssetCheckEvaluation]:
    """``result``'s check results as evaluations of ``date``'s partition (for a range run)."""
    blocking = {spec.name for spec in context.assets_def.check_specs if spec.blocking}
    return [
        dg.AssetCheckEvaluation(
            asset_key=check.asset_key or key,
            check_name=check.check_name,
            passed=check.passed,
            metadata=check.metadata,
            severity=check.severity,
            description=check.description,
            blocking=check.check_name in blocking,
            partition=date,
        )
        for check in result.check_results or ()
    ]


@contextmanager
def unreadable_files_fail() -> Iterator[None]:
    """A warehouse file that cannot be read fails the step, naming it and what rewrites it."""
    try:
        yield
    except CorruptPartitionError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={
                "unreadable_file": dg.MetadataValue.path(exc.path),
                "materialize": f"{exc.asset} for {exc.date}",
            },
        ) from exc


def read_input(home: Home, table: str, date: str) -> pa.Table:
    """The partition a stage reads; an unreadable file fails the step (see above)."""
    with unreadable_files_fail():
        return read_partition(home, table, date)


def read_input_history(home: Home, table: str, before: str, columns: list[str]) -> pa.Table:
    """``columns`` of ``table`` before ``before``; an unreadable file fails the step."""
    with unreadable_files_fail():
        return read_history(home, table, before, columns)


def write_stage(
    home: Home,
    stage: str,
    date: str,
    kept: pa.Table,
    ledger: pa.Table,
    side_tables: Mapping[str, pa.Table] | None = None,
) -> tuple[Location, str]:
    """Commit the stage's partition, its ledger and its side tables together; refresh the catalog.

    Returns the partition's file and the commit id. A side table must be declared in
    ``SIDE_TABLES`` as this stage's, so that an unreadable file of it names the stage that
    rewrites it.
    """
    side = dict(side_tables or {})
    undeclared = sorted(name for name in side if SIDE_TABLES.get(name) != stage)
    if undeclared:
        raise ValueError(
            f"{stage} writes {', '.join(undeclared)}: declare them in warehouse.SIDE_TABLES"
        )
    with unreadable_files_fail():
        commit = commit_stage(home, date, {stage: kept, **side}, {stage: ledger})
        refresh_catalog(home)
    return partition_file(home, stage, date), commit


def finish_stage(
    day: StageDay,
    rows_in: int,
    kept: pa.Table,
    ledger: pa.Table,
    *,
    side_tables: Mapping[str, pa.Table] | None = None,
    metadata: Mapping[str, object] | Callable[[], Mapping[str, object]] | None = None,
    checks: Sequence[dg.AssetCheckResult] = (),
    pair_ids: list | pa.ChunkedArray | None = None,
    pair_id_scope: str = "the day",
    review_sheet: bool = True,
    on_commit: Callable[[str], None] | None = None,
) -> list[dg.MaterializeResult]:
    """The tail every stage shares, in one place: commit, funnel, checks, metadata, results.

    Commits the partition, ledger and side tables together (``write_stage``), counts the
    funnel, and returns one ``MaterializeResult`` per table written: first the stage's own,
    with its metadata (``stage_metadata``, plus ``metadata``, which may be a function when it
    needs the committed partition, as dataset cards and the token tally do), its content data
    version and its checks: rows conserved and pair_id unique (over ``pair_ids``, the day's
    kept ids unless a global stage passes history and day), for a global stage the history
    check (``flag_later_days``), then the stage's own ``checks`` (the specs ``stage_checks``
    declares); then its ledger rows' and its side tables' (``stage_specs``). ``on_commit``
    gets the commit id as soon as the partition is committed (a global stage records its
    dedup state with it).
    """
    home, stage, date = day.home, day.stage, day.date
    output, commit = write_stage(home, stage, date, kept, ledger, side_tables)
    if on_commit is not None:
        on_commit(commit)
    funnel = stage_funnel(stage, date, rows_in, kept.num_rows, ledger)
    extra = dict(metadata() if callable(metadata) else (metadata or {}))
    ids = kept.column("pair_id") if pair_ids is None else pair_ids
    shared = [
        conservation_check(funnel),
        unique_check(CHECK_PAIR_ID_UNIQUE, "pair_id", ids, pair_id_scope),
    ]
    if day.global_dedup:
        shared.append(flag_later_days(day))
    key = dg.AssetKey(stage)
    main = dg.MaterializeResult(
        asset_key=key,
        metadata=stage_metadata(
            funnel,
            output,
            extra,
            home=home if review_sheet else None,
            schema=kept.schema,
        ),
        check_results=[_on(key, check) for check in [*shared, *checks]],
        # From the content, so that a changed day shows its downstream "upstream data changed"
        # and an identical re-run does not.
        data_version=dg.DataVersion(content_version(kept)),
    )
    written = {
        ledger_key(stage): ledger,
        **{dg.AssetKey(n): t for n, t in (side_tables or {}).items()},
    }
    return [main, *(_table_result(k, t, home, date) for k, t in written.items())]


def _on(key: dg.AssetKey, check: dg.AssetCheckResult) -> dg.AssetCheckResult:
    """``check`` aimed at ``key``: a multi-asset's check result must name its asset."""
    if check.asset_key is not None:
        return check
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=check.check_name,
        passed=check.passed,
        metadata=check.metadata,
        severity=check.severity,
        description=check.description,
    )


def _table_result(key: dg.AssetKey, table: pa.Table, home: Home, date: str) -> dg.MaterializeResult:
    """The result of a table a stage wrote beside its own: rows, columns, location, version."""
    stage = ledger_stage(key)
    name = LEDGER_TABLE if stage is not None else key.path[-1]
    location = (
        ledger_file(home, stage, date) if stage is not None else partition_file(home, name, date)
    )
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "dagster/partition_row_count": table.num_rows,
            "dagster/column_schema": column_schema(table.schema),
            "dagster/uri": str(location),
            "dagster/table_name": name,
        },
        data_version=dg.DataVersion(content_version(table)),
    )


def flag_later_days(day: StageDay) -> dg.AssetCheckResult:
    """Fail ``CHECK_DECIDED_AFTER_EARLIER_DAYS`` on every later day of ``day``'s global stage.

    Each later day with a partition was deduplicated against this day's previous kept pairs,
    so its decisions may no longer hold: each gets a failed evaluation naming this day and
    this run (one event per later day, so a re-run of a day two years back costs ~700 events,
    not a history scan). This day's own check passes: it is decided now, after all earlier days.
    Re-materializing a later day passes its check again.
    """
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    context = dg.AssetExecutionContext.get()
    key = dg.AssetKey(day.stage)
    later = [d for d in partition_dates(day.home, day.stage) if d > day.date]
    for date in later:
        # Aimed at the later day's latest materialization, as a check run with it would be:
        # the check's partition status then counts the day failed, not missing.
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[date]), limit=1
        ).records
        target = (
            AssetCheckEvaluationTargetMaterializationData(
                storage_id=records[0].storage_id,
                run_id=records[0].run_id,
                timestamp=records[0].timestamp,
            )
            if records
            else None
        )
        context.log_event(
            dg.AssetCheckEvaluation(
                asset_key=key,
                target_materialization_data=target,
                check_name=CHECK_DECIDED_AFTER_EARLIER_DAYS,
                passed=False,
                partition=date,
                blocking=False,
                description=(
                    f"{day.date} was materialized again after this day was deduplicated "
                    f"against it: re-materialize {day.stage} from {date} on, in date order"
                ),
                metadata={
                    "earlier_day_rerun": day.date,
                    "rerun_run_id": context.run.run_id,
                    "rematerialize_from": date,
                },
            )
        )
    if later:
        context.log.warning(
            f"{day.stage} {day.date} was decided again: {len(later)} later days "
            f"({later[0]} .. {later[-1]}) now fail {CHECK_DECIDED_AFTER_EARLIER_DAYS}; "
            f"re-materialize them in date order (a backfill from {later[0]})"
        )
    return dg.AssetCheckResult(
        check_name=CHECK_DECIDED_AFTER_EARLIER_DAYS,
        passed=True,
        metadata={"later_days_flagged": len(later)},
        description="decided after the latest materialization of every earlier day",
    )


def day_observation(
    key: dg.AssetKey, date: str, result: dg.MaterializeResult
) -> dg.AssetObservation:
    """One day of a range run as the UI shows it on the day's partition: its own metadata and
    the outcome of each of its checks (a check result has no partition of its own)."""
    checks = list(result.check_results or ())
    failed = [c.check_name for c in checks if not c.passed]
    return dg.AssetObservation(
        asset_key=key,
        partition=date,
        metadata={
            **(result.metadata or {}),
            "content_version": result.data_version.value if result.data_version else "-",
            "checks_failed": ", ".join(failed) or "-",
            "checks": dg.MetadataValue.md(
                _markdown_table(
                    ("check", "passed", "metadata"),
                    [(c.check_name, c.passed, _metadata_text(c.metadata)) for c in checks],
                )
            ),
        },
    )


def range_result(
    key: dg.AssetKey, days: Sequence[tuple[str, dg.MaterializeResult]]
) -> dg.MaterializeResult:
    """The one result of a range run: its days' funnels and totals, and their checks merged.

    Every day of the range gets this same metadata, so it holds no per-day figure under a
    one-day name (no ``dagster/row_count``: each day's is on its observation).
    """
    rows = [
        {
            "day": date,
            "rows_in": _metadata_int(result, "rows_in"),
            "rows_kept": _metadata_int(result, "rows_kept"),
            "rows_removed": _metadata_int(result, "rows_removed"),
            "checks_failed": ", ".join(
                c.check_name for c in result.check_results or () if not c.passed
            )
            or "-",
        }
        for date, result in days
    ]
    totals = {f"range_{name}": sum(r[name] for r in rows) for name in _FUNNEL}
    first, last = rows[0]["day"], rows[-1]["day"]
    summary = (
        f"**{key.to_user_string()}** {first} .. {last} ({len(rows)} days in one run): "
        f"{totals['range_rows_in']} in, {totals['range_rows_kept']} kept, "
        f"{totals['range_rows_removed']} removed. Each day's own metadata and checks are on "
        "the observation of its partition.\n\n"
        + _markdown_table(
            ("day", "rows in", "kept", "removed", "checks failed"),
            [tuple(r.values()) for r in rows],
        )
    )
    by_day = dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in rows],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("day", "string"),
                *[dg.TableColumn(name, "int") for name in _FUNNEL],
                dg.TableColumn("checks_failed", "string"),
            ]
        ),
    )
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "days": len(rows),
            "first_day": first,
            "last_day": last,
            **totals,
            "by_day": by_day,
            "summary": dg.MetadataValue.md(summary),
        },
        check_results=merge_checks(days),
        # Dagster gives every day of the range this one version: it changes when any day's
        # content does. Each day's own version is on its observation.
        data_version=dg.DataVersion(
            combined_version(result.data_version.value for _, result in days if result.data_version)
        ),
    )


def merge_checks(days: Sequence[tuple[str, dg.MaterializeResult]]) -> list[dg.AssetCheckResult]:
    """Each check once for the range: passed only if it passed on every day, failing days named."""
    by_name: dict[str, list[tuple[str, dg.AssetCheckResult]]] = {}
    for date, result in days:
        for check in result.check_results or ():
            by_name.setdefault(check.check_name, []).append((date, check))
    merged = []
    for name, evaluated in by_name.items():
        failing = [(date, c) for date, c in evaluated if not c.passed]
        shown = failing[0][1] if failing else evaluated[0][1]
        merged.append(
            dg.AssetCheckResult(
                check_name=name,
                asset_key=shown.asset_key,
                passed=not failing,
                severity=shown.severity,
                description=shown.description,
                metadata={
                    "days": len(evaluated),
                    "failing_days": ", ".join(date for date, _ in failing) or "-",
                    "by_day": dg.MetadataValue.md(
                        _markdown_table(
                            ("day", "passed", "metadata"),
                            [(date, c.passed, _metadata_text(c.metadata)) for date, c in evaluated],
                        )
                    ),
                },
            )
        )
    return merged


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(str(v) for v in row) for row in rows]
    return "\n".join(f"| {line} |" for line in lines)


def _metadata_int(result: dg.MaterializeResult, name: str) -> int:
    value = (result.metadata or {})[name]
    return int(value.value if isinstance(value, dg.MetadataValue) else value)


def _metadata_text(metadata: Mapping[str, object] | None) -> str:
    """``k=v, ...`` on one line, for a Markdown table cell."""
    parts = []
    for name, value in (metadata or {}).items():
        shown = value.value if isinstance(value, dg.MetadataValue) else value
        parts.append(f"{name}={shown}")
    return ", ".join(parts).replace("|", "/").replace("\n", " ") or "-"


def conservation_check(funnel: StageFunnel) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=CHECK_ROWS_CONSERVED,
        passed=funnel.conserved,
        metadata={"rows_in": funnel.rows_in, "kept": funnel.kept, "ledger": funnel.removed},
        description="rows in = rows kept + rows in the ledger",
    )


def unique_check(
    name: str, column: str, values: list | pa.Array | pa.ChunkedArray, scope: str
) -> dg.AssetCheckResult:
    """``column`` unique over ``values``: counted in Arrow, so no Python set of every value."""
    if isinstance(values, list):
        values = pa.array(values)
    counts = pc.value_counts(values)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    dupes = sorted(repeated.to_pylist(), key=str)
    return dg.AssetCheckResult(
        check_name=name,
        passed=not dupes,
        metadata={"duplicates": len(dupes), "examples": ", ".join(map(str, dupes[:10])) or "-"},
        description=f"{column} is unique across {scope}",
    )


def stage_metadata(
    funnel: StageFunnel,
    output: Location,
    extra: dict | None = None,
    home: Home | None = None,
    schema: pa.Schema | None = None,
) -> dict:
    """Row counts, the stage's funnel and its reasons as a table, and a Markdown summary.

    Dagster's own keys show on the asset's page: the partition's row count, its column schema
    (``schema``, the committed table's), its location and the DuckDB view that reads it. Plain
    floats are rounded for reading (the exact values are in the warehouse). With ``home``, the
    stage's review sheet for the day is rendered and linked too, so a reviewer calibrating a
    threshold opens kept and removed images from the run's page.
    """
    reasons_table = dg.MetadataValue.table(
        records=[dg.TableRecord({"reason": r, "rows": n}) for r, n in funnel.reasons.items()],
        schema=dg.TableSchema(
            columns=[dg.TableColumn("reason", "string"), dg.TableColumn("rows", "int")]
        ),
    )
    lines = [
        f"**{funnel.stage}** {funnel.date}: {funnel.rows_in} in, {funnel.kept} kept, "
        f"{funnel.removed} removed",
        "",
        "| reason | rows |",
        "|---|---|",
        *[f"| {r} | {n} |" for r, n in funnel.reasons.items()],
    ]
    metadata = {
        "dagster/partition_row_count": funnel.kept,
        "dagster/uri": str(output),
        "dagster/table_name": funnel.stage,
        "rows_in": funnel.rows_in,
        "rows_kept": funnel.kept,
        "rows_removed": funnel.removed,
        "reasons": reasons_table,
        "summary": dg.MetadataValue.md("\n".join(lines)),
        "path": dg.MetadataValue.path(str(output)),
    }
    if schema is not None:
        metadata["dagster/column_schema"] = column_schema(schema)
    metadata.update({name: readable(value) for name, value in (extra or {}).items()})
    if home is not None:
        # The stage's own settings (its threshold) go with it: the near-miss band needs them.
        metadata.update(review_sheet_metadata(home, funnel.stage, funnel.date, extra))
    return metadata


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """A pyarrow schema as Dagster's column schema (names, Arrow types, nullability)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                field.name,
                str(field.type),
                constraints=dg.TableColumnConstraints(nullable=field.nullable),
            )
            for field in schema
        ]
    )


SIGNIFICANT_DIGITS = 4


def readable(value: object) -> object:
    """A plain float to ``SIGNIFICANT_DIGITS`` significant digits; anything else unchanged."""
    if isinstance(value, float) and value == value and value not in (float("inf"), -float("inf")):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value


def table_column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()
