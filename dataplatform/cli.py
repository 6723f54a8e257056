"""`dataplatform ...`: what is not a Dagster materialization (sample data, demo, funnel, SQL)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.records.audit import terminal_safe
from dataplatform.core.records.takedown_requests import KINDS as TAKEDOWN_KINDS
from dataplatform.core.store.home import HOME_ENV, Home, resolve_home
from dataplatform.core.store.warehouse import CorruptPartitionError
from dataplatform.core.tokens.webdataset_export import DEFAULT_SHARD_MAX_BYTES

DEMO_DATES = ["2025-01-01", "2025-01-02", "2025-01-03"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dataplatform", description=__doc__)
    parser.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.dataplatform)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="write the built-in sample landing folders")
    p.add_argument("--dates", default=",".join(DEMO_DATES), help="three comma-separated dates")

    p = sub.add_parser("demo", help="sample data, every stage for every sample date, the funnel")
    p.add_argument("--dates", default=",".join(DEMO_DATES), help="three comma-separated dates")

    p = sub.add_parser("materialize", help="run every stage for dates, oldest first")
    p.add_argument("dates", nargs="+", help="partition dates, YYYY-MM-DD")

    p = sub.add_parser(
        "refetch", help="download a day's failed URLs again, then re-materialize the day"
    )
    p.add_argument("--date", required=True, type=_day, help="the landing day, YYYY-MM-DD")
    p.add_argument(
        "--reason",
        action="append",
        default=[],
        help="retry only failures with this ledger reason (repeatable; default every failure)",
    )

    p = sub.add_parser("funnel", help="rows in, kept and removed per stage, from the warehouse")
    p.add_argument("--date", help="one partition date (default: all)")

    sub.add_parser(
        "rebuild-state",
        help="rebuild the global dedup stages' persistent state from the warehouse",
    )

    p = sub.add_parser("sql", help="run a DuckDB query over the warehouse views")
    p.add_argument("query")

    p = sub.add_parser("explain", help="why a pair was kept or dropped: source, stages, copies")
    p.add_argument("pair_id", nargs="?", help="the pair to explain")
    p.add_argument("--duplicates-of", metavar="PAIR_ID", help="list what was removed as its copies")
    p.add_argument("--json", action="store_true", help="print JSON for machines")

    p = sub.add_parser("export", help="write the tokens table as WebDataset shards")
    p.add_argument("--format", choices=["webdataset"], default="webdataset")
    p.add_argument("--out", required=True, help="folder for the .tar shards")
    p.add_argument("--date", help="one partition date (default: every date)")
    p.add_argument(
        "--shard-mb",
        type=int,
        default=DEFAULT_SHARD_MAX_BYTES // 1024**2,
        help="shard size limit in MiB (default %(default)s)",
    )

    p = sub.add_parser("takedown", help="file takedown requests and apply them everywhere")
    actions = p.add_subparsers(dest="action", required=True)
    t = actions.add_parser("file", help="add a request to landing/takedowns/requests.jsonl")
    t.add_argument("--by", required=True, choices=TAKEDOWN_KINDS, help="what VALUE names")
    t.add_argument("value", help="a url, pair_id, image sha256, image file, or 16-hex pHash")
    t.add_argument("--reason", default="", help="why (notice number, requester)")
    t.add_argument("--id", help="request id (default TD-<date>-<n>)")
    t.add_argument("--filed", help="date the request was filed (default today, UTC)")
    t.add_argument(
        "--max-distance",
        type=int,
        help=f"pHash bits for --by image/phash (default {DEFAULT_PHASH_THRESHOLD}, as dedup)",
    )
    t = actions.add_parser("apply", help="remove every requested pair from tables and exports")
    t.add_argument("--export", action="append", default=[], help="another export folder to clean")

    p = sub.add_parser("synthetic", help="write a synthetic landing folder of camera-sized JPEGs")
    p.add_argument("--date", required=True)
    p.add_argument("--distinct", type=int, default=3000)
    p.add_argument("--byte-copies", type=int, default=400)
    p.add_argument("--perceptual-copies", type=int, default=600)
    p.add_argument(
        "--seed",
        type=int,
        help="reproduce one set on any date (default: seeded from the date, so days differ)",
    )

    args = parser.parse_args(argv)
    home = resolve_home(args.home)
    os.environ[HOME_ENV] = str(home.root)
    handler = {
        "sample-data": _sample_data,
        "demo": _demo,
        "materialize": _materialize_cmd,
        "refetch": _refetch,
        "funnel": _funnel,
        "rebuild-state": _rebuild_state,
        "sql": _sql,
        "explain": _explain,
        "synthetic": _synthetic,
        "export": _export,
        "takedown": _takedown,
    }[args.command]
    try:
        return handler(home, args)
    except CorruptPartitionError as error:
        # One line that names the file and what rewrites it, not a traceback.
        print(terminal_safe(str(error)), file=sys.stderr)
        return 2


def _day(text: str) -> str:
    """A partition date as argparse checks it: ``YYYY-MM-DD`` and a real day."""
    import datetime

    try:
        if len(text) == 10:
            return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date in the form YYYY-MM-DD")


def _sample_data(home: Home, args: argparse.Namespace) -> int:
    from dataplatform.core.samples.sample_data import TRUTH_FILE_NAME, build_sample_landing

    dates = args.dates.split(",")
    truth_path = home.root / TRUTH_FILE_NAME
    if truth_path.is_file():
        # Rebuild what an earlier run of this command wrote; anything else is left alone and the
        # builder refuses to write over it.
        previous = {item["date"] for item in json.loads(truth_path.read_text())}
        for date in previous & set(dates):
            shutil.rmtree(home.landing_date(date), ignore_errors=True)
    truth = build_sample_landing(home.landing, dates)
    print(f"wrote {len(truth)} sample rows for {', '.join(dates)} under {home.landing}")
    return 0


# A new local instance's runs at once (docker/dagster.yaml allows as many).
MAX_CONCURRENT_RUNS = 4
# What earlier versions wrote; such a file is replaced by the one above.
_EARLIER_INSTANCE_YAML = "telemetry:\n  enabled: false\n"
# The code location every run names, as workspace.yaml names it: the UI's and the daemon's too.
LOCATION_NAME = "dataplatform"
_REPO_WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"
# A daemon heartbeats every 30 s; one silent for longer than this is taken as gone.
DAEMON_SILENT_S = 75.0
_POLL_S = 0.5


def local_instance_config() -> dict:
    """A new local instance (SQLite under DAGSTER_HOME, which `make ui` opens too): no telemetry,
    and the run queue's limits. One run at a time per backfill (``ONE_RUN_PER_BACKFILL``), so a
    job backfill runs its days one after another, oldest first, as the global dedup stages
    need. The queue is looked at every second, not every 5, so a laptop's runs start at once.
    """
    from dataplatform.assets.day_order import ONE_RUN_PER_BACKFILL

    return {
        "telemetry": {"enabled": False},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": MAX_CONCURRENT_RUNS,
                "tag_concurrency_limits": [ONE_RUN_PER_BACKFILL],
            }
        },
        "run_queue": {"dequeue_interval_seconds": 1},
    }


def _local_instance(home: Home) -> Path:
    """DAGSTER_HOME (default ``<home>/dagster``), with a dagster.yaml when it has none."""
    import yaml

    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home.root / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance_yaml = dagster_home / "dagster.yaml"
    if not instance_yaml.exists() or instance_yaml.read_text() == _EARLIER_INSTANCE_YAML:
        instance_yaml.write_text(yaml.safe_dump(local_instance_config(), sort_keys=False))
    return dagster_home


def _workspace_file(dagster_home: Path) -> Path:
    """The checkout's workspace.yaml; outside a checkout, one beside the instance naming the same
    module and location, so that the runs this command creates are the UI's runs."""
    if _REPO_WORKSPACE.is_file():
        return _REPO_WORKSPACE
    path = dagster_home / "workspace.yaml"
    path.write_text(
        "load_from:\n  - python_module:\n      module_name: dataplatform.definitions\n"
        f"      location_name: {LOCATION_NAME}\n"
    )
    return path


