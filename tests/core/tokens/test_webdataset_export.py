"""WebDataset export: round trip, roll-over, byte-identical re-exports, awkward pair ids."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dataplatform.core.tokens.webdataset_export import (
    export_shards,
    pair_id_from_key,
    read_shards,
    sample_key,
)


def _records(count: int, side: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "pair_id": f"laion/part.{k:03d}.jpg",
            "text": f"caption {k} — ünïcode",
            "tokens": rng.integers(0, 2**16, size=(side, side), dtype=np.uint16),
            "resolution": 256,
            "crop": "center",
        }
        for k in range(count)
    ]


def _assert_same(read: list[dict], written: list[dict]) -> None:
    assert len(read) == len(written)
    for got, want in zip(read, written, strict=True):
        assert got["tokens"].dtype == np.uint16
        assert got["tokens"].shape == want["tokens"].shape
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        assert {k: v for k, v in got.items() if k != "tokens"} == {
            k: v for k, v in want.items() if k != "tokens"
        }


def test_round_trip(tmp_path: Path) -> None:
    records = _records(5)
    records[2]["tokens"] = records[2]["tokens"][:, :7]  # non-square and a non-contiguous view
    paths = export_shards(records, tmp_path)
    assert paths == [tmp_path / "tokens-000000.tar"]
    _assert_same(list(read_shards(paths)), records)


def test_members_names_and_order(tmp_path: Path) -> None:
    [path] = export_shards(_records(2), tmp_path, prefix="train")
    assert path.name == "train-000000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "laion~2fpart~2e000~2ejpg.json",
        "laion~2fpart~2e000~2ejpg.tokens.npy",
        "laion~2fpart~2e000~2ejpg.txt",
        "laion~2fpart~2e001~2ejpg.json",
        "laion~2fpart~2e001~2ejpg.tokens.npy",
        "laion~2fpart~2e001~2ejpg.txt",
    ]
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {
        (0, 0, 0, 0o644, "", "")
    }
    assert not list(tmp_path.glob(".*.tmp"))


def test_rollover_by_samples(tmp_path: Path) -> None:
    records = _records(7)
    paths = export_shards(records, tmp_path, shard_max_samples=3)
    assert [p.name for p in paths] == [f"tokens-00000{k}.tar" for k in range(3)]
    assert [len(list(read_shards([p]))) for p in paths] == [3, 3, 1]
    _assert_same(list(read_shards(paths)), records)


def test_rollover_by_bytes(tmp_path: Path) -> None:
    # Each sample: a 64x64 uint16 grid is 8,192 bytes of data, ~11 KB with headers.
    records = _records(6, side=64)
    limit = 3 * 10240  # room for two samples and the end blocks, not three
    paths = export_shards(records, tmp_path, shard_max_bytes=limit)
    assert [len(list(read_shards([p]))) for p in paths] == [2, 2, 2]
    assert all(p.stat().st_size <= limit for p in paths)
    _assert_same(list(read_shards(paths)), records)


def test_oversized_sample_gets_its_own_shard(tmp_path: Path) -> None:
    records = _records(3, side=64)
    paths = export_shards(records, tmp_path, shard_max_bytes=1024)
    assert len(paths) == 3
    _assert_same(list(read_shards(paths)), records)


def test_exports_are_byte_identical(tmp_path: Path) -> None:
    first = export_shards(_records(9), tmp_path / "a", shard_max_samples=4)
    second = export_shards(_records(9), tmp_path / "b", shard_max_samples=4)
    assert [p.name for p in first] == [p.name for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_reexport_removes_stale_shards(tmp_path: Path) -> None:
    export_shards(_records(9), tmp_path, shard_max_samples=2)
    paths = export_shards(_records(3), tmp_path, shard_max_samples=2)
    assert sorted(tmp_path.glob("tokens-*.tar")) == paths


def test_awkward_pair_ids_survive(tmp_path: Path) -> None:
    ids = ["a.b.c", "dir/sub/x.jpg", "../up", "~2e", "with space", "日本/猫.png", "-", "_"]
    for pair_id in ids:
        key = sample_key(pair_id)
        assert "." not in key and "/" not in key
        assert pair_id_from_key(key) == pair_id
    assert len({sample_key(p) for p in ids}) == len(ids)
    tokens = np.arange(6, dtype=np.uint16).reshape(2, 3)
    records = [{"pair_id": p, "text": p, "tokens": tokens} for p in ids]
    _assert_same(list(read_shards(export_shards(records, tmp_path))), records)


def test_long_pair_id(tmp_path: Path) -> None:
    records = [{"pair_id": "x" * 300, "text": "", "tokens": np.zeros((1, 1), np.uint16)}]
    _assert_same(list(read_shards(export_shards(records, tmp_path))), records)


def test_empty_input_writes_nothing(tmp_path: Path) -> None:
    assert export_shards([], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"pair_id": "a", "text": "t", "tokens": np.zeros((2, 2), np.int32)}, "uint16"),
        ({"pair_id": "a", "text": "t", "tokens": np.zeros(4, np.uint16)}, "2-D"),
        ({"pair_id": "a", "text": None, "tokens": np.zeros((2, 2), np.uint16)}, "text"),
        ({"text": "t", "tokens": np.zeros((2, 2), np.uint16)}, "pair_id"),
        (
            {"pair_id": "a", "text": "t", "tokens": np.zeros((2, 2), np.uint16), "shape": 1},
            "reserved",
        ),
        ({"pair_id": "a", "text": "t", "tokens": np.zeros((2, 2), np.uint16), "x": {1, 2}}, "JSON"),
    ],
)
def test_rejects_bad_records(tmp_path: Path, record: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_shards([record], tmp_path)
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob(".*.tmp"))


def test_rejects_duplicate_pair_ids(tmp_path: Path) -> None:
    records = _records(2)
    records[1]["pair_id"] = records[0]["pair_id"]
    with pytest.raises(ValueError, match="appears twice"):
        export_shards(records, tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_with_webdataset_package(tmp_path: Path) -> None:
    webdataset = pytest.importorskip(
        "webdataset", reason="webdataset not installed: pip install webdataset to run this check"
    )
    records = _records(7)
    paths = export_shards(records, tmp_path, shard_max_samples=3)
    urls = [str(p) for p in paths]

    raw = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in raw] == [sample_key(r["pair_id"]) for r in records]
    for sample, record in zip(raw, records, strict=True):
        tokens = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
        assert tokens.dtype == np.uint16
        np.testing.assert_array_equal(tokens, record["tokens"])
        assert sample["txt"].decode("utf-8") == record["text"]

    decoded = list(webdataset.WebDataset(urls, shardshuffle=False).decode())
    for sample, record in zip(decoded, records, strict=True):
        assert sample["tokens.npy"].dtype == np.uint16
        np.testing.assert_array_equal(sample["tokens.npy"], record["tokens"])
        assert sample["txt"] == record["text"]
        assert sample["json"]["pair_id"] == record["pair_id"]
