"""How a run executes its steps, chosen per deployment by ``DATAPLATFORM_EXECUTOR``.

- unset: Dagster's default, each step in its own process on the machine of the run (`make demo`,
  the tests and the compose deployment use it).
- ``multiprocess`` or ``in_process``: those executors, named explicitly.
- ``k8s``: each step in its own Kubernetes Job (dagster-k8s). Steps of the ``gpu`` pool request one
  GPU and tolerate the GPU nodes' taint, so they are scheduled on a GPU node; every other step
  requests CPU and memory only and stays off the GPU nodes. Under ``DATAPLATFORM_ENGINE=ray``
  a step whose model runs on the engine (it takes the ``engine`` resource) asks for no GPU: it
  is the Ray driver and its model runs on the Ray cluster's GPU workers, so a GPU on its pod
  would sit idle beside the one the actor takes. ``vq_tokenizer`` trains in its step and keeps
  its GPU.

Only the k8s choice imports dagster-k8s and the Kubernetes client, so the code location loads
just as fast as before when another executor is chosen.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from dataplatform.core.engine.engine_spec import engine_spec

EXECUTOR_ENV = "DATAPLATFORM_EXECUTOR"
EXECUTORS = ("multiprocess", "in_process", "k8s")
GPU_POOL = "gpu"

# Kubernetes config of every step pod; the run launcher's config (image, env, the volume that
# holds DATAPLATFORM_HOME) is merged under it. Sized for one daily partition of a CPU stage:
# ingest decodes images in one process, dedup holds a day's hashes and the history's.
CPU_STEP_K8S_CONFIG: Mapping[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "1", "memory": "4Gi"},
            "limits": {"memory": "8Gi"},
        }
    }
}

# Merged over CPU_STEP_K8S_CONFIG for the steps of the gpu pool. The extended resource is what
# puts the pod on a node that advertises a GPU (the NVIDIA device plugin); the toleration lets
# it onto GPU nodes tainted `nvidia.com/gpu:NoSchedule`, the usual way to keep CPU work off
# them. No node selector: the GPU label differs between providers, and the resource suffices.
GPU_STEP_K8S_CONFIG: Mapping[str, Any] = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        }
    },
    "pod_spec_config": {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    },
}


ENGINE_RESOURCE = "engine"


def gpu_steps(assets: Iterable[dg.AssetsDefinition], on_ray: bool = False) -> list[str]:
    """The op names of the assets in the ``gpu`` pool: the steps that need a GPU node.

    ``on_ray``: the steps whose models run on the Ray engine's actors need none.
    """
    return sorted(
        a.op.name
        for a in assets
        if a.op.pool == GPU_POOL and not (on_ray and ENGINE_RESOURCE in a.required_resource_keys)
    )


def k8s_executor_config(gpu_step_names: Iterable[str]) -> dict[str, Any]:
    """``k8s_job_executor`` config: CPU requests for every step, a GPU for the ``gpu`` pool."""
    return {
        "step_k8s_config": copy.deepcopy(dict(CPU_STEP_K8S_CONFIG)),
        "per_step_k8s_config": {
            name: copy.deepcopy(dict(GPU_STEP_K8S_CONFIG)) for name in gpu_step_names
        },
    }


def k8s_executor(gpu_step_names: Iterable[str]) -> dg.ExecutorDefinition:
    """dagster-k8s's ``k8s_job_executor`` with the per-step resources of this platform.

    The image, namespace, env and volumes come from the K8sRunLauncher of the Helm deployment
    (docker/k8s/values.yaml), which step pods inherit.
    """
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as err:
        raise ImportError(
            f"{EXECUTOR_ENV}=k8s needs dagster-k8s: install the deploy extra "
            "(pip install 'dataplatform[deploy]')"
        ) from err
    return k8s_job_executor.configured(k8s_executor_config(gpu_step_names), name="k8s")


def executor_from_env(assets: Iterable[dg.AssetsDefinition]) -> dg.ExecutorDefinition | None:
    """The executor ``DATAPLATFORM_EXECUTOR`` names; None (Dagster's default) when unset."""
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower()
    if not choice:
        return None
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "k8s":
        return k8s_executor(gpu_steps(assets, on_ray=engine_spec().is_ray))
    raise ValueError(
        f"{EXECUTOR_ENV}={os.environ[EXECUTOR_ENV]!r} is not an executor: use one of "
        f"{', '.join(EXECUTORS)}, or leave it unset for Dagster's default"
    )
