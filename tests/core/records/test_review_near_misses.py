"""The near-miss band of dedup sheets, and the profile every sheet states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup.phash import to_hex
from dataplatform.core.records.near_misses import phash_near_misses, semantic_near_misses
from dataplatform.core.records.review_rows import ReviewLimits, load_sheet, settings_relative
from dataplatform.core.records.review_sheet import render_review_index, render_review_sheet
from dataplatform.core.scoring.embedding_table import vectors_column
from dataplatform.core.store.home import Home
from dataplatform.core.store.profile import PROFILE_ENV
from dataplatform.core.store.schema import RAW_PAIR_SCHEMA, ledger_table
from dataplatform.core.store.warehouse import document_path, write_ledger, write_partition
from tests.conftest import encode, photo
from tests.core.records.test_review_sheet import _ledger, card_ids, imgs_in, page

DAY1, DAY2 = "2025-01-01", "2025-01-02"
THRESHOLD = 8


def _bits(*ranges: range) -> int:
    return sum(1 << b for r in ranges for b in r)


# Day 2's kept pHashes, and the day-1 original of a copy day 2 removed. Distances:
# a-b 9 (threshold + 1), c-a 12, k-o1 10 (o1 is on day 1), far >= 17 from everything.
HASHES = {
    "o1": _bits(range(48, 64)),
    "a": 0,
    "b": _bits(range(0, 9)),
    "c": _bits(range(20, 32)),
    "k": _bits(range(32, 37), range(53, 64)),
    "far": _bits(range(32, 49)),
}


def _raw(pair_id: str, date: str, phash: int | None = None, image: str | None = None) -> dict:
    return {
        "pair_id": pair_id,
        "date": date,
        "text": f"caption of {pair_id}",
        "image_location": f"{date}/img/{image or pair_id + '.jpg'}",
        "image_uri": f"img/{image or pair_id + '.jpg'}",
        "width": 64,
        "height": 64,
        "source": "pairs.jsonl",
        "phash": None if phash is None else to_hex(phash),
    }


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, RAW_PAIR_SCHEMA)


@pytest.fixture
def phash_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    for date, names in ((DAY1, ["o1"]), (DAY2, ["a", "b", "c", "k", "far", "c1"])):
        (home.landing / date / "img").mkdir(parents=True)
        for name in names:
            image = photo("coffee").resize((64, 64))
            (home.landing / date / "img" / f"{name}.jpg").write_bytes(encode(image))
    day1 = [_raw("o1", DAY1, HASHES["o1"])]
    kept2 = [_raw(p, DAY2, HASHES[p]) for p in ("a", "b", "c", "k", "far")]
    copy = _raw("c1", DAY2, HASHES["o1"] ^ 0b11)
    write_partition(home, "raw_pairs", DAY1, _table(day1))
    write_partition(home, "raw_pairs", DAY2, _table([*kept2, copy]))
    write_partition(home, "phash_deduped", DAY1, _table(day1))
    write_partition(home, "phash_deduped", DAY2, _table(kept2))
    write_ledger(home, "phash_deduped", DAY1, ledger_table([]))
    write_ledger(
        home,
        "phash_deduped",
        DAY2,
        ledger_table([_ledger("c1", DAY2, "phash_deduped", "phash_duplicate", "o1", distance=2.0)]),
    )
    return home


def test_phash_near_misses_are_kept_pairs_just_outside_the_threshold_closest_first(
    phash_home: Home,
):
    sheet = load_sheet(phash_home, "phash_deduped", DAY2)
    near = sheet.near_misses
    assert near is not None
    assert (near.threshold, near.band) == (8.0, (8.0, 16.0))
    assert near.threshold_from == "the threshold the day's duplicates carry in the ledger"
    found = [(r.pair.pair_id, r.neighbour.pair_id, r.value, r.margin) for r in near.rows]
    # a and b are each other's nearest, listed once; k's nearest is day 1's original o1.
    assert found == [("a", "b", 9.0, 1.0), ("k", "o1", 10.0, 2.0), ("c", "a", 12.0, 4.0)]
    assert (near.total, near.pool, near.kept_total, near.references) == (3, 5, 5, 1)
    assert near.rows[1].neighbour.date == DAY1

    p = page(render_review_sheet(phash_home, "phash_deduped", DAY2))
    (section,) = [e for e in p.find("section") if e.attrs.get("id") == "near-misses"]
    assert section.attrs["data-near-misses"] == "3"
    groups = [e for e in p.find("div", "near-misses", cls="near-miss")]
    assert [(g.attrs["data-pair-id"], g.attrs["data-neighbour"]) for g in groups] == [
        ("a", "b"),
        ("k", "o1"),
        ("c", "a"),
    ]
    assert "Hammingbits9margin1" in groups[0].text.replace(" ", "")
    assert "kept 2025-01-01" in groups[1].text
    assert card_ids(p.cards("near-misses")) == ["a", "b", "k", "o1", "c", "a"]
    assert all(len(imgs_in(p, c)) == 1 for c in p.cards("near-misses"))
    assert "(8 < bits ≤ 16)" in section.text and "5 of 5 kept rows" in section.text


def test_the_band_is_capped_to_the_closest_and_the_pool_to_a_sample(phash_home: Home):
    sheet = load_sheet(
        phash_home, "phash_deduped", DAY2, ReviewLimits(near_misses=1, near_miss_pool=5)
    )
    assert sheet.near_misses is not None
    assert [r.pair.pair_id for r in sheet.near_misses.rows] == ["a"]
    assert sheet.near_misses.total == 3
    small = load_sheet(phash_home, "phash_deduped", DAY2, ReviewLimits(near_miss_pool=2))
    assert small.near_misses is not None and small.near_misses.pool == 2


def test_a_threshold_given_once_is_kept_for_later_renders(phash_home: Home):
    # At threshold 9, a-b is a violation, not a near miss; the band is (9, 18].
    render_review_sheet(phash_home, "phash_deduped", DAY2, threshold=9)
    stored = document_path(phash_home, settings_relative(DAY2, "phash_deduped"))
    assert json.loads(Path(stored).read_text()) == {"threshold": 9.0}
    again = load_sheet(phash_home, "phash_deduped", DAY2)
    assert again.near_misses is not None and again.near_misses.threshold == 9.0
    assert again.near_misses.threshold_from.startswith("the run's threshold, kept in")
    found = [(r.pair.pair_id, r.neighbour.pair_id, r.margin) for r in again.near_misses.rows]
    assert found == [("k", "o1", 1.0), ("c", "a", 3.0), ("far", "a", 8.0)]


def test_the_band_edges_hamming():
    hashes = np.array([0, (1 << 16) - 1, _bits(range(20, 37))], dtype=np.uint64)
    # 16 bits (2 x threshold) is in the band; 17 is not.
    found = phash_near_misses(hashes, 8)
    assert [(m.row, m.neighbour, m.value) for m in found] == [(0, 1, 16.0)]
    assert phash_near_misses(hashes[:1], 8) == []


def _unit(*parts: tuple[int, float], dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    for axis, value in parts:
        v[axis] = value
    return v / np.linalg.norm(v)


def _semantic_vectors() -> dict[str, np.ndarray]:
    return {
        "p": _unit((0, 1.0)),
        "q": _unit((0, 0.949), (1, float(np.sqrt(1 - 0.949**2)))),
        "r": _unit((0, 0.92), (2, float(np.sqrt(1 - 0.92**2)))),
        "s": _unit((3, 1.0)),
    }


def test_the_band_edges_cosine():
    vectors = np.stack(list(_semantic_vectors().values()))
    found = semantic_near_misses(vectors, 0.95)
    assert [(m.row, m.neighbour) for m in found] == [(0, 1), (2, 0)]
    assert found[0].value == pytest.approx(0.949, abs=1e-6)
    assert found[0].margin == pytest.approx(0.001, abs=1e-6)
    # 0.92 - 0.9 = 0.02 from the band's low end 2t - 1 = 0.9: in; at t = 0.96 (low 0.92) too.
    assert [(m.row, m.neighbour) for m in semantic_near_misses(vectors, 0.961)] == [(0, 1)]


@pytest.fixture
def semantic_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    vectors = _semantic_vectors()
    rows = [{**_raw(p, DAY2), "clip_model": "model=tiny;smoke=true"} for p in vectors]
    schema = RAW_PAIR_SCHEMA.append(pa.field("clip_model", pa.string()))
    table = pa.Table.from_pylist(rows, schema)
    write_partition(home, "raw_pairs", DAY2, _table([_raw(p, DAY2) for p in vectors]))
    write_partition(home, "semantic_deduped", DAY2, table)
    write_ledger(home, "semantic_deduped", DAY2, ledger_table([]))
    embeddings = pa.table(
        {
            "pair_id": list(vectors),
            "date": [DAY2] * len(vectors),
            "image_embedding": vectors_column(np.stack(list(vectors.values()))),
        }
    )
    write_partition(home, "embeddings", DAY2, embeddings)
    return home


def test_semantic_near_misses_from_the_days_embeddings(semantic_home: Home):
    sheet = load_sheet(semantic_home, "semantic_deduped", DAY2)
    near = sheet.near_misses
    assert near is not None and near.threshold == 0.95
    assert near.threshold_from.startswith("the stage's default, assumed")
    assert [(r.pair.pair_id, r.neighbour.pair_id) for r in near.rows] == [("p", "q"), ("r", "p")]
    assert near.band == pytest.approx((0.9, 0.95))
    p = page(render_review_sheet(semantic_home, "semantic_deduped", DAY2, threshold=0.93))
    groups = [e for e in p.find("div", "near-misses", cls="near-miss")]
    assert [(g.attrs["data-pair-id"], g.attrs["data-neighbour"]) for g in groups] == [("r", "p")]
    assert "cosine0.9200margin0.0100" in groups[0].text.replace(" ", "")


def test_every_sheet_states_its_profile(
    semantic_home: Home, phash_home: Home, monkeypatch: pytest.MonkeyPatch
):
    # From the data: the smoke CLIP model scored these rows, whatever the environment says.
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    p = page(render_review_sheet(semantic_home, "semantic_deduped", DAY2))
    (banner,) = p.find("p", cls="profile")
    assert banner.attrs["data-profile"] == "smoke" and "Smoke profile" in banner.text
    assert "clip_model" in banner.text
    (banner,) = page(render_review_index(semantic_home, DAY2, ["semantic_deduped"])).find(
        "p", cls="profile"
    )
    assert banner.attrs["data-profile"] == "smoke"
    # No model scored a pHash partition: the rendering process's profile, said so.
    (banner,) = page(render_review_sheet(phash_home, "phash_deduped", DAY2)).find(
        "p", cls="profile"
    )
    assert banner.attrs["data-profile"] == "production" and PROFILE_ENV in banner.text
    monkeypatch.setenv(PROFILE_ENV, "smoke")
    (banner,) = page(render_review_sheet(phash_home, "phash_deduped", DAY2)).find(
        "p", cls="profile"
    )
    assert banner.attrs["data-profile"] == "smoke"


def test_the_exact_sheet_says_it_has_no_threshold(phash_home: Home):
    rows = [_raw(p, DAY2, HASHES[p]) for p in ("a", "b")]
    write_partition(phash_home, "exact_deduped", DAY2, _table(rows))
    write_ledger(phash_home, "exact_deduped", DAY2, ledger_table([]))
    sheet = load_sheet(phash_home, "exact_deduped", DAY2)
    assert sheet.near_misses is None
    p = page(render_review_sheet(phash_home, "exact_deduped", DAY2))
    (section,) = [e for e in p.find("section") if e.attrs.get("id") == "near-misses"]
    assert section.attrs.get("data-near-misses") is None
    assert "no threshold" in section.text
