"""data_cards, the license policy and takedowns through Dagster, on the three-day landing."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from dataplatform.assets import ALL_ASSETS, STAGE_ORDER
from dataplatform.cli import main as cli
from dataplatform.core.records.funnel import warehouse_funnel
from dataplatform.core.records.takedown_requests import takedown_dir
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, read_ledger, read_partition
from dataplatform.core.tokens.crop_policy import DEFAULT_RESOLUTION
from dataplatform.core.tokens.webdataset_export import read_shards
from dataplatform.resources import (
    LicensePolicyResource,
)
from tests.assets.conftest import DAYS, build_three_days, materialize_cards, materialize_day
from tests.conftest import encode, photo

TABLES = [*STAGE_ORDER, "embeddings", "quality_scores"]


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory):
    """Three days through every stage, data cards included, in one Dagster instance."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAPLATFORM_PROFILE", "smoke")
    mp.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("cards")
    home = Home(root / "home")
    build_three_days(home.landing)
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        curation = {}
        for day in DAYS:
            curation[day] = materialize_day(home, day, instance)
            assert curation[day].success
        # The tokenizer trains on what every day kept, then each day is tokenized and carded.
        runs = {}
        for day in DAYS:
            result = materialize_cards(home, day, instance)
            assert result.success
            runs[day] = (curation[day].run_id, result.run_id, result)
        yield home, instance, runs
    mp.undo()


def test_one_card_per_tokenized_pair_with_lineage_scores_and_transforms(curated):
    home, _, runs = curated
    for day in DAYS:
        tokens = {r["pair_id"]: r for r in read_partition(home, "tokens", day).to_pylist()}
        cards = read_partition(home, "data_cards", day).to_pylist()
        assert sorted(c["pair_id"] for c in cards) == sorted(tokens)
        curation_run, cards_run, result = runs[day]
        for card in cards:
            token_row = tokens[card["pair_id"]]
            for column in (
                "url",
                "license",
                "image_sha256",
                "clip_score",
                "aesthetic_score",
                "nsfw_score",
                "watermark_score",
                "ocr_confidence",
                "blur_variance",
                "crop_box",
                "tokenizer",
                "token_count",
                "source",
            ):
                assert card[column] == token_row[column], column
            assert card["license_status"] == ("allowed" if card["license"] else "missing")
            stages = {r["stage"]: r for r in json.loads(card["stage_runs"])}
            assert list(stages) == [*STAGE_ORDER[:6], "vq_tokenizer", "tokens", "data_cards"]
            assert {stages[s]["run_id"] for s in STAGE_ORDER[:6]} == {curation_run}
            assert stages["tokens"]["run_id"] == cards_run == stages["data_cards"]["run_id"]
            # Each stage's run is recorded with the code version its definition declares.
            declared = {
                a.node_def.name: a.code_versions_by_key[dg.AssetKey(a.node_def.name)]
                for a in ALL_ASSETS
            }
            assert {s: stages[s]["code_version"] for s in STAGE_ORDER} == {
                s: declared[s] for s in STAGE_ORDER
            }
            steps = [t["step"] for t in json.loads(card["transforms"])]
            assert steps == ["decode", "exif_transpose", "caption_normalize", "crop", "tokenize"]
            crop = json.loads(card["transforms"])[3]
            assert crop["box"] == token_row["crop_box"] and crop["resolution"] == DEFAULT_RESOLUTION
            assert card["dataset_version"].startswith(f"{day}+")
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["cards_complete"] and checks["rows_conserved"]


def test_dataset_card_per_day_and_overall(curated):
    home, _, runs = curated
    folder = home.warehouse / "dataset_cards"
    for day in DAYS:
        card = json.loads((folder / f"date={day}" / "card.json").read_text())
        funnel = warehouse_funnel(home, STAGE_ORDER, day)
        assert [(f["stage"], f["in"], f["kept"], f["removed"]) for f in card["funnel"]] == [
            (f.stage, f.rows_in, f.kept, f.removed) for f in funnel
        ]
        cards = read_partition(home, "data_cards", day).to_pylist()
        assert card["pairs"] == len(cards)
        assert sum(card["licenses"]["kept"].values()) == len(cards)
        assert card["scores"]["clip_score"]["count"] == len(cards)
        assert card["token_budget"][-1]["tokens"] == sum(c["token_count"] for c in cards)
        for name in card["scores"]:
            if card["scores"][name]["count"]:
                png = folder / f"date={day}" / "plots" / f"{name}.png"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        markdown = (folder / f"date={day}" / "card.md").read_text()
        assert f"| raw_pairs | {funnel[0].rows_in} | {funnel[0].kept} |" in markdown
        assert "![clip_score](plots/clip_score.png)" in markdown
        metadata = runs[day][2].asset_materializations_for_node("data_cards")[0].metadata
        assert metadata["dataset_card_path"].value.endswith(f"date={day}/card.md")
        assert Path(metadata["review_sheets_path"].value).is_file()
    overall = json.loads((folder / "all" / "card.json").read_text())
    con = connect(home)
    total = con.execute("SELECT count(*) FROM data_cards").fetchone()[0]
    arrived = con.execute(
        "SELECT (SELECT count(*) FROM raw_pairs) + "
        "(SELECT count(*) FROM rejections WHERE stage = 'raw_pairs')"
    ).fetchone()[0]
    con.close()
    assert overall["pairs"] == total and overall["arrived"] == arrived == 12
    assert overall["licenses"]["kept_by_status"].get("allowed", 0) == 1  # only a1 is CC0


