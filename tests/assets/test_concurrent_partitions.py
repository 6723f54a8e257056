"""Two partitions materialized at the same time, by two `dagster asset materialize` processes.

Day D's global dedup waits for day D-1's, but the rest of a day does not: while 2025-01-01 runs its
model stages, 2025-01-02 is ingested and deduplicated. Both runs record into one local Dagster
instance, write into one warehouse and refresh one catalog file. They must both succeed, with no
lock error, and leave exactly what running the same stages one after the other leaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from dataplatform.assets import (
    clip_scored,
    exact_deduped,
    phash_deduped,
    quality_filtered,
    raw_pairs,
    semantic_deduped,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    PART_FILE,
    ledger_dir,
    partition_dates,
    read_ledger,
    read_partition,
    warehouse_tables,
)
from tests.assets.conftest import DAYS, build_three_days, materialize_day

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
INGEST_AND_DEDUP = [raw_pairs, exact_deduped, phash_deduped]
# Day 1's model stages and its semantic dedup, while day 2 runs everything that does not need
# day 1's semantic dedup: the overlap a backfill of the two days has.
FIRST_DAY_REST = [clip_scored, quality_filtered, semantic_deduped]
SECOND_DAY_UP_TO_QUALITY = [*INGEST_AND_DEDUP, clip_scored, quality_filtered]
TABLES = ["raw_pairs", "exact_deduped", "phash_deduped", "clip_scored", "embeddings"]
TABLES += ["quality_filtered", "semantic_deduped"]
STAGES = [a.node_def.name for a in [*INGEST_AND_DEDUP, *FIRST_DAY_REST]]
LOCK_WORDS = ("could not set lock", "database is locked", "lock on file", "conflicting lock")


def _start(home: Home, dagster_home: Path, date: str, assets: list) -> subprocess.Popen:
    # Each stage with its ledger rows and side tables: one step writes them together.
    selection = ",".join(k.to_user_string() for a in assets for k in sorted(a.keys))
    env = {
        **os.environ,
        "DATAPLATFORM_HOME": str(home.root),
        "DAGSTER_HOME": str(dagster_home),
        "DATAPLATFORM_PROFILE": "smoke",
        "HF_HUB_OFFLINE": "1",
    }
    # One process per run keeps this within a minute on two cores; the default executor's process
    # per step is what tests/e2e/test_cli.py runs.
    env["DATAPLATFORM_EXECUTOR"] = "in_process"
    args = [str(BIN / "dagster"), "asset", "materialize", "-m", "dataplatform.definitions"]
    return subprocess.Popen(
        [*args, "--select", selection, "--partition", date],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _rows(home: Home, table: pa.Table) -> list[dict]:
    """Rows by pair_id, with the home's own path (in model identities) made comparable."""
    root = str(home.root)
    rows = [
        {k: v.replace(root, "<home>") if isinstance(v, str) else v for k, v in r.items()}
        for r in table.to_pylist()
    ]
    return sorted(rows, key=lambda r: (r["pair_id"], str(r.get("reason"))))


def _assert_same_rows(got: list[dict], want: list[dict], where: str) -> None:
    """Equal row for row; model scores to float tolerance (two processes, one BLAS)."""
    assert [r["pair_id"] for r in got] == [r["pair_id"] for r in want], where
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys(), where
        for column, value in w.items():
            floats = value if isinstance(value, list) else [value]
            if floats and all(isinstance(v, float) for v in floats):
                assert g[column] == pytest.approx(value, rel=1e-5, abs=1e-6), (where, column)
            else:
                assert g[column] == value, (where, column)


def test_two_partitions_materialize_at_once_like_one_after_the_other(tmp_path: Path):
    sequential = Home(tmp_path / "sequential")
    build_three_days(sequential.landing)
    for day in DAYS[:2]:
        assert materialize_day(sequential, day).success

    concurrent = Home(tmp_path / "concurrent")
    build_three_days(concurrent.landing)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    # The instance exists before runs are launched into it, as `make ui` or a deployment makes
    # it: two processes creating a fresh SQLite instance at once race on its schema version.
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()
    assert materialize_day(concurrent, DAYS[0], selection=INGEST_AND_DEDUP).success

    procs = [
        _start(concurrent, dagster_home, DAYS[0], FIRST_DAY_REST),
        _start(concurrent, dagster_home, DAYS[1], SECOND_DAY_UP_TO_QUALITY),
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
        assert not [w for w in LOCK_WORDS if w in output.lower()], output[-4000:]

    # Both runs were in progress at the same time, recorded in the one shared instance.
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert sorted(r.tags["dagster/partition"] for r in runs) == DAYS[:2]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        stats = [instance.get_run_stats(r.run_id) for r in runs]
    assert max(s.start_time for s in stats) < min(s.end_time for s in stats)

    assert materialize_day(concurrent, DAYS[1], selection=[semantic_deduped]).success

    for table in TABLES:
        assert partition_dates(concurrent, table) == DAYS[:2], table
        for day in DAYS[:2]:
            _assert_same_rows(
                _rows(concurrent, read_partition(concurrent, table, day)),
                _rows(sequential, read_partition(sequential, table, day)),
                f"{table} {day}",
            )
    for stage in STAGES:
        for day in DAYS[:2]:
            ledgers = [
                _rows(h, read_ledger(h, stage, day))
                if (ledger_dir(h, stage, day) / PART_FILE).is_file()
                else []
                for h in (concurrent, sequential)
            ]
            _assert_same_rows(*ledgers, f"ledger {stage} {day}")

    # The catalog file ends with a view for every table, whichever process refreshed it last.
    with duckdb.connect(str(concurrent.catalog_path), read_only=True) as con:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
        assert set(warehouse_tables(concurrent)) <= views
        assert LEDGER_TABLE in views
