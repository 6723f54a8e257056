"""The overall dataset card merges the days' summaries: the full scan's numbers, a day's cost."""

import json

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.records import data_cards
from dataplatform.core.records.data_cards import (
    CARDS_TABLE,
    SUMMARY_FILE,
    card_folder,
    card_scores,
    write_dataset_card,
)
from dataplatform.core.records.funnel import warehouse_funnel
from dataplatform.core.records.readable_numbers import format_number
from dataplatform.core.records.score_stats import Binning
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import ledger_table
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import (
    CorruptPartitionError,
    commit_stage,
    connect,
    partition_file,
    read_footer,
    read_partition,
)

STAGES = STAGE_ORDER
DAYS = ("2025-03-01", "2025-03-02", "2025-03-03")
LICENSES = ("CC0-1.0", "cc-by-4.0", None, "", "Unknown")


def _commit_day(home: Home, date: str, cards: int, seed: int, drop_score: str | None = None):
    """Every stage's partition and ledger of ``date``: 3 rows dropped per stage, ``cards`` kept
    at the end; license drops at ingest, one takedown; ``drop_score`` absent from the cards."""
    rng = np.random.default_rng(seed)
    ids = [f"{date}-{k}" for k in range(cards + 3 * (len(STAGES) - 1))]
    for stage in STAGES:
        dropped = [] if stage == CARDS_TABLE else ids[-3:]
        ids = ids if stage == CARDS_TABLE else ids[:-3]
        table = {"pair_id": ids, "date": [date] * len(ids)}
        if stage == CARDS_TABLE:
            table["license"] = [LICENSES[k % len(LICENSES)] for k in range(len(ids))]
            # As the license policy sets it: missing for no license or a placeholder; some
            # cards predate the status.
            table["license_status"] = [
                "missing"
                if LICENSES[k % len(LICENSES)] in (None, "", "Unknown")
                else ("allowed" if k % 3 else None)
                for k in range(len(ids))
            ]
            for score in card_scores():
                if score.name != drop_score:
                    lo, hi = score.plot_range or (0.0, 900.0)
                    values = rng.uniform(lo, hi, len(ids))
                    table[score.name] = pa.array(
                        [None if k % 7 == 0 else v for k, v in enumerate(values)], pa.float32()
                    )
            table["token_count"] = pa.array([784] * len(ids), pa.int32())
            table["dataset_version"] = [f"{date}+{seed}"] * len(ids)
        reason = "license_missing" if stage == STAGES[0] else f"{stage}_rule"
        ledger = ledger_table(
            [
                {"pair_id": p, "date": date, "stage": stage, "reason": reason, "license": None}
                for p in dropped
            ]
        )
        commit_stage(home, date, {stage: pa.table(table)}, {stage: ledger})
    takedown = {"pair_id": f"{date}-gone", "date": date, "stage": "takedown", "reason": "takedown"}
    commit_stage(home, date, {}, {"takedown": ledger_table([takedown])})


def _card_every_day(home: Home) -> dict:
    for date in DAYS:
        write_dataset_card(home, STAGES, date)
    return write_dataset_card(home, STAGES, None).card


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home(tmp_path / "home")
    for k, date in enumerate(DAYS):
        # Day 2 was carded before a scorer was registered: its cards lack that column.
        _commit_day(
            home, date, cards=20 + 15 * k, seed=k, drop_score="ocr_confidence" if k == 1 else None
        )
    return home


# The card's license buckets for this fixture's spellings: lower case, placeholders missing.
_BUCKET = (
    "CASE WHEN license IS NULL OR lower(trim(license)) IN ('', 'unknown') THEN '(missing)' "
    "ELSE lower(license) END"
)


def _full_scan(home: Home) -> dict:
    """The overall numbers as the card computed them before summaries: SQL over every row."""
    con = connect(home)
    try:

        def rows(sql: str) -> list:
            return con.execute(sql).fetchall()

        scores = {}
        for score in card_scores():
            values = np.array(
                [v for (v,) in rows(f"SELECT {score.name} FROM data_cards") if v is not None]
            )
            scores[score.name] = values
        return {
            "pairs": rows("SELECT count(*) FROM data_cards")[0][0],
            "taken_down": rows("SELECT count(*) FROM rejections WHERE stage = 'takedown'")[0][0],
            "kept": dict(rows(f"SELECT {_BUCKET}, count(*) FROM data_cards GROUP BY 1")),
            "status": dict(
                rows(
                    "SELECT coalesce(license_status, '(no status)'), count(*) "
                    "FROM data_cards GROUP BY 1"
                )
            ),
            "dropped": dict(
                rows(
                    f"SELECT {_BUCKET}, count(*) FROM rejections "
                    "WHERE reason LIKE 'license_%' GROUP BY 1"
                )
            ),
            "tokens": dict(
                (d, (n, t))
                for d, n, t in rows(
                    "SELECT date, count(*), sum(token_count) FROM data_cards GROUP BY 1"
                )
            ),
            "versions": sorted(
                v for (v,) in rows("SELECT DISTINCT dataset_version FROM data_cards")
            ),
            "scores": scores,
        }
    finally:
        con.close()


