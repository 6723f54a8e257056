"""explain / duplicates_of on small warehouses written with the warehouse's own write functions."""

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from dataplatform.core.records import audit, audit_text
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import RAW_PAIR_SCHEMA, conform, ledger_row, ledger_table
from dataplatform.core.store.stages import STAGE_ORDER
from dataplatform.core.store.warehouse import write_ledger, write_partition

STAGES = STAGE_ORDER[: STAGE_ORDER.index("data_cards")]
D1, D2, D3 = "2025-01-01", "2025-01-02", "2025-01-03"
TAKEDOWN_DETAIL = (
    "request TD-1 (url https://example.org/gone.jpg, filed 2025-02-01): DMCA notice 4411"
)


def _pair(pair_id: str, date: str, line: int, image: str | None = None) -> dict:
    image = image or pair_id
    return {
        "pair_id": pair_id,
        "date": date,
        "text": f"caption of {pair_id}",
        "url": f"https://example.org/{pair_id}.jpg",
        "license": "CC-BY-4.0",
        "image_uri": f"images/{image}.jpg",
        "image_sha256": hashlib.sha256(image.encode()).hexdigest(),
        "width": 640,
        "height": 480,
        "source": "pairs.jsonl",
        "source_locator": f"line {line}",
        "image_location": f"{date}/images/{image}.jpg",
        "image_format": "JPEG",
        "image_mode": "RGB",
        "image_frames": 1,
        "image_bytes": 1000,
        "exif_transposed": False,
        "text_truncated": False,
        "phash": "00ff00ff00ff00ff",
        "extra": '{"site": "example.org"}',
    }


QUALITY = {
    "aesthetic_score": None,
    "nsfw_score": 0.0,
    "watermark_score": None,
    "ocr_text": "",
    "ocr_text_area": 0.0,
    "ocr_confidence": None,
    "shortest_side": 480,
    "aspect_ratio": 1.5,
    "blur_variance": 250.0,
    "clipped_fraction": 0.25,
    "scorer_errors": None,
}
TOKENS = {
    "token_count": 1024,
    "resolution": 256,
    "crop_policy": "center",
    "crop_box": [80, 0, 560, 480],
    "tokenizer": "kind=dataplatform-vqvae;codebook_size=512",
}
STAGE_COLUMNS = {
    "clip_scored": {"clip_score": 0.3125, "clip_model": "ViT-B-32"},
    "quality_filtered": {"clip_score": 0.3125, "clip_model": "ViT-B-32", **QUALITY},
    "semantic_deduped": {"clip_score": 0.3125, "clip_model": "ViT-B-32", **QUALITY},
    "tokens": {"clip_score": 0.3125, "clip_model": "ViT-B-32", **QUALITY, **TOKENS},
}


def _write(home: Home, stage: str, date: str, pairs: list[dict]) -> None:
    if stage == "raw_pairs" or not pairs:
        table = pa.Table.from_pylist(pairs, schema=RAW_PAIR_SCHEMA)
    else:
        rows = [{**p, **STAGE_COLUMNS.get(stage, {})} for p in pairs]
        table = conform(pa.Table.from_pylist(rows), RAW_PAIR_SCHEMA)
    write_partition(home, stage, date, table)


def _ledger(home: Home, stage: str, date: str, rows: list[dict]) -> None:
    write_ledger(home, stage, date, ledger_table(rows))


def _through(home: Home, date: str, stages: list[str], kept: dict[str, list[dict]]) -> None:
    for stage in stages:
        _write(home, stage, date, kept[stage])


