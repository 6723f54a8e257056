"""The executor a deployment picks with DATAPLATFORM_EXECUTOR, and the k8s executor's step pods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataplatform.assets import ALL_ASSETS, STAGE_ASSETS
from dataplatform.core.store.home import Home
from dataplatform.executors import (
    EXECUTOR_ENV,
    executor_from_env,
    gpu_steps,
    k8s_executor_config,
)
from tests.assets.conftest import DAYS, build_three_days

REPO = Path(__file__).resolve().parents[2]
GPU_STEPS = ["clip_scored", "quality_filtered", "tokens", "vq_tokenizer"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != EXECUTOR_ENV}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gpu_steps_are_the_assets_of_the_gpu_pool():
    assert gpu_steps(ALL_ASSETS) == GPU_STEPS


def test_on_the_ray_engine_only_the_tokenizer_training_step_takes_a_gpu(monkeypatch):
    """The model steps are Ray drivers then: their GPU is the Ray actor's, not the pod's."""
    assert gpu_steps(ALL_ASSETS, on_ray=True) == ["vq_tokenizer"]
    import dataplatform.executors as executors

    # What the k8s executor is built with, captured: the step names that get a GPU pod.
    monkeypatch.setattr(executors, "k8s_executor", lambda names: sorted(names))
    monkeypatch.setenv(EXECUTOR_ENV, "k8s")
    monkeypatch.setenv("DATAPLATFORM_ENGINE", "ray")
    assert executor_from_env(ALL_ASSETS) == ["vq_tokenizer"]
    monkeypatch.setenv("DATAPLATFORM_ENGINE", "local")
    assert executor_from_env(ALL_ASSETS) == GPU_STEPS


@pytest.mark.parametrize(
    ("choice", "name"),
    [("multiprocess", "multiprocess"), ("in_process", "in_process"), ("IN_PROCESS ", "in_process")],
)
def test_executor_named_by_the_environment(monkeypatch, choice: str, name: str):
    monkeypatch.setenv(EXECUTOR_ENV, choice)
    assert executor_from_env(ALL_ASSETS).name == name


def test_unset_keeps_dagsters_default_and_an_unknown_name_is_refused(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert executor_from_env(ALL_ASSETS) is None
    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    with pytest.raises(ValueError, match=r"DATAPLATFORM_EXECUTOR='celery' .* multiprocess"):
        executor_from_env(ALL_ASSETS)


def test_default_code_location_does_not_import_the_kubernetes_client():
    done = _python(
        "import sys; from dataplatform.definitions import defs; "
        "job = defs.get_job_def('curate_daily'); "
        "print(job.executor_def.name, 'kubernetes' in sys.modules, 'dagster_k8s' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["multi_or_in_process_executor", "False", "False"]


def test_k8s_job_loads_and_runs_locally_in_process(tmp_path: Path):
    """The code location with the k8s executor loads, its run config validates, and the same
    curate_daily job runs here in one process (no cluster: execute_in_process bypasses it)."""
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    code = f"""
import sys
import dagster as dg
from dataplatform.assets import STAGE_ASSETS
from dataplatform.definitions import defs

job = defs.get_job_def("curate_daily")
print("executor", job.executor_def.name)
print("valid", dg.validate_run_config(job, {{}}) is not None)
result = job.execute_in_process(
    partition_key={DAYS[0]!r},
    asset_selection=[k for a in STAGE_ASSETS for k in a.keys],
    instance=dg.DagsterInstance.ephemeral(),
)
print("success", result.success)
print("steps", ",".join(sorted(e.step_key for e in result.get_step_success_events())))
"""
    done = _python(
        code,
        DATAPLATFORM_EXECUTOR="k8s",
        DATAPLATFORM_HOME=str(home.root),
        DATAPLATFORM_PROFILE="smoke",
        HF_HUB_OFFLINE="1",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["executor"] == "k8s"
    assert lines["valid"] == "True"
    assert lines["success"] == "True"
    # execute_in_process re-selects every check of the selected assets, the freshness checks
    # too (a run launched from the UI or the CLI keeps to the job's own checks).
    steps = [s for s in lines["steps"].split(",") if not s.startswith("freshness_check")]
    assert steps == sorted(a.node_def.name for a in STAGE_ASSETS)


def _step_pod_spec(step: str):
    """The pod spec dagster-k8s builds for ``step``: the executor's step config, then the
    per-step override, merged in the order K8sStepHandler merges them."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
    )

    config = k8s_executor_config(gpu_steps(ALL_ASSETS))
    context = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"])
    ).merge(
        K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                config["per_step_k8s_config"].get(step, {})
            )
        )
    )
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="dataplatform:cuda", dagster_home="/opt/dagster/home"),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{step.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def test_k8s_config_validates_against_the_executor_schema():
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor

    config = k8s_executor_config(gpu_steps(ALL_ASSETS))
    assert sorted(config["per_step_k8s_config"]) == GPU_STEPS
    checked = process_config(k8s_job_executor.config_schema.config_type, config)
    assert checked.success, checked.errors


@pytest.mark.parametrize("step", GPU_STEPS)
def test_gpu_steps_get_one_gpu_and_tolerate_gpu_nodes(step: str):
    spec = _step_pod_spec(step)
    resources = spec.containers[0].resources
    assert resources.limits == {"memory": "32Gi", "nvidia.com/gpu": "1"}
    assert resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]


@pytest.mark.parametrize(
    "step", ["raw_pairs", "exact_deduped", "phash_deduped", "semantic_deduped"]
)
def test_cpu_steps_request_no_gpu(step: str):
    spec = _step_pod_spec(step)
    resources = spec.containers[0].resources
    assert resources.limits == {"memory": "8Gi"}
    assert resources.requests == {"cpu": "1", "memory": "4Gi"}
    assert not spec.tolerations
