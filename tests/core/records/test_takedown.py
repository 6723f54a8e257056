import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dataplatform.core.dedup.phash import from_hex, hamming
from dataplatform.core.ingest.image_decode import inspect_image_bytes
from dataplatform.core.records.takedown_apply import apply_takedowns, register_export
from dataplatform.core.records.takedown_requests import (
    TakedownRequestError,
    load_takedowns,
    match_pairs,
    takedown_dir,
)
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    connect,
    partition_dates,
    read_ledger,
    read_partition,
    write_partition,
)
from dataplatform.core.tokens.webdataset_export import export_shards, read_shards
from tests.conftest import encode, photo

D1, D2 = "2025-01-01", "2025-01-02"


def _facts(image):
    return inspect_image_bytes(encode(image, quality=90))


@pytest.fixture(scope="module")
def images():
    chelsea = photo("chelsea")
    return {
        "astronaut": _facts(photo("astronaut")),
        "chelsea": _facts(chelsea),
        # A slightly cropped copy: 4 bits from the original, a near duplicate for pHash.
        "chelsea_crop": _facts(chelsea.crop((10, 10, chelsea.width - 10, chelsea.height - 10))),
        "coffee": _facts(photo("coffee")),
        "rocket": _facts(photo("rocket")),
    }


def _pairs(images, rows) -> pa.Table:
    return pa.table(
        {
            "pair_id": [r[0] for r in rows],
            "date": [r[1] for r in rows],
            "text": [f"caption {r[0]}" for r in rows],
            "url": [r[2] for r in rows],
            "license": ["CC-BY-4.0"] * len(rows),
            "image_uri": [f"img/{r[3]}.jpg" for r in rows],
            "image_sha256": [images[r[3]].sha256 for r in rows],
            "phash": [images[r[3]].phash for r in rows],
            "source": ["pairs.jsonl"] * len(rows),
            "source_locator": [f"line {k}" for k in range(len(rows))],
        }
    )


ROWS = [
    ("p1", D1, "https://Example.com/a.jpg#top", "astronaut"),
    ("p2", D1, "https://example.com/b.jpg", "chelsea"),
    ("p3", D1, "https://example.com/c.jpg", "coffee"),
    ("p4", D2, "https://example.com/d.jpg", "chelsea_crop"),
    ("p5", D2, "https://example.com/e.jpg", "rocket"),
]


def _write_requests(home: Home, lines: list[dict], name: str = "requests.jsonl") -> Path:
    folder = takedown_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_requests_are_read_from_jsonl_and_csv(tmp_path: Path, images):
    home = Home(tmp_path)
    _write_requests(home, [{"id": "TD-1", "kind": "url", "value": "https://x/y", "filed": D2}])
    (takedown_dir(home) / "more.csv").write_text(
        "id,kind,value,filed,reason\nTD-2,pair_id,p3,2025-01-03,owner asked\n"
    )
    requests = load_takedowns(home)
    assert [(r.request_id, r.kind, r.value, r.filed) for r in requests] == [
        ("TD-2", "pair_id", "p3", "2025-01-03"),
        ("TD-1", "url", "https://x/y", D2),
    ]
    assert requests[0].reason == "owner asked"
    assert requests[1].reason == "no reason given"


def test_every_bad_request_is_named(tmp_path: Path):
    home = Home(tmp_path)
    folder = takedown_dir(home)
    folder.mkdir(parents=True)
    (folder / "r.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "A", "kind": "colour", "value": "red", "filed": D1}),
                "{not json",
                json.dumps({"id": "B", "kind": "url", "value": "", "filed": "yesterday"}),
                json.dumps({"id": "C", "kind": "image", "value": "../secret.jpg", "filed": D1}),
                json.dumps({"id": "D", "kind": "phash", "value": "xyz", "filed": D1}),
                json.dumps({"id": "E", "kind": "pair_id", "value": "p1", "filed": D1}),
                json.dumps({"id": "E", "kind": "pair_id", "value": "p2", "filed": D1}),
            ]
        )
    )
    with pytest.raises(TakedownRequestError) as caught:
        load_takedowns(home)
    message = str(caught.value)
    assert "6 bad takedown request(s)" in message
    assert "r.jsonl:1: kind must be one of" in message
    assert "r.jsonl:2: not JSON" in message
    assert "r.jsonl:3: value is empty; filed must be a YYYY-MM-DD date" in message
    assert "r.jsonl:4: image '../secret.jpg' must be a file inside" in message
    assert "r.jsonl:5: phash must be 16 hex digits" in message
    assert "r.jsonl:7: request id 'E' already used at r.jsonl:6" in message


