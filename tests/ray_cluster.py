"""A real Ray cluster on loopback for the engine tests: one head and two worker nodes.

Ray turns ``127.0.0.1`` into the machine's outward address, so the cluster is given
``127.0.0.2``: still loopback (all of 127/8 is), and Ray keeps it as the node address, so the
head, the workers and the test's driver talk over loopback only. The head offers no CPU, so
every task lands on a worker node. Started once per session (about ten seconds) and stopped at
its end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE_IP = "127.0.0.2"
WORKER_NODES = 2


@dataclass(frozen=True)
class RayCluster:
    address: str
    worker_nodes: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NODE_IP, 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    found = Path(sys.executable).parent / "ray"
    return str(found) if found.is_file() else (shutil.which("ray") or "ray")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    temp = tmp_path_factory.mktemp("ray")
    common = ["--node-ip-address", NODE_IP, "--disable-usage-stats"]
    head = [
        _ray_cli(), "start", "--head", "--port", str(port), "--num-cpus", "0",
        "--include-dashboard", "false", "--temp-dir", str(temp), *common,
    ]  # fmt: skip
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=120)
        for _ in range(WORKER_NODES):
            worker = [_ray_cli(), "start", "--address", address, "--num-cpus", "1", *common]
            subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True)
        raise RuntimeError(f"the test Ray cluster did not start: {exc.stderr.decode()}") from exc
    try:
        yield RayCluster(address=address, worker_nodes=WORKER_NODES)
    finally:
        import ray

        ray.shutdown()
        subprocess.run([_ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)
