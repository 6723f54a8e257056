"""The newest closed day's partitions are expected by the deadline; missing, the check fails."""

import dagster as dg

from dataplatform.assets.partitions import daily_partitions
from dataplatform.definitions import defs
from dataplatform.freshness import FRESHNESS_DEADLINE_CRON, freshness_checks, freshness_sensor

KEYS = ("semantic_deduped", "data_cards")


def test_freshness_checks_cover_curation_and_cards_and_have_a_sensor():
    keys = {k.asset_key.to_user_string() for c in freshness_checks for k in c.check_keys}
    assert keys == set(KEYS)
    assert FRESHNESS_DEADLINE_CRON == "0 6 * * *"
    assert freshness_sensor.name in {s.name for s in defs.sensors}


def test_a_missing_newest_partition_fails_the_freshness_check():
    """Evaluated as the sensor's runs do (checks only), on an instance with no partition."""
    instance = dg.DagsterInstance.ephemeral()
    specs = [dg.AssetSpec(k, partitions_def=daily_partitions) for k in KEYS]
    checks_only = dg.define_asset_job(
        "checks_only", selection=dg.AssetSelection.checks(*freshness_checks)
    )
    job = dg.Definitions(
        assets=specs, asset_checks=freshness_checks, jobs=[checks_only]
    ).resolve_job_def("checks_only")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_key.to_user_string() for e in evaluations} == set(KEYS)
    assert not any(e.passed for e in evaluations)
    params = evaluations[0].metadata["dagster/freshness_params"].value
    assert params["deadline_cron"] == FRESHNESS_DEADLINE_CRON