def test_overall_card_equals_the_full_scan(home):
    card = _card_every_day(home)
    expected = _full_scan(home)
    assert card["days"] == 3 and card["summaries_rebuilt"] == []
    assert card["pairs"] == expected["pairs"] == 20 + 35 + 50
    assert card["taken_down"] == expected["taken_down"] == 3
    funnel = warehouse_funnel(home, list(STAGES), None)
    assert [
        (f["stage"], f["in"], f["kept"], f["removed"], f["reasons"]) for f in card["funnel"]
    ] == [(f.stage, f.rows_in, f.kept, f.removed, f.reasons) for f in funnel]
    assert card["arrived"] == funnel[0].rows_in + 3
    assert card["licenses"] == {
        "kept": expected["kept"],
        "kept_by_status": expected["status"],
        "dropped": expected["dropped"],
    }
    assert card["dataset_versions"] == expected["versions"]
    # One bucketing: "(missing)" licenses are exactly the pairs whose status is missing.
    licenses = card["licenses"]
    assert licenses["kept"]["(missing)"] == licenses["kept_by_status"]["missing"] == 63
    assert "Unknown" not in licenses["kept"] and "unknown" not in licenses["kept"]
    budget = {b["scope"]: (b["images"], b["tokens"]) for b in card["token_budget"]}
    assert budget == {**expected["tokens"], "total": (105, 105 * 784)}
    for name, values in expected["scores"].items():
        summary = card["scores"][name]
        assert summary["count"] == values.size
        assert summary["min"] == round(float(values.min()), 6)
        assert summary["max"] == round(float(values.max()), 6)
        assert summary["mean"] == pytest.approx(round(float(values.mean()), 6), abs=2e-6)
        width = Binning.for_range(next(s for s in card_scores() if s.name == name).plot_range)
        for q in (5, 50, 95):
            exact = float(np.percentile(values, q))
            tolerance = width.width if width.kind == "linear" else 0.01 * abs(exact)
            assert abs(summary[f"p{q}"] - exact) <= tolerance, (name, q)
    assert card["scores"]["ocr_confidence"]["count"] == expected["scores"]["ocr_confidence"].size
    markdown = (home.warehouse / card_folder(None) / "card.md").read_text()
    assert "Merged from the summaries of 3 carded day(s)." in markdown
    assert "p5, p50 and p95 are read from the days' fixed-bin histograms" in markdown
    assert (home.warehouse / card_folder(None) / "plots" / "clip_score.png").read_bytes()[:4] == (
        b"\x89PNG"
    )


def test_a_day_card_keeps_exact_percentiles(home):
    card = write_dataset_card(home, STAGES, DAYS[2]).card
    values = read_partition(home, CARDS_TABLE, DAYS[2]).column("clip_score").drop_null()
    assert card["scores"]["clip_score"]["p50"] == round(float(np.median(values.to_numpy())), 6)
    assert "percentiles_from" not in card["scores"]["clip_score"]
    assert card["days"] == 1 and "summaries_rebuilt" not in card


def test_rerunning_a_day_replaces_its_contribution(home):
    _card_every_day(home)
    _commit_day(home, DAYS[1], cards=4, seed=9)
    write_dataset_card(home, STAGES, DAYS[1])
    card = write_dataset_card(home, STAGES, None).card
    assert card["pairs"] == 20 + 4 + 50 == _full_scan(home)["pairs"]
    assert card["summaries_rebuilt"] == []
    assert (
        f"{DAYS[1]}+9" in card["dataset_versions"]
        and f"{DAYS[1]}+1" not in card["dataset_versions"]
    )


