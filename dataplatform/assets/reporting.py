"""Metadata and check results every stage reports the same way."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa

from dataplatform.assets.partitions import START_DATE
from dataplatform.assets.review import review_sheet_metadata
from dataplatform.core.funnel import StageFunnel
from dataplatform.core.home import Home
from dataplatform.resources.warehouse import WarehouseResource

OWNERS = ["team:data-curation"]
CHECK_ROWS_CONSERVED = "rows_conserved"
CHECK_PAIR_ID_UNIQUE = "pair_id_unique"


def conservation_check(funnel: StageFunnel) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=CHECK_ROWS_CONSERVED,
        passed=funnel.conserved,
        metadata={"rows_in": funnel.rows_in, "kept": funnel.kept, "ledger": funnel.removed},
        description="rows in = rows kept + rows in the ledger",
    )


def unique_check(name: str, column: str, values: list, scope: str) -> dg.AssetCheckResult:
    seen: set = set()
    dupes = sorted({v for v in values if v in seen or seen.add(v)})
    return dg.AssetCheckResult(
        check_name=name,
        passed=not dupes,
        metadata={"duplicates": len(dupes), "examples": ", ".join(map(str, dupes[:10])) or "-"},
        description=f"{column} is unique across {scope}",
    )


def stage_metadata(
    funnel: StageFunnel, output: Path, extra: dict | None = None, home: Home | None = None
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
