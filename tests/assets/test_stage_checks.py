import pyarrow as pa

from dataplatform.assets.dedup_history import concat_columns, rows_by_id, rows_with
from dataplatform.assets.reporting import unique_check


def test_unique_check_finds_repeats_in_lists_and_arrow_columns():
    ok = unique_check("u", "pair_id", ["a", "b", "c"], "the day")
    assert ok.passed and ok.metadata["duplicates"].value == 0
    column = concat_columns(pa.chunked_array([["a", "b"]]), pa.chunked_array([["c", "a", "b"]]))
    bad = unique_check("u", "pair_id", column, "all kept pairs")
    assert not bad.passed
    assert bad.metadata["duplicates"].value == 2
    assert bad.metadata["examples"].value == "a, b"
    assert bad.description == "pair_id is unique across all kept pairs"


def test_rows_by_id_and_rows_with():
    table = pa.table({"pair_id": ["x", "y", "z"], "n": [1, 2, 3]})
    assert [r["n"] for r in rows_by_id(table, ["z", "x"])] == [3, 1]
    assert rows_by_id(table, []) == []
    assert rows_with(table, "pair_id", pa.chunked_array([["y", "q"]]))["n"].to_pylist() == [2]
    assert rows_with(table, "pair_id", []).num_rows == 0
