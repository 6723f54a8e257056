"""Applying takedowns to what is already written, and proving that nothing is left.

:func:`apply_takedowns` matches the requests (:mod:`takedown_requests`) against every pair ever
ingested, rewrites the partitions that hold a match (one commit per ingest date, under a local
lock), records a ledger row per removed pair (stage ``takedown``, with the request and its
date), strips the pairs from every registered WebDataset export, verifies that nothing is left
(:func:`verify_removed`) and writes a receipt. Exports are registered here
(:func:`register_export`) so that later takedowns reach their shards too.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import tarfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup.history_state import remove_pairs as remove_from_state
from dataplatform.core.records.takedown_requests import (
    MATCH_COLUMNS,
    TAKEDOWN_REASON,
    TAKEDOWN_STAGE,
    TakedownMatch,
    TakedownRequest,
    ledger_rows,
    match_batches,
)
from dataplatform.core.store.content_version import content_version
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import LEDGER_SCHEMA
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    commit_stage,
    connect,
    has_ledger,
    read_ledger,
    read_partition,
    warehouse_tables,
    write_document,
)
from dataplatform.core.tokens.webdataset_export import remove_samples, sample_key

_EXPORTS_FILE = "exports.json"
# Rows of raw_pairs matched at a time: memory holds one batch of MATCH_COLUMNS (about 10 MB at
# this size), whatever the history's length.
MATCH_BATCH_ROWS = 1 << 16
# Ledger rows that are not themselves takedown records.
_NOT_TAKEDOWN = f"l.stage <> '{TAKEDOWN_STAGE}' AND l.reason <> '{TAKEDOWN_REASON}'"


@dataclass(frozen=True)
class PartitionRewrite:
    """One partition a takedown rewrote: a table's date, or one stage's ledger of a date.

    ``pair_ids`` are the pairs whose rows left it; for the ``takedown`` stage's ledger, the
    pairs whose takedown rows were added to it. ``rows`` counts those rows. ``version`` is the
    rewritten partition's :func:`content_version`, the digest a stage reports as its data
    version, so that the rewrite and a re-run that keeps the same rows agree.
    """

    table: str
    date: str
    pair_ids: tuple[str, ...]
    rows: int
    version: str
    stage: str | None = None  # the ledger's stage, for a ledger partition


@dataclass
class TakedownReport:
    requests: int
    matches: list[TakedownMatch]
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> date -> rows
    shards: dict[str, int] = field(default_factory=dict)  # shard path -> samples removed
    remaining: list[str] = field(default_factory=list)  # anything verification still found
    receipt: Path | None = None
    # Every partition rewritten, in commit order, with the pairs that left it: what an
    # orchestrator records as a new version of each (table, date), naming the requests.
    rewrites: list[PartitionRewrite] = field(default_factory=list)

    @property
    def dates(self) -> list[str]:
        return sorted({m.date for m in self.matches})

    def requests_for(self, rewrite: PartitionRewrite) -> list[TakedownRequest]:
        """The requests that removed the rewrite's pairs (each once, in match order), also
        those that matched a pair another request had already claimed."""
        by_id = {}
        for m in self.matches:
            by_id.setdefault(m.request.request_id, m.request)
        named: dict[str, TakedownRequest] = {}
        wanted = set(rewrite.pair_ids)
        for m in self.matches:
            if m.date == rewrite.date and m.pair_id in wanted:
                named.setdefault(m.request.request_id, m.request)
                for other in m.also:
                    if other in by_id:
                        named.setdefault(other, by_id[other])
        return list(named.values())

    @property
    def verified(self) -> bool:
        return not self.remaining


def apply_takedowns(
    home: Home,
    requests: Sequence[TakedownRequest],
    export_dirs: Sequence[Path] = (),
    now: dt.datetime | None = None,
    batch_rows: int = MATCH_BATCH_ROWS,
) -> TakedownReport:
    """Remove every matching pair from every warehouse table and export, and prove it.

    Matches come from ``raw_pairs`` (every pair that was ever ingested and not since taken
    down), streamed ``batch_rows`` rows at a time: a url or a pHash within a distance can only
    be found by a scan, which for a takedown (not a daily step) is fine as long as its memory
    is one batch and the matches, not the history. Each partition holding a matched pair is
    rewritten without it (atomically), each removed pair gets a ``takedown`` ledger row under
    its ingest date, export shards are rewritten without its samples, and a final scan of
    every table and shard must find none of them; the receipt under ``warehouse/takedowns/``
    records all of it.
    """
    now = now or dt.datetime.now(dt.UTC)
    report = TakedownReport(requests=len(requests), matches=[])
    con = connect(home)
    try:
        tables = warehouse_tables(home)
        if "raw_pairs" not in tables or not requests:
            return _finish(home, report, requests, export_dirs, now)
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1 (got {batch_rows})")
        scan = con.sql(f"SELECT {', '.join(MATCH_COLUMNS)} FROM raw_pairs")
        report.matches = match_batches(_batches(scan, batch_rows), requests)
        if not report.matches:
            return _finish(home, report, requests, export_dirs, now)
        removed = pa.table(
            {
                "pair_id": pa.array([m.pair_id for m in report.matches], pa.string()),
                "date": pa.array([m.date for m in report.matches], pa.string()),
            }
        )
        con.register("removed_ids", removed)
        pairs = _as_table(
            con.sql("SELECT r.* FROM raw_pairs r JOIN removed_ids USING (pair_id, date)").arrow()
        )
        # The pair's earlier ledger rows (a duplicate, a low score) move into its takedown row,
        # so that each stage's rows in = kept + ledger still holds after the removal.
        earlier = (
            con.execute(
                f"SELECT l.stage, l.date, l.pair_id, l.reason FROM {LEDGER_TABLE} l "
                f"JOIN removed_ids USING (pair_id, date) WHERE {_NOT_TAKEDOWN} ORDER BY 1, 2, 3"
            ).fetchall()
            if LEDGER_TABLE in tables
            else []
        )
        previously = {pair_id: f"{stage}: {reason}" for stage, _, pair_id, reason in earlier}
        ledger_stages = sorted({(st, d) for st, d, _, _ in earlier})
        table_dates = {
            table: {
                r[0]
                for r in con.execute(
                    f'SELECT DISTINCT t.date FROM "{table}" t '
                    "JOIN removed_ids USING (pair_id, date)"
                ).fetchall()
            }
            for table in tables
            if table != LEDGER_TABLE and "pair_id" in _columns(con, table)
        }
        rows = ledger_rows(pairs, report.matches, TAKEDOWN_STAGE, previously=previously)
        # Every rewrite of one ingest date, with its takedown rows, is one commit: a reader sees
        # the date before the takedown or after it, never a table without its ledger rows.
        for date in sorted({m.date for m in report.matches}):
            ids = [m.pair_id for m in report.matches if m.date == date]
            rewrite = _DateRewrite()
            rewrites: list[PartitionRewrite] = []
            for table in (t for t, dates in table_dates.items() if date in dates):
                rewrite.tables[table], gone = _rewrite(home, table, date, ids)
                report.partitions.setdefault(table, {})[date] = len(gone)
                version = content_version(rewrite.tables[table])
                rewrites.append(PartitionRewrite(table, date, _unique(gone), len(gone), version))
            for stage in (st for st, d in ledger_stages if d == date):
                stage_ids = [p for st, d, p, _ in earlier if (st, d) == (stage, date)]
                rewrite.ledgers[stage], gone = _rewrite_ledger(home, stage, date, stage_ids)
                report.partitions.setdefault(f"{LEDGER_TABLE} stage={stage}", {})[date] = len(gone)
                version = content_version(rewrite.ledgers[stage])
                rewrites.append(
                    PartitionRewrite(LEDGER_TABLE, date, _unique(gone), len(gone), version, stage)
                )
            added, ledger = _commit_rewrite(
                home, date, rows.filter(pc.equal(rows.column("date"), date)), rewrite
            )
            if added:
                version = content_version(ledger)
                rewrites.append(
                    PartitionRewrite(
                        LEDGER_TABLE, date, _unique(added), len(added), version, TAKEDOWN_STAGE
                    )
                )
            report.rewrites.extend(rewrites)
    finally:
        con.close()
    # The dedup state mirrors the partitions just rewritten: the pairs' rows leave its files,
    # and the rewritten days are resynced (docs/dedup_state.md: a taken-down image's copies are
    # then kept out by the takedown gate, not by dedup).
    if report.matches:
        remove_from_state(home, sorted({m.pair_id for m in report.matches}))
    keys = {sample_key(m.pair_id) for m in report.matches}
    for shard in _shards(home, export_dirs):
        count = remove_samples(shard, keys)
        if count:
            report.shards[str(shard)] = count
    return _finish(home, report, requests, export_dirs, now)


def _finish(
    home: Home,
    report: TakedownReport,
    requests: Sequence[TakedownRequest],
    export_dirs: Sequence[Path],
    now: dt.datetime,
) -> TakedownReport:
    report.remaining = verify_removed(
        home, [(m.pair_id, m.date) for m in report.matches], export_dirs
    )
    receipt = {
        "applied_at": now.isoformat(timespec="seconds"),
        "requests": [asdict(r) for r in requests],
        "removed": [
            {
                "pair_id": m.pair_id,
                "date": m.date,
                "request": m.request.request_id,
                "distance": m.distance,
                "also": list(m.also),
            }
            for m in report.matches
        ],
        "partitions_rewritten": report.partitions,
        "shards_rewritten": report.shards,
        "verification": {"remaining": report.remaining, "passed": report.verified},
    }
    body = json.dumps(receipt, indent=2, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    report.receipt = write_document(home, f"takedowns/receipt-{stamp}-{digest}.json", body)
    return report


def verify_removed(
    home: Home, pairs: Sequence[tuple[str, str]], export_dirs: Sequence[Path] = ()
) -> list[str]:
    """Every place (table and date, or shard) where one of ``pairs`` (pair_id, ingest date)
    is still present. Keyed by date too: a pair_id may recur in a later day's raw rows (as a
    reused id that dedup later drops), and that is a different pair."""
    if not pairs:
        return []
    remaining = []
    con = connect(home)
    try:
        con.register(
            "removed_ids",
            pa.table(
                {
                    "pair_id": pa.array([p for p, _ in pairs], pa.string()),
                    "date": pa.array([d for _, d in pairs], pa.string()),
                }
            ),
        )
        for table in warehouse_tables(home):
            if table == LEDGER_TABLE or "pair_id" not in _columns(con, table):
                continue
            for date, n in con.execute(
                f'SELECT t.date, count(*) FROM "{table}" t '
                "JOIN removed_ids USING (pair_id, date) GROUP BY 1 ORDER BY 1"
            ).fetchall():
                remaining.append(f"{table} date={date}: {n} row(s)")
        if LEDGER_TABLE in warehouse_tables(home):
            for stage, date, n in con.execute(
                f"SELECT l.stage, l.date, count(*) FROM {LEDGER_TABLE} l "
                f"JOIN removed_ids USING (pair_id, date) WHERE {_NOT_TAKEDOWN} "
                "GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall():
                remaining.append(f"{LEDGER_TABLE} stage={stage} date={date}: {n} row(s)")
    finally:
        con.close()
    keys = {sample_key(p) for p, _ in pairs}
    for shard in _shards(home, export_dirs):
        with tarfile.open(shard) as tar:
            left = {m.name.partition(".")[0] for m in tar} & keys
        if left:
            remaining.append(f"{shard}: {len(left)} sample(s)")
    return remaining


@dataclass
class _DateRewrite:
    """One ingest date's partitions and ledgers without the removed pairs, committed together."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    ledgers: dict[str, pa.Table] = field(default_factory=dict)