def test_license_policy_drops_or_flags_as_configured(tmp_path: Path):
    home = Home(tmp_path / "home")
    build_three_days(home.landing)
    drop_missing = LicensePolicyResource(on_missing="drop")
    result = materialize_day(home, DAYS[0], selection=["raw_pairs"], licenses=drop_missing)
    assert result.success
    assert read_partition(home, "raw_pairs", DAYS[0]).column("pair_id").to_pylist() == ["a1"]
    ledger = read_ledger(home, "raw_pairs", DAYS[0])
    assert sorted(ledger.column("pair_id").to_pylist()) == ["a2", "b1", "b2", "c1"]
    assert set(ledger.column("reason").to_pylist()) == {"license_missing"}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["rows_conserved"]

    only_by = LicensePolicyResource(allow=["cc-by-*"], on_missing="flag")
    assert materialize_day(home, DAYS[0], selection=["raw_pairs"], licenses=only_by).success
    rows = read_partition(home, "raw_pairs", DAYS[0]).to_pylist()
    assert [r["pair_id"] for r in rows] == ["a2", "b1", "b2", "c1"]
    assert {r["license_status"] for r in rows} == {"missing"}
    ledger = read_ledger(home, "raw_pairs", DAYS[0]).to_pylist()
    assert [(r["pair_id"], r["reason"], r["license"]) for r in ledger] == [
        ("a1", "license_not_allowed", "CC0-1.0")
    ]


def test_takedown_removes_a_pair_everywhere_and_keeps_it_out(curated, tmp_path: Path, capsys):
    source, _, _ = curated
    home = Home(tmp_path / "home")
    shutil.copytree(source.root, home.root)
    export = tmp_path / "export"
    assert cli(["--home", str(home.root), "export", "--out", str(export)]) == 0
    exported = {r["pair_id"] for r in read_shards(sorted(export.glob("*.tar")))}
    assert "a1" in exported

    # The astronaut photo: a1 (kept), a2 (its exact copy, day 1), a3 (a repost, day 2).
    picture = tmp_path / "astronaut.jpg"
    picture.write_bytes(encode(photo("astronaut"), quality=80))
    assert (
        cli(
            [
                "--home",
                str(home.root),
                "takedown",
                "file",
                "--by",
                "image",
                str(picture),
                "--id",
                "TD-1",
                "--filed",
                "2025-02-01",
                "--reason",
                "DMCA 4411",
            ]
        )
        == 0
    )
    assert cli(["--home", str(home.root), "takedown", "apply"]) == 0

    gone = {"a1", "a2", "a3"}
    con = connect(home)
    for table in TABLES:
        # Day 3 reuses the id a1 for another image: a different pair, not taken down.
        left = con.execute(
            f"SELECT count(*) FROM {table} WHERE pair_id IN ('a1', 'a2', 'a3') "
            f"AND NOT (pair_id = 'a1' AND date = '{DAYS[2]}')"
        ).fetchone()[0]
        assert left == 0, table
    rows = con.execute(
        "SELECT pair_id, date, reason, detail FROM rejections WHERE stage = 'takedown' "
        "ORDER BY pair_id"
    ).fetchall()
    con.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("a1", DAYS[0], "takedown"),
        ("a2", DAYS[0], "takedown"),
        ("a3", DAYS[1], "takedown"),
    ]
    assert rows[0][3].startswith("request TD-1 (image images/") and "DMCA 4411" in rows[0][3]
    # a2 had been dropped as an exact copy: that ledger row moved into its takedown row, so
    # every stage still has rows in = kept + ledger.
    assert rows[1][3].endswith("had been dropped at exact_deduped: exact_duplicate")
    for day in DAYS:
        for f in warehouse_funnel(home, STAGE_ORDER, day):
            assert f.conserved, (day, f)
    capsys.readouterr()
    assert cli(["--home", str(home.root), "funnel"]) == 0
    assert "(and 3 pair(s) taken down after curation" in capsys.readouterr().out
    left_in_export = {r["pair_id"] for r in read_shards(sorted(export.glob("*.tar")))}
    assert left_in_export == exported - gone
    overall = json.loads((home.warehouse / "dataset_cards" / "all" / "card.json").read_text())
    assert overall["taken_down"] == 3
    assert overall["pairs"] == len(exported) - 1
    sheet = (home.warehouse / "review" / f"date={DAYS[0]}" / "raw_pairs.html").read_text()
    assert "a1" in sheet and "taken down" in sheet.lower()

    # A re-run of the day keeps the pairs out at ingest.
    again = materialize_day(home, DAYS[0], selection=["raw_pairs"])
    assert again.success
    assert gone.isdisjoint(read_partition(home, "raw_pairs", DAYS[0]).column("pair_id").to_pylist())
    ingest = read_ledger(home, "raw_pairs", DAYS[0]).to_pylist()
    assert sorted(r["pair_id"] for r in ingest if r["reason"] == "takedown") == ["a1", "a2"]


def test_bad_takedown_request_fails_the_command_with_every_problem(tmp_path: Path, capsys):
    home = Home(tmp_path / "home")
    folder = takedown_dir(home)
    folder.mkdir(parents=True)
    (folder / "r.jsonl").write_text('{"kind": "url", "value": "", "filed": "soon"}\n')
    assert cli(["--home", str(home.root), "takedown", "apply"]) == 2
    assert "r.jsonl:1: value is empty; filed must be a YYYY-MM-DD date" in capsys.readouterr().err
