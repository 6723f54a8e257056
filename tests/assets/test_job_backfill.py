"""A backfill from curate_daily's partitions page: its runs leave the queue one at a time, by date.

The job backfill creates every run at once. The deployment's run queue (docker/dagster.yaml,
loaded here as it is) lets one run per backfill run at a time and dequeues the oldest first, so
each day's global dedup finds the days before it done. The runs execute in this process
(``SyncInMemoryRunLauncher``): each tick of the queue daemon launches what the queue lets out.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from dataplatform.assets import ALL_ASSETS, STAGE_ASSETS
from dataplatform.assets.day_order import (
    ONE_RUN_PER_BACKFILL,
    QUEUE_SETTING,
    BackfillDay,
    backfill_advice,
)
from dataplatform.automation import JOB_NAME, curate_daily
from dataplatform.core.store.home import HOME_ENV, Home
from dataplatform.core.store.warehouse import read_partition
from dataplatform.freshness import freshness_checks
from dataplatform.resources import (
    ClipResource,
    EngineResource,
    LicensePolicyResource,
    QualityResource,
    TokenizerResource,
    WarehouseResource,
)
from tests.assets.conftest import DAYS, build_three_days

DOCKER = Path(__file__).resolve().parents[2] / "docker"
BACKFILL_TAG = "dagster/backfill"
PARTITION_TAG = "dagster/partition"

# curate_daily as a deployment with DATAPLATFORM_BACKFILL_DAYS_PER_RUN=1 builds it: a job
# backfill of three days is three runs, which is where their order matters. Steps run in the
# run's process; the warehouse is DATAPLATFORM_HOME, which each test points at its own home.
one_day_per_run_defs = dg.Definitions(
    assets=[
        a.with_attributes(backfill_policy=dg.BackfillPolicy.multi_run(1))
        if a.partitions_def is not None
        else a
        for a in ALL_ASSETS
    ],
    # The job's selection names them (it leaves them out): they must be defined.
    asset_checks=freshness_checks,
    jobs=[curate_daily],
    resources={
        "warehouse": WarehouseResource(),
        "licenses": LicensePolicyResource(),
        "clip": ClipResource(num_workers=0),
        "quality": QualityResource(),
        "tokenizer": TokenizerResource(device="cpu", batch_size=4),
        "engine": EngineResource(),
    },
    executor=dg.in_process_executor,
)
# The curation stages, by their step's name: the tokenizer's training would triple the test's
# time and has no partition to order.
STAGES = [a.node_def.name for a in STAGE_ASSETS]


def _keys(*stages: str) -> list[list[str]]:
    """Every asset key that the stages' definitions produce (a stage's side tables with it)."""
    return [k.path for a in STAGE_ASSETS if a.node_def.name in stages for k in a.keys]


def _deployed_run_queue() -> dict:
    """The ``concurrency`` section of docker/dagster.yaml, as the deployment runs it."""
    return yaml.safe_load((DOCKER / "dagster.yaml").read_text())["concurrency"]


@contextmanager
def queued_instance(path: Path) -> Iterator[tuple[dg.DagsterInstance, WorkspaceProcessContext]]:
    """A sqlite instance with the deployment's run queue, and the workspace of this module."""
    overrides = {
        "concurrency": _deployed_run_queue(),
        "run_launcher": {
            "module": "dagster._core.launcher.sync_in_memory_run_launcher",
            "class": "SyncInMemoryRunLauncher",
        },
    }
    path.mkdir(parents=True, exist_ok=True)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute="one_day_per_run_defs")
    )
    with (
        instance_for_test(temp_dir=str(path), overrides=overrides) as instance,
        create_test_daemon_workspace_context(
            InProcessWorkspaceLoadTarget(origin), instance
        ) as workspace,
    ):
        yield instance, workspace


def launch_job_backfill(
    workspace: WorkspaceProcessContext, days: list[str], assets: list[list[str]]
) -> str:
    """What the partitions page of curate_daily sends when a range is backfilled."""
    context = workspace.create_request_context()
    (location,) = context.code_location_names
    params = {
        "selector": {
            "partitionSetName": f"{JOB_NAME}_partition_set",
            "repositorySelector": {
                "repositoryLocationName": location,
                "repositoryName": "__repository__",
            },
        },
        "partitionNames": days,
        "assetSelection": [{"path": a} for a in assets],
    }
    result = execute_dagster_graphql(
        context, LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": params}
    )
    assert not result.errors, result.errors
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _tick_backfill_daemon(workspace: WorkspaceProcessContext) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))


def _runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    """The backfill's runs, oldest first."""
    return list(reversed(instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))))


def _states(instance: dg.DagsterInstance, backfill_id: str) -> list[tuple[str, str]]:
    return [(r.tags[PARTITION_TAG], r.status.value) for r in _runs(instance, backfill_id)]


