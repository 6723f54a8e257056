import pyarrow as pa

from dataplatform.core.dedup.exact_dedup import exact_deduplicate


def _current(rows):
    return pa.table(
        {
            "pair_id": [r[0] for r in rows],
            "date": ["2025-01-03"] * len(rows),
            "image_sha256": [r[1] for r in rows],
        }
    )


def _hist(rows, cols):
    return pa.table(
        {c: [r[i] for r in rows] for i, c in enumerate(cols)},
        schema=pa.schema([(c, pa.string()) for c in cols]),
    )


def test_smallest_pair_id_wins_within_partition_regardless_of_row_order():
    current = _current([("c", "h1"), ("a", "h1"), ("b", "h2"), ("d", "h1")])
    empty_kept = _hist([], ["pair_id", "image_sha256", "date"])
    empty_ids = _hist([], ["pair_id", "date"])
    result = exact_deduplicate(current, empty_kept, empty_ids)
    assert result.kept.column("pair_id").to_pylist() == ["a", "b"]
    assert result.duplicates.to_pylist() == [
        {"pair_id": "c", "duplicate_of": "a", "duplicate_of_date": "2025-01-03"},
        {"pair_id": "d", "duplicate_of": "a", "duplicate_of_date": "2025-01-03"},
    ]
    assert result.kept.schema == current.schema


def test_earlier_partition_wins_and_reused_ids_are_reported():
    current = _current([("a", "h1"), ("b", "h2"), ("z", "h3")])
    kept = _hist(
        [("old2", "h1", "2025-01-02"), ("old1", "h1", "2025-01-01"), ("zz", "h2", "2025-01-02")],
        ["pair_id", "image_sha256", "date"],
    )
    ids = _hist([("z", "2025-01-01"), ("z", "2025-01-02")], ["pair_id", "date"])
    result = exact_deduplicate(current, kept, ids)
    assert result.kept.num_rows == 0
    assert result.duplicates.to_pylist() == [
        {"pair_id": "a", "duplicate_of": "old1", "duplicate_of_date": "2025-01-01"},
        {"pair_id": "b", "duplicate_of": "zz", "duplicate_of_date": "2025-01-02"},
    ]
    assert result.reused_ids.to_pylist() == [{"pair_id": "z", "first_date": "2025-01-01"}]