def build_warehouse(home: Home) -> dict[str, dict]:
    """Three days:

    2025-01-01, every stage: astro-orig is kept through tokens; astro-copy is its byte copy;
    astro-phash its pHash copy (3 bits); rocket-low has a low CLIP score; broken-1 is not an
    image; ghost is in raw_pairs, then in neither exact_deduped nor its ledger.
    2025-01-02, every stage but tokens: astro-copy2 is a byte copy of astro-phash (a day-1
    pair that pHash later dropped); astro-crop a semantic copy of astro-orig; cat-orig is kept
    through semantic_deduped and waits for tokens.
    2025-01-03, raw_pairs only: moon-new.
    """
    p = {
        "astro-orig": _pair("astro-orig", D1, 1),
        "astro-copy": _pair("astro-copy", D1, 2, image="astro-orig"),
        "astro-phash": _pair("astro-phash", D1, 3),
        "rocket-low": _pair("rocket-low", D1, 4),
        "ghost": _pair("ghost", D1, 6),
        "astro-copy2": _pair("astro-copy2", D2, 1, image="astro-phash"),
        "astro-crop": _pair("astro-crop", D2, 2),
        "cat-orig": _pair("cat-orig", D2, 3),
        "moon-new": _pair("moon-new", D3, 1),
    }
    broken = {**_pair("broken-1", D1, 5), "image_sha256": None, "width": None, "height": None}

    day1 = [p["astro-orig"], p["astro-phash"], p["rocket-low"]]
    _through(
        home,
        D1,
        STAGES,
        {
            "raw_pairs": day1 + [p["astro-copy"], p["ghost"]],
            "exact_deduped": day1,
            "phash_deduped": [p["astro-orig"], p["rocket-low"]],
            "clip_scored": [p["astro-orig"]],
            "quality_filtered": [p["astro-orig"]],
            "semantic_deduped": [p["astro-orig"]],
            "tokens": [p["astro-orig"]],
        },
    )
    _ledger(
        home,
        "raw_pairs",
        D1,
        [ledger_row(broken, "raw_pairs", "not_an_image", "no image format recognises these bytes")],
    )
    _ledger(
        home,
        "exact_deduped",
        D1,
        [
            ledger_row(
                p["astro-copy"],
                "exact_deduped",
                "exact_duplicate",
                "same SHA-256 as astro-orig (this day, 2025-01-01)",
                duplicate_of="astro-orig",
                distance=0.0,
            )
        ],
    )
    _ledger(
        home,
        "phash_deduped",
        D1,
        [
            ledger_row(
                p["astro-phash"],
                "phash_deduped",
                "phash_duplicate",
                "pHash 3 bits from astro-orig (2025-01-01); threshold 8",
                duplicate_of="astro-orig",
                distance=3.0,
                threshold=8.0,
            )
        ],
    )
    _ledger(
        home,
        "clip_scored",
        D1,
        [
            ledger_row(
                p["rocket-low"],
                "clip_scored",
                "low_clip_score",
                "clip_score 0.1200 < 0.2800",
                score=0.12,
                threshold=0.28,
            )
        ],
    )

    day2 = [p["astro-crop"], p["cat-orig"]]
    _through(
        home,
        D2,
        STAGES[:-1],
        {
            "raw_pairs": day2 + [p["astro-copy2"]],
            "exact_deduped": day2,
            "phash_deduped": day2,
            "clip_scored": day2,
            "quality_filtered": day2,
            "semantic_deduped": [p["cat-orig"]],
        },
    )
    _ledger(
        home,
        "exact_deduped",
        D2,
        [
            ledger_row(
                p["astro-copy2"],
                "exact_deduped",
                "exact_duplicate",
                "same SHA-256 as astro-phash (an earlier day, 2025-01-01)",
                duplicate_of="astro-phash",
                distance=0.0,
            )
        ],
    )
    _ledger(
        home,
        "semantic_deduped",
        D2,
        [
            ledger_row(
                p["astro-crop"],
                "semantic_deduped",
                "semantic_duplicate",
                "image cosine 0.97 with astro-orig; threshold 0.95",
                duplicate_of="astro-orig",
                similarity=0.97,
                threshold=0.95,
            )
        ],
    )
    _write(home, "raw_pairs", D3, [p["moon-new"]])
    return p


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    build_warehouse(home)
    return home


def _outcomes(arrival: audit.Arrival) -> list[tuple[str, str]]:
    return [(d.stage, d.outcome) for d in arrival.decisions]


