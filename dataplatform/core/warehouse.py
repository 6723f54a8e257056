"""The warehouse: hive-partitioned Parquet as the storage of record, DuckDB as the query engine.

Writes are atomic (a temporary file renamed into place) and replace the partition, so that
re-materializing never appends twice and no reader sees half a file. No process holds a
DuckDB write lock while it computes: queries run on in-memory connections over the Parquet
files, and the catalog file is only touched for a moment to (re)create its views.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.home import Home

LEDGER_TABLE = "rejections"
PART_FILE = "part-0.parquet"


def partition_dir(home: Home, table: str, date: str) -> Path:
    if table == LEDGER_TABLE:
        raise ValueError("the ledger is partitioned by stage too: use ledger_dir()")
    return home.warehouse / table / f"date={date}"


def ledger_dir(home: Home, stage: str, date: str) -> Path:
    return home.warehouse / LEDGER_TABLE / f"stage={stage}" / f"date={date}"


def write_parquet_atomic(directory: Path, table: pa.Table) -> Path:
    """Replace the partition in ``directory`` with ``table`` in one rename.

    An empty table is still written (with its schema) so that "materialized with no rows" and
    "never materialized" stay distinguishable.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / PART_FILE
    tmp = directory / f".{PART_FILE}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    for stale in directory.glob("*.parquet"):
        if stale != final:
            stale.unlink()
    return final


def document_path(home: Home, relative: str) -> Path:
    """Where a document (dataset card, review sheet, plot) lives under the warehouse."""
    path = (home.warehouse / relative).resolve()
    if home.warehouse.resolve() not in path.parents:
        raise ValueError(f"document path {relative!r} leaves the warehouse")
    return path


def write_document(home: Home, relative: str, data: bytes | str) -> Path:
    """Write a document under the warehouse atomically (readers never see half a file)."""
    path = document_path(home, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def write_partition(home: Home, table_name: str, date: str, table: pa.Table) -> Path:
    return write_parquet_atomic(partition_dir(home, table_name, date), table)


def write_ledger(home: Home, stage: str, date: str, table: pa.Table) -> Path:
    return write_parquet_atomic(ledger_dir(home, stage, date), table)


def has_partition(home: Home, table_name: str, date: str) -> bool:
    return (partition_dir(home, table_name, date) / PART_FILE).is_file()


def read_partition(home: Home, table_name: str, date: str) -> pa.Table:
    path = partition_dir(home, table_name, date) / PART_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{table_name} has no partition {date} under {path.parent}: materialize "
            f"{table_name} for {date} first"
        )
    return _read(path)


def read_ledger(home: Home, stage: str, date: str) -> pa.Table:
    path = ledger_dir(home, stage, date) / PART_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no ledger for stage {stage} on {date} at {path}")
    return _read(path)


def partition_dates(home: Home, table_name: str) -> list[str]:
    """Dates with a written partition of ``table_name``, oldest first."""
    root = home.warehouse / table_name
    if not root.is_dir():
        return []
    return sorted(
        p.name.removeprefix("date=")
        for p in root.iterdir()
        if p.name.startswith("date=") and (p / PART_FILE).is_file()
    )


def table_glob(home: Home, table_name: str) -> str:
    if table_name == LEDGER_TABLE:
        return str(home.warehouse / LEDGER_TABLE / "stage=*" / "date=*" / "*.parquet")
    return str(home.warehouse / table_name / "date=*" / "*.parquet")


def read_history(home: Home, table_name: str, before: str, columns: list[str]) -> pa.Table:
    """``columns`` of every row of ``table_name`` whose partition date is earlier than ``before``.

    Reads only the partition folders that qualify, so a backfill's later partitions never leak
    into an earlier one's decisions.
    """
    files = [
        str(partition_dir(home, table_name, d) / PART_FILE)
        for d in partition_dates(home, table_name)
        if d < before
    ]
    if not files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables([_read(f, columns) for f in files], promote_options="permissive")


def _read(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    # partitioning=None: the files carry their own `date` column, and pyarrow would otherwise
    # add a second, dictionary-typed one from the `date=` folder name.
    return pq.read_table(path, columns=columns, partitioning=None)


def connect(home: Home) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per warehouse table.

    In-memory, so that any number of processes can query while others write partitions.
    """
    con = duckdb.connect()
    for name in warehouse_tables(home):
        con.execute(_view_sql(home, name))
    return con


def warehouse_tables(home: Home) -> list[str]:
    """Tables that have at least one Parquet file (a view over an empty glob cannot bind)."""
    if not home.warehouse.is_dir():
        return []
    names = []
    for p in sorted(home.warehouse.iterdir()):
        if p.is_dir() and any(Path(f).is_file() for f in _glob(home, p.name)):
            names.append(p.name)
    return names


def _glob(home: Home, name: str) -> list[str]:
    import glob

    return glob.glob(table_glob(home, name))


def _view_sql(home: Home, name: str) -> str:
    # The files carry their own `date` column; the ledger's `stage` folder is also a column, so
    # hive partitioning adds nothing and is off (it would clash with the stored `date`).
    glob_path = table_glob(home, name).replace("'", "''")
    return (
        f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM '
        f"read_parquet('{glob_path}', union_by_name = true, hive_partitioning = false)"
    )


def refresh_catalog(home: Home, attempts: int = 20) -> list[str]:
    """(Re)create the views of ``catalog.duckdb`` for users who open it with DuckDB.

    Views read the Parquet globs at query time, so they only need creating once per table;
    another process (a concurrent step, a user's open session) may hold the file, so the lock is
    retried briefly and the refresh is skipped, not failed, when it stays busy.
    """
    names = warehouse_tables(home)
    home.warehouse.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            con = duckdb.connect(str(home.catalog_path))
        except duckdb.IOException:
            time.sleep(0.1 * (attempt + 1))
            continue
        try:
            for name in names:
                con.execute(_view_sql(home, name))
        finally:
            con.close()
        return names
    return []
