"""Global dedup stages decide a day against every earlier day: the guard that keeps that order."""

from __future__ import annotations

import dagster as dg

from dataplatform.assets.partitions import START_DATE
from dataplatform.resources.warehouse import WarehouseResource


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
