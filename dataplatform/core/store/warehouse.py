"""The warehouse: hive-partitioned Parquet as the storage of record, DuckDB as the query engine.

Every write is a commit (:func:`commit_stage`): all files of one stage's materialization (its
partition, its ledger, its side tables) are replaced together, so that a reader sees the stage's
old partition and ledger or its new ones, never one of each, whenever a writer dies:

1. each file is written to a temporary name in its final folder (``.part-0.parquet.<id>.tmp``)
   and flushed to disk, its Parquet key-value metadata stamped with the commit id;
2. a commit record ``warehouse/_commits/<id>.json`` naming every temp -> final rename is
   written atomically: this is the commit point;
3. each temp file is renamed into place, then the record is deleted.

:func:`recover` rolls forward any record it finds (a temp already moved is skipped, so it is
idempotent); every reader runs it before reading, and so does the next write, which also deletes
temp files that no live record names. With no record it costs one listing of ``_commits``.
Writers on one machine take turns through a lock file under the home, so the next write never
deletes a temp file another process is still writing. No process holds a DuckDB write lock
while it computes: queries run on in-memory connections over the Parquet files, and the catalog
file is only touched for a moment to (re)create its views.

When ``home.warehouse_url`` names an object store, the same layout lives under that URL and
locations are ``str`` URLs instead of ``Path``s; the same protocol runs with PUTs, server-side
copies and deletes (``object_store`` says what that guarantees). Local warehouses never import it.
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.store.durable import fsync_path
from dataplatform.core.store.home import Home

if TYPE_CHECKING:
    from dataplatform.core.store.object_store import ObjectStore

LEDGER_TABLE = "rejections"
PART_FILE = "part-0.parquet"
# Folders whose name starts with `_` hold the warehouse's own bookkeeping, never a table.
COMMITS_FOLDER = "_commits"
# The Parquet key-value metadata entry naming the commit that wrote a file.
COMMIT_KEY = b"dataplatform.commit"
# Tables a stage writes beside its own partition and ledger (in the same commit), by that stage:
# when a file of one cannot be read, that stage is what to re-materialize.
SIDE_TABLES: dict[str, str] = {"embeddings": "clip_scored", "quality_scores": "quality_filtered"}
# Remote reads are one or two round trips each; a few in flight hide most of the latency.
REMOTE_READ_THREADS = 8
_TEMP_PREFIX = f".{PART_FILE}."
_TEMP_SUFFIX = ".tmp"
_LOCK_FILE = Path("locks") / "warehouse.lock"
# How DuckDB names the file it failed on: `... file '/path/part-0.parquet'`.
_QUOTED_PARQUET = re.compile(r"'([^']+\.parquet)'")

# A local path, or an object-store URL (``s3://bucket/prefix/...``).
Location = Path | str


class CorruptPartitionError(ValueError):
    """A warehouse file exists but cannot be read; the message names it and what rewrites it."""

    def __init__(self, path: Location, cause: object) -> None:
        self.path = str(path)
        parts = self.path.split("/")
        self.date = parts[-2].removeprefix("date=") if len(parts) >= 2 else "?"
        owner = parts[-3] if len(parts) >= 3 else "?"
        if owner.startswith("stage="):
            self.table = LEDGER_TABLE
            self.asset = owner.removeprefix("stage=")
            what = f"the {self.asset} ledger"
        else:
            self.table = owner
            self.asset = SIDE_TABLES.get(owner, owner)
            what = f"table {owner}"
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        super().__init__(
            f"cannot read {self.path} ({what}, {self.date}): {reason}; "
            f"materialize {self.asset} for {self.date} to rewrite it"
        )


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


# ---- commits ----------------------------------------------------------------------------------


def commit_stage(
    home: Home,
    date: str,
    tables: Mapping[str, pa.Table],
    ledgers: Mapping[str, pa.Table] | None = None,
) -> str:
    """Write ``tables`` (name -> its ``date`` partition) and ``ledgers`` (stage -> its ledger for
    ``date``) as one commit; return the commit id stamped in every file's metadata.

    After a crash at any moment, readers (which recover first) see every file of the commit or
    none of them. Isolation from a live commit is not promised: a reader that opens two files
    while the writer renames them can get one of each; ``commit_id`` tells (``funnel`` checks).
    A stage's partition and its ledger always come from one commit: when only one of them is
    given and the other exists, the other is rewritten unchanged in the same commit. An empty
    table is still written (with its schema), so that "materialized with no rows" and "never
    materialized" stay distinguishable; re-committing replaces a partition, it never appends.
    """
    tables = dict(tables)
    ledgers = dict(ledgers or {})
    if not tables and not ledgers:
        raise ValueError(f"nothing to commit for {date}: give at least one table or ledger")
    with _writer_lock(home):
        recover(home)
        for name in [n for n in tables if n not in ledgers and has_ledger(home, n, date)]:
            ledgers[name] = _read(ledger_file(home, name, date))
        for stage in [s for s in ledgers if s not in tables and has_partition(home, s, date)]:
            tables[stage] = _read(partition_file(home, stage, date))
        commit = f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"
        files = [(partition_file(home, n, date), t) for n, t in tables.items()]
        files += [(ledger_file(home, s, date), t) for s, t in ledgers.items()]
        if isinstance(home.warehouse, str):
            _commit_remote(home, commit, files)
        else:
            _commit_local(home, commit, files)
    return commit


def recover(home: Home) -> list[str]:
    """Finish every commit whose record exists (a writer died after its commit point).

    Idempotent and safe next to live writers: a temp file already renamed is skipped. Returns
    the ids of the commits finished; with none pending it costs one listing of ``_commits``.
    """
    if isinstance(home.warehouse, str):
        store = _store_for(home.warehouse)
        records = _remote_records(home, store)
        for url in records:
            try:
                renames = _renames(home, store.get(url), url)
            except FileNotFoundError:
                continue  # finished by its writer or another reader meanwhile
            _move_remote(store, url, renames)
        return [posixpath.basename(u).removesuffix(".json") for u in records]
    folder = home.warehouse / COMMITS_FOLDER
    try:
        records = sorted(
            e.path for e in os.scandir(folder) if e.name.endswith(".json") and e.name[0] != "."
        )
    except FileNotFoundError:
        return []
    for record in records:
        try:
            with open(record, "rb") as handle:
                renames = _renames(home, handle.read(), record)
        except FileNotFoundError:
            continue
        _move_local(Path(record), renames)
    return [Path(r).stem for r in records]


def read_footer(path: Location) -> pq.FileMetaData:
    """The Parquet footer of the file at ``path`` (row counts, statistics, key-value metadata),
    local or remote; CorruptPartitionError naming the file when it cannot be read."""
    with _unreadable_as_corrupt(path):
        if isinstance(path, str):
            return _store_for(path).parquet_metadata(path)
        return pq.read_metadata(path)


def commit_id(path: Location) -> str | None:
    """The commit that wrote the Parquet file at ``path`` (None for files written before commits
    were stamped); reads only the footer."""
    metadata = read_footer(path)
    value = (metadata.metadata or {}).get(COMMIT_KEY)
    return value.decode() if value is not None else None


def write_partition(home: Home, table_name: str, date: str, table: pa.Table) -> Location:
    """Commit one partition alone (its ledger, if any, is re-committed with it)."""
    commit_stage(home, date, {table_name: table})
    return partition_file(home, table_name, date)


def write_ledger(home: Home, stage: str, date: str, table: pa.Table) -> Location:
    """Commit one ledger partition alone (the stage's partition, if any, is re-committed too)."""
    commit_stage(home, date, {}, {stage: table})
    return ledger_file(home, stage, date)


def _stamped(table: pa.Table, commit: str) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), COMMIT_KEY: commit})


