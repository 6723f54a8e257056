import itertools
import shutil
from pathlib import Path

import dagster as dg
import duckdb

from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, read_partition
from dataplatform.definitions import defs
from tests.assets.conftest import DAYS, build_three_days, materialize_day


def _kept(home: Home, table: str) -> dict[str, list[str]]:
    return {d: sorted(read_partition(home, table, d).column("pair_id").to_pylist()) for d in DAYS}


def _ledger(home: Home, stages=("raw_pairs", "exact_deduped", "phash_deduped")) -> list[tuple]:
    con = connect(home)
    rows = con.execute(
        "SELECT date, stage, pair_id, reason, duplicate_of, distance FROM rejections "
        "WHERE list_contains($stages, stage) ORDER BY date, stage, pair_id, reason",
        {"stages": list(stages)},
    ).fetchall()
    con.close()
    return rows


def _checks(result) -> dict[str, bool]:
    return {
        f"{c.asset_key.path[-1]}.{c.check_name}": c.passed
        for c in result.get_asset_check_evaluations()
    }


def test_three_days_exact_counts_and_ledger(three_days: Home):
    for day in DAYS:
        result = materialize_day(three_days, day)
        assert result.success
        assert all(_checks(result).values()), _checks(result)
        # 2 shared checks per stage, the stages' own, and one history check per global stage.
        assert len(_checks(result)) == 21
    assert _kept(three_days, "raw_pairs") == {
        DAYS[0]: ["a1", "a2", "b1", "b2", "c1"],
        DAYS[1]: ["a3", "c2", "d1"],
        DAYS[2]: ["a1", "d2", "e1"],
    }
    assert _kept(three_days, "exact_deduped") == {
        DAYS[0]: ["a1", "b1", "b2", "c1"],
        DAYS[1]: ["c2", "d1"],
        DAYS[2]: ["d2", "e1"],
    }
    assert _kept(three_days, "phash_deduped") == {
        DAYS[0]: ["a1", "b1", "c1"],
        DAYS[1]: ["d1"],
        DAYS[2]: ["e1"],
    }
    # The smoke profile keeps the top 90% by CLIP score (ceil: every pair of these small days)
    # and only near-identical embeddings are semantic copies: no distinct photo is lost.
    assert _kept(three_days, "clip_scored") == _kept(three_days, "phash_deduped")
    # Real, sharp, safe photos of at least 300 px pass every quality threshold.
    assert _kept(three_days, "quality_filtered") == _kept(three_days, "phash_deduped")
    assert _kept(three_days, "semantic_deduped") == _kept(three_days, "phash_deduped")
    assert _kept(three_days, "embeddings") == _kept(three_days, "phash_deduped")
    ledger = _ledger(three_days)
    assert [row[:5] for row in ledger] == [
        (DAYS[0], "exact_deduped", "a2", "exact_duplicate", "a1"),
        (DAYS[0], "phash_deduped", "b2", "phash_duplicate", "b1"),
        (DAYS[1], "exact_deduped", "a3", "exact_duplicate", "a1"),
        (DAYS[1], "phash_deduped", "c2", "phash_duplicate", "c1"),
        (DAYS[1], "raw_pairs", "x1", "not_an_image", None),
        (DAYS[2], "exact_deduped", "a1", "duplicate_pair_id", None),
        (DAYS[2], "phash_deduped", "d2", "phash_duplicate", "d1"),
    ]
    assert all(row[5] == 0.0 for row in ledger if row[3] == "exact_duplicate")
    assert all(0 <= row[5] <= 10 for row in ledger if row[3] == "phash_duplicate")


def test_metadata_reports_the_funnel(three_days: Home):
    result = materialize_day(three_days, DAYS[0])
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("phash_deduped")
    }
    # The stage's table and its ledger rows are two assets of one step.
    assert set(mats) == {"phash_deduped", "phash_deduped_rejections"}
    assert mats["phash_deduped_rejections"]["dagster/partition_row_count"].value == 1
    assert mats["phash_deduped_rejections"]["dagster/table_name"].value == "rejections"
    meta = mats["phash_deduped"]
    assert meta["rows_in"].value == 4
    assert meta["dagster/partition_row_count"].value == 3
    assert meta["rows_removed"].value == 1
    # Dagster's own keys: the committed table's columns, its file and the view that reads it.
    columns = {c.name: c.type for c in meta["dagster/column_schema"].schema.columns}
    assert columns["pair_id"] == "string" and "phash" in columns
    assert meta["dagster/uri"].value.endswith("phash_deduped/date=2025-01-01/part-0.parquet")
    assert meta["dagster/table_name"].value == "phash_deduped"
    assert [r.data for r in meta["reasons"].value.records] == [
        {"reason": "phash_duplicate", "rows": 1}
    ]


def test_out_of_order_day_is_refused_with_a_clear_error(three_days: Home):
    result = materialize_day(three_days, DAYS[2])
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.event_specific_data.error)
    assert "2025-01-01, 2025-01-02" in message and "backfill" in message
    # raw_pairs does not depend on other days, so it was written; the dedup stages were not.
    assert read_partition(three_days, "raw_pairs", DAYS[2]).num_rows == 3


def test_kept_sets_do_not_depend_on_run_order(tmp_path: Path):
    """Launch the days in every order, retrying refused days as a backfill's retries would."""
    baseline = Home(tmp_path / "baseline")
    build_three_days(baseline.landing)
    for day in DAYS:
        assert materialize_day(baseline, day).success
    expected = (
        _kept(baseline, "exact_deduped"),
        _kept(baseline, "phash_deduped"),
        _ledger(baseline),
    )

    for n, order in enumerate(itertools.permutations(DAYS)):
        home = Home(tmp_path / f"order{n}")
        shutil.copytree(baseline.landing, home.landing)
        pending = list(order)
        attempts = 0
        while pending:
            day = pending.pop(0)
            attempts += 1
            if not materialize_day(home, day).success:
                pending.append(day)
            assert attempts < 20
        # Re-running an early day afterwards changes nothing either.
        assert materialize_day(home, DAYS[0]).success
        got = (_kept(home, "exact_deduped"), _kept(home, "phash_deduped"), _ledger(home))
        assert got == expected, order


def test_dedup_stages_depend_on_their_previous_day():
    graph = defs.resolve_asset_graph()
    for name in ("exact_deduped", "phash_deduped"):
        key = dg.AssetKey(name)
        assert key in graph.get(key).parent_keys
        mapping = graph.get_partition_mapping(key, key)
        assert isinstance(mapping, dg.TimeWindowPartitionMapping)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)


def test_catalog_views_answer_audit_questions(three_days: Home):
    for day in DAYS:
        materialize_day(three_days, day)
    with duckdb.connect(str(three_days.catalog_path), read_only=True) as con:
        assert con.execute(
            "SELECT duplicate_of FROM rejections WHERE pair_id = 'c2'"
        ).fetchall() == [("c1",)]
        assert con.execute("SELECT count(*) FROM phash_deduped").fetchone() == (5,)
