"""`dataplatform materialize` goes through the instance's run queue: its dagster.yaml, and when
it starts a daemon of its own."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._daemon.types import DaemonHeartbeat

from dataplatform import cli
from dataplatform.core.store.home import Home


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return cli._local_instance(Home(tmp_path / "home"))


def test_local_instance_queues_runs_with_the_backfill_limit(dagster_home: Path):
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        assert coordinator.dequeue_interval_seconds == 1
        settings = instance.get_concurrency_config().run_queue_config
        assert settings.max_concurrent_runs == 4
        # One run at a time per backfill: a job backfill's days run one after another.
        assert settings.tag_concurrency_limits == [
            {"key": "dagster/backfill", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]


def test_an_earlier_default_instance_file_gets_the_limits(tmp_path: Path, monkeypatch):
    dagster_home = tmp_path / "home" / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    cli._local_instance(Home(tmp_path / "home"))
    assert "max_concurrent_runs: 4" in (dagster_home / "dagster.yaml").read_text()
    # A file someone wrote is theirs.
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    cli._local_instance(Home(tmp_path / "home"))
    assert (dagster_home / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


def _beat(instance: dg.DagsterInstance, age_s: float) -> None:
    instance.add_daemon_heartbeat(
        DaemonHeartbeat(
            timestamp=time.time() - age_s,
            daemon_type="QUEUED_RUN_COORDINATOR",
            daemon_id="elsewhere",
            errors=[],
        )
    )


def test_a_daemon_is_started_only_when_none_beats(dagster_home: Path):
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        submitter = cli._RunSubmitter(instance, cli._workspace_file(dagster_home))
        assert submitter._needs_daemon()
        _beat(instance, age_s=5)
        assert not submitter._needs_daemon()
        _beat(instance, age_s=cli.DAEMON_SILENT_S + 5)
        assert submitter._needs_daemon()


def test_runs_are_created_in_process_for_the_default_executor(monkeypatch):
    monkeypatch.delenv("DATAPLATFORM_EXECUTOR", raising=False)
    assert cli._run_config()["execution"] == {"config": {"in_process": {}}}
    monkeypatch.setenv("DATAPLATFORM_EXECUTOR", "multiprocess")
    assert "execution" not in cli._run_config()


def test_the_daemon_is_interrupted_when_the_command_is_killed(tmp_path: Path):
    """A command killed outright (a timeout's SIGKILL runs no cleanup) takes its daemon along."""
    import os
    import signal
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from dataplatform.cli import _interrupt_when_parent_dies\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " preexec_fn=_interrupt_when_parent_dies)\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n",
        ]
    )
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # A zombie until init reaps it: gone as far as running goes.
        try:
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")
