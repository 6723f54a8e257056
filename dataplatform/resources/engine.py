"""The engine as a Dagster resource: local (one machine) or a Ray cluster, and how to use it."""

from __future__ import annotations

import dagster as dg

from dataplatform.core.engine.engine_spec import DEFAULT_CHUNK_ROWS, EngineSpec, engine_spec


class EngineResource(dg.ConfigurableResource):
    """Where the stages' per-pair work runs. Empty fields fall back to ``DATAPLATFORM_ENGINE``
    (default ``local``) and ``RAY_ADDRESS``, the way Ray users already name their cluster."""

    engine: str = ""
    """local or ray; empty: DATAPLATFORM_ENGINE, else local."""
    address: str = ""
    """Ray head (host:port, or ray://host:10001 for Ray Client); empty: RAY_ADDRESS."""
    workers: int = 0
    """Actors per stage; 0: one per cluster CPU (one per GPU for model stages on GPUs)."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Rows handed to an actor at a time."""
    gpus_per_model_worker: float = -1.0
    """GPUs each model actor asks Ray for; -1: one when the cluster has GPUs, else none."""
    cpus_per_worker: float = 1.0
    shard_dedup: bool = True
    """On Ray: the global dedup lookups sharded by key on the workers (the home on every node)."""

    def spec(self) -> EngineSpec:
        return engine_spec(
            self.engine,
            self.address,
            workers=self.workers,
            chunk_rows=self.chunk_rows,
            gpus_per_model_worker=self.gpus_per_model_worker,
            cpus_per_worker=self.cpus_per_worker,
            shard_dedup=self.shard_dedup,
        )
