from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from dataplatform.core.store.home import Home, resolve_home
from dataplatform.core.store.schema import ledger_row, ledger_table
from dataplatform.core.store.warehouse import (
    connect,
    document_exists,
    has_partition,
    partition_dates,
    read_document,
    read_history,
    read_partition,
    refresh_catalog,
    write_document,
    write_ledger,
    write_partition,
)


def _t(ids, date):
    return pa.table({"pair_id": ids, "date": [date] * len(ids)})


def test_rewrite_replaces_never_appends(tmp_path: Path):
    home = Home(tmp_path)
    write_partition(home, "t", "2025-01-01", _t(["a", "b"], "2025-01-01"))
    write_partition(home, "t", "2025-01-01", _t(["c"], "2025-01-01"))
    assert read_partition(home, "t", "2025-01-01").column("pair_id").to_pylist() == ["c"]
    folder = tmp_path / "warehouse" / "t" / "date=2025-01-01"
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]


def test_empty_partition_is_materialized(tmp_path: Path):
    home = Home(tmp_path)
    write_partition(home, "t", "2025-01-02", _t([], "2025-01-02"))
    assert has_partition(home, "t", "2025-01-02")
    assert not has_partition(home, "t", "2025-01-03")
    with pytest.raises(FileNotFoundError, match="materialize t for 2025-01-03 first"):
        read_partition(home, "t", "2025-01-03")


def test_history_reads_only_earlier_dates(tmp_path: Path):
    home = Home(tmp_path)
    for date, ids in [("2025-01-01", ["a"]), ("2025-01-02", ["b"]), ("2025-01-03", ["c"])]:
        write_partition(home, "t", date, _t(ids, date))
    assert partition_dates(home, "t") == ["2025-01-01", "2025-01-02", "2025-01-03"]
    hist = read_history(home, "t", "2025-01-03", ["pair_id"])
    assert sorted(hist.column("pair_id").to_pylist()) == ["a", "b"]
    assert read_history(home, "t", "2025-01-01", ["pair_id"]).num_rows == 0


def test_views_and_catalog_file(tmp_path: Path):
    home = Home(tmp_path)
    write_partition(home, "t", "2025-01-01", _t(["a", "b"], "2025-01-01"))
    pair = {"pair_id": "x", "date": "2025-01-01", "text": "t"}
    write_ledger(home, "t", "2025-01-01", ledger_table([ledger_row(pair, "t", "why", "because")]))
    con = connect(home)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert con.execute("SELECT stage, reason, date FROM rejections").fetchall() == [
        ("t", "why", "2025-01-01")
    ]
    assert refresh_catalog(home) == ["rejections", "t"]
    with duckdb.connect(str(home.catalog_path), read_only=True) as cat:
        assert cat.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_ledger_rejects_unknown_columns():
    with pytest.raises(ValueError, match="unknown columns"):
        ledger_table([{"pair_id": "a", "date": "d", "stage": "s", "reason": "r", "oops": 1}])


def test_home_from_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DATAPLATFORM_HOME", str(tmp_path / "h"))
    assert resolve_home().root == (tmp_path / "h").resolve()
    (tmp_path / "h" / "landing" / "2025-01-02").mkdir(parents=True)
    (tmp_path / "h" / "landing" / "not-a-date").mkdir()
    assert resolve_home().landing_dates() == ["2025-01-02"]


def test_documents_round_trip_inside_the_warehouse(tmp_path: Path):
    home = Home(tmp_path)
    path = write_document(home, "cards/date=2025-01-01/card.md", "# card\n")
    assert path == tmp_path / "warehouse" / "cards" / "date=2025-01-01" / "card.md"
    assert read_document(home, "cards/date=2025-01-01/card.md") == b"# card\n"
    assert document_exists(home, "cards/date=2025-01-01/card.md")
    assert not document_exists(home, "cards/date=2025-01-02/card.md")
    assert [p.name for p in path.parent.iterdir()] == ["card.md"]
    with pytest.raises(ValueError, match="leaves the warehouse"):
        write_document(home, "../outside.md", "x")