def test_kept_pair_is_in_the_training_set_with_each_stages_scores(home: Home):
    x = audit.explain(home, "astro-orig", STAGES)
    assert x.status == audit.Status(audit.IN_TRAINING_SET, "tokens", D1)
    (arrival,) = x.arrivals
    assert arrival.origin == audit.Origin(
        date=D1,
        source="pairs.jsonl",
        source_locator="line 1",
        url="https://example.org/astro-orig.jpg",
        license="CC-BY-4.0",
        image_uri="images/astro-orig.jpg",
        image_sha256=hashlib.sha256(b"astro-orig").hexdigest(),
        width=640,
        height=480,
        text="caption of astro-orig",
        extra='{"site": "example.org"}',
    )
    assert all(d.outcome == audit.KEPT for d in arrival.decisions)
    scores = {d.stage: d.scores for d in arrival.decisions}
    assert scores["raw_pairs"] == {} and scores["semantic_deduped"] == {}
    assert scores["phash_deduped"] == {"phash": "00ff00ff00ff00ff"}
    assert scores["clip_scored"] == {"clip_score": 0.3125, "clip_model": "ViT-B-32"}
    assert scores["quality_filtered"] == QUALITY
    assert scores["tokens"] == TOKENS
    assert arrival.chain is None and x.takedowns == []


def test_low_score_drop_shows_score_and_threshold(home: Home):
    x = audit.explain(home, "rocket-low", STAGES)
    (arrival,) = x.arrivals
    assert _outcomes(arrival) == [
        ("raw_pairs", "kept"),
        ("exact_deduped", "kept"),
        ("phash_deduped", "kept"),
        ("clip_scored", "dropped"),
        ("quality_filtered", "not_reached"),
        ("semantic_deduped", "not_reached"),
        ("tokens", "not_reached"),
    ]
    entry = arrival.decisions[3].entry
    assert (entry.reason, entry.score, entry.threshold) == ("low_clip_score", 0.12, 0.28)
    assert audit_text.describe_status(x.status) == (
        "removed at clip_scored on 2025-01-01: low_clip_score (clip_score 0.1200 < 0.2800)"
    )
    assert "  clip_scored       DROPPED low_clip_score: clip_score 0.1200 < 0.2800\n" + " " * 20 + (
        "score 0.12 vs threshold 0.28\n"
    ) in audit_text.format_explanation(x)


def test_ingest_rejection_has_its_origin_from_the_ledger(home: Home):
    x = audit.explain(home, "broken-1", STAGES)
    (arrival,) = x.arrivals
    assert (arrival.origin.source, arrival.origin.source_locator) == ("pairs.jsonl", "line 5")
    assert arrival.origin.image_uri == "images/broken-1.jpg"
    assert arrival.origin.license == "CC-BY-4.0"
    assert _outcomes(arrival)[:2] == [("raw_pairs", "dropped"), ("exact_deduped", "not_reached")]
    assert x.status.state == audit.REMOVED
    assert x.status.entry.reason == "not_an_image"


def test_cross_day_duplicate_chain_ends_at_the_kept_original(home: Home):
    x = audit.explain(home, "astro-copy2", STAGES)
    (arrival,) = x.arrivals
    assert _outcomes(arrival)[:3] == [
        ("raw_pairs", "kept"),
        ("exact_deduped", "dropped"),
        ("phash_deduped", "not_reached"),
    ]
    chain = arrival.chain
    assert not chain.cycle and not chain.cut
    assert [
        (h.entry.pair_id, h.entry.stage, h.entry.date, h.entry.duplicate_of) for h in chain.hops
    ] == [
        ("astro-copy2", "exact_deduped", D2, "astro-phash"),
        ("astro-phash", "phash_deduped", D1, "astro-orig"),
    ]
    assert chain.hops[1].entry.distance == 3.0
    assert chain.hops[-1].target_status == audit.Status(audit.IN_TRAINING_SET, "tokens", D1)
    text = audit_text.format_explanation(x)
    assert (
        "  duplicate_of chain\n"
        "    astro-copy2 -> astro-phash: exact_deduped 2025-01-02, distance 0\n"
        "    astro-phash -> astro-orig: phash_deduped 2025-01-01, distance 3 (threshold 8)\n"
        "    astro-orig: in the training set (kept through tokens, 2025-01-01)\n"
    ) in text


