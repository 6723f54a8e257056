"""The code location: assets, checks, resources, job, schedule and sensor, assembled."""

import dagster as dg

from dataplatform.assets import ALL_ASSETS
from dataplatform.automation import curate_daily, curate_daily_schedule, landing_sensor
from dataplatform.executors import executor_from_env
from dataplatform.freshness import freshness_checks, freshness_sensor
from dataplatform.resources import (
    ClipResource,
    EngineResource,
    LicensePolicyResource,
    QualityResource,
    TokenizerResource,
    WarehouseResource,
)
from dataplatform.takedowns import apply_takedowns_job, takedown_sensor

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=freshness_checks,
    resources={
        "warehouse": WarehouseResource(),
        "licenses": LicensePolicyResource(),
        "clip": ClipResource(),
        "quality": QualityResource(),
        "tokenizer": TokenizerResource(),
        "engine": EngineResource(),
    },
    jobs=[curate_daily, apply_takedowns_job],
    schedules=[curate_daily_schedule],
    sensors=[landing_sensor, takedown_sensor, freshness_sensor],
    # DATAPLATFORM_EXECUTOR picks it (dataplatform/executors.py); unset, Dagster's default.
    executor=executor_from_env(ALL_ASSETS),
)
