"""What the Dagster UI says about lineage is true: staleness, data versions, blocking checks."""

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from dataplatform.assets import ALL_ASSETS, reporting
from dataplatform.assets.partitions import DEFAULT_START_DATE, START_DATE, daily_partitions
from dataplatform.assets.reporting import CHECK_DECIDED_AFTER_EARLIER_DAYS, CHECK_ROWS_CONSERVED
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.store.home import Home
from dataplatform.definitions import defs
from tests.assets.conftest import DAYS, lost_a_row_on_exact_deduped, materialize_day

PHASH = dg.AssetKey("phash_deduped")
CLIP = dg.AssetKey("clip_scored")
FIRST_STAGES = [dg.AssetKey(s) for s in ("raw_pairs", "exact_deduped", "phash_deduped")]


def _stale(instance: dg.DagsterInstance, key: dg.AssetKey, date: str) -> StaleStatus:
    """The status the UI shows for ``key``'s ``date`` partition."""
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return resolver.get_status(key, date)


def _latest_check(instance: dg.DagsterInstance, key: dg.AssetKey, name: str, date: str):
    """The newest evaluation of check ``name`` on ``date``'s partition."""
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(key, name), limit=50
    )
    return next(r for r in records if r.partition == date)


def _phash_version(instance: dg.DagsterInstance, date: str) -> str:
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=PHASH, asset_partitions=[date]), limit=1
    ).records[0]
    return record.asset_materialization.tags["dagster/data_version"]


def _phash_day(home: Home, instance: dg.DagsterInstance, date: str, threshold: int):
    result = materialize_day(
        home,
        date,
        instance=instance,
        selection=[PHASH],
        run_config={"ops": {"phash_deduped": {"config": {"threshold": threshold}}}},
    )
    assert result.success
    return result


def test_a_rerun_day_fails_the_history_check_of_every_later_day_at_the_default_start(
    three_days: Home,
):
    """At the default start date the partitions number in the hundreds, where Dagster drops the
    self-dependency from staleness; the history check is what tells the truth there."""
    assert START_DATE == DEFAULT_START_DATE
    assert len(daily_partitions.get_partition_keys()) >= 100
    instance = dg.DagsterInstance.ephemeral()
    for day in DAYS:
        assert materialize_day(three_days, day, instance=instance, selection=[*FIRST_STAGES, CLIP])
    for day in DAYS:
        assert _latest_check(instance, PHASH, CHECK_DECIDED_AFTER_EARLIER_DAYS, day).status.value
    first_version = _phash_version(instance, DAYS[0])

    # The first day again, with a threshold at which every pair is a copy: its content changes.
    _phash_day(three_days, instance, DAYS[0], threshold=64)
    assert _phash_version(instance, DAYS[0]) != first_version
    for day in DAYS[1:]:
        record = _latest_check(instance, PHASH, CHECK_DECIDED_AFTER_EARLIER_DAYS, day)
        assert record.status.value == "FAILED"
        evaluation = record.event.asset_check_evaluation
        assert evaluation.metadata["earlier_day_rerun"].value == DAYS[0]
        assert DAYS[0] in evaluation.description and day in evaluation.description
    # Dagster's staleness follows the day's own downstream through the content version ...
    assert _stale(instance, CLIP, DAYS[0]) == StaleStatus.STALE
    # ... but not the later days of the same stage at this partition count: hence the check.
    assert _stale(instance, PHASH, DAYS[1]) == StaleStatus.FRESH

    # Back to the original threshold: the same rows are kept, so the same content version, and
    # clip_scored, computed from exactly that, is fresh again.
    _phash_day(three_days, instance, DAYS[0], threshold=DEFAULT_PHASH_THRESHOLD)
    assert _phash_version(instance, DAYS[0]) == first_version
    assert _stale(instance, CLIP, DAYS[0]) == StaleStatus.FRESH

    # Re-deciding a later day clears its check; the day after it still waits.
    _phash_day(three_days, instance, DAYS[1], threshold=DEFAULT_PHASH_THRESHOLD)
    assert _latest_check(
        instance, PHASH, CHECK_DECIDED_AFTER_EARLIER_DAYS, DAYS[1]
    ).status.value == ("SUCCEEDED")
    assert _latest_check(
        instance, PHASH, CHECK_DECIDED_AFTER_EARLIER_DAYS, DAYS[2]
    ).status.value == ("FAILED")


def test_a_failed_conservation_check_blocks_the_stages_downstream(
    three_days: Home, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(
        reporting, "conservation_check", lost_a_row_on_exact_deduped(reporting.conservation_check)
    )
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_day(three_days, DAYS[0], instance=instance, selection=FIRST_STAGES)
    assert not result.success
    materialized = {
        e.event_specific_data.materialization.asset_key
        for e in result.get_asset_materialization_events()
    }
    # exact_deduped committed its day and reported the failure; phash_deduped never ran.
    assert materialized == {
        dg.AssetKey("raw_pairs"),
        dg.AssetKey("raw_pairs_rejections"),
        dg.AssetKey("exact_deduped"),
        dg.AssetKey("exact_deduped_rejections"),
    }
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "phash_deduped" not in started
    assert [e.step_key for e in result.get_step_failure_events()] == ["exact_deduped"]
    assert "blocking asset check failed" in str(
        result.get_step_failure_events()[0].event_specific_data.error
    )
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    assert [(c.asset_key, c.check_name) for c in failed] == [
        (dg.AssetKey("exact_deduped"), CHECK_ROWS_CONSERVED)
    ]
    assert not Path(three_days.warehouse, "phash_deduped", f"date={DAYS[0]}").exists()


def test_the_side_tables_and_ledger_rows_are_assets_with_their_writers_and_readers():
    graph = defs.resolve_asset_graph()

    def parents(name):
        return {
            k.to_user_string() for k in graph.get(dg.AssetKey.from_user_string(name)).parent_keys
        }

    def children(name):
        return {
            k.to_user_string() for k in graph.get(dg.AssetKey.from_user_string(name)).child_keys
        }

    # Written by clip_scored's step from phash_deduped's rows, read by the two stages using it.
    assert parents("embeddings") == {"phash_deduped"}
    assert {"quality_filtered", "semantic_deduped"} <= children("embeddings")
    assert "embeddings" in parents("semantic_deduped")
    assert parents("quality_scores") == {"clip_scored", "embeddings"}
    # raw_pairs reads the shards the download step wrote; its failures are raw_pairs' ledger rows.
    assert parents("raw_pairs") == {"url_downloads"}
    for asset in ALL_ASSETS:
        stage = asset.node_def.name
        if stage in ("vq_tokenizer", "url_downloads"):
            continue
        ledger = f"{stage}_rejections"
        # One step writes the stage, its ledger rows and its side tables: they are one asset
        # definition, so the UI materializes them together.
        assert dg.AssetKey.from_user_string(ledger) in asset.keys
        if stage != "data_cards":
            assert "data_cards" in children(ledger)
    assert {dg.AssetKey("clip_scored"), dg.AssetKey("embeddings")} <= set(
        next(a for a in ALL_ASSETS if a.node_def.name == "clip_scored").keys
    )
