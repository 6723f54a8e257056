"""The warehouse as a Dagster resource: where the home is, and the partition guard."""

from __future__ import annotations

import dagster as dg

from dataplatform.core.store.home import Home, resolve_home
from dataplatform.core.store.warehouse import partition_dates


class WarehouseResource(dg.ConfigurableResource):
    """Parquet warehouse under ``DATAPLATFORM_HOME`` (or ``home`` when set), queried with DuckDB;
    or on an object store named by ``warehouse_url``. The day folders arrive in the home's
    ``landing/``, or on an object store named by ``landing_url``; models stay in the home."""

    home: str = ""
    warehouse_url: str = ""
    """s3://bucket/prefix for an object store; empty: DATAPLATFORM_WAREHOUSE_URL, else the home."""
    landing_url: str = ""
    """s3://bucket/prefix holding the <date>/ folders; empty: DATAPLATFORM_LANDING_URL, else the
    home's landing/. Stages on Ray actors learn it from DATAPLATFORM_LANDING_URL only."""

    def resolve(self) -> Home:
        return resolve_home(self.home or None, self.warehouse_url or None, self.landing_url or None)

    def missing_earlier_partitions(self, table: str, date: str, first_date: str) -> list[str]:
        """Landing dates before ``date`` whose ``table`` partition has not been written.

        Global dedup compares a partition with everything kept before it; running it while an
        earlier landing date is unprocessed would make the result depend on run order.
        """
        home = self.resolve()
        done = set(partition_dates(home, table))
        return [d for d in home.landing_dates() if first_date <= d < date and d not in done]