def _failure(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The description of the ``dg.Failure`` that failed ``run``'s one failed step."""
    (event,) = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    error = event.dagster_event.event_specific_data.error
    assert error.cls_name == "Failure"
    return error.message.strip().removeprefix(f"{dg.Failure.__module__}.Failure: ")


def test_the_deployed_run_queue_runs_one_run_per_backfill():
    assert ONE_RUN_PER_BACKFILL in _deployed_run_queue()["runs"]["tag_concurrency_limits"]
    helm = yaml.safe_load((DOCKER / "k8s" / "values.yaml").read_text())
    assert ONE_RUN_PER_BACKFILL in helm["concurrency"]["runs"]["tagConcurrencyLimits"]
    # A refusal names the same setting.
    path, _, limit = QUEUE_SETTING.partition(": ")
    assert path == "concurrency.runs.tag_concurrency_limits"
    assert yaml.safe_load(limit) == ONE_RUN_PER_BACKFILL


def test_a_job_backfill_over_three_days_runs_them_one_at_a_time_in_date_order(
    tmp_path: Path, monkeypatch
):
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    monkeypatch.setenv(HOME_ENV, str(home.root))
    started = time.perf_counter()
    with (
        queued_instance(tmp_path / "dagster") as (instance, workspace),
        QueuedRunCoordinatorDaemon(interval_seconds=1) as queue,
    ):
        backfill_id = launch_job_backfill(workspace, DAYS, _keys(*STAGES))
        _tick_backfill_daemon(workspace)
        # Every run exists at once, created in date order, all queued.
        assert _states(instance, backfill_id) == [(d, "QUEUED") for d in DAYS]
        for number, day in enumerate(DAYS, 1):
            list(queue.run_iteration(workspace))
            # One tick lets out one run of the backfill, the oldest; it ran, the rest wait.
            assert _states(instance, backfill_id) == [
                (d, "SUCCESS" if i < number else "QUEUED") for i, d in enumerate(DAYS)
            ], f"after queue tick {number} ({day})"
        _tick_backfill_daemon(workspace)
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        runs = _runs(instance, backfill_id)
        records = {
            r.dagster_run.run_id: r
            for r in instance.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        }
        spans = [(records[r.run_id].start_time, records[r.run_id].end_time) for r in runs]
        # Each day started after the day before ended.
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
        assert all(r.job_name == JOB_NAME for r in runs)
    # Global dedup saw the days in order: the kept sets of one-day runs, day by day.
    kept = {
        d: sorted(read_partition(home, "phash_deduped", d).column("pair_id").to_pylist())
        for d in DAYS
    }
    assert kept == {DAYS[0]: ["a1", "b1", "c1"], DAYS[1]: ["d1"], DAYS[2]: ["e1"]}
    for stage in STAGES:
        assert all(read_partition(home, stage, d).num_rows > 0 for d in DAYS), stage
    print(f"job backfill of {len(DAYS)} days: {time.perf_counter() - started:.1f} s")


def test_a_refusal_inside_a_backfill_says_what_to_do_inside_it(tmp_path: Path, monkeypatch):
    """A backfill over days 2 and 3 while day 1 was never curated."""
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    monkeypatch.setenv(HOME_ENV, str(home.root))
    with (
        queued_instance(tmp_path / "dagster") as (instance, workspace),
        QueuedRunCoordinatorDaemon(interval_seconds=1) as queue,
    ):
        backfill_id = launch_job_backfill(workspace, DAYS[1:], _keys("raw_pairs", "exact_deduped"))
        _tick_backfill_daemon(workspace)
        list(queue.run_iteration(workspace))
        list(queue.run_iteration(workspace))
        assert _states(instance, backfill_id) == [(d, "FAILURE") for d in DAYS[1:]]
        second, third = _runs(instance, backfill_id)
        assert _failure(instance, second) == (
            f"exact_deduped for {DAYS[1]} deduplicates against every earlier day, but these "
            f"landing dates have no exact_deduped partition yet: {DAYS[0]}. This run is part of "
            f"backfill {backfill_id}. {DAYS[0]} is not in this backfill: materialize it first, "
            f"or launch the backfill from {DAYS[0]}, then re-execute this run."
        )
        assert _failure(instance, third) == (
            f"exact_deduped for {DAYS[2]} deduplicates against every earlier day, but these "
            f"landing dates have no exact_deduped partition yet: {DAYS[0]}, {DAYS[1]}. This run "
            f"is part of backfill {backfill_id}. Its earlier days are not done: these runs of "
            f"the backfill ended without them: run {second.run_id} ({DAYS[1]}, failure). "
            f"Re-execute them (Re-execute > From failure), and after they succeed re-execute "
            f"this run ({third.run_id}); later runs of the backfill that failed the same way "
            f"need the same. {DAYS[0]} is not in this backfill: materialize it first, or launch "
            f"the backfill from {DAYS[0]}, then re-execute this run."
        )


def test_a_refusal_beside_an_unfinished_run_of_the_backfill_names_the_queue_setting():
    """Two runs of one backfill at once: only a queue without the per-backfill limit allows it."""
    earlier = dg.DagsterRun(
        job_name=JOB_NAME,
        run_id="earlier",
        status=dg.DagsterRunStatus.STARTED,
        tags={BACKFILL_TAG: "b1", PARTITION_TAG: DAYS[1]},
    )
    advice = backfill_advice("b1", "later", [BackfillDay(DAYS[1], earlier)])
    assert advice == (
        f"This run is part of backfill b1. These runs of the backfill have its earlier days and "
        f"have not finished: run earlier ({DAYS[1]}, started). This run started before them, "
        f"so the run queue let two runs of one backfill run at once: set {QUEUE_SETTING} in the "
        f"instance's dagster.yaml (docs/deployment.md), then re-execute this run after they "
        f"succeed."
    )
