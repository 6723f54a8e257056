"""A partition file that cannot be read, and a partition beside another commit's ledger.

`dataplatform funnel` and `explain` say which file and what to re-materialize in one line on
stderr (exit 2), never a traceback, and the next stage fails with a Dagster failure naming it.
A partition and ledger from different commits make `funnel` exit 1 and say which.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import COMMIT_KEY, commit_id, ledger_file, partition_file
from tests.assets.conftest import DAYS, build_three_days, materialize_day
from tests.e2e.cli_runner import run_cli

DAY = DAYS[0]
STAGES = ["raw_pairs", "exact_deduped"]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    assert materialize_day(home, DAY, selection=STAGES).success
    return home


def test_a_truncated_partition_is_named_by_the_cli_and_the_next_stage(home: Home):
    path = partition_file(home, "exact_deduped", DAY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    remedy = f"materialize exact_deduped for {DAY}"

    for args in (
        ["funnel"],
        ["funnel", "--date", DAY],
        ["explain", "a1"],
        ["explain", "--duplicates-of", "a1"],
    ):
        done = run_cli(home, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"cannot read {path} (table exact_deduped, {DAY}): ")
        assert line.endswith(f"; {remedy} to rewrite it")

    done = run_cli(home, "explain", "a1", "--json")
    assert done.returncode == 2
    error = json.loads(done.stdout)
    assert (error["error"], error["path"], error["asset"], error["date"]) == (
        "CorruptPartitionError",
        str(path),
        "exact_deduped",
        DAY,
    )

    # The next stage reads it: its step fails with a Dagster Failure that names it.
    result = materialize_day(home, DAY, selection=["phash_deduped"])
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "phash_deduped"
    assert failure.event_specific_data.error.cls_name == "Failure"
    message = failure.event_specific_data.error.message
    assert str(path) in message and remedy in message
    assert failure.event_specific_data.user_failure_data.metadata["materialize"].value == (
        f"exact_deduped for {DAY}"
    )

    # Doing what it says mends the warehouse.
    assert materialize_day(home, DAY, selection=["exact_deduped", "phash_deduped"]).success
    done = run_cli(home, "funnel")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_partition_beside_another_commits_ledger_is_not_healthy(home: Home):
    ledger = ledger_file(home, "exact_deduped", DAY)
    table = pq.read_table(ledger)
    pq.write_table(table.replace_schema_metadata({COMMIT_KEY: b"an-older-commit"}), ledger)
    partition_commit = commit_id(partition_file(home, "exact_deduped", DAY))

    done = run_cli(home, "funnel")
    assert done.returncode == 1
    expected = (
        f"exact_deduped {DAY}: partition from commit {partition_commit}, ledger from commit "
        f"an-older-commit; materialize exact_deduped for {DAY}"
    )
    assert done.stderr.splitlines() == [f"inconsistent: {expected}"]
    assert "NOT CONSISTENT: 1 partition(s) and ledger(s) disagree" in done.stdout
    assert f"  {expected}" in done.stdout.splitlines()
    # The stages that agree are not reported.
    assert "raw_pairs " + DAY not in done.stdout + done.stderr
