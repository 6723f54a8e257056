"""Backfills in few runs: a range of days runs in one run per stage group, day after day."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceRequestContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from dataplatform.assets import (
    ALL_ASSETS,
    CARD_ASSETS,
    STAGE_ASSETS,
    TOKEN_ASSETS,
    exact_deduped,
    phash_deduped,
    raw_pairs,
    vq_tokenizer,
)
from dataplatform.assets.partitions import (
    BACKFILL_DAYS_ENV,
    DEFAULT_BACKFILL_DAYS_PER_RUN,
    backfill_days_per_run,
)
from dataplatform.assets.reporting import range_result
from dataplatform.core.scoring import clip_model
from dataplatform.core.store.home import Home
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import connect, read_partition
from dataplatform.core.tokens import vq_tokenizer as vq
from dataplatform.resources import EngineResource, LicensePolicyResource, WarehouseResource
from tests.assets.conftest import (
    DAYS,
    SMALL_TOKENIZER,
    build_three_days,
    materialize_cards,
    materialize_day,
    stage_resources,
)
from tests.conftest import encode, photo

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
BACKFILL_ID = "dagster/backfill"
FOUR_DAYS = [*DAYS, "2025-01-04"]
# The daily assets that declare partitions.daily_backfill_policy: every stage.
POLICY_ASSETS = tuple(STAGE_ORDER)
# Tables compared between one-day runs and a range run: every stage's and its side tables.
TABLES = [
    "raw_pairs",
    "exact_deduped",
    "phash_deduped",
    "clip_scored",
    "embeddings",
    "quality_filtered",
    "quality_scores",
    "semantic_deduped",
    "tokens",
    "data_cards",
]
# Which run wrote a card, and when: the only columns that differ between two runs.
RUN_COLUMNS = {"stage_runs", "dataset_version"}
FUNNEL = ("rows_in", "rows_kept", "rows_removed", "dagster/partition_row_count")
RANGE_FUNNEL = ("days", "range_rows_in", "range_rows_kept", "range_rows_removed")
SHOWN = {*FUNNEL, *RANGE_FUNNEL}


def _normalised(table: pa.Table, root: Path) -> list[dict]:
    """Rows by pair_id, the home's path written as <home>, without the run columns."""
    rows = table.drop_columns([c for c in table.column_names if c in RUN_COLUMNS]).to_pylist()
    text = json.dumps(sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str)))
    return json.loads(text.replace(str(root), "<home>"))


def _tables(home: Home) -> dict[tuple[str, str], list[dict]]:
    return {
        (table, day): _normalised(read_partition(home, table, day), home.root)
        for table in TABLES
        for day in DAYS
    }


def _ledger(home: Home) -> list:
    con = connect(home)
    rows = con.execute("SELECT * FROM rejections ORDER BY date, stage, pair_id, reason").fetchall()
    con.close()
    return json.loads(json.dumps(rows, default=str).replace(str(home.root), "<home>"))


def _value(metadata: dict, name: str):
    value = metadata[name]
    if isinstance(value, dg.TableMetadataValue):
        return [r.data for r in value.records]
    return value.value if isinstance(value, dg.MetadataValue) else value


def _observed(instance: dg.DagsterInstance, key: dg.AssetKey, day: str) -> dict:
    """The metadata of the latest observation of ``key``'s ``day``."""
    filter_ = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day])
    (record,) = instance.fetch_observations(filter_, limit=1).records
    return dict(record.asset_observation.metadata)


def _materialized(instance: dg.DagsterInstance, key: dg.AssetKey, day: str) -> dict:
    """The metadata of the latest materialization of ``key``'s ``day``."""
    filter_ = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day])
    (record,) = instance.fetch_materializations(filter_, limit=1).records
    return dict(record.asset_materialization.metadata)


class _Counted:
    """A loader that counts its calls and then loads as before."""

    def __init__(self, load):
        self.load, self.calls = load, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.load(*args, **kwargs)


