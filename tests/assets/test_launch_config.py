"""Config enumerations are refused when a run is launched, before any step starts."""

import dagster as dg
import pytest

from dataplatform.automation import JOB_NAME
from dataplatform.definitions import defs

BAD = [
    ("clip_scored", "mode", "absolut"),
    ("semantic_deduped", "keep_rule", "newest"),
    ("semantic_deduped", "retrain", "always"),
    ("tokens", "crop", "centre"),
]


@pytest.mark.parametrize(("op", "field", "value"), BAD)
def test_a_misspelt_enumeration_is_refused_at_launch(op, field, value):
    job = defs.resolve_job_def(JOB_NAME)
    with pytest.raises(dg.DagsterInvalidConfigError, match=f"{field}.*not in enum type"):
        dg.validate_run_config(job, {"ops": {op: {"config": {field: value}}}})
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(dg.DagsterInvalidConfigError):
        job.execute_in_process(
            run_config={"ops": {op: {"config": {field: value}}}},
            partition_key="2025-01-01",
            instance=instance,
        )
    # Refused before a run existed: nothing to clean up, nothing half-done in the UI.
    assert instance.get_runs_count() == 0


def test_every_allowed_value_passes_launch_validation():
    job = defs.resolve_job_def(JOB_NAME)
    ops = {
        "clip_scored": {"config": {"mode": "percentile"}},
        "semantic_deduped": {"config": {"keep_rule": "pair_id", "retrain": "advise"}},
        "tokens": {"config": {"crop": "letterbox"}},
    }
    assert dg.validate_run_config(job, {"ops": ops})["ops"]["tokens"]["config"]["crop"] == (
        "letterbox"
    )