def _rewrite(home: Home, table: str, date: str, pair_ids: list[str]) -> tuple[pa.Table, list[str]]:
    """One partition (pairs of one ingest date) without ``pair_ids``, and the pair_id of each
    row that left."""
    current = read_partition(home, table, date)
    removed = pa.array(pair_ids, pa.string())
    keep = pc.invert(pc.is_in(current.column("pair_id"), value_set=removed))
    return current.filter(keep), current.filter(pc.invert(keep)).column("pair_id").to_pylist()


def _rewrite_ledger(
    home: Home, stage: str, date: str, pair_ids: list[str]
) -> tuple[pa.Table, list[str]]:
    """One ledger partition without the non-takedown rows of ``pair_ids``, and the pair_id of
    each row that left."""
    current = read_ledger(home, stage, date)
    named = pc.is_in(current.column("pair_id"), value_set=pa.array(pair_ids, pa.string()))
    keep = pc.or_(pc.invert(named), pc.equal(current.column("reason"), TAKEDOWN_REASON))
    return current.filter(keep), current.filter(pc.invert(keep)).column("pair_id").to_pylist()


def _commit_rewrite(
    home: Home, date: str, new: pa.Table, rewrite: _DateRewrite
) -> tuple[list[str], pa.Table]:
    """Commit one date's rewrites with ``new`` added to its takedown ledger (rows already
    recorded are kept); the pair_ids of the takedown rows added, and that ledger."""
    with _locked(home, date):
        if has_ledger(home, TAKEDOWN_STAGE, date):
            old = read_ledger(home, TAKEDOWN_STAGE, date).cast(LEDGER_SCHEMA)
            known = pc.is_in(new.column("pair_id"), value_set=old.column("pair_id"))
            new = new.filter(pc.invert(known))
            merged = pa.concat_tables([old, new])
        else:
            merged = new
        commit_stage(home, date, rewrite.tables, {**rewrite.ledgers, TAKEDOWN_STAGE: merged})
    return new.column("pair_id").to_pylist(), merged