def _temp_name(commit: str) -> str:
    return f"{_TEMP_PREFIX}{commit}{_TEMP_SUFFIX}"


def _is_temp(name: str) -> bool:
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


def _record_body(home: Home, commit: str, renames: list[tuple[Location, Location]]) -> bytes:
    # Paths relative to the warehouse root: a local home can be moved or restored elsewhere.
    root = str(home.warehouse)
    relative = [[str(t)[len(root) + 1 :], str(f)[len(root) + 1 :]] for t, f in renames]
    return json.dumps({"commit": commit, "renames": relative}, indent=1).encode()


def _renames(home: Home, body: bytes, record: Location) -> list[tuple[Location, Location]]:
    try:
        pairs = json.loads(body)["renames"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"commit record {record} cannot be read ({exc}): check the files it names and "
            "delete it, then re-materialize the partitions it names"
        ) from exc
    return [
        (_join(home.warehouse, *t.split("/")), _join(home.warehouse, *f.split("/")))
        for t, f in pairs
    ]


def _commit_local(home: Home, commit: str, files: list[tuple[Location, pa.Table]]) -> None:
    assert isinstance(home.warehouse, Path)
    renames: list[tuple[Location, Location]] = []
    record = home.warehouse / COMMITS_FOLDER / f"{commit}.json"
    pending = record.parent / f".{record.name}.tmp"
    committed = False
    try:
        for final, table in files:
            assert isinstance(final, Path)
            final.parent.mkdir(parents=True, exist_ok=True)
            temp = final.parent / _temp_name(commit)
            renames.append((temp, final))
            pq.write_table(
                _stamped(table, commit), temp, compression="zstd", write_page_checksum=True
            )
            fsync_path(temp)
        record.parent.mkdir(exist_ok=True)
        pending.write_bytes(_record_body(home, commit, renames))
        fsync_path(pending)
        os.replace(pending, record)  # the commit point
        committed = True
        fsync_path(record.parent)
    except BaseException:
        if not committed:
            for temp in [pending, *(t for t, _ in renames)]:
                Path(temp).unlink(missing_ok=True)
        raise
    _move_local(record, renames)
    _remove_dead_temps(home, {Path(f).parent for f, _ in files})


