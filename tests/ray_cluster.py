"""A real Ray cluster on loopback for the engine tests: one head and two worker nodes.

Ray turns ``127.0.0.1`` into the machine's outward address, so the cluster is given
``127.0.0.2``: still loopback (all of 127/8 is), and Ray keeps it as the node address, so the
head, the workers and the test's driver talk over loopback only. The head offers no CPU, so
every task lands on a worker node. Started once per session (about ten seconds) and stopped at
its end, stopping only its own nodes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE_IP = "127.0.0.2"
WORKER_NODES = 2
STARTUP_S = 120


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
    """The cluster's nodes run as ``ray start --block`` children of this process, so stopping
    them stops this cluster only (``ray stop`` would stop every Ray on the machine)."""
    pytest.importorskip("ray")
    import ray

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    temp = tmp_path_factory.mktemp("ray")
    common = ["--node-ip-address", NODE_IP, "--disable-usage-stats", "--block"]
    head = [
        _ray_cli(), "start", "--head", "--port", str(port), "--num-cpus", "0",
        "--include-dashboard", "false", "--temp-dir", str(temp), *common,
    ]  # fmt: skip
    logs = temp / "nodes.log"
    nodes: list[subprocess.Popen] = []
    with logs.open("wb") as log:
        nodes.append(subprocess.Popen(head, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            _wait_for_port(port, nodes[0], logs)
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
            _wait_for_nodes(ray, 1, logs)
            # One at a time: nodes started together on one machine race for the same socket.
            for started in range(WORKER_NODES):
                worker = [_ray_cli(), "start", "--address", address, "--num-cpus", "1", *common]
                nodes.append(
                    subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
                _wait_for_nodes(ray, 2 + started, logs)
            yield RayCluster(address=address, worker_nodes=WORKER_NODES)
        finally:
            ray.shutdown()
            for node in reversed(nodes):
                node.terminate()
            for node in nodes:
                try:
                    node.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    node.kill()


def _wait_for_port(port: int, head: subprocess.Popen, logs: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"the test Ray head exited: {logs.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex((NODE_IP, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the test Ray head did not listen in {STARTUP_S} s: {logs}")


def _wait_for_nodes(ray, count: int, logs: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if sum(1 for node in ray.nodes() if node.get("Alive")) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the test Ray cluster has not {count} nodes after {STARTUP_S} s: {logs}")