def test_phash_duplicate_full_text(home: Home):
    text = audit_text.format_explanation(audit.explain(home, "astro-phash", STAGES))
    sha = hashlib.sha256(b"astro-phash").hexdigest()
    assert text == "\n".join(
        [
            "pair astro-phash",
            "status: removed at phash_deduped on 2025-01-01: phash_duplicate of astro-orig",
            "",
            "arrived 2025-01-01 from pairs.jsonl line 3",
            "  url      https://example.org/astro-phash.jpg",
            "  license  CC-BY-4.0",
            f"  image    images/astro-phash.jpg, 640x480, sha256 {sha}",
            "  text     caption of astro-phash",
            '  extra    {"site": "example.org"}',
            "  raw_pairs         kept",
            "  exact_deduped     kept",
            "  phash_deduped     DROPPED phash_duplicate: pHash 3 bits from astro-orig "
            "(2025-01-01); threshold 8",
            "                    duplicate_of astro-orig, distance 3 (threshold 8)",
            "  clip_scored       not reached",
            "  quality_filtered  not reached",
            "  semantic_deduped  not reached",
            "  tokens            not reached",
            "  duplicate_of chain",
            "    astro-phash -> astro-orig: phash_deduped 2025-01-01, distance 3 (threshold 8)",
            "    astro-orig: in the training set (kept through tokens, 2025-01-01)",
            "",
            "takedowns: none",
            f"(warehouse {home.warehouse})",
        ]
    )


def test_semantic_duplicate_carries_similarity(home: Home):
    x = audit.explain(home, "astro-crop", STAGES)
    hop = x.arrivals[0].chain.hops[0]
    assert (hop.entry.similarity, hop.entry.threshold) == (0.97, 0.95)
    assert [d.outcome for d in x.arrivals[0].decisions][-2:] == ["dropped", "not_reached"]


def test_missing_partition_is_not_materialized_yet(home: Home):
    cat = audit.explain(home, "cat-orig", STAGES)
    assert _outcomes(cat.arrivals[0])[-2:] == [
        ("semantic_deduped", "kept"),
        ("tokens", "not_materialized"),
    ]
    assert cat.status == audit.Status(
        audit.IN_PROGRESS, "semantic_deduped", D2, next_stage="tokens"
    )
    assert audit_text.describe_status(cat.status) == (
        "in progress: kept by semantic_deduped on 2025-01-02; "
        "tokens is not materialized yet for 2025-01-02"
    )
    moon = audit.explain(home, "moon-new", STAGES)
    assert [d.outcome for d in moon.arrivals[0].decisions] == ["kept"] + ["not_materialized"] * 6
    assert moon.status.next_stage == "exact_deduped"


def test_row_in_neither_table_nor_ledger_is_inconsistent(home: Home):
    x = audit.explain(home, "ghost", STAGES)
    assert _outcomes(x.arrivals[0])[:3] == [
        ("raw_pairs", "kept"),
        ("exact_deduped", "missing"),
        ("phash_deduped", "not_reached"),
    ]
    assert x.status == audit.Status(audit.INCONSISTENT, "exact_deduped", D1)


def test_data_cards_table_is_the_last_gate(home: Home):
    rows = [_pair("astro-orig", D1, 1)]
    write_partition(home, "data_cards", D1, pa.Table.from_pylist(rows))
    x = audit.explain(home, "astro-orig", STAGES)
    assert x.arrivals[0].decisions[-1] == audit.Decision("data_cards", audit.KEPT)
    assert x.status == audit.Status(audit.IN_TRAINING_SET, "data_cards", D1)
    # Tokens exist for day 2 now, cards do not: still in progress.
    _write(home, "tokens", D2, [_pair("cat-orig", D2, 3)])
    cat = audit.explain(home, "cat-orig", STAGES)
    assert cat.status == audit.Status(audit.IN_PROGRESS, "tokens", D2, next_stage="data_cards")


