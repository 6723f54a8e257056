"""A Ray cluster of several nodes on this machine's loopback: for tests, benches and trials.

Ray turns ``127.0.0.1`` into the machine's outward address, so the cluster is given
``127.0.0.2``: still loopback (all of 127/8 is), and Ray keeps it as the node address, so the
head, the workers and the driver talk over loopback only. The nodes run as ``ray start
--block`` children of this process, so stopping them stops this cluster only (``ray stop``
would stop every Ray on the machine); they are started one at a time, since nodes started
together on one machine race for the same socket. The head offers no CPU, so every task lands
on a worker node, as on a real cluster whose head only coordinates.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_IP = "127.0.0.2"
STARTUP_S = 120


@dataclass(frozen=True)
class LocalCluster:
    address: str
    worker_nodes: int
    cpus_per_node: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((NODE_IP, 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    found = Path(sys.executable).parent / "ray"
    return str(found) if found.is_file() else (shutil.which("ray") or "ray")


@contextmanager
def local_cluster(
    temp_dir: Path, worker_nodes: int = 2, cpus_per_node: int = 1
) -> Iterator[LocalCluster]:
    """A head and ``worker_nodes`` workers on loopback until the block ends; this process is
    connected to it as a driver while it runs (and disconnected after)."""
    import ray

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    common = ["--node-ip-address", NODE_IP, "--disable-usage-stats", "--block"]
    head = [
        _ray_cli(), "start", "--head", "--port", str(port), "--num-cpus", "0",
        "--include-dashboard", "false", "--temp-dir", str(temp_dir), *common,
    ]  # fmt: skip
    logs = temp_dir / "nodes.log"
    nodes: list[subprocess.Popen] = []
    with logs.open("wb") as log:
        nodes.append(subprocess.Popen(head, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            wait_for_listener(port, nodes[0], logs)
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
            _wait_for_nodes(ray, 1, logs)
            for started in range(worker_nodes):
                worker = [
                    _ray_cli(), "start", "--address", address,
                    "--num-cpus", str(cpus_per_node), *common,
                ]  # fmt: skip
                nodes.append(
                    subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
                _wait_for_nodes(ray, 2 + started, logs)
            yield LocalCluster(address, worker_nodes, cpus_per_node)
        finally:
            from dataplatform.core.engine.chunk_map import release_workers

            release_workers()
            ray.shutdown()
            stop_nodes(nodes)


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    """Stop ``ray start --block`` node processes, workers before the head; kill a stuck one."""
    for node in reversed(nodes):
        node.terminate()
    for node in nodes:
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()


def wait_for_listener(
    port: int,
    process: subprocess.Popen,
    logs: Path,
    what: str = "the local Ray head",
    ip: str = NODE_IP,
) -> None:
    """Until ``ip:port`` accepts connections; fails if ``process`` exits first."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {logs.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {STARTUP_S} s: see {logs}")


def _wait_for_nodes(ray: Any, count: int, logs: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if sum(1 for node in ray.nodes() if node.get("Alive")) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the local Ray cluster has not {count} nodes after {STARTUP_S} s: {logs}")
