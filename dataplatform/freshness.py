"""Freshness checks on the newest daily partition, and the sensor that evaluates them.

The schedule starts a day's run at 01:00 UTC for the day that just closed; curation and cards
take hours at production volume. By 06:00 UTC the closed day's `semantic_deduped` (curation
done) and `data_cards` (training-ready) partitions must exist, or the check fails and the asset
shows overdue in the UI. The sensor evaluates the checks as Dagster's freshness sensor does
(when due, not every tick); like every sensor here it starts stopped.
"""

import dagster as dg

from dataplatform.assets.data_cards import KEY as CARDS_KEY
from dataplatform.assets.semantic_deduped import KEY as CURATED_KEY

# The closed day is expected by this time (UTC): five hours after the schedule starts it.
FRESHNESS_DEADLINE_CRON = "0 6 * * *"

freshness_checks = dg.build_time_partition_freshness_checks(
    assets=[CURATED_KEY, CARDS_KEY], deadline_cron=FRESHNESS_DEADLINE_CRON, timezone="UTC"
)
freshness_sensor = dg.build_sensor_for_freshness_checks(
    freshness_checks=freshness_checks, name="newest_partition_freshness"
)