def test_a_range_run_equals_one_day_runs_day_by_day(tmp_path: Path, monkeypatch):
    by_day, by_range = Home(tmp_path / "by_day"), Home(tmp_path / "by_range")
    for home in (by_day, by_range):
        build_three_days(home.landing)

    day_instance = dg.DagsterInstance.ephemeral()
    for day in DAYS:
        assert materialize_day(by_day, day, instance=day_instance).success
    for day in DAYS:
        assert materialize_cards(by_day, day, instance=day_instance).success
    # The same trained tokenizer on both sides (vq_tokenizer reuses it), so tokens compare.
    shutil.copytree(by_day.root / "models", by_range.root / "models")

    # Every model loader starts empty: what loads during the range runs is counted.
    clip_loads = _Counted(clip_model._load)
    tokenizer_loads = _Counted(vq._load_tokenizer)
    monkeypatch.setattr(clip_model, "_ENCODERS", {})
    monkeypatch.setattr(clip_model, "_load", clip_loads)
    monkeypatch.setattr(vq, "_TOKENIZERS", {})
    monkeypatch.setattr(vq, "_load_tokenizer", tokenizer_loads)
    range_instance = dg.DagsterInstance.ephemeral()
    range_tags = {RANGE_START: DAYS[0], RANGE_END: DAYS[-1]}
    # Each stage's own asset (its ledger rows and side tables are checked below them).
    curation_keys = [dg.AssetKey(a.node_def.name) for a in STAGE_ASSETS]
    curation = dg.materialize(
        STAGE_ASSETS,
        tags=range_tags,
        resources=stage_resources(by_range),
        instance=range_instance,
    )
    assert dg.materialize(
        ALL_ASSETS,
        selection=[vq_tokenizer.key],
        resources=stage_resources(by_range),
        run_config={"ops": {"vq_tokenizer": {"config": SMALL_TOKENIZER}}},
        instance=range_instance,
    ).success
    card_assets = [a for a in TOKEN_ASSETS + CARD_ASSETS if a is not vq_tokenizer]
    card_keys = [dg.AssetKey(a.node_def.name) for a in card_assets]
    cards = dg.materialize(
        ALL_ASSETS,
        selection=[k for a in card_assets for k in a.keys],
        tags=range_tags,
        resources=stage_resources(by_range),
        instance=range_instance,
    )
    assert curation.success and cards.success

    # The same tables and ledger, day by day.
    assert _tables(by_range) == _tables(by_day)
    assert _ledger(by_range) == _ledger(by_day)
    # One model load per run, not one per day.
    assert (clip_loads.calls, tokenizer_loads.calls) == (1, 1)

    for result, keys in ((curation, curation_keys), (cards, card_keys)):
        for key in keys:
            # One materialization per day of the range, all with the range's metadata.
            mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
            assert sorted(m.partition for m in mats) == DAYS
            ranged = mats[0].materialization.metadata
            assert all(m.materialization.metadata == ranged for m in mats)
            by_day_rows = []
            for day in DAYS:
                # Each day's own metadata is on its partition: the one-day run's, plus checks.
                own = _observed(range_instance, key, day)
                one_day = _materialized(day_instance, key, day)
                assert set(own) == set(one_day) | {"checks", "checks_failed", "content_version"}
                # Each day's own content version (the homes differ, and with them the
                # image locations, so it is not the one-day run's).
                assert len(_value(own, "content_version")) == 24
                assert {n: _value(own, n) for n in (*FUNNEL, "reasons")} == {
                    n: _value(one_day, n) for n in (*FUNNEL, "reasons")
                }
                assert _value(own, "checks_failed") == "-"
                by_day_rows.append(
                    {
                        "day": day,
                        **{n: _value(one_day, n) for n in FUNNEL[:3]},
                        "checks_failed": "-",
                    }
                )
            assert _value(ranged, "by_day") == by_day_rows
            assert _value(ranged, "days") == len(DAYS)
            assert "dagster/partition_row_count" not in ranged
            assert _value(ranged, "range_rows_kept") == sum(r["rows_kept"] for r in by_day_rows)
        # The written ledger rows and side tables: one materialization per day of the range.
        for asset in STAGE_ASSETS if result is curation else card_assets:
            for key in set(asset.keys) - set(keys):
                mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
                assert sorted(m.partition for m in mats) == DAYS, key
        # Each check once for the range, passed on every day; and each day's on its partition.
        evaluations = result.get_asset_check_evaluations()
        ranged_checks = [e for e in evaluations if e.partition is None]
        specs = [
            s
            for a in ALL_ASSETS
            if a.node_def.name in {k.path[-1] for k in keys}
            for s in a.check_specs
        ]
        assert sorted(e.check_name for e in ranged_checks) == sorted(s.name for s in specs)
        assert all(e.passed for e in evaluations)
        assert all(e.metadata["days"].value == len(DAYS) for e in ranged_checks)
        assert all(e.metadata["failing_days"].value == "-" for e in ranged_checks)
        per_day = sorted(
            (e.asset_key.path[-1], e.check_name, e.partition)
            for e in evaluations
            if e.partition is not None
        )
        assert per_day == sorted((s.asset_key.path[-1], s.name, d) for s in specs for d in DAYS)


