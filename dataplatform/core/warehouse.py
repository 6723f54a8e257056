"""The warehouse: hive-partitioned Parquet as the storage of record, DuckDB as the query engine.

Writes are atomic (a temporary file renamed into place) and replace the partition, so that
re-materializing never appends twice and no reader sees half a file. No process holds a
DuckDB write lock while it computes: queries run on in-memory connections over the Parquet
files, and the catalog file is only touched for a moment to (re)create its views.

When ``home.warehouse_url`` names an object store, the same layout lives under that URL and
locations are ``str`` URLs instead of ``Path``s; ``object_store`` says how writes stay atomic
there. Local warehouses never import it.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.home import Home

if TYPE_CHECKING:
    from dataplatform.core.object_store import ObjectStore

LEDGER_TABLE = "rejections"
PART_FILE = "part-0.parquet"
# Remote reads are one or two round trips each; a few in flight hide most of the latency.
REMOTE_READ_THREADS = 8

# A local path, or an object-store URL (``s3://bucket/prefix/...``).
Location = Path | str


def partition_dir(home: Home, table: str, date: str) -> Location:
    if table == LEDGER_TABLE:
        raise ValueError("the ledger is partitioned by stage too: use ledger_dir()")
    return _join(home.warehouse, table, f"date={date}")


def ledger_dir(home: Home, stage: str, date: str) -> Location:
    return _join(home.warehouse, LEDGER_TABLE, f"stage={stage}", f"date={date}")


def partition_file(home: Home, table: str, date: str) -> Location:
    """The Parquet file of one partition; DuckDB reads it as it is on a ``connect()`` connection."""
    return _join(partition_dir(home, table, date), PART_FILE)


def ledger_file(home: Home, stage: str, date: str) -> Location:
    return _join(ledger_dir(home, stage, date), PART_FILE)


def write_parquet_atomic(directory: Location, table: pa.Table) -> Location:
    """Replace the partition in ``directory`` with ``table`` in one rename (one PUT remotely).

    An empty table is still written (with its schema) so that "materialized with no rows" and
    "never materialized" stay distinguishable.
    """
    if isinstance(directory, str):
        store = _store_for(directory)
        final = _join(directory, PART_FILE)
        store.put_parquet(final, table)
        store.delete(f for f in store.files(directory) if f.endswith(".parquet") and f != final)
        return final
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / PART_FILE
    tmp = directory / f".{PART_FILE}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    for stale in directory.glob("*.parquet"):
        if stale != final:
            stale.unlink()
    return final


def document_path(home: Home, relative: str) -> Location:
    """Where a document (dataset card, review sheet, plot) lives under the warehouse."""
    if isinstance(home.warehouse, str):
        normal = posixpath.normpath(relative)
        if relative.startswith("/") or normal in (".", "..") or normal.startswith("../"):
            raise ValueError(f"document path {relative!r} leaves the warehouse")
        return _join(home.warehouse, normal)
    path = (home.warehouse / relative).resolve()
    if home.warehouse.resolve() not in path.parents:
        raise ValueError(f"document path {relative!r} leaves the warehouse")
    return path


def write_document(home: Home, relative: str, data: bytes | str) -> Location:
    """Write a document under the warehouse atomically (readers never see half a file)."""
    path = document_path(home, relative)
    if isinstance(path, str):
        _store_for(path).put(path, data.encode("utf-8") if isinstance(data, str) else data)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def document_exists(home: Home, relative: str) -> bool:
    return _is_file(document_path(home, relative))


def read_document(home: Home, relative: str) -> bytes:
    path = document_path(home, relative)
    return _store_for(path).get(path) if isinstance(path, str) else path.read_bytes()


def write_partition(home: Home, table_name: str, date: str, table: pa.Table) -> Location:
    return write_parquet_atomic(partition_dir(home, table_name, date), table)


def write_ledger(home: Home, stage: str, date: str, table: pa.Table) -> Location:
    return write_parquet_atomic(ledger_dir(home, stage, date), table)


def has_partition(home: Home, table_name: str, date: str) -> bool:
    return _is_file(partition_file(home, table_name, date))


def has_ledger(home: Home, stage: str, date: str) -> bool:
    return _is_file(ledger_file(home, stage, date))


def read_partition(home: Home, table_name: str, date: str) -> pa.Table:
    path = partition_file(home, table_name, date)
    if not _is_file(path):
        raise FileNotFoundError(
            f"{table_name} has no partition {date} under {partition_dir(home, table_name, date)}: "
            f"materialize {table_name} for {date} first"
        )
    return _read(path)


def read_ledger(home: Home, stage: str, date: str) -> pa.Table:
    path = ledger_file(home, stage, date)
    if not _is_file(path):
        raise FileNotFoundError(f"no ledger for stage {stage} on {date} at {path}")
    return _read(path)


def partition_dates(home: Home, table_name: str) -> list[str]:
    """Dates with a written partition of ``table_name``, oldest first."""
    if isinstance(home.warehouse, str):
        root = _join(home.warehouse, table_name)
        folders = (f[len(root) + 1 :].split("/") for f in _store_for(root).files(root))
        return sorted(
            p[0].removeprefix("date=")
            for p in folders
            if len(p) == 2 and p[0].startswith("date=") and p[1] == PART_FILE
        )
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
        return str(_join(home.warehouse, LEDGER_TABLE, "stage=*", "date=*", "*.parquet"))
    return str(_join(home.warehouse, table_name, "date=*", "*.parquet"))


def read_history(home: Home, table_name: str, before: str, columns: list[str]) -> pa.Table:
    """``columns`` of every row of ``table_name`` whose partition date is earlier than ``before``.

    Reads only the partition folders that qualify, so a backfill's later partitions never leak
    into an earlier one's decisions.
    """
    files = [
        partition_file(home, table_name, d) for d in partition_dates(home, table_name) if d < before
    ]
    if not files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    if isinstance(home.warehouse, str):
        with ThreadPoolExecutor(REMOTE_READ_THREADS) as pool:
            tables = list(pool.map(lambda f: _read(f, columns), files))
    else:
        tables = [_read(f, columns) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def _read(path: Location, columns: list[str] | None = None) -> pa.Table:
    if isinstance(path, str):
        return _store_for(path).read_parquet(path, columns)
    # partitioning=None: the files carry their own `date` column, and pyarrow would otherwise
    # add a second, dictionary-typed one from the `date=` folder name.
    return pq.read_table(path, columns=columns, partitioning=None)


def connect(home: Home) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per warehouse table.

    In-memory, so that any number of processes can query while others write partitions.
    """
    con = duckdb.connect()
    if isinstance(home.warehouse, str):
        store = _store_for(home.warehouse)
        store.register(con)
        # Views over the listed files, not globs: a glob over S3 lists every folder level.
        for name, files in _remote_table_files(home, store).items():
            con.execute(_view_sql(name, files))
        return con
    for name in warehouse_tables(home):
        con.execute(_view_sql(name, table_glob(home, name)))
    return con


