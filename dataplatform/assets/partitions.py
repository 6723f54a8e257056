"""The daily ingest-date partitions every stage shares, and how a backfill batches them."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

START_DATE_ENV = "DATAPLATFORM_START_DATE"
DEFAULT_START_DATE = "2025-01-01"

START_DATE = os.environ.get(START_DATE_ENV, DEFAULT_START_DATE)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE)

# Global dedup of a day compares it with every earlier day's kept pairs: each dedup stage
# depends on its own previous partition, so backfills run the days of a range in date order
# and a re-run of an early day marks the later days stale.
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)

BACKFILL_DAYS_ENV = "DATAPLATFORM_BACKFILL_DAYS_PER_RUN"
# A month per run: a run's wall time and what one failure re-runs stay bounded by a month of
# landing, while a year's backfill is 12 runs per stage group, not 365, and a model stage loads
# its model 12 times, not 365 (reporting.for_each_day runs the days of a run in date order).
DEFAULT_BACKFILL_DAYS_PER_RUN = 31


def backfill_days_per_run(environ: Mapping[str, str] = os.environ) -> int:
    """At most this many days per backfill run: ``DATAPLATFORM_BACKFILL_DAYS_PER_RUN``, or 31."""
    raw = environ.get(BACKFILL_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_BACKFILL_DAYS_PER_RUN
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError(
            f"{BACKFILL_DAYS_ENV} is {raw!r}: set it to a whole number of days, at least 1 "
            f"(1 runs a backfill a day per run; unset, {DEFAULT_BACKFILL_DAYS_PER_RUN})"
        )
    return days


# Read when the code location loads: every daily asset declares this policy, so a backfill over
# a range launches one run per stage group and per block of this many days.
daily_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=backfill_days_per_run())