def _move_local(record: Path, renames: list[tuple[Location, Location]]) -> None:
    """Rename each temp file of a committed record into place, then drop the record."""
    for temp, final in renames:
        # Already moved when missing: by its writer, or by a reader that recovered it first.
        with suppress(FileNotFoundError):
            os.replace(temp, final)
    for folder in {Path(f).parent for _, f in renames}:
        fsync_path(folder)
    with suppress(FileNotFoundError):
        os.unlink(record)


def _remove_dead_temps(home: Home, folders: Iterable[Path]) -> None:
    """Delete temp files no live record names (interrupted writes) and stale part files.

    Runs under the writer lock, so no other writer on this machine is writing a temp file.
    """
    assert isinstance(home.warehouse, Path)
    live = {str(t) for t, _ in _live_renames(home)}
    commits = home.warehouse / COMMITS_FOLDER
    for folder in [*folders, commits]:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            stale_part = entry.name.endswith(".parquet") and entry.name != PART_FILE
            dead_temp = _is_temp(entry.name) and entry.path not in live
            dead_record = folder == commits and entry.name.endswith(".json.tmp")
            if (stale_part and folder != commits) or dead_temp or dead_record:
                Path(entry.path).unlink(missing_ok=True)


def _live_renames(home: Home) -> list[tuple[Location, Location]]:
    assert isinstance(home.warehouse, Path)
    renames = []
    folder = home.warehouse / COMMITS_FOLDER
    if folder.is_dir():
        for record in folder.glob("[!.]*.json"):
            try:
                renames += _renames(home, record.read_bytes(), record)
            except FileNotFoundError:
                continue
    return renames


