"""What every stage does the same way: read its input, commit its output, report metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.assets.partitions import START_DATE
from dataplatform.assets.review import review_sheet_metadata
from dataplatform.core.records.funnel import StageFunnel, stage_funnel
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    SIDE_TABLES,
    CorruptPartitionError,
    Location,
    commit_stage,
    partition_file,
    read_history,
    read_partition,
    refresh_catalog,
)
from dataplatform.resources.warehouse import WarehouseResource

OWNERS = ["team:data-curation"]
CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_PAIR_ID_UNIQUE = "pair_id_unique"
# Where a global stage checks pair_id (and hash) uniqueness: its history and the day together.
GLOBAL_SCOPE = "all kept pairs up to this day"


@dataclass(frozen=True)
class StageDay:
    """The day one stage is materializing: where it writes, as which stage, for which date."""

    home: Home
    stage: str
    date: str


def open_stage_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    stage: str,
    *,
    global_dedup: bool = False,
) -> StageDay:
    """The head every stage shares: its home and partition date, ready for ``finish_stage``.

    A global dedup stage (``global_dedup``) compares the day with every earlier day's kept
    pairs, so it first refuses to run while an earlier landing day lacks its partition.
    """
    home = warehouse.resolve()
    date = context.partition_key
    if global_dedup:
        require_earlier_partitions(warehouse, stage, date)
    return StageDay(home, stage, date)


def stage_checks(key: dg.AssetKey, *own: str) -> list[dg.AssetCheckSpec]:
    """A stage's check specs: the two ``finish_stage`` reports for every stage, then its own."""
    names = (CHECK_ROWS_CONSERVED, CHECK_PAIR_ID_UNIQUE, *own)
    return [dg.AssetCheckSpec(name, asset=key) for name in names]


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
) -> dg.MaterializeResult:
    """The tail every stage shares, in one place: commit, funnel, checks, metadata, result.

    Commits the partition, ledger and side tables together (``write_stage``), counts the
    funnel, and returns the ``MaterializeResult`` with the stage's metadata (``stage_metadata``,
    plus ``metadata``, which may be a function when it needs the committed partition, as
    dataset cards and the token tally do) and its checks: rows conserved and pair_id unique
    (over ``pair_ids``, the day's kept ids unless a global stage passes history and day), then
    the stage's own ``checks`` (the specs ``stage_checks`` declares). The asset keeps its
    decorator, and so its check specs, in view. ``on_commit`` gets the commit id as soon as
    the partition is committed (a global stage records its dedup state with it).
    """
    home, stage, date = day.home, day.stage, day.date
    output, commit = write_stage(home, stage, date, kept, ledger, side_tables)
    if on_commit is not None:
        on_commit(commit)
    funnel = stage_funnel(stage, date, rows_in, kept.num_rows, ledger)
    extra = dict(metadata() if callable(metadata) else (metadata or {}))
    ids = kept.column("pair_id") if pair_ids is None else pair_ids
    return dg.MaterializeResult(
        metadata=stage_metadata(funnel, output, extra, home=home if review_sheet else None),
        check_results=[
            conservation_check(funnel),
            unique_check(CHECK_PAIR_ID_UNIQUE, "pair_id", ids, pair_id_scope),
            *checks,
        ],
    )


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
    funnel: StageFunnel, output: Location, extra: dict | None = None, home: Home | None = None
) -> dict:
    """Row counts, the stage's funnel and its reasons as a table, and a Markdown summary.

    With ``home``, the stage's review sheet for the day is rendered and linked too, so a
    reviewer calibrating a threshold opens kept and removed images from the run's page.
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
        "dagster/row_count": funnel.kept,
        "rows_in": funnel.rows_in,
        "rows_kept": funnel.kept,
        "rows_removed": funnel.removed,
        "reasons": reasons_table,
        "summary": dg.MetadataValue.md("\n".join(lines)),
        "path": dg.MetadataValue.path(str(output)),
    }
    metadata.update(extra or {})
    if home is not None:
        metadata.update(review_sheet_metadata(home, funnel.stage, funnel.date))
    return metadata


def require_earlier_partitions(warehouse: WarehouseResource, asset: str, date: str) -> None:
    """Refuse a global dedup of ``date`` while an earlier landing day lacks ``asset``."""
    missing = warehouse.missing_earlier_partitions(asset, date, START_DATE)
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise dg.Failure(
            description=(
                f"{asset} for {date} deduplicates against every earlier day, but these landing "
                f"dates have no {asset} partition yet: {shown}. Materialize them first, or launch "
                f"a backfill over the range (it runs the days in date order)."
            ),
            metadata={"missing_partitions": ", ".join(missing)},
        )


def table_column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()