def test_duplicates_of_is_transitive_and_grouped_by_stage(home: Home):
    copies = audit.duplicates_of(home, "astro-orig", STAGES)
    got = [(c.entry.pair_id, c.entry.stage, c.entry.date, c.depth) for c in copies.copies]
    assert sorted(got) == [
        ("astro-copy", "exact_deduped", D1, 1),
        ("astro-copy2", "exact_deduped", D2, 2),
        ("astro-crop", "semantic_deduped", D2, 1),
        ("astro-phash", "phash_deduped", D1, 1),
    ]
    assert audit_text.format_copies(copies, STAGES) == "\n".join(
        [
            "4 pairs removed as copies of astro-orig (3 directly, 1 as copies of copies)",
            "exact_deduped (2)",
            "  astro-copy   2025-01-01  exact_duplicate  distance 0",
            "  astro-copy2  2025-01-02  exact_duplicate  distance 0  copy of astro-phash",
            "phash_deduped (1)",
            "  astro-phash  2025-01-01  phash_duplicate  distance 3 (threshold 8)",
            "semantic_deduped (1)",
            "  astro-crop   2025-01-02  semantic_duplicate  similarity 0.97 (threshold 0.95)",
            f"(warehouse {home.warehouse})",
        ]
    )
    none = audit.duplicates_of(home, "cat-orig", STAGES)
    assert none.copies == []
    assert audit_text.format_copies(none, STAGES).startswith("no ledger row names cat-orig")


def test_unknown_id_names_the_warehouse_and_similar_ids(home: Home):
    with pytest.raises(audit.UnknownPair) as caught:
        audit.explain(home, "astro", STAGES)
    assert caught.value.similar == [
        "astro-copy",
        "astro-crop",
        "astro-orig",
        "astro-copy2",
        "astro-phash",
    ]
    assert str(caught.value) == (
        f"pair_id 'astro' is not in the warehouse at {home.warehouse}: no stage table and no "
        "ledger row has it. Similar ids: astro-copy, astro-crop, astro-orig, astro-copy2, "
        "astro-phash."
    )
    with pytest.raises(audit.UnknownPair) as typo:
        audit.explain(home, "astro-orgi", STAGES)
    assert typo.value.similar[0] == "astro-orig"
    with pytest.raises(audit.UnknownPair) as nothing:
        audit.duplicates_of(home, "zzzzzzzz", STAGES)
    assert nothing.value.similar == []
    assert json.loads(audit_text.error_json(nothing.value))["error"] == "UnknownPair"


def test_no_warehouse_at_all(tmp_path: Path):
    empty = Home(tmp_path / "empty")
    with pytest.raises(audit.WarehouseNotFound, match="no warehouse at .*empty/warehouse"):
        audit.explain(empty, "astro-orig", STAGES)


def test_duplicate_of_cycle_stops(home: Home):
    a, b = _pair("loop-a", D3, 2), _pair("loop-b", D3, 3)
    _write(home, "raw_pairs", D3, [_pair("moon-new", D3, 1), a, b])
    _write(home, "exact_deduped", D3, [b])
    _ledger(
        home,
        "exact_deduped",
        D3,
        [ledger_row(a, "exact_deduped", "exact_duplicate", "x", duplicate_of="loop-b")],
    )
    _ledger(
        home,
        "phash_deduped",
        D3,
        [ledger_row(b, "phash_deduped", "phash_duplicate", "y", duplicate_of="loop-a")],
    )
    chain = audit.explain(home, "loop-a", STAGES).arrivals[0].chain
    assert chain.cycle
    assert [(h.entry.pair_id, h.entry.duplicate_of) for h in chain.hops] == [
        ("loop-a", "loop-b"),
        ("loop-b", "loop-a"),
    ]
    assert "cycle: loop-a is already on this chain" in audit_text.format_explanation(
        audit.explain(home, "loop-a", STAGES)
    )
    copies = audit.duplicates_of(home, "loop-a", STAGES)
    assert [(c.entry.pair_id, c.depth) for c in copies.copies] == [("loop-b", 1), ("loop-a", 2)]