def test_a_range_check_fails_when_one_day_fails_and_names_it():
    def day(passed: bool, kept: int) -> dg.MaterializeResult:
        return dg.MaterializeResult(
            metadata={"rows_in": 3, "rows_kept": kept, "rows_removed": 3 - kept},
            check_results=[
                dg.AssetCheckResult(check_name="c", passed=passed, metadata={"n": kept})
            ],
        )

    result = range_result(
        dg.AssetKey("s"),
        [(DAYS[0], day(True, 3)), (DAYS[1], day(False, 1)), (DAYS[2], day(True, 2))],
    )
    (check,) = result.check_results
    assert not check.passed
    assert check.metadata["failing_days"].value == DAYS[1]
    assert check.metadata["days"].value == 3
    assert result.metadata["range_rows_kept"] == 6
    assert [r.data["checks_failed"] for r in result.metadata["by_day"].records] == ["-", "c", "-"]


def test_days_per_run_default_and_environment():
    assert backfill_days_per_run({}) == DEFAULT_BACKFILL_DAYS_PER_RUN == 31
    assert backfill_days_per_run({BACKFILL_DAYS_ENV: " 7 "}) == 7
    for bad in ("0", "-3", "a month"):
        with pytest.raises(ValueError, match=BACKFILL_DAYS_ENV):
            backfill_days_per_run({BACKFILL_DAYS_ENV: bad})


def test_every_daily_asset_reads_its_days_per_run_when_the_code_location_loads():
    code = (
        "import json, dataplatform.definitions as d; "
        "print(json.dumps({a.node_def.name: a.backfill_policy.max_partitions_per_run "
        "for a in d.defs.assets if a.partitions_def and a.backfill_policy}))"
    )
    env = {**os.environ, BACKFILL_DAYS_ENV: "7"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    policies = json.loads(done.stdout)
    assert {name: policies.get(name) for name in POLICY_ASSETS} == dict.fromkeys(POLICY_ASSETS, 7)


# --- Backfills through Dagster's backfill daemon --------------------------------------------

# Code locations the daemon loads in process. The warehouse is DATAPLATFORM_HOME (each test
# points it at its own home); steps run in the run's process, so a test stays a few seconds.
CHEAP = [raw_pairs, exact_deduped, phash_deduped]
_RESOURCES = {
    "warehouse": WarehouseResource(),
    "licenses": LicensePolicyResource(),
    "engine": EngineResource(),
}
cheap_defs = dg.Definitions(assets=CHEAP, resources=_RESOURCES, executor=dg.in_process_executor)
cheap_defs_day_per_run = dg.Definitions(
    assets=[a.with_attributes(backfill_policy=dg.BackfillPolicy.multi_run(1)) for a in CHEAP],
    resources=_RESOURCES,
    executor=dg.in_process_executor,
)


def _plan_stub(asset: dg.AssetsDefinition, days_per_run: int | None) -> dg.AssetsDefinition:
    """The asset as the daemon plans it (key, deps and their mappings, partitions, policy),
    with a body that does nothing: the runs a backfill of the whole pipeline takes, in seconds."""
    specs = [dg.AssetSpec(s.key, deps=s.deps, skippable=s.skippable) for s in asset.specs]
    policy = asset.backfill_policy
    if days_per_run is not None and asset.partitions_def is not None:
        policy = dg.BackfillPolicy.multi_run(days_per_run)

    @dg.multi_asset(
        name=asset.node_def.name,
        specs=specs,
        partitions_def=asset.partitions_def,
        backfill_policy=policy,
    )
    def _stub() -> Iterator[dg.MaterializeResult]:
        for spec in specs:
            yield dg.MaterializeResult(asset_key=spec.key)

    return _stub


pipeline_plan_defs = dg.Definitions(
    assets=[_plan_stub(a, None) for a in ALL_ASSETS], executor=dg.in_process_executor
)
pipeline_plan_defs_3_days_per_run = dg.Definitions(
    assets=[_plan_stub(a, 3) for a in ALL_ASSETS], executor=dg.in_process_executor
)


STEP_NAMES = {a.node_def.name for a in ALL_ASSETS}


@contextmanager
def daemon_instance(path: Path) -> Iterator[dg.DagsterInstance]:
    """A sqlite instance under ``path`` whose runs start at once and execute in this process."""
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "DefaultRunCoordinator",
        },
        "run_launcher": {
            "module": "dagster._core.launcher.sync_in_memory_run_launcher",
            "class": "SyncInMemoryRunLauncher",
        },
    }
    path.mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(path), overrides=overrides) as instance:
        yield instance


