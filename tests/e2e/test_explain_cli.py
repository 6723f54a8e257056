"""`dataplatform explain` as a subprocess, on a warehouse curated from the built-in sample data.

The warehouse is built once for the module: every curation stage for the three sample days,
then tokens and data cards for the first day only, so that day-1 pairs are in the training set
and later days' pairs are still waiting for tokens.
"""

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.samples.sample_data import build_sample_landing
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, read_partition
from tests.assets.conftest import materialize_cards, materialize_day
from tests.e2e.cli_runner import run_cli

DAYS = ["2025-01-01", "2025-01-02", "2025-01-03"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DATAPLATFORM_PROFILE", "smoke")
    mp.setenv("HF_HUB_OFFLINE", "1")
    home = Home(tmp_path_factory.mktemp("explain") / "home")
    truth = build_sample_landing(home.landing, DAYS)
    instance = dg.DagsterInstance.ephemeral()
    for day in DAYS:
        assert materialize_day(home, day, instance).success
    cards = materialize_cards(home, DAYS[0], instance)
    assert cards.success
    yield home, truth
    mp.undo()


def explain(home: Home, *args: str) -> subprocess.CompletedProcess:
    return run_cli(home, "explain", *args)


def explain_json(home: Home, *args: str) -> dict:
    done = explain(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def original_of(truth, key: str) -> str:
    """The truth file's original of the photo that row ``key`` was made from."""
    (item,) = [t for t in truth if t.key == key]
    (original,) = [t for t in truth if t.base == item.base and t.kind == "original"]
    return original.key


def phash_distance(home: Home, a: str, b: str) -> int:
    con = connect(home)
    (x,), (y,) = con.execute(
        "SELECT phash FROM raw_pairs WHERE pair_id IN ($a, $b) ORDER BY pair_id = $b",
        {"a": a, "b": b},
    ).fetchall()
    con.close()
    return bin(int(x, 16) ^ int(y, 16)).count("1")


def test_exact_duplicate_across_days_names_the_truths_original(sample):
    home, truth = sample
    (item,) = [t for t in truth if t.key == "camera-01-byte_copy"]
    assert (item.date, item.expected) == ("2025-01-02", "exact_duplicate")
    original = original_of(truth, "camera-01-byte_copy")
    assert original == "camera-00-original"

    data = explain_json(home, "camera-01-byte_copy")
    (arrival,) = data["arrivals"]
    assert arrival["origin"]["date"] == "2025-01-02"
    assert (arrival["origin"]["source"], arrival["origin"]["source_locator"]) == (
        "pairs.csv",
        "line 4",
    )
    dropped = [d for d in arrival["decisions"] if d["outcome"] == "dropped"]
    assert [(d["stage"], d["entry"]["reason"]) for d in dropped] == [
        ("exact_deduped", "exact_duplicate")
    ]
    entry = dropped[0]["entry"]
    assert (entry["duplicate_of"], entry["distance"]) == (original, 0.0)
    # The original arrived a day earlier, on day 1, which has tokens and cards.
    (hop,) = arrival["chain"]["hops"]
    assert hop["target_status"]["state"] == "in_training_set"
    assert hop["target_status"]["date"] == "2025-01-01"

    text = explain(home, "camera-01-byte_copy")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(
        "pair camera-01-byte_copy\n"
        "status: removed at exact_deduped on 2025-01-02: exact_duplicate of camera-00-original\n"
    )
    assert (
        "    camera-01-byte_copy -> camera-00-original: exact_deduped 2025-01-02, distance 0\n"
        "    camera-00-original: in the training set (kept through data_cards, 2025-01-01)\n"
    ) in text.stdout


def test_phash_duplicate_reports_the_hamming_distance_of_the_stored_hashes(sample):
    home, truth = sample
    for key in ("camera-03-resize", "brick-02-jpeg_reencode"):
        assert [t.expected for t in truth if t.key == key] == ["phash_duplicate"]
        data = explain_json(home, key)
        entry = data["status"]["entry"]
        assert (entry["stage"], entry["reason"]) == ("phash_deduped", "phash_duplicate")
        assert entry["duplicate_of"] == original_of(truth, key)
        assert entry["distance"] == phash_distance(home, key, entry["duplicate_of"])
        assert entry["threshold"] == DEFAULT_PHASH_THRESHOLD
    # The demo's largest pHash edit that is still a duplicate: a re-encode 6 bits away.
    assert explain_json(home, "brick-02-jpeg_reencode")["status"]["entry"]["distance"] == 6.0


def test_unreadable_images_show_the_ingest_reason_from_the_truth(sample):
    home, truth = sample
    for key in ("broken-05", "broken-11"):
        (item,) = [t for t in truth if t.key == key]
        data = explain_json(home, key)
        (arrival,) = data["arrivals"]
        first = arrival["decisions"][0]
        assert (first["stage"], first["outcome"]) == ("raw_pairs", "dropped")
        assert f"rejected:{first['entry']['reason']}" == item.expected
        assert {d["outcome"] for d in arrival["decisions"][1:]} == {"not_reached"}
    assert item.expected == "rejected:truncated_image"


def test_kept_pairs_in_the_training_set_and_waiting_for_tokens(sample):
    home, _ = sample
    data = explain_json(home, "astronaut-00-original")
    assert data["status"]["summary"] == "in the training set (kept through data_cards, 2025-01-01)"
    decisions = {d["stage"]: d for d in data["arrivals"][0]["decisions"]}
    assert {d["outcome"] for d in decisions.values()} == {"kept"}
    stored = read_partition(home, "tokens", "2025-01-01").to_pylist()
    (row,) = [r for r in stored if r["pair_id"] == "astronaut-00-original"]
    assert decisions["tokens"]["scores"]["token_count"] == row["token_count"] == 1024
    assert decisions["tokens"]["scores"]["crop_box"] == row["crop_box"]
    assert decisions["phash_deduped"]["scores"]["phash"] == row["phash"]

    day2_kept = read_partition(home, "semantic_deduped", "2025-01-02").column("pair_id")
    waiting = sorted(day2_kept.to_pylist())
    day2 = explain_json(home, waiting[0])
    assert day2["status"]["summary"] == (
        "in progress: kept by semantic_deduped on 2025-01-02; "
        "tokens is not materialized yet for 2025-01-02"
    )


def test_duplicates_of_groups_copies_by_stage(sample):
    home, truth = sample
    data = explain_json(home, "--duplicates-of", "camera-00-original")
    copies = {c["entry"]["pair_id"]: c for c in data["copies"]}
    from_truth = {
        t.key
        for t in truth
        if t.base == "camera"
        and t.kind != "original"
        and t.expected in ("exact_duplicate", "phash_duplicate")
    }
    # Manifest rows keep their id; shard and folder rows get derived ids, so those count only.
    named = {k for k in from_truth if k.startswith("camera-")}
    assert named == {k for k in copies if k.startswith("camera-")}
    assert len(copies) == len(from_truth)
    assert copies["camera-01-byte_copy"]["entry"]["stage"] == "exact_deduped"
    assert copies["camera-03-resize"]["entry"]["stage"] == "phash_deduped"
    assert {c["depth"] for c in data["copies"]} == {1}

    text = explain(home, "--duplicates-of", "camera-00-original")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{len(copies)} pairs removed as copies of camera-00-original")
    assert "exact_deduped (" in text.stdout and "phash_deduped (" in text.stdout
    assert lines.index(next(x for x in lines if x.startswith("exact_deduped ("))) < lines.index(
        next(x for x in lines if x.startswith("phash_deduped ("))
    )


def test_unknown_id_and_missing_warehouse_exit_2(sample, tmp_path: Path):
    home, _ = sample
    done = explain(home, "camera-00")
    assert done.returncode == 2
    assert f"pair_id 'camera-00' is not in the warehouse at {home.warehouse}" in done.stderr
    assert "Similar ids: camera-00-original" in done.stderr
    machine = explain(home, "camera-00", "--json")
    assert machine.returncode == 2
    assert json.loads(machine.stdout)["similar"][0] == "camera-00-original"

    empty = explain(Home(tmp_path / "nothing"), "camera-00-original")
    assert empty.returncode == 2
    assert f"no warehouse at {tmp_path / 'nothing' / 'warehouse'}" in empty.stderr
