"""End to end through the commands users type: `dataplatform demo`, `dagster asset materialize`."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from dataplatform.assets import STAGE_ASSETS
from dataplatform.core.samples.sample_audit import compare_with_truth
from dataplatform.core.store.home import Home

BIN = Path(sys.executable).parent


def _run(args: list[str], home: Path, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATAPLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "HF_HUB_OFFLINE": "1",
        **extra_env,
    }
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_runs_every_stage_and_matches_the_sample_truth(tmp_path: Path):
    home = tmp_path / "home"
    done = _run([str(BIN / "dataplatform"), "demo"], home, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sample truth: 131 of 131 rows ended as designed" in done.stdout
    assert "phash_deduped        97     45       52  phash_duplicate 52" in done.stdout
    # No CLIP weights exist here: the demo says it falls back to the smoke profile.
    assert "Running the smoke profile (DATAPLATFORM_PROFILE=smoke)" in done.stdout
    assert "clip_scored          45" in done.stdout
    assert "quality_filtered" in done.stdout
    # Tokens for every pair semantic dedup kept, and the budget table.
    assert "== token budget" in done.stdout
    # The funnel rows (stage, in, kept, removed, ...); the last table printed is all dates.
    lines = {
        cols[0]: cols
        for cols in (line.split() for line in done.stdout.splitlines())
        if len(cols) >= 4 and cols[1].isdigit() and cols[2].isdigit()
    }
    assert lines["tokens"][1] == lines["tokens"][2]  # in == kept
    assert lines["semantic_deduped"][2] == lines["tokens"][1]
    assert lines["data_cards"][1] == lines["data_cards"][2] == lines["tokens"][2]
    cards = int(lines["data_cards"][2])
    assert f"== data cards: {cards} pairs enter training" in done.stdout
    assert (home / "warehouse" / "dataset_cards" / "all" / "card.md").is_file()
    for day in ("2025-01-01", "2025-01-02", "2025-01-03"):
        index = home / "warehouse" / "review" / f"date={day}" / "index.html"
        assert index.as_uri() in done.stdout
    assert "== dataplatform explain " in done.stdout and "status: removed at phash_deduped" in (
        done.stdout
    )
    matched, problems = compare_with_truth(Home(home), home / "sample_truth.json")
    assert (matched, problems) == (131, [])
    _assert_runs_went_through_the_queue(home / "dagster", done.stdout)
    # Materializing a day again replaces its partitions rather than appending (the newest day:
    # a re-run of an earlier one would fail the later days' history check, by design).
    again = _run([str(BIN / "dataplatform"), "materialize", "2025-01-03"], home, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2025-01-03 curation: run" in again.stdout and "FAILED" not in again.stdout
    with duckdb.connect(str(home / "warehouse" / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw_pairs").fetchone() == (110,)
        assert con.execute(
            "SELECT count(*) FROM rejections WHERE stage IN ('raw_pairs', 'exact_deduped', "
            "'phash_deduped')"
        ).fetchone() == (21 + 13 + 52,)
        counts = {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("phash_deduped", "clip_scored", "quality_filtered", "semantic_deduped")
        }
        removed = dict(
            con.execute("SELECT stage, count(*) FROM rejections GROUP BY stage").fetchall()
        )
        smoke_rows = con.execute(
            "SELECT count(*) FROM clip_scored WHERE clip_model LIKE '%smoke=true%'"
        ).fetchone()[0]
    # Every stage conserves rows: what the previous stage kept is kept here or in the ledger.
    chain = ["phash_deduped", "clip_scored", "quality_filtered", "semantic_deduped"]
    for before, stage in zip(chain, chain[1:], strict=False):
        assert counts[before] == counts[stage] + removed.get(stage, 0), stage
    clip_kept = counts["clip_scored"]
    assert smoke_rows == clip_kept  # every output the smoke model touched says so


def _assert_runs_went_through_the_queue(dagster_home: Path, stdout: str) -> None:
    """Seven runs: curate_daily's curation of each of the 3 days, the tokenizer (no daily asset,
    so the implicit asset job), curate_daily's tokens and cards of each day; each queued on the
    instance and taken by the daemon the command started and stopped, leaving no heartbeat."""
    import dagster as dg

    assert "no dagster-daemon is running" in stdout and "starting one for this command" in stdout
    assert "== stopped the dagster-daemon this command started" in stdout
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = sorted(
            instance.get_runs(),
            key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp,
        )
        days = ["2025-01-01", "2025-01-02", "2025-01-03"]
        assert [r.tags.get("dagster/partition") for r in runs] == [*days, None, *days]
        assert [r.job_name == "curate_daily" for r in runs] == [True] * 3 + [False] + [True] * 3
        assert runs[3].job_name.startswith("__ASSET_JOB")
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert all(r.tags["dataplatform/trigger"] == "cli" for r in runs)
        for run in runs:
            assert f"run {run.run_id[:8]} ok" in stdout
            queued = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED
            ).records
            assert len(queued) == 1, run.run_id
        assert instance.get_daemon_heartbeats() == {}


def test_dagster_cli_materializes_the_chain_in_the_smoke_profile(tmp_path: Path):
    home = tmp_path / "home"
    built = _run([str(BIN / "dataplatform"), "sample-data"], home, tmp_path)
    assert built.returncode == 0, built.stderr
    done = _run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "dataplatform.definitions",
            "--select",
            # Every stage up to semantic_deduped, each with the ledger rows its step writes.
            ",".join(k.to_user_string() for a in STAGE_ASSETS for k in sorted(a.keys)),
            "--partition",
            "2025-01-01",
        ],
        home,
        Path(__file__).resolve().parents[2],
        DATAPLATFORM_PROFILE="smoke",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(home / "warehouse" / "catalog.duckdb"), read_only=True) as con:
        counts = con.execute(
            "SELECT (SELECT count(*) FROM raw_pairs), (SELECT count(*) FROM exact_deduped), "
            "(SELECT count(*) FROM phash_deduped), (SELECT count(*) FROM clip_scored), "
            "(SELECT count(*) FROM embeddings)"
        ).fetchone()
    # 15 after pHash; the smoke profile keeps the top 90% by CLIP score: ceil(0.9 * 15) = 14.
    assert counts == (20, 19, 15, 14, 15)