@contextmanager
def backfilled(
    instance: dg.DagsterInstance, attribute: str, days: list[str], assets: list[str]
) -> Iterator[tuple[list[tuple[tuple[str, ...], str, str]], WorkspaceRequestContext]]:
    """Launch a backfill of ``assets`` over ``days`` as the UI does and tick the backfill daemon
    until it is done: the runs it launched (assets, first day, last day) and a request context
    to query the workspace with, as the UI does."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute=attribute)
    )
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, instance) as workspace:
        graph = workspace.create_request_context().asset_graph
        backfill_id = f"{attribute}-{len(days)}"
        instance.add_backfill(
            PartitionBackfill.from_asset_partitions(
                backfill_id=backfill_id,
                asset_graph=graph,
                partition_names=days,
                # A stage's step also writes its ledger rows and side tables: select them too.
                asset_selection=[
                    k for a in ALL_ASSETS if a.node_def.name in set(assets) for k in a.keys
                ],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=None,
                description=None,
                run_config=None,
            )
        )
        for _ in range(4 * len(days) * len(assets)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))
            if instance.get_backfill(backfill_id).status != BulkActionStatus.REQUESTED:
                break
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs(dg.RunsFilter(tags={BACKFILL_ID: backfill_id}))
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        launched = [
            (
                # The stages a run materializes (each also writes its ledger and side tables).
                tuple(sorted({k.path[-1] for k in r.asset_selection or ()} & STEP_NAMES)),
                r.tags.get(RANGE_START) or r.tags["dagster/partition"],
                r.tags.get(RANGE_END) or r.tags["dagster/partition"],
            )
            for r in reversed(runs)
        ]
        yield launched, workspace.create_request_context()


def _expected_runs(
    groups: list[tuple[str, ...]], policies: dict[str, dg.BackfillPolicy | None], days: list[str]
) -> list[tuple[tuple[str, ...], str, str]]:
    """Per group of assets that share a run, ceil(days / N) runs of N consecutive days."""
    expected = []
    for group in groups:
        (policy,) = {policies[name] for name in group}
        n = policy.max_partitions_per_run if policy else 1
        for start in range(0, len(days), n):
            block = days[start : start + n]
            expected.append((tuple(sorted(group)), block[0], block[-1]))
    return expected


def _write_fourth_day(landing: Path) -> None:
    """A new photo and a byte copy of day 1's coffee."""
    day = landing / FOUR_DAYS[3]
    (day / "img").mkdir(parents=True)
    (day / "img" / "camera.jpg").write_bytes(encode(photo("camera"), quality=92))
    (day / "img" / "coffee.jpg").write_bytes(encode(photo("coffee"), quality=92))
    rows = [
        {"id": "f1", "image": "img/camera.jpg", "text": "a photographer"},
        {"id": "g1", "image": "img/coffee.jpg", "text": "coffee, reposted"},
    ]
    (day / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


PARTITION_EVENTS = """
query PartitionEvents($assetKey: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $assetKey) {
    ... on Asset {
      assetEventHistory(partitions: [$partition], limit: 100,
                        eventTypeSelectors: [MATERIALIZATION, OBSERVATION]) {
        results {
          __typename
          ... on ObservationEvent {
            partition
            metadataEntries { label ... on IntMetadataEntry { intValue } }
          }
          ... on MaterializationEvent {
            partition
            metadataEntries { label ... on IntMetadataEntry { intValue } }
          }
        }
      }
    }
  }
}
"""


def _partition_events(context, asset: str, day: str) -> list[tuple[str, dict[str, int]]]:
    """What the UI's partition panel lists for ``asset``'s ``day``: event kinds and int values."""
    result = execute_dagster_graphql(
        context, PARTITION_EVENTS, {"assetKey": {"path": [asset]}, "partition": day}
    )
    assert not result.errors, result.errors
    events = result.data["assetOrError"]["assetEventHistory"]["results"]
    return [
        (
            e["__typename"],
            {
                m["label"]: m["intValue"]
                for m in e["metadataEntries"]
                if "intValue" in m and m["label"] in SHOWN
            },
        )
        for e in events
        if e["partition"] == day
    ]


def test_a_backfill_runs_each_stage_group_in_blocks_of_days(tmp_path: Path, monkeypatch):
    cheap = [a.node_def.name for a in CHEAP]
    counts = {}
    for attribute, defs in (
        ("cheap_defs_day_per_run", cheap_defs_day_per_run),
        ("cheap_defs", cheap_defs),
    ):
        home = Home(tmp_path / attribute)
        build_three_days(home.landing)
        _write_fourth_day(home.landing)
        monkeypatch.setenv("DATAPLATFORM_HOME", str(home.root))
        with (
            daemon_instance(tmp_path / f"{attribute}-dagster") as instance,
            backfilled(instance, attribute, FOUR_DAYS, cheap) as (runs, context),
        ):
            policies = {a.node_def.name: a.backfill_policy for a in defs.assets}
            # Each dedup stage depends on its own previous day: it never shares a run.
            assert sorted(runs) == sorted(
                _expected_runs([(name,) for name in cheap], policies, FOUR_DAYS)
            )
            counts[attribute] = len(runs)
            assert _kept(home, "exact_deduped") == {
                DAYS[0]: ["a1", "b1", "b2", "c1"],
                DAYS[1]: ["c2", "d1"],
                DAYS[2]: ["d2", "e1"],
                FOUR_DAYS[3]: ["f1"],
            }
            assert _kept(home, "phash_deduped") == {
                DAYS[0]: ["a1", "b1", "c1"],
                DAYS[1]: ["d1"],
                DAYS[2]: ["e1"],
                FOUR_DAYS[3]: ["f1"],
            }
            events = _partition_events(context, "exact_deduped", DAYS[1])
        if attribute == "cheap_defs":
            # The UI's partition panel for one day of a range run: the range's materialization
            # (the same on every day) and the day's own observation.
            assert sorted(events) == [
                (
                    "MaterializationEvent",
                    {"days": 4, "range_rows_in": 13, "range_rows_kept": 9, "range_rows_removed": 4},
                ),
                (
                    "ObservationEvent",
                    {
                        "dagster/partition_row_count": 2,
                        "rows_in": 3,
                        "rows_kept": 2,
                        "rows_removed": 1,
                    },
                ),
            ]
    print(
        f"backfill of {len(FOUR_DAYS)} days of {', '.join(cheap)}: "
        f"{counts['cheap_defs_day_per_run']} runs at a day per run, {counts['cheap_defs']} now"
    )
    assert counts["cheap_defs"] < counts["cheap_defs_day_per_run"] == len(cheap) * len(FOUR_DAYS)


def _kept(home: Home, table: str) -> dict[str, list[str]]:
    return {
        d: sorted(read_partition(home, table, d).column("pair_id").to_pylist()) for d in FOUR_DAYS
    }


# Which assets the daemon puts in one run: a dedup stage (it depends on its own previous day)
# never shares a run with its parents, while the stages after it join it; the download step
# runs with raw_pairs.
PIPELINE_GROUPS = [
    ("raw_pairs", "url_downloads"),
    ("exact_deduped",),
    ("phash_deduped", "clip_scored", "quality_filtered"),
    ("semantic_deduped", "tokens", "data_cards"),
]


@pytest.mark.parametrize(
    ("attribute", "defs"),
    [
        ("pipeline_plan_defs", pipeline_plan_defs),
        ("pipeline_plan_defs_3_days_per_run", pipeline_plan_defs_3_days_per_run),
    ],
)
def test_a_pipeline_backfill_takes_a_run_per_group_and_block_of_days(
    tmp_path: Path, attribute: str, defs: dg.Definitions
):
    daily = [a.node_def.name for a in ALL_ASSETS if a.partitions_def is not None]
    with (
        daemon_instance(tmp_path) as instance,
        backfilled(instance, attribute, FOUR_DAYS, daily) as (runs, _),
    ):
        pass
    policies = {a.node_def.name: a.backfill_policy for a in defs.assets}
    expected = _expected_runs(PIPELINE_GROUPS, policies, FOUR_DAYS)
    assert sorted(runs) == sorted(expected)
    print(f"{attribute}: {len(runs)} runs for {len(FOUR_DAYS)} days of {len(daily)} stages")