def test_a_missing_summary_is_rebuilt_from_that_day_alone(home, monkeypatch, caplog):
    _card_every_day(home)
    (home.warehouse / card_folder(DAYS[0]) / SUMMARY_FILE).unlink()
    read = []
    original = data_cards.read_partition

    def spy(home, table, date, *args):
        read.append((table, date))
        return original(home, table, date, *args)

    monkeypatch.setattr(data_cards, "read_partition", spy)
    card = write_dataset_card(home, STAGES, None).card
    assert read == [(CARDS_TABLE, DAYS[0])]
    assert card["summaries_rebuilt"] == [DAYS[0]] and card["pairs"] == 105
    assert f"dataset card summary of {DAYS[0]} is missing" in caplog.text
    assert (
        "rebuilt from their day's partitions: 2025-03-01"
        in (home.warehouse / card_folder(None) / "card.md").read_text()
    )
    read.clear()
    assert write_dataset_card(home, STAGES, None).card["summaries_rebuilt"] == []
    assert read == []


def test_a_summary_older_than_its_partition_is_rebuilt(home):
    """A partition rewritten without its card (a takedown or run that died before the card):
    the stamp no longer matches its footer, so the merge rebuilds that day."""
    _card_every_day(home)
    _commit_day(home, DAYS[2], cards=6, seed=5)
    card = write_dataset_card(home, STAGES, None).card
    assert card["summaries_rebuilt"] == [DAYS[2]]
    assert card["pairs"] == 20 + 35 + 6
    stored = json.loads((home.warehouse / card_folder(DAYS[2]) / SUMMARY_FILE).read_text())
    assert stored["pairs"] == 6


def _corrupt_rows_keep_footer(path) -> None:
    """Overwrite a Parquet file's data pages, keeping its footer readable."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for k in range(4, len(data) - footer):
        data[k] = 0xFF
    path.write_bytes(bytes(data))


def test_the_overall_card_reads_no_row_of_earlier_days(home):
    """The daily path: today's card, then the overall one, with every earlier day's card and
    ledger rows unreadable (footers intact); both still succeed with the same numbers."""
    before = _card_every_day(home)
    for date in DAYS[:2]:
        files = [partition_file(home, stage, date) for stage in STAGES]
        files += sorted((home.warehouse / "rejections").glob(f"stage=*/date={date}/*.parquet"))
        for path in files:
            _corrupt_rows_keep_footer(path)
            read_footer(path)  # still readable
    with pytest.raises(CorruptPartitionError):
        read_partition(home, CARDS_TABLE, DAYS[0])
    write_dataset_card(home, STAGES, DAYS[2])
    after = write_dataset_card(home, STAGES, None).card
    assert {k: v for k, v in after.items() if k != "generated_at"} == {
        k: v for k, v in before.items() if k != "generated_at"
    }


def test_a_day_without_cards_has_no_budget_row(home):
    card = write_dataset_card(home, STAGES, "2025-03-09").card
    assert (card["pairs"], card["token_budget"], card["funnel"][0]["in"]) == (0, [], 0)


def test_every_card_says_its_profile_from_the_cards_model(home, monkeypatch):
    monkeypatch.delenv("DATAPLATFORM_PROFILE", raising=False)
    # The fixture's cards name no model: the process's profile, said to be that.
    day = write_dataset_card(home, STAGES, DAYS[0])
    assert day.card["profile"]["name"] == "production"
    assert "DATAPLATFORM_PROFILE" in day.card["profile"]["basis"]
    assert day.markdown.splitlines()[2].startswith("Production profile: real model weights.")
    cards = read_partition(home, CARDS_TABLE, DAYS[1])
    smoke = cards.append_column("clip_model", pa.array(["model=x;smoke=true"] * cards.num_rows))
    commit_stage(home, DAYS[1], {CARDS_TABLE: smoke}, {})
    day = write_dataset_card(home, STAGES, DAYS[1])
    assert day.card["profile"]["name"] == "smoke"
    assert day.markdown.splitlines()[2].startswith("**Smoke profile: CLIP is the small built-in")
    write_dataset_card(home, STAGES, DAYS[2])
    overall = write_dataset_card(home, STAGES, None)
    assert overall.card["profile"]["name"] == "mixed"
    assert overall.card["profile"]["days"] == {"production": 2, "smoke": 1}
    assert "**Profile: mixed** (production 2 day(s), smoke 1 day(s))" in overall.markdown


def test_card_numbers_are_rounded_for_reading(home):
    card = write_dataset_card(home, STAGES, DAYS[0])
    (clip,) = [line for line in card.markdown.splitlines() if line.startswith("| clip_score |")]
    mean = card.card["scores"]["clip_score"]["mean"]
    assert f"| {format_number(mean)} |" in clip and len(format_number(mean).lstrip("-")) <= 6
    (total,) = [line for line in card.markdown.splitlines() if line.startswith("| total |")]
    progress = card.card["token_budget"][-1]["progress"]
    assert total.endswith(f"| {format_number(progress * 100)}% |")