def test_matching_by_url_sha_pair_id_and_image_distance(tmp_path: Path, images):
    home = Home(tmp_path)
    folder = takedown_dir(home)
    folder.mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(encode(photo("chelsea"), quality=90))
    _write_requests(
        home,
        [
            {"id": "U", "kind": "url", "value": "https://EXAMPLE.com/a.jpg", "filed": D2},
            {"id": "S", "kind": "image_sha256", "value": images["coffee"].sha256, "filed": D2},
            {"id": "I", "kind": "image", "value": "cat.jpg", "filed": D2, "reason": "DMCA"},
            {"id": "P", "kind": "pair_id", "value": "p2", "filed": D2},
        ],
    )
    requests = load_takedowns(home)
    matches = match_pairs(_pairs(images, ROWS), requests)
    cropped = hamming(from_hex(images["chelsea"].phash), from_hex(images["chelsea_crop"].phash))
    assert cropped == 4
    assert [(m.pair_id, m.request.request_id, m.distance, m.also) for m in matches] == [
        ("p1", "U", None, ()),
        ("p2", "I", 0, ("P",)),
        ("p3", "S", None, ()),
        ("p4", "I", cropped, ()),
    ]
    strict = [r for r in requests if r.request_id == "I"][0]
    tight = type(strict)(**{**strict.__dict__, "max_distance": cropped - 1})
    assert [m.pair_id for m in match_pairs(_pairs(images, ROWS), [tight])] == ["p2"]


def _warehouse(home: Home, images) -> None:
    pairs = _pairs(images, ROWS)
    for date in (D1, D2):
        day = pairs.filter(np.array([d == date for d in pairs.column("date").to_pylist()]))
        write_partition(home, "raw_pairs", date, day)
        write_partition(home, "semantic_deduped", date, day.select(["pair_id", "date", "text"]))
        emb = pa.table(
            {
                "pair_id": day.column("pair_id"),
                "date": day.column("date"),
                "image_embedding": pa.array([[0.0, 1.0]] * day.num_rows, pa.list_(pa.float32(), 2)),
            }
        )
        write_partition(home, "embeddings", date, emb)


def _export(home: Home, out: Path) -> None:
    records = [
        {"pair_id": p, "text": f"caption {p}", "tokens": np.full((2, 2), k, np.uint16)}
        for k, p in enumerate(["p1", "p2", "p3", "p4", "p5"])
    ]
    export_shards(records, out, shard_max_samples=2)
    register_export(home, out)


