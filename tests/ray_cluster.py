"""The session's real Ray cluster on loopback for the engine tests: a head and two workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dataplatform.core.engine.local_cluster import LocalCluster, local_cluster

WORKER_NODES = 2


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Started once per session (about ten seconds), stopped at its end: one CPU per worker."""
    pytest.importorskip("ray")
    with local_cluster(tmp_path_factory.mktemp("ray"), worker_nodes=WORKER_NODES) as cluster:
        yield cluster
