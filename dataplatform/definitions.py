"""The code location: assets, checks, resources, job, schedule and sensor, assembled."""

import dagster as dg

from dataplatform.assets import ALL_ASSETS
from dataplatform.automation import curate_daily, curate_daily_schedule, landing_sensor
from dataplatform.resources import (
    ClipResource,
    QualityResource,
    TokenizerResource,
    WarehouseResource,
)

defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources={
        "warehouse": WarehouseResource(),
        "clip": ClipResource(),
        "quality": QualityResource(),
        "tokenizer": TokenizerResource(),
    },
    jobs=[curate_daily],
    schedules=[curate_daily_schedule],
    sensors=[landing_sensor],
)