def _materialize(home: Home, dates: Sequence[str], curation_ops: dict | None = None) -> None:
    """Every stage for each date as runs of the daily job, submitted to the Dagster instance.

    Curation first for every date, oldest first; then the tokenizer (not a daily asset: one
    run, which trains it on what all of them kept or reuses it), and the tokens and cards of
    each date. Each run goes through the
    instance's run coordinator, so it waits in the run queue under its limits and shows in the
    UI's run history like a run launched there; each is waited for before the next is
    submitted, which keeps the global dedup stages in date order whatever the queue's limits.
    A queued coordinator with no daemon alive gets one for the length of the command.
    ``curation_ops`` is op config for the curation runs (``refetch`` sets url_downloads').
    """
    import dagster as dg

    from dataplatform.assets import CARD_ASSETS, INGEST_ASSETS, STAGE_ASSETS, TOKEN_ASSETS

    dagster_home = _local_instance(home)

    def keys(assets) -> list:
        # Every key of each asset: a stage's asset also holds its ledger (and side tables).
        return [k for a in assets for k in a.keys]

    daily_tokens = [a for a in TOKEN_ASSETS if a.partitions_def]
    phases = [
        ("curation", keys(INGEST_ASSETS + STAGE_ASSETS), sorted(dates)),
        ("tokenizer", keys([a for a in TOKEN_ASSETS if not a.partitions_def]), [None]),
        ("tokens", keys(daily_tokens + CARD_ASSETS), sorted(dates)),
    ]
    with (
        dg.DagsterInstance.get() as instance,
        _RunSubmitter(instance, _workspace_file(dagster_home)) as submitter,
    ):
        for phase, selection, partitions in phases:
            for date in partitions:
                started = time.perf_counter()
                ops = curation_ops if phase == "curation" else None
                run = submitter.run(selection, date, ops)
                failed_checks = _failed_checks(instance, run.run_id)
                success = run.status == dg.DagsterRunStatus.SUCCESS
                status = "ok" if success and not failed_checks else "FAILED"
                print(
                    f"  {date or 'all dates'} {phase}: run {run.run_id[:8]} {status} "
                    f"in {time.perf_counter() - started:.1f}s"
                    + (f"; failed checks: {', '.join(failed_checks)}" if failed_checks else ""),
                    flush=True,
                )
                if not success:
                    raise SystemExit(
                        f"{phase} of {date or 'all dates'} failed: run {run.run_id} ended "
                        f"{run.status.value}; `make ui` shows its logs"
                    )


