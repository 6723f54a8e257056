"""Which engine runs the per-pair work, read once from settings or the environment.

``local`` is one machine: the stages' own process pools and DataLoader workers, no cluster, and
it is the default so that ``make demo`` needs nothing running. ``ray`` sends the per-pair work
(decode and hash, embed, score, tokenize, build cards) to a Ray cluster, given the way Ray users
give it: ``RAY_ADDRESS`` (``host:port`` of the head, or ``ray://host:10001`` for Ray Client).
Both engines give the same tables, row for row: the engine decides where a chunk of rows is
computed, never what is computed or in which order the results are put back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

ENGINE_ENV = "DATAPLATFORM_ENGINE"
ADDRESS_ENV = "RAY_ADDRESS"
LOCAL = "local"
RAY = "ray"
ENGINES = (LOCAL, RAY)
# Rows per chunk sent to one worker: large enough that a task's overhead (a few ms on Ray) is
# small beside decoding 256 images, small enough that a lost worker redoes little.
DEFAULT_CHUNK_ROWS = 256


class EngineSettingError(ValueError):
    """An engine setting that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class EngineSpec:
    """The engine and how to use it; plain values, so it travels to workers as it is."""

    kind: str = LOCAL
    address: str = ""
    """Ray cluster address; empty means ``RAY_ADDRESS`` (Ray reads it), else a local Ray."""
    workers: int = 0
    """Actors per stage; 0 means as many as the cluster has CPUs (GPUs for GPU stages)."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    gpus_per_model_worker: float = -1.0
    """GPUs a model actor asks Ray for; -1 means one when the cluster has GPUs, else none."""
    cpus_per_worker: float = 1.0
    shard_dedup: bool = True
    """On Ray, the global dedup stages' history lookups run sharded by key on the workers
    (they read the dedup state from the home, which every node must mount); false keeps them
    in the step."""

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise EngineSettingError(
                f"{ENGINE_ENV}={self.kind!r} is not an engine: use one of {', '.join(ENGINES)}"
            )
        if self.chunk_rows < 1:
            raise EngineSettingError(f"engine chunk_rows must be at least 1, not {self.chunk_rows}")
        if self.workers < 0:
            raise EngineSettingError(f"engine workers must be 0 (auto) or more, not {self.workers}")
        if self.cpus_per_worker <= 0:
            raise EngineSettingError(
                f"engine cpus_per_worker must be above 0, not {self.cpus_per_worker}"
            )

    @property
    def is_ray(self) -> bool:
        return self.kind == RAY


def engine_spec(
    kind: str = "",
    address: str = "",
    *,
    workers: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    gpus_per_model_worker: float = -1.0,
    cpus_per_worker: float = 1.0,
    shard_dedup: bool = True,
) -> EngineSpec:
    """The spec from explicit settings, else ``DATAPLATFORM_ENGINE`` and ``RAY_ADDRESS``."""
    chosen = (kind or os.environ.get(ENGINE_ENV, "") or LOCAL).strip().lower()
    return EngineSpec(
        kind=chosen,
        address=(address or os.environ.get(ADDRESS_ENV, "")).strip(),
        workers=workers,
        chunk_rows=chunk_rows,
        gpus_per_model_worker=gpus_per_model_worker,
        cpus_per_worker=cpus_per_worker,
        shard_dedup=shard_dedup,
    )