def test_takedowns_retroactive_and_at_ingest(tmp_path: Path):
    home = Home(tmp_path / "home")
    gone, copy, blocked = _pair("gone", D1, 1), _pair("gone-copy", D1, 2), _pair("blocked", D1, 3)
    # `gone` was kept through tokens, then a takedown rewrote every table without it.
    for stage in STAGES:
        _write(home, stage, D1, [])
    _write(home, "raw_pairs", D1, [copy])
    _ledger(
        home,
        "takedown",
        D1,
        [ledger_row(gone, "takedown", "takedown", TAKEDOWN_DETAIL)],
    )
    _ledger(
        home,
        "exact_deduped",
        D1,
        [
            ledger_row(
                copy, "exact_deduped", "exact_duplicate", "s", duplicate_of="gone", distance=0.0
            )
        ],
    )
    _ledger(
        home,
        "raw_pairs",
        D1,
        [
            ledger_row(
                blocked,
                "raw_pairs",
                "takedown",
                "request TD-2 (pair_id blocked, filed 2024-12-31): spam",
            )
        ],
    )

    x = audit.explain(home, "gone", STAGES)
    assert x.status.state == audit.TAKEN_DOWN
    assert [t.detail for t in x.takedowns] == [TAKEDOWN_DETAIL]
    assert audit_text.describe_status(x.status) == (
        f"taken down (removed from the warehouse, 2025-01-01): {TAKEDOWN_DETAIL}"
    )
    (arrival,) = x.arrivals
    assert arrival.origin.url == "https://example.org/gone.jpg"
    assert [d.outcome for d in arrival.decisions] == ["taken_down"] * 7
    text = audit_text.format_explanation(x)
    assert f"takedowns\n  2025-01-01 takedown: {TAKEDOWN_DETAIL}\n" in text
    assert "  tokens            removed by a takedown\n" in text

    chain = audit.explain(home, "gone-copy", STAGES).arrivals[0].chain
    assert chain.hops[-1].target_status.state == audit.TAKEN_DOWN
    assert (
        audit_text.format_explanation(audit.explain(home, "gone-copy", STAGES)).count(
            f"gone: taken down (removed from the warehouse, 2025-01-01): {TAKEDOWN_DETAIL}"
        )
        == 1
    )

    y = audit.explain(home, "blocked", STAGES)
    assert y.status.state == audit.TAKEN_DOWN
    assert [(t.stage, t.reason) for t in y.takedowns] == [("raw_pairs", "takedown")]
    assert audit_text.describe_status(y.status) == (
        "taken down (excluded at raw_pairs, 2025-01-01): "
        "request TD-2 (pair_id blocked, filed 2024-12-31): spam"
    )


def test_takedown_keeps_a_stage_drop_visible(home: Home):
    # astro-phash is taken down after pHash dropped it: the pair is "taken down", and its
    # arrival still shows why pHash dropped it.
    for stage in ("raw_pairs", "exact_deduped"):
        _write(home, stage, D1, [_pair("astro-orig", D1, 1), _pair("rocket-low", D1, 4)])
    _ledger(
        home,
        "takedown",
        D1,
        [ledger_row(_pair("astro-phash", D1, 3), "takedown", "takedown", TAKEDOWN_DETAIL)],
    )
    x = audit.explain(home, "astro-phash", STAGES)
    assert x.status.state == audit.TAKEN_DOWN
    assert _outcomes(x.arrivals[0])[:4] == [
        ("raw_pairs", "taken_down"),
        ("exact_deduped", "taken_down"),
        ("phash_deduped", "dropped"),
        ("clip_scored", "not_reached"),
    ]
    assert x.arrivals[0].status.entry.duplicate_of == "astro-orig"


def test_json_round_trip(home: Home):
    data = json.loads(audit_text.to_json(audit.explain(home, "astro-copy2", STAGES)))
    assert data["status"]["summary"] == (
        "removed at exact_deduped on 2025-01-02: exact_duplicate of astro-phash"
    )
    hops = data["arrivals"][0]["chain"]["hops"]
    assert [h["entry"]["duplicate_of"] for h in hops] == ["astro-phash", "astro-orig"]
    assert hops[-1]["target_status"]["summary"] == (
        "in the training set (kept through tokens, 2025-01-01)"
    )
    copies = json.loads(audit_text.to_json(audit.duplicates_of(home, "astro-phash", STAGES)))
    assert [c["entry"]["pair_id"] for c in copies["copies"]] == ["astro-copy2"]