class _RunSubmitter:
    """Creates runs from the code location that workspace.yaml loads and submits them to the
    instance's run coordinator; runs a ``dagster-daemon`` while it is needed and none is alive.
    """

    def __init__(self, instance, workspace: Path) -> None:
        self.instance = instance
        self.workspace = workspace
        self._daemon: subprocess.Popen | None = None
        self._daemon_started_at = 0.0
        self._context = None

    def __enter__(self) -> _RunSubmitter:
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        # A terminated command stops its daemon too (SIGTERM runs no ``finally`` by default).
        self._previous_sigterm = (
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        self._ensure_daemon()
        # The code server's own start and stop lines are not the command's output.
        self._context = WorkspaceProcessContext(
            self.instance,
            WorkspaceFileTarget(paths=[str(self.workspace)]),
            code_server_log_level="warning",
        )
        self._context.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._context is not None:
                self._context.__exit__(*exc_info)
        finally:
            self._stop_daemon()
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)

    def run(self, keys, date: str | None, ops: dict | None = None):
        """Create, submit and wait for one run of ``keys`` for partition ``date`` (None: keys
        that are not partitioned), with ``ops`` as the run's op config."""
        run = self._create(keys, date, ops)
        workspace = self._context.create_request_context()
        self.instance.submit_run(run.run_id, workspace)
        return self._wait(run.run_id)

    def _create(self, keys, date: str | None, ops: dict | None = None):
        """A run of the daily job (or, for assets outside it, the implicit asset job) that
        materializes ``keys`` for ``date``, with its execution plan, as the UI creates one."""
        from dagster._core.definitions.selector import JobSubsetSelector
        from dagster._core.storage.tags import PARTITION_NAME_TAG

        from dataplatform.automation import JOB_NAME, TRIGGER_TAG

        workspace = self._context.create_request_context()
        location = workspace.get_code_location(LOCATION_NAME)
        (repository,) = location.get_repositories().values()
        graph = repository.asset_graph
        job_name = (
            JOB_NAME
            if all(JOB_NAME in graph.get_materialization_job_names(k) for k in keys)
            else next(
                n
                for n in graph.get_materialization_job_names(keys[0])
                if n.startswith("__ASSET_JOB")
            )
        )
        # The job's own checks of these assets: a subset without a check selection would take
        # every check of the assets, also those the job leaves out (the freshness checks).
        checks = sorted(
            (
                c
                for c in graph.get_check_keys_for_assets(set(keys))
                if job_name in graph.get_remote_asset_check_node(c).asset_check.job_names
            ),
            key=str,
        )
        selector = JobSubsetSelector(
            location_name=location.name,
            repository_name=repository.name,
            job_name=job_name,
            op_selection=None,
            asset_selection=list(keys),
            asset_check_selection=checks,
        )
        job = location.get_job(selector)
        run_config = {**_run_config(), **({"ops": ops} if ops else {})}
        plan = location.get_execution_plan(
            job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        return self.instance.create_run(
            job_name=job.name,
            run_id=None,
            run_config=run_config,
            resolved_op_selection=None,
            step_keys_to_execute=None,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={
                **job.tags,
                **({PARTITION_NAME_TAG: date} if date else {}),
                TRIGGER_TAG: "cli",
            },
            job_snapshot=job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=job.parent_job_snapshot,
            remote_job_origin=job.get_remote_origin(),
            job_code_origin=job.get_python_origin(),
            asset_selection=frozenset(keys),
            asset_check_selection=frozenset(checks),
            asset_graph=graph,
        )

    def _wait(self, run_id: str):
        """The run once it has finished; a run that waits in the queue with no daemon alive to
        take it gets one (a daemon may have stopped since the command began)."""
        from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus

        while True:
            run = self.instance.get_run_by_id(run_id)
            if run.status in FINISHED_STATUSES:
                return run
            if run.status == DagsterRunStatus.QUEUED:
                self._ensure_daemon()
            time.sleep(_POLL_S)

    def _needs_daemon(self) -> bool:
        from dagster._core.run_coordinator import QueuedRunCoordinator
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
            QueuedRunCoordinatorDaemon,
        )

        if not isinstance(self.instance.run_coordinator, QueuedRunCoordinator):
            return False  # the run is launched as it is submitted
        beat = self.instance.get_daemon_heartbeats().get(QueuedRunCoordinatorDaemon.daemon_type())
        return beat is None or time.time() - beat.timestamp > DAEMON_SILENT_S

    def _ensure_daemon(self) -> None:
        if self._daemon is not None:
            if self._daemon.poll() is None:
                return
            raise SystemExit(
                f"dagster-daemon exited ({self._daemon.returncode}) with runs still queued; "
                f"its log: {self._daemon_log}"
            )
        if not self._needs_daemon():
            return
        # Not under DAGSTER_HOME/logs: Dagster moves that folder away (its telemetry queue).
        self._daemon_log = Path(self.instance.root_directory) / "dagster-daemon.log"
        self._daemon_log.parent.mkdir(parents=True, exist_ok=True)
        command = [_console_script("dagster-daemon"), "run", "-w", str(self.workspace)]
        print(
            f"== no dagster-daemon is running for {self.instance.root_directory}: starting one "
            f"for this command (log {self._daemon_log}); it stops when the runs are done",
            flush=True,
        )
        with self._daemon_log.open("ab") as log:
            self._daemon_started_at = time.time()
            self._daemon = subprocess.Popen(
                command,
                cwd=self.workspace.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_interrupt_when_parent_dies if sys.platform == "linux" else None,
            )

    def _stop_daemon(self) -> None:
        """Stop the daemon this command started, as Ctrl-C would, and forget its heartbeats: a
        later command must not take them for a daemon still running."""
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGINT)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        beats = self.instance.get_daemon_heartbeats().values()
        others = {b.daemon_id for b in beats if b.timestamp >= self._daemon_started_at}
        if len(others) <= 1:  # only ours beat since it started
            self.instance.wipe_daemon_heartbeats()
        print("== stopped the dagster-daemon this command started", flush=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _interrupt_when_parent_dies() -> None:
    """In the daemon before it starts (Linux): SIGINT, its clean stop, when this command dies
    however it dies (a SIGKILL runs no cleanup), so that no daemon outlives the command."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


def _console_script(name: str) -> str:
    """A console script of this environment (beside its python), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed in this environment; pip install dagster")
    return found


def _run_config() -> dict:
    """Errors only on the console; and, under Dagster's default executor, every step in the
    run's own process: a step process would import the code location again for each step."""
    from dataplatform.executors import EXECUTOR_ENV

    config: dict = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    if not os.environ.get(EXECUTOR_ENV, "").strip():
        config["execution"] = {"config": {"in_process": {}}}
    return config


def _failed_checks(instance, run_id: str) -> list[str]:
    """``asset.check`` for every check of the run that did not pass."""
    import dagster as dg

    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return [f"{e.asset_key.path[-1]}.{e.check_name}" for e in evaluations if not e.passed]


def _materialize_cmd(home: Home, args: argparse.Namespace) -> int:
    _choose_profile()
    _materialize(home, args.dates)
    return 0


def _refetch(home: Home, args: argparse.Namespace) -> int:
    """Retry a day's failed downloads (optionally only some reasons), then run the day again,
    so pairs whose image now arrives go through every stage and the ledger loses their rows."""
    from collections import Counter

    from dataplatform.core.ingest.url_download import load_index

    _choose_profile()

    def failures() -> Counter[str]:
        if not home.has_landing_day(args.date):
            return Counter()
        return Counter(
            d.reason for d in load_index(home.landing_day(args.date)).values() if not d.ok
        )

    before = failures()
    wanted = set(args.reason)
    retried = sum(n for r, n in before.items() if not wanted or r in wanted)
    shown = ", ".join(f"{r} {n}" for r, n in sorted(before.items())) or "none"
    print(f"{args.date}: {sum(before.values())} failed downloads ({shown}); retrying {retried}")
    config = {"refetch": True, "refetch_reasons": sorted(wanted)}
    _materialize(home, [args.date], {"url_downloads": {"config": config}})
    after = failures()
    shown = ", ".join(f"{r} {n}" for r, n in sorted(after.items())) or "none"
    print(f"{args.date}: {sum(after.values())} failed downloads after the retry ({shown})")
    return 0


def _demo(home: Home, args: argparse.Namespace) -> int:
    from dataplatform.core.records.funnel import format_funnel, warehouse_funnel
    from dataplatform.core.store.stages import STAGE_ORDER

    dates = args.dates.split(",")
    print(f"== dataplatform demo, home {home.root}")
    _choose_profile()
    _sample_data(home, args)
    print(f"== materializing {', '.join(STAGE_ORDER)} (and the tokenizer) for each date")
    _materialize(home, dates)
    for date in dates:
        print(f"\n== funnel {date}")
        print(format_funnel(warehouse_funnel(home, STAGE_ORDER, date)))
    print("\n== funnel, all dates")
    print(format_funnel(warehouse_funnel(home, STAGE_ORDER), top_reasons=6))
    _print_budget(home)
    from dataplatform.core.samples.sample_audit import compare_with_truth
    from dataplatform.core.samples.sample_data import TRUTH_FILE_NAME

    matched, problems = compare_with_truth(home, home.root / TRUTH_FILE_NAME)
    print(f"\n== sample truth: {matched} of {matched + len(problems)} rows ended as designed")
    for line in problems:
        print(f"  {terminal_safe(line)}")
    print("\n== one ledger row per stage and reason: why each pair was dropped")
    _print_query(
        home,
        "SELECT stage, reason, pair_id, duplicate_of, left(detail, 60) AS detail FROM rejections "
        "QUALIFY row_number() OVER (PARTITION BY stage, reason ORDER BY date, pair_id) = 1 "
        "ORDER BY CASE stage WHEN 'raw_pairs' THEN 0 WHEN 'exact_deduped' THEN 1 ELSE 2 END, "
        "reason",
    )
    example = _print_documents(home, dates)
    if problems:
        return 1
    print(
        f"\nWarehouse: {home.warehouse} (DuckDB catalog: {home.catalog_path})\n"
        "Next:\n"
        "  make ui                                   # Dagster UI at http://127.0.0.1:3000\n"
        "  .venv/bin/dataplatform funnel --date 2025-01-02\n"
        '  .venv/bin/dataplatform sql "SELECT reason, count(*) FROM rejections GROUP BY 1"\n'
        f"  .venv/bin/dataplatform explain --duplicates-of {terminal_safe(example or 'PAIR_ID')}\n"
        "  .venv/bin/dataplatform takedown file --by url URL --reason '...'  # then: takedown apply"
    )
    return 0


def _print_documents(home: Home, dates: Sequence[str]) -> str | None:
    """Where the data cards, dataset cards and review sheets are, and one pair explained."""
    from dataplatform.core.records import audit, audit_text
    from dataplatform.core.records.review_sheet import review_path
    from dataplatform.core.store.stages import STAGE_ORDER
    from dataplatform.core.store.warehouse import connect, document_path

    con = connect(home)
    try:
        cards = con.execute("SELECT count(*) FROM data_cards").fetchall()[0][0]
        example = con.execute(
            "SELECT pair_id, duplicate_of FROM rejections WHERE stage = 'phash_deduped' "
            "ORDER BY date DESC, pair_id LIMIT 1"
        ).fetchall()
    finally:
        con.close()
    print(f"\n== data cards: {cards} pairs enter training, each with its card (table data_cards)")
    print(f"  dataset card, all days: {document_path(home, 'dataset_cards/all/card.md')}")
    for date in dates:
        print(f"  review sheets {date}:  {review_path(home, date, 'index').as_uri()}")
    if not example:
        return None
    pair_id, original = example[0]
    print(f"\n== dataplatform explain {terminal_safe(pair_id)}")
    print(audit_text.format_explanation(audit.explain(home, pair_id, STAGE_ORDER)))
    return original


def _choose_profile() -> None:
    """Real CLIP weights when this machine has them; otherwise the smoke profile, said plainly."""
    from dataplatform.core.scoring.clip_model import ClipWeightsUnavailable
    from dataplatform.core.store.profile import PROFILE_ENV, SMOKE, is_smoke
    from dataplatform.resources.clip import ClipResource

    if is_smoke():
        print(
            f"== {PROFILE_ENV}=smoke: CLIP runs the small built-in test model; scores mean nothing"
        )
        return
    # The demo only uses weights already in the local cache; it never starts a large download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    resource = ClipResource()
    logging.disable(logging.ERROR)  # open_clip logs the failed download before raising
    try:
        resource.encoder()
        print(f"== CLIP: {resource.model} with weights {resource.pretrained}")
    except ClipWeightsUnavailable:
        os.environ[PROFILE_ENV] = SMOKE
        print(
            f"== No weights for CLIP {resource.model} / {resource.pretrained} in the local cache.\n"
            f"   Running the smoke profile ({PROFILE_ENV}=smoke): a small built-in test model\n"
            "   whose CLIP scores and semantic duplicates mean nothing; its outputs say so.\n"
            "   For real scores, set the clip resource's `pretrained` to a local checkpoint path."
        )
    finally:
        logging.disable(logging.NOTSET)


def _print_budget(home: Home) -> None:
    """The token budget: images and tokens per day and in total, as `tokens` reports it."""
    from dataplatform.core.tokens.token_budget import DEFAULT_TARGET_TOKENS, budget, tokens_per_day

    per_day = tokens_per_day(home)
    if not per_day:
        return
    print(f"\n== token budget (target {DEFAULT_TARGET_TOKENS / 1e12:g}T image tokens, section 7.6)")
    print(f"{'scope':<12}{'images':>8}{'tokens':>10}{'tokens/image':>14}{'progress':>12}")
    for row in budget(per_day, DEFAULT_TARGET_TOKENS):
        print(
            f"{row.scope:<12}{row.images:>8}{row.tokens:>10}{row.tokens_per_image:>14.0f}"
            f"{row.progress:>12.2e}"
        )


def _rebuild_state(home: Home, args: argparse.Namespace) -> int:
    """Forget the dedup state and rebuild it from the warehouse, a day at a time."""
    from dataplatform.core.dedup.history_state import rebuild_all, state_root

    started = time.perf_counter()
    for name, days in rebuild_all(home).items():
        print(f"{name}: {days} day(s) rebuilt")
    print(f"state under {state_root(home)} rebuilt in {time.perf_counter() - started:.1f} s")
    return 0


def _funnel(home: Home, args: argparse.Namespace) -> int:
    """The funnel; exit 1 when a stage's partition and ledger disagree, 2 when a file is
    unreadable (``main`` prints which)."""
    from dataplatform.core.records.funnel import format_funnel, warehouse_funnel
    from dataplatform.core.store.stages import STAGE_ORDER

    funnel = warehouse_funnel(home, STAGE_ORDER, args.date)
    print(format_funnel(funnel, top_reasons=6))
    # Pairs taken down after curation left every table; they are counted apart.
    taken = warehouse_funnel(home, ["takedown"], args.date)[0].removed
    if taken:
        print(f"(and {taken} pair(s) taken down after curation: ledger stage takedown)")
    inconsistent = [m for f in funnel for m in f.mismatches]
    for m in inconsistent:
        print(f"inconsistent: {terminal_safe(m.describe())}", file=sys.stderr)
    return 1 if inconsistent else 0


def _sql(home: Home, args: argparse.Namespace) -> int:
    _print_query(home, args.query)
    return 0


def _explain(home: Home, args: argparse.Namespace) -> int:
    """A pair's journey, or its copies; exit 2 when the pair or the warehouse is not there."""
    from dataplatform.core.records import audit, audit_text
    from dataplatform.core.store.stages import STAGE_ORDER

    if (args.pair_id is None) == (args.duplicates_of is None):
        print("explain: give a PAIR_ID or --duplicates-of PAIR_ID (one of them)", file=sys.stderr)
        return 2
    try:
        if args.duplicates_of is not None:
            copies = audit.duplicates_of(home, args.duplicates_of, STAGE_ORDER)
            print(
                audit_text.to_json(copies)
                if args.json
                else audit_text.format_copies(copies, STAGE_ORDER)
            )
        else:
            journey = audit.explain(home, args.pair_id, STAGE_ORDER)
            print(
                audit_text.to_json(journey) if args.json else audit_text.format_explanation(journey)
            )
    except (audit.AuditError, CorruptPartitionError) as error:
        if args.json:
            print(audit_text.error_json(error))
        print(terminal_safe(str(error)), file=sys.stderr)
        return 2
    return 0


def _print_query(home: Home, query: str) -> None:
    """The query's result as DuckDB shows it, every text column terminal-safe."""
    import duckdb

    from dataplatform.core.store.warehouse import connect

    con = connect(home)
    try:
        relation = con.sql(query)
        if relation is None:
            return
        varchar = duckdb.sqltype("VARCHAR")
        con.create_function("terminal_safe", terminal_safe, [varchar], varchar)
        columns = []
        for name, kind in zip(relation.columns, relation.types, strict=True):
            quoted = '"' + name.replace('"', '""') + '"'
            text = str(kind) == "VARCHAR"
            columns.append(f"terminal_safe({quoted}) AS {quoted}" if text else quoted)
        relation.project(", ".join(columns)).show(max_width=160)
    finally:
        con.close()


def _export(home: Home, args: argparse.Namespace) -> int:
    """Token shards of (tokens, text, pair_id), sized for streaming, one day or all."""
    import numpy as np

    from dataplatform.core.records.takedown_apply import register_export
    from dataplatform.core.records.takedown_requests import (
        TakedownRequestError,
        load_takedowns,
        match_pairs,
    )
    from dataplatform.core.store.warehouse import partition_dates, read_partition
    from dataplatform.core.tokens.webdataset_export import export_shards

    dates = [args.date] if args.date else partition_dates(home, "tokens")
    if not dates or (args.date and args.date not in partition_dates(home, "tokens")):
        wanted = args.date or "none materialized"
        print(f"no tokens partition to export ({wanted})", file=sys.stderr)
        return 1

    try:
        requests = load_takedowns(home)
    except TakedownRequestError as exc:
        print(exc, file=sys.stderr)
        return 2
    skipped: list[str] = []

    def records():
        for date in dates:
            table = read_partition(home, "tokens", date)
            # Takedowns filed since the tables were written never reach an export.
            taken = {m.pair_id for m in match_pairs(table, requests)}
            skipped.extend(sorted(taken))
            for row in table.to_pylist():
                if row["pair_id"] in taken:
                    continue
                grid = np.asarray(row["tokens"], dtype=np.uint16).reshape(row["token_grid"])
                yield {
                    "pair_id": row["pair_id"],
                    "text": row["text"],
                    "tokens": grid,
                    "date": row["date"],
                    "resolution": row["resolution"],
                    "crop_policy": row["crop_policy"],
                    "crop_box": row["crop_box"],
                    "tokenizer": row["tokenizer"],
                    "license": row["license"],
                    "url": row["url"],
                }

    shards = export_shards(records(), Path(args.out), shard_max_bytes=args.shard_mb * 1024**2)
    register_export(home, Path(args.out))
    print(f"wrote {len(shards)} shard(s) to {args.out}")
    if skipped:
        shown = terminal_safe(", ".join(skipped))
        print(f"left out {len(skipped)} pair(s) named by a takedown request: {shown}")
    return 0


def _takedown(home: Home, args: argparse.Namespace) -> int:
    from dataplatform.core.records.takedown_requests import TakedownRequestError

    try:
        return _takedown_file(home, args) if args.action == "file" else _takedown_apply(home, args)
    except TakedownRequestError as exc:
        print(terminal_safe(str(exc)), file=sys.stderr)
        return 2


def _takedown_file(home: Home, args: argparse.Namespace) -> int:
    """Append one request; the whole folder is re-read so a bad request is refused at once."""
    import datetime as dt
    import hashlib

    from dataplatform.core.records.takedown_requests import load_takedowns, takedown_dir

    folder = takedown_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    filed = args.filed or dt.datetime.now(dt.UTC).date().isoformat()
    value = args.value
    if args.by == "image":
        source = Path(value)
        if not source.is_file():
            print(f"no image file {source}", file=sys.stderr)
            return 2
        data = source.read_bytes()
        name = f"images/{hashlib.sha256(data).hexdigest()[:16]}{source.suffix.lower()}"
        (folder / "images").mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
        value = name
    existing = load_takedowns(home)
    request = {
        "id": args.id or f"TD-{filed.replace('-', '')}-{len(existing) + 1}",
        "kind": args.by,
        "value": value,
        "filed": filed,
        "reason": args.reason,
    }
    if args.max_distance is not None:
        request["max_distance"] = args.max_distance
    path = folder / "requests.jsonl"
    before = path.read_bytes() if path.exists() else b""
    path.write_bytes(before + (json.dumps(request) + "\n").encode())
    try:
        load_takedowns(home)
    except Exception:
        path.write_bytes(before)
        raise
    print(terminal_safe(f"filed {request['id']} ({args.by} {value}) in {path}"))
    print("run `dataplatform takedown apply` to remove matches from what is already written")
    return 0


def _takedown_apply(home: Home, args: argparse.Namespace) -> int:
    from dataplatform.core.records.documents import refresh_documents
    from dataplatform.core.records.takedown_apply import apply_takedowns
    from dataplatform.core.records.takedown_requests import load_takedowns
    from dataplatform.core.store.stages import STAGE_ORDER

    requests = load_takedowns(home)
    report = apply_takedowns(home, requests, [Path(e) for e in args.export])
    print(f"{len(requests)} request(s); {len(report.matches)} pair(s) removed")
    if report.rewrites:
        _record_takedown_events(home, report)
    for m in report.matches:
        distance = "" if m.distance is None else f" at {m.distance} bits"
        print(terminal_safe(f"  {m.pair_id} ({m.date}) by {m.request.request_id}{distance}"))
    for table, dates in sorted(report.partitions.items()):
        shown = ", ".join(f"{d} -{n}" for d, n in sorted(dates.items()))
        print(terminal_safe(f"  rewrote {table}: {shown}"))
    for shard, n in sorted(report.shards.items()):
        print(terminal_safe(f"  rewrote {shard}: -{n} sample(s)"))
    if report.matches:
        documents = refresh_documents(
            home, report.dates, [m.pair_id for m in report.matches], STAGE_ORDER
        )
        print(f"  re-rendered {len(documents)} dataset card(s) and review sheet(s)")
    status = "passed" if report.verified else "FAILED: " + "; ".join(report.remaining)
    print(terminal_safe(f"verification (every table and export scanned): {status}"))
    print(f"receipt: {report.receipt}")
    return 0 if report.verified else 1


def _record_takedown_events(home: Home, report) -> None:
    """The rewritten asset partitions, recorded in the Dagster instance as the job records
    them (``takedowns.record_takedown``), as events that belong to no run."""
    import dagster as dg

    from dataplatform.definitions import defs
    from dataplatform.takedowns import record_takedown

    _local_instance(home)
    with dg.DagsterInstance.get() as instance:
        events = record_takedown(
            instance, report, defs.resolve_asset_graph(), instance.report_runless_asset_event
        )
    print(f"  recorded {len(events)} asset partition(s) in the Dagster instance")


def _synthetic(home: Home, args: argparse.Namespace) -> int:
    from dataplatform.core.samples.synthetic_images import write_synthetic_landing

    truth = write_synthetic_landing(
        home.landing_date(args.date),
        n_distinct=args.distinct,
        byte_copies=args.byte_copies,
        perceptual_copies=args.perceptual_copies,
        seed=args.seed,
    )
    print(f"wrote {len(truth)} rows under {home.landing_date(args.date)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