def test_apply_removes_from_every_table_and_export_and_records_it(tmp_path: Path, images):
    home = Home(tmp_path / "home")
    _warehouse(home, images)
    out = tmp_path / "export"
    _export(home, out)
    _write_requests(
        home,
        [
            {
                "id": "TD-9",
                "kind": "url",
                "value": "https://example.com/e.jpg",
                "filed": D2,
                "reason": "court order",
            },
            {"id": "TD-10", "kind": "pair_id", "value": "p1", "filed": D2},
        ],
    )
    report = apply_takedowns(home, load_takedowns(home))
    assert [m.pair_id for m in report.matches] == ["p1", "p5"]
    assert report.partitions == {
        "embeddings": {D1: 1, D2: 1},
        "raw_pairs": {D1: 1, D2: 1},
        "semantic_deduped": {D1: 1, D2: 1},
    }
    assert sorted(report.shards.values()) == [1, 1]
    assert report.verified and report.remaining == []
    for table in ("raw_pairs", "semantic_deduped", "embeddings"):
        ids = [
            i
            for d in (D1, D2)
            for i in read_partition(home, table, d).column("pair_id").to_pylist()
        ]
        assert sorted(ids) == ["p2", "p3", "p4"]
    exported = [r["pair_id"] for r in read_shards(sorted(out.glob("*.tar")))]
    assert exported == ["p2", "p3", "p4"]
    ledger = read_ledger(home, "takedown", D2).to_pylist()
    assert [(r["pair_id"], r["stage"], r["reason"]) for r in ledger] == [
        ("p5", "takedown", "takedown")
    ]
    assert ledger[0]["detail"] == (
        "request TD-9 (url https://example.com/e.jpg, filed 2025-01-02): court order"
    )
    assert ledger[0]["url"] == "https://example.com/e.jpg"
    receipt = json.loads(report.receipt.read_text())
    assert receipt["verification"] == {"passed": True, "remaining": []}
    assert [r["pair_id"] for r in receipt["removed"]] == ["p1", "p5"]
    con = connect(home)
    assert con.execute("SELECT count(*) FROM rejections WHERE stage = 'takedown'").fetchone() == (
        2,
    )
    con.close()


def test_apply_twice_changes_nothing_more(tmp_path: Path, images):
    home = Home(tmp_path / "home")
    _warehouse(home, images)
    _write_requests(home, [{"id": "T", "kind": "pair_id", "value": "p3", "filed": D2}])
    requests = load_takedowns(home)
    assert [m.pair_id for m in apply_takedowns(home, requests).matches] == ["p3"]
    again = apply_takedowns(home, requests)
    assert again.matches == [] and again.partitions == {} and again.verified
    assert read_ledger(home, "takedown", D1).column("pair_id").to_pylist() == ["p3"]
    assert partition_dates(home, "raw_pairs") == [D1, D2]


def test_shard_rewrite_equals_a_fresh_export_without_the_samples(tmp_path: Path, images):
    home = Home(tmp_path / "home")
    _warehouse(home, images)
    _export(home, tmp_path / "export")
    _write_requests(home, [{"id": "T", "kind": "pair_id", "value": "p2", "filed": D2}])
    apply_takedowns(home, load_takedowns(home))
    shard = tmp_path / "export" / "tokens-000000.tar"
    fresh = tmp_path / "fresh"
    export_shards(
        [{"pair_id": "p1", "text": "caption p1", "tokens": np.full((2, 2), 0, np.uint16)}],
        fresh,
    )
    assert shard.read_bytes() == (fresh / "tokens-000000.tar").read_bytes()


def test_apply_reports_each_rewritten_partition_with_its_pairs_and_requests(tmp_path: Path, images):
    home = Home(tmp_path / "home")
    _warehouse(home, images)
    _write_requests(
        home,
        [
            {"id": "TD-9", "kind": "url", "value": "https://example.com/e.jpg", "filed": D2},
            {"id": "TD-10", "kind": "pair_id", "value": "p1", "filed": D2, "reason": "asked"},
        ],
    )
    report = apply_takedowns(home, load_takedowns(home))
    # Date by date in commit order: the tables, then the takedown ledger rows added.
    assert [(r.table, r.stage, r.date, r.pair_ids, r.rows) for r in report.rewrites] == [
        ("embeddings", None, D1, ("p1",), 1),
        ("raw_pairs", None, D1, ("p1",), 1),
        ("semantic_deduped", None, D1, ("p1",), 1),
        ("rejections", "takedown", D1, ("p1",), 1),
        ("embeddings", None, D2, ("p5",), 1),
        ("raw_pairs", None, D2, ("p5",), 1),
        ("semantic_deduped", None, D2, ("p5",), 1),
        ("rejections", "takedown", D2, ("p5",), 1),
    ]
    named = {r.date: [q.request_id for q in report.requests_for(r)] for r in report.rewrites}
    assert named == {D1: ["TD-10"], D2: ["TD-9"]}
    # Applying again rewrites nothing.
    assert apply_takedowns(home, load_takedowns(home)).rewrites == []