def _unique(pair_ids: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(pair_ids)))


@contextmanager
def _locked(home: Home, date: str):
    """Serialise read-merge-write of one day's takedown ledger between local processes.

    The lock file is always local (under the home), also when the warehouse is on an object
    store, which has no locks: there, concurrent appliers on several machines are not guarded.
    """
    directory = home.root / "locks" / TAKEDOWN_STAGE
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{date}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}


def _batches(relation: duckdb.DuckDBPyRelation, rows: int) -> pa.RecordBatchReader:
    """The relation's rows as a stream of record batches of at most ``rows`` rows."""
    # DuckDB 1.1 (the oldest supported) has fetch_record_batch only; newer ones deprecate it.
    reader = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return reader(rows)


def _as_table(data) -> pa.Table:
    return data.read_all() if isinstance(data, pa.RecordBatchReader) else data


# --- exports ---------------------------------------------------------------------------------


def register_export(home: Home, out_dir: Path) -> None:
    """Remember an export folder so that later takedowns reach its shards too."""
    path = home.root / _EXPORTS_FILE
    known = registered_exports(home)
    resolved = Path(out_dir).resolve()
    if resolved not in known:
        known.append(resolved)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([str(p) for p in known], indent=2) + "\n")


def registered_exports(home: Home) -> list[Path]:
    path = home.root / _EXPORTS_FILE
    if not path.is_file():
        return []
    return [Path(p) for p in json.loads(path.read_text())]


def _shards(home: Home, export_dirs: Sequence[Path]) -> list[Path]:
    folders = {Path(d).resolve() for d in export_dirs} | set(registered_exports(home))
    return sorted(s for f in folders if f.is_dir() for s in f.glob("*.tar"))


__all__ = [
    "PartitionRewrite",
    "TakedownReport",
    "apply_takedowns",
    "register_export",
    "registered_exports",
    "verify_removed",
]