def _commit_remote(home: Home, commit: str, files: list[tuple[Location, pa.Table]]) -> None:
    store = _store_for(str(home.warehouse))
    record = _join(home.warehouse, COMMITS_FOLDER, f"{commit}.json")
    renames: list[tuple[Location, Location]] = []
    committed = False
    try:
        for final, table in files:
            temp = posixpath.join(posixpath.dirname(str(final)), _temp_name(commit))
            renames.append((temp, final))
            store.put_parquet(temp, _stamped(table, commit))
        store.put(str(record), _record_body(home, commit, renames))  # the commit point
        committed = True
    except BaseException:
        if not committed:
            # Best effort: the write's own error is the one to report.
            with suppress(Exception):
                store.delete(str(t) for t, _ in renames if store.is_file(str(t)))
        raise
    _move_remote(store, str(record), renames)
    _remove_dead_remote_temps(home, store, {posixpath.dirname(str(f)) for f, _ in files})


def _move_remote(store: ObjectStore, record: str, renames: list[tuple[Location, Location]]) -> None:
    for temp, final in renames:
        store.move(str(temp), str(final))
    store.delete([record])


def _remove_dead_remote_temps(home: Home, store: ObjectStore, folders: set[str]) -> None:
    live: set[str] = set()
    for url in _remote_records(home, store):
        try:
            live |= {str(t) for t, _ in _renames(home, store.get(url), url)}
        except FileNotFoundError:
            continue
    dead = []
    for folder in sorted(folders):
        for f in store.files(folder):
            name = posixpath.basename(f)
            if (name.endswith(".parquet") and name != PART_FILE) or (
                _is_temp(name) and f not in live
            ):
                dead.append(f)
    store.delete(dead)


def _remote_records(home: Home, store: ObjectStore) -> list[str]:
    found = store.listing(str(_join(home.warehouse, COMMITS_FOLDER)))
    return [f for f in found if f.endswith(".json") and not posixpath.basename(f).startswith(".")]


@contextmanager
def _writer_lock(home: Home) -> Iterator[None]:
    """One writer at a time on this machine (a local file lock, also for an object store)."""
    path = home.root / _LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- documents --------------------------------------------------------------------------------


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


# ---- reads ------------------------------------------------------------------------------------


def has_partition(home: Home, table_name: str, date: str) -> bool:
    return _is_file(partition_file(home, table_name, date))


def has_ledger(home: Home, stage: str, date: str) -> bool:
    return _is_file(ledger_file(home, stage, date))


def read_partition(
    home: Home, table_name: str, date: str, columns: list[str] | None = None
) -> pa.Table:
    """One partition (``columns`` of it, or all); CorruptPartitionError (naming the file) when
    it cannot be read."""
    recover(home)
    path = partition_file(home, table_name, date)
    if not _is_file(path):
        raise FileNotFoundError(
            f"{table_name} has no partition {date} under {partition_dir(home, table_name, date)}: "
            f"materialize {SIDE_TABLES.get(table_name, table_name)} for {date} first"
        )
    return _read(path, columns)


def read_ledger(home: Home, stage: str, date: str) -> pa.Table:
    recover(home)
    path = ledger_file(home, stage, date)
    if not _is_file(path):
        raise FileNotFoundError(f"no ledger for stage {stage} on {date} at {path}")
    return _read(path)


def partition_dates(home: Home, table_name: str) -> list[str]:
    """Dates with a written partition of ``table_name``, oldest first."""
    recover(home)
    return _dates(home, _join(home.warehouse, table_name))


def ledger_dates(home: Home, stage: str) -> list[str]:
    """Dates with a written ledger partition of ``stage``, oldest first."""
    recover(home)
    return _dates(home, _join(home.warehouse, LEDGER_TABLE, f"stage={stage}"))


def _dates(home: Home, root: Location) -> list[str]:
    if isinstance(root, str):
        folders = (f[len(root) + 1 :].split("/") for f in _store_for(root).files(root))
        return sorted(
            p[0].removeprefix("date=")
            for p in folders
            if len(p) == 2 and p[0].startswith("date=") and p[1] == PART_FILE
        )
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
    # One GET of the whole object remotely: a consistent snapshot even while a writer replaces
    # it, and one round trip for the small files a partition is. Network errors pass as they are.
    source = pa.BufferReader(_store_for(path).get(path)) if isinstance(path, str) else path
    with _unreadable_as_corrupt(path):
        # partitioning=None: the files carry their own `date` column, and pyarrow would
        # otherwise add a second, dictionary-typed one from the `date=` folder name.
        return pq.read_table(
            source, columns=columns, partitioning=None, page_checksum_verification=True
        )


