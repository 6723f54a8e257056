"""The global dedup stages' persistent state: it repairs itself from the warehouse, the CLI
rebuilds it, and re-running an earlier day says which later days it leaves stale."""

import json
import shutil
from pathlib import Path

import pyarrow as pa

from dataplatform.cli import main
from dataplatform.core.dedup.history_state import (
    END_OF_TIME,
    EXACT_KEPT,
    INGESTED_IDS,
    PHASH_KEPT,
    state_root,
)
from dataplatform.core.dedup.semantic_history import store as semantic_store
from dataplatform.core.records.takedown_apply import apply_takedowns
from dataplatform.core.records.takedown_requests import TakedownRequest
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import commit_id, partition_file, read_partition
from tests.assets.conftest import DAYS, build_three_days, materialize_day
from tests.assets.test_pipeline import _kept, _ledger

STAGES = ["raw_pairs", "exact_deduped", "phash_deduped"]
SPECS = (INGESTED_IDS, EXACT_KEPT, PHASH_KEPT)


def _run(home: Home, day: str):
    result = materialize_day(home, day, selection=STAGES)
    assert result.success
    return {
        stage: result.asset_materializations_for_node(stage)[0].metadata
        for stage in ("exact_deduped", "phash_deduped")
    }


def _outcome(home: Home):
    return _kept(home, "exact_deduped"), _kept(home, "phash_deduped"), _ledger(home)


def _state_matches_warehouse(home: Home) -> None:
    for spec in SPECS:
        recorded = spec.store(home).dates()
        assert sorted(recorded) == DAYS, spec.name
        for day, record in recorded.items():
            assert record.commit == commit_id(partition_file(home, spec.table, day)), spec.name


def test_the_state_repairs_itself_and_decides_as_a_clean_run(tmp_path: Path):
    clean = Home(tmp_path / "clean")
    build_three_days(clean.landing)
    for day in DAYS:
        _run(clean, day)
    expected = _outcome(clean)
    _state_matches_warehouse(clean)

    home = Home(tmp_path / "home")
    shutil.copytree(clean.landing, home.landing)
    _run(home, DAYS[0])
    # A warehouse written before the state existed: the next day rebuilds it, and says so.
    shutil.rmtree(state_root(home))
    meta = _run(home, DAYS[1])
    rebuilt = meta["exact_deduped"]["state_days_rebuilt"].value
    assert f"exact_deduped:{DAYS[0]}" in rebuilt and f"ingested_ids:{DAYS[0]}" in rebuilt
    assert meta["phash_deduped"]["state_days_rebuilt"].value == f"phash_deduped:{DAYS[0]}"
    # A run killed after its warehouse commit, before its state update: the state still holds
    # the day from another commit, and the next day rebuilds it from the partition.
    manifest = PHASH_KEPT.store(home).folder / "manifest.json"
    body = json.loads(manifest.read_text())
    for segment in body["segments"]:
        if DAYS[1] in segment["dates"]:
            segment["dates"][DAYS[1]]["commit"] = "killed-before-update"
    manifest.write_text(json.dumps(body))
    meta = _run(home, DAYS[2])
    assert meta["phash_deduped"]["state_days_rebuilt"].value == f"phash_deduped:{DAYS[1]}"
    assert meta["exact_deduped"]["state_days_rebuilt"].value == "-"
    assert _outcome(home) == expected
    _state_matches_warehouse(home)


def test_rebuild_state_command(tmp_path: Path, capsys):
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    for day in DAYS:
        _run(home, day)
    before = {spec.name: spec.store(home).rows_before("9999-12-31") for spec in SPECS}
    assert main(["--home", str(home.root), "rebuild-state"]) == 0
    out = capsys.readouterr().out
    assert "exact_deduped: 3 day(s) rebuilt" in out and "ingested_ids: 3 day(s) rebuilt" in out
    assert {spec.name: spec.store(home).rows_before("9999-12-31") for spec in SPECS} == before
    _state_matches_warehouse(home)


def test_rerunning_an_earlier_day_names_the_later_days_it_leaves_stale(tmp_path: Path):
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    for day in DAYS:
        meta = _run(home, day)
        assert meta["exact_deduped"]["stale_later_days"].value == "-"
    meta = _run(home, DAYS[0])
    assert meta["exact_deduped"]["stale_later_days"].value == ", ".join(DAYS[1:])
    assert meta["phash_deduped"]["stale_later_days"].value == ", ".join(DAYS[1:])