def warehouse_tables(home: Home) -> list[str]:
    """Tables that have at least one Parquet file (a view over an empty glob cannot bind)."""
    if isinstance(home.warehouse, str):
        return sorted(_remote_table_files(home, _store_for(home.warehouse)))
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


def _remote_table_files(home: Home, store: ObjectStore) -> dict[str, list[str]]:
    """Each table's Parquet files, from one listing of the whole warehouse."""
    root = str(home.warehouse)
    tables: dict[str, list[str]] = {}
    for f in store.files(root):
        name, *folders, file = f[len(root) + 1 :].split("/")
        # The same shapes as table_glob's patterns, whose `*` never spans a `/`.
        shape = ["stage=*", "date=*"] if name == LEDGER_TABLE else ["date=*"]
        if (
            file.endswith(".parquet")
            and len(folders) == len(shape)
            and all(fnmatchcase(d, p) for d, p in zip(folders, shape, strict=True))
        ):
            tables.setdefault(name, []).append(f)
    return dict(sorted(tables.items()))


def _view_sql(name: str, source: str | list[str]) -> str:
    # The files carry their own `date` column; the ledger's `stage` folder is also a column, so
    # hive partitioning adds nothing and is off (it would clash with the stored `date`).
    files = _sql_string(source) if isinstance(source, str) else _sql_list(source)
    return (
        f'CREATE OR REPLACE VIEW "{name}" AS SELECT * FROM '
        f"read_parquet({files}, union_by_name = true, hive_partitioning = false)"
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(_sql_string(v) for v in values) + "]"


def refresh_catalog(home: Home, attempts: int = 20) -> list[str]:
    """(Re)create the views of ``catalog.duckdb`` for users who open it with DuckDB.

    Views read the Parquet globs at query time, so they only need creating once per table;
    another process (a concurrent step, a user's open session) may hold the file, so the lock is
    retried briefly and the refresh is skipped, not failed, when it stays busy.

    A warehouse on an object store has no catalog file: its views would have to list the
    bucket and read every file's footer on each refresh, and a plain DuckDB could not open them
    without httpfs. ``connect`` builds the same views in memory instead.
    """
    if isinstance(home.warehouse, str):
        return []
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
                con.execute(_view_sql(name, table_glob(home, name)))
        finally:
            con.close()
        return names
    return []


def _join(base: Location, *parts: str) -> Location:
    return base.joinpath(*parts) if isinstance(base, Path) else "/".join([base, *parts])


def _is_file(path: Location) -> bool:
    return _store_for(path).is_file(path) if isinstance(path, str) else path.is_file()


def _store_for(url: str) -> ObjectStore:
    from dataplatform.core.object_store import open_store

    return open_store(url)
