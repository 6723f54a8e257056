"""Run a stage's per-pair work over chunks of rows, here or on Ray actors, results in order.

A stage hands over ``make_worker`` (a picklable callable that builds the worker: loads the
model, opens the scorer) and the chunks. On ``local`` one worker is built here and called on
each chunk. On ``ray`` a pool of actors is started, each builds its worker once (a model loads
once per actor, not per chunk or per day), and chunks are handed to whichever actor is free,
at most one in flight per actor, so the driver never queues the whole day's inputs on the
cluster. Results come back in chunk order whatever order they finish in, which is what makes
both engines' tables equal row for row.

We use Ray core actors rather than Ray Data's ``map_batches``: the stages already hold the
day's rows as an Arrow table on the driver (the warehouse partition is the unit of commit), so
Ray Data's streaming read would add a second copy and reorder rows unless told not to; an actor
pool gives the same one-model-per-actor shape with ordered results and per-chunk crash handling.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.engine.progress import Progress
from dataplatform.core.store.home import allow_object_landings, configured_object_landings

T = TypeVar("T")
R = TypeVar("R")
LOG = logging.getLogger(__name__)


class EngineWorkerLost(RuntimeError):
    """A Ray worker died (out of memory, a crash, a lost node) and the stage cannot redo it."""


@dataclass(frozen=True)
class ChunkRun:
    """How a stage's chunks were run, for the asset's metadata."""

    engine: str
    workers: int
    chunks: int
    wall_s: float
    nodes: int = 1
    gpus_per_worker: float = 0.0
    lost_workers: int = 0
    started_workers: int = 0
    """Actors started (each loading its model); 0 when the previous day's were kept."""

    def metadata(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_workers": self.workers,
            "engine_nodes": self.nodes,
            "engine_chunks": self.chunks,
            "engine_wall_s": round(self.wall_s, 3),
            "engine_gpus_per_worker": self.gpus_per_worker,
            "engine_lost_workers": self.lost_workers,
            "engine_started_workers": self.started_workers,
        }


def combined_runs(runs: Sequence[ChunkRun], engine: str = "local") -> ChunkRun:
    """Several runs of one stage (its lookups, say) as one, for the asset's metadata: chunks,
    wall time and lost or started workers add up; workers and nodes are the most at once."""
    if not runs:
        return ChunkRun(engine, 1 if engine == "local" else 0, 0, 0.0)
    return ChunkRun(
        runs[0].engine,
        max(r.workers for r in runs),
        sum(r.chunks for r in runs),
        sum(r.wall_s for r in runs),
        max(r.nodes for r in runs),
        max(r.gpus_per_worker for r in runs),
        sum(r.lost_workers for r in runs),
        sum(r.started_workers for r in runs),
    )


@dataclass(frozen=True)
class Lost(Generic[T]):
    """The result for an input whose worker process died while computing it."""

    detail: str


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_chunks(
    spec: EngineSpec,
    make_worker: Callable[[], Callable[[T], R]],
    chunks: Sequence[T],
    *,
    gpu: bool = False,
    on_lost: Callable[[T], R] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[R], ChunkRun]:
    """``make_worker()(chunk)`` for every chunk, in chunk order, on the spec's engine.

    ``gpu`` marks a model stage: its actors ask Ray for ``gpus_per_model_worker`` GPUs (one
    each when the cluster has GPUs and the setting is auto). ``on_lost`` computes a chunk whose
    actor died (e.g. one image at a time, each in a process of its own); without it a lost
    actor fails the stage with ``EngineWorkerLost``. On Ray, chunks done, their rate and the
    time left go to ``log`` every ``progress_seconds()`` (``Progress``), as chunks finish.
    """
    started = time.monotonic()
    if not spec.is_ray:
        worker = make_worker()
        results = [worker(chunk) for chunk in chunks]
        return results, ChunkRun("local", 1, len(chunks), time.monotonic() - started)
    return _map_on_ray(spec, make_worker, chunks, gpu, on_lost, log, started)