def test_a_takedown_leaves_the_state_at_once(tmp_path: Path):
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    for day in DAYS:
        _run(home, day)
    victim = read_partition(home, "phash_deduped", DAYS[0]).column("pair_id")[0].as_py()
    request = TakedownRequest("r1", "pair_id", victim, DAYS[2], "test", "test")
    assert apply_takedowns(home, [request]).verified
    for spec in SPECS:
        held = set(
            spec.store(home)
            .find_equal(spec.key(_rows_of(home, spec)), END_OF_TIME)
            .rows["pair_id"]
            .to_pylist()
        )
        assert victim not in held, spec.name
    # Gone from the files too, not only from the lookups (retired segments included).
    for rows_file in state_root(home).rglob("rows.arrow"):
        with pa.memory_map(str(rows_file)) as source:
            ids = pa.ipc.open_file(source).read_all().column("pair_id").to_pylist()
        assert victim not in ids, rows_file
    _state_matches_warehouse(home)


def _rows_of(home: Home, spec) -> pa.Table:
    return pa.concat_tables(
        read_partition(home, spec.table, d).select(spec.schema.names) for d in DAYS
    )


def test_semantic_state_repairs_itself_and_rebuilds(tmp_path: Path):
    clean = Home(tmp_path / "clean")
    build_three_days(clean.landing)
    for day in DAYS:
        assert materialize_day(clean, day).success
    expected = _kept(clean, "semantic_deduped")

    home = Home(tmp_path / "home")
    shutil.copytree(clean.landing, home.landing)
    assert materialize_day(home, DAYS[0]).success
    shutil.rmtree(semantic_store(home).folder)  # the state lost: the next day rebuilds it
    result = materialize_day(home, DAYS[1])
    assert result.success
    meta = result.asset_materializations_for_node("semantic_deduped")[0].metadata
    assert f"semantic_deduped:{DAYS[0]}" in meta["state_days_rebuilt"].value
    assert materialize_day(home, DAYS[2]).success
    assert _kept(home, "semantic_deduped") == expected

    state = semantic_store(home)
    assert sorted(state.dates()) == DAYS
    fingerprint = state.quantizer().fingerprint
    assert main(["--home", str(home.root), "rebuild-state"]) == 0
    assert sorted(state.dates()) == DAYS
    for day, record in state.dates().items():
        assert record.commit == commit_id(partition_file(home, "semantic_deduped", day))
    assert state.quantizer().fingerprint != fingerprint  # retrained on every day's sample


def test_a_due_retrain_runs_before_the_day_and_decides_the_same(tmp_path: Path, monkeypatch):
    """With retrain="auto" a day whose advice says the quantizer is due (forced here: any
    history counts as outgrown) retrains it and re-encodes the history before it searches; the
    decisions equal a run that never retrains, and "advise" only reports it."""
    from dataplatform.core.dedup import semantic_history

    stages = [*STAGES, "clip_scored", "quality_filtered", "semantic_deduped"]
    plain = Home(tmp_path / "plain")
    build_three_days(plain.landing)
    advise = {"ops": {"semantic_deduped": {"config": {"retrain": "advise"}}}}
    for day in DAYS:
        assert materialize_day(plain, day, selection=stages, run_config=advise).success
    assert len(list(semantic_store(plain).quantizers.iterdir())) == 1  # never retrained

    monkeypatch.setattr(semantic_history, "OUTGROWN_FACTOR", 0)
    monkeypatch.setattr(semantic_history, "RETRAIN_MIN_LIST_GAIN", 0)
    monkeypatch.setattr(semantic_history, "OUTGROWN_MIN_GROWTH", 0)
    home = Home(tmp_path / "home")
    shutil.copytree(plain.landing, home.landing)
    retrained, fingerprints = [], []
    for day in DAYS:
        result = materialize_day(home, day, selection=stages)
        assert result.success
        meta = result.asset_materializations_for_node("semantic_deduped")[0].metadata
        retrained.append(meta["semantic_retrained"].value)
        fingerprints.append(semantic_store(home).quantizer().fingerprint)
    assert retrained[0] == "-"  # no history yet: nothing to retrain
    assert all("re-encoded" in r for r in retrained[1:]), retrained
    assert len(set(fingerprints)) > 1
    assert _kept(home, "semantic_deduped") == _kept(plain, "semantic_deduped")
    assert _ledger(home) == _ledger(plain)
    for day, record in semantic_store(home).dates().items():
        assert record.commit == commit_id(partition_file(home, "semantic_deduped", day))
