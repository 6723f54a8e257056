"""The daily ingest-date partitions every stage shares."""

from __future__ import annotations

import os

import dagster as dg

START_DATE_ENV = "DATAPLATFORM_START_DATE"
DEFAULT_START_DATE = "2025-01-01"

START_DATE = os.environ.get(START_DATE_ENV, DEFAULT_START_DATE)
daily_partitions = dg.DailyPartitionsDefinition(start_date=START_DATE)

# Global dedup of a day compares it with every earlier day's kept pairs: each dedup stage
# depends on its own previous partition, so backfills run the days of a range in date order
# and a re-run of an early day marks the later days stale.
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