# The driver's storage and model settings become the Ray job's, on every worker: an actor on
# another node reads the same warehouse, landing and model files as the step that started it.
FORWARDED_PREFIXES = ("DATAPLATFORM_", "AWS_")
FORWARDED_NAMES = ("HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "OPEN_CLIP_CACHE")
_connected: dict[str, Any] = {}


def job_env() -> dict[str, str]:
    """The environment this process hands to its Ray workers (``FORWARDED_PREFIXES``)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES
    }


def connect(spec: EngineSpec) -> Any:
    """``ray`` connected to the spec's cluster; the module is returned.

    Connected once per process and kept (a stage's actors live for the stage, the connection
    for the step), unless the address or the forwarded environment changed since.
    """
    import ray

    wanted = {"address": spec.address or None, "env": job_env()}
    if ray.is_initialized() and _connected != wanted:
        release_workers()
        ray.shutdown()
    if not ray.is_initialized():
        _POOL.clear()  # actors die with the connection that started them
        # An empty address lets Ray read RAY_ADDRESS, and start a one-machine Ray without it.
        ray.init(
            address=wanted["address"],
            runtime_env={"env_vars": wanted["env"]},
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
        _connected.clear()
        _connected.update(wanted)
    return ray


def cluster_shape(ray: Any) -> tuple[float, float, int]:
    """CPUs, GPUs and live nodes the cluster has now."""
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)), nodes


class _ChunkActor:
    """One Ray actor: builds its worker once, then computes chunk after chunk.

    ``landings`` are the object-store landings the driver's homes configured: an actor builds
    no ``Home``, and later stages' image reads are confined to a configured landing."""

    def __init__(
        self, make_worker: Callable[[], Callable[[Any], Any]], landings: dict[str, list[str]]
    ) -> None:
        allow_object_landings(landings)
        self._worker = make_worker()

    def run(self, chunk: Any) -> Any:
        return self._worker(chunk)

    def ready(self) -> bool:
        return True


def _map_on_ray(
    spec: EngineSpec,
    make_worker: Callable[[], Callable[[T], R]],
    chunks: Sequence[T],
    gpu: bool,
    on_lost: Callable[[T], R] | None,
    progress_log: Callable[[str], None] | None,
    started: float,
) -> tuple[list[R], ChunkRun]:
    # Without a log, progress goes to the progress logger (which a step forwards to its run's
    # logs) and the rest to this module's.
    log = progress_log or LOG.info
    ray = connect(spec)
    from ray.exceptions import RayActorError

    cpus, gpus, nodes = cluster_shape(ray)
    gpus_each = 0.0
    if gpu:
        gpus_each = spec.gpus_per_model_worker if spec.gpus_per_model_worker >= 0 else 0.0
        if spec.gpus_per_model_worker < 0 and gpus >= 1:
            gpus_each = 1.0
    if spec.workers:
        count = spec.workers
    elif gpus_each > 0:
        count = int(gpus // gpus_each)
    else:
        count = int(cpus // spec.cpus_per_worker)
    count = max(1, min(count, len(chunks)))
    if not chunks:
        return [], ChunkRun("ray", 0, 0, time.monotonic() - started, nodes, gpus_each)
    actor_class = ray.remote(_ChunkActor).options(
        num_cpus=spec.cpus_per_worker, num_gpus=gpus_each, max_restarts=0, max_task_retries=0
    )
    landings = configured_object_landings()
    key = ray.cloudpickle.dumps((make_worker, landings, spec.cpus_per_worker, gpus_each))
    pool, fresh = _pool(ray, key, count, lambda: actor_class.remote(make_worker, landings))
    log(
        f"ray: {len(chunks)} chunks on {len(pool)} actors ({fresh} started, the rest kept from "
        f"the previous day; {spec.cpus_per_worker:g} CPU, {gpus_each:g} GPU each) across "
        f"{nodes} nodes with {cpus:g} CPUs, {gpus:g} GPUs"
    )
    idle = list(pool)
    results: list[Any] = [None] * len(chunks)
    pending: dict[Any, tuple[int, Any]] = {}
    next_chunk = 0
    done = 0
    lost = 0
    with Progress("ray", len(chunks), unit="chunks", log=progress_log) as progress:
        while done < len(chunks):
            while idle and next_chunk < len(chunks):
                actor = idle.pop()
                pending[actor.run.remote(chunks[next_chunk])] = (next_chunk, actor)
                next_chunk += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready[0])
            try:
                results[index] = ray.get(ready[0])
                idle.append(actor)
            except RayActorError as exc:
                lost += 1
                if on_lost is None:
                    raise EngineWorkerLost(
                        f"a Ray worker died while computing chunk {index} of {len(chunks)}: {exc}"
                    ) from exc
                log(f"ray: the worker for chunk {index} died ({type(exc).__name__}); redoing it")
                results[index] = on_lost(chunks[index])
                replacement = _started(ray, [actor_class.remote(make_worker, landings)])
                _POOL[0].actors[_POOL[0].actors.index(actor)] = replacement[0]
                idle.extend(replacement)
                fresh += 1
            done += 1
            progress.advance()
    return results, ChunkRun(
        "ray", len(pool), len(chunks), time.monotonic() - started, nodes, gpus_each, lost, fresh
    )


@dataclass
class _Pool:
    key: bytes
    actors: list[Any]


# The last stage's actors, kept so that the next day of a multi-day run finds its models loaded.
# One pool at most: a different stage's work first releases them, so idle actors never hold
# the CPUs or GPUs the next stage's actors need.
_POOL: list[_Pool] = []


def _pool(ray: Any, key: bytes, wanted: int, start: Callable[[], Any]) -> tuple[list[Any], int]:
    """At least ``wanted`` started actors for ``key`` (kept ones first), and how many are new."""
    if _POOL and _POOL[0].key != key:
        release_workers()
    if not _POOL:
        _POOL.append(_Pool(key, []))
    pool = _POOL[0]
    missing = max(0, wanted - len(pool.actors))
    if missing:
        pool.actors.extend(_started(ray, [start() for _ in range(missing)]))
    return list(pool.actors), missing


def release_workers() -> None:
    """Stop the kept actors (their models and resources go back to the cluster)."""
    if not _POOL:
        return
    import ray

    if ray.is_initialized():
        for actor in _POOL[0].actors:
            ray.kill(actor)
    _POOL.clear()


def _started(ray: Any, actors: list[Any]) -> list[Any]:
    """The actors once each has built its worker; a worker that cannot be built (a missing
    model file, a bad setting) fails the stage here with the constructor's own error, since
    every actor would fail the same way."""
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except Exception as exc:
        raise EngineWorkerLost(f"a Ray worker could not be started: {exc}") from exc
    return actors


def map_isolated(spec: EngineSpec, fn: Callable[[T], R], items: Sequence[T]) -> list[R | Lost[T]]:
    """``fn(item)`` for each item in a Ray task of its own, never retried: a task whose process
    dies (a decoder's C-level crash on a hostile file) is that item's ``Lost`` result."""
    ray = connect(spec)
    from ray.exceptions import RayActorError, WorkerCrashedError

    # No CPU asked: the stage's own actors hold the cluster's CPUs while this redoes their
    # lost chunk, and a task waiting for one of them would wait for ever.
    task = ray.remote(fn).options(num_cpus=0, max_retries=0)
    refs = [task.remote(item) for item in items]
    out: list[R | Lost[T]] = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except (WorkerCrashedError, RayActorError) as exc:
            out.append(Lost(f"the decoding process died: {type(exc).__name__}"))
    return out