@contextmanager
def _unreadable_as_corrupt(path: Location) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except (pa.ArrowException, OSError) as exc:  # not Parquet, truncated, a page's CRC wrong
        raise CorruptPartitionError(path, exc) from exc


def corrupt_file_in(home: Home, error: Exception) -> CorruptPartitionError | None:
    """The unreadable warehouse file behind a DuckDB ``error``, or None when it is not one.

    DuckDB names the file it failed on; when it does not, every table file's footer is checked.
    """
    if isinstance(error, CorruptPartitionError):
        return error
    if not isinstance(error, duckdb.Error):
        return None
    root = str(home.warehouse)
    named = [p for p in _QUOTED_PARQUET.findall(str(error)) if p.startswith(root)]
    if named:
        where = named[0] if isinstance(home.warehouse, str) else Path(named[0])
        return CorruptPartitionError(where, error)
    for files in _table_files(home).values():
        for f in files:
            try:
                commit_id(f)
            except CorruptPartitionError as found:
                return found
    return None


def connect(home: Home) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per warehouse table.

    In-memory, so that any number of processes can query while others write partitions. A
    table file that cannot be read raises CorruptPartitionError naming it.
    """
    recover(home)
    con = duckdb.connect()
    try:
        if isinstance(home.warehouse, str):
            _store_for(home.warehouse).register(con)
            # Views over the listed files, not globs: a glob over S3 lists every folder level.
            for name, files in _table_files(home).items():
                con.execute(_view_sql(name, files))
        else:
            for name in warehouse_tables(home):
                con.execute(_view_sql(name, table_glob(home, name)))
    except duckdb.Error as exc:
        con.close()
        raise (corrupt_file_in(home, exc) or exc) from exc
    return con


def warehouse_tables(home: Home) -> list[str]:
    """Tables that have at least one Parquet file (a view over an empty glob cannot bind)."""
    if isinstance(home.warehouse, str):
        return sorted(_table_files(home))
    if not home.warehouse.is_dir():
        return []
    return sorted(
        p.name
        for p in home.warehouse.iterdir()
        if p.is_dir() and not p.name.startswith("_") and any(_glob(home, p.name))
    )


def _glob(home: Home, name: str) -> list[str]:
    import glob

    return [f for f in glob.glob(table_glob(home, name)) if Path(f).is_file()]


def _table_files(home: Home) -> dict[str, list[str]]:
    """Each table's Parquet files (one listing of the whole warehouse when it is remote)."""
    if not isinstance(home.warehouse, str):
        return {name: sorted(_glob(home, name)) for name in warehouse_tables(home)}
    root = str(home.warehouse)
    tables: dict[str, list[str]] = {}
    for f in _store_for(root).files(root):
        name, *folders, file = f[len(root) + 1 :].split("/")
        # The same shapes as table_glob's patterns, whose `*` never spans a `/`.
        shape = ["stage=*", "date=*"] if name == LEDGER_TABLE else ["date=*"]
        if (
            not name.startswith("_")
            and file.endswith(".parquet")
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
    recover(home)
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
        except duckdb.Error as exc:
            raise (corrupt_file_in(home, exc) or exc) from exc
        finally:
            con.close()
        return names
    return []


def _join(base: Location, *parts: str) -> Location:
    return base.joinpath(*parts) if isinstance(base, Path) else "/".join([base, *parts])


def _is_file(path: Location) -> bool:
    return _store_for(path).is_file(path) if isinstance(path, str) else path.is_file()


def _store_for(url: str) -> ObjectStore:
    from dataplatform.core.store.object_store import open_store

    return open_store(url)
