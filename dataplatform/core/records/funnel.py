"""The funnel: for each stage, rows in, rows kept and rows removed by reason.

Computed from the warehouse itself (kept tables and the ledger), so the numbers a reviewer
reads are the numbers stored, not a separate tally that could drift from them. A stage whose
partition and ledger of a day were not written by one commit is reported as such: its counts
do not describe one materialization.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from dataplatform.core.records.audit import terminal_safe
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    REMOTE_READ_THREADS,
    commit_id,
    connect,
    corrupt_file_in,
    has_ledger,
    has_partition,
    ledger_dates,
    ledger_file,
    partition_dates,
    partition_file,
    read_footer,
    read_ledger,
    recover,
)


@dataclass(frozen=True)
class CommitMismatch:
    """A stage's partition and ledger of one day that different commits wrote."""

    stage: str
    date: str
    partition_commit: str | None
    ledger_commit: str | None

    def describe(self) -> str:
        return (
            f"{self.stage} {self.date}: partition from commit "
            f"{self.partition_commit or '(unstamped)'}, ledger from commit "
            f"{self.ledger_commit or '(unstamped)'}; materialize {self.stage} for {self.date}"
        )


@dataclass(frozen=True)
class StageFunnel:
    stage: str
    date: str
    rows_in: int
    kept: int
    removed: int
    reasons: dict[str, int]
    mismatches: tuple[CommitMismatch, ...] = ()

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.kept + self.removed

    @property
    def consistent(self) -> bool:
        """Every day's partition and ledger of the stage came from one commit."""
        return not self.mismatches


def reason_counts(ledger: pa.Table) -> dict[str, int]:
    """Ledger rows per reason, most frequent first (ties by name, for stable output)."""
    counts: dict[str, int] = {}
    for reason in ledger.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def stage_funnel(stage: str, date: str, rows_in: int, kept: int, ledger: pa.Table) -> StageFunnel:
    return StageFunnel(
        stage=stage,
        date=date,
        rows_in=rows_in,
        kept=kept,
        removed=ledger.num_rows,
        reasons=reason_counts(ledger),
    )


def warehouse_funnel(home: Home, stages: list[str], date: str | None = None) -> list[StageFunnel]:
    """The funnel of ``stages`` (in pipeline order) as stored, for one date or all dates.

    Rows in for a stage are the previous stage's kept rows; for the first stage they are its
    kept rows plus its ledger rows (the rows that arrived). Each stage carries the days whose
    partition and ledger different commits wrote; a file that cannot be read raises
    CorruptPartitionError naming it.
    """
    mismatches = commit_mismatches(home, stages, date)
    try:
        counts = _counts(home, stages, date)
    except duckdb.Error as exc:
        raise (corrupt_file_in(home, exc) or exc) from exc
    return [
        StageFunnel(**vars(f), mismatches=tuple(m for m in mismatches if m.stage == f.stage))
        for f in counts
    ]


def commit_mismatches(
    home: Home, stages: list[str], date: str | None = None
) -> list[CommitMismatch]:
    """Each stage and day (one, or all) whose partition and ledger carry different commit ids.

    Reads only the files' footers. A writer between its renames is finished (``recover``) and
    the disagreeing days read again, so a commit in flight is not reported.
    """
    found = _mismatches(home, [(s, d) for s in stages for d in _paired_dates(home, s, date)])
    if found:
        recover(home)
        found = _mismatches(home, [(m.stage, m.date) for m in found])
    return found


def _paired_dates(home: Home, stage: str, date: str | None) -> list[str]:
    dates = set(partition_dates(home, stage)) & set(ledger_dates(home, stage))
    return sorted(dates if date is None else dates & {date})


def _mismatches(home: Home, keys: list[tuple[str, str]]) -> list[CommitMismatch]:
    def ids(key: tuple[str, str]) -> CommitMismatch:
        stage, date = key
        return CommitMismatch(
            stage,
            date,
            commit_id(partition_file(home, stage, date)),
            commit_id(ledger_file(home, stage, date)),
        )

    if isinstance(home.warehouse, str):
        with ThreadPoolExecutor(REMOTE_READ_THREADS) as pool:
            pairs = list(pool.map(ids, keys))
    else:
        pairs = [ids(k) for k in keys]
    return [m for m in pairs if m.partition_commit != m.ledger_commit]


@dataclass(frozen=True)
class _Counts:
    stage: str
    date: str
    rows_in: int
    kept: int
    removed: int
    reasons: dict[str, int]


def _counts(home: Home, stages: list[str], date: str | None) -> list[_Counts]:
    if date is not None:
        return _day_counts(home, stages, date)
    con = connect(home)
    tables = set(
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    )
    where = "" if date is None else "WHERE date = $date"
    params = {} if date is None else {"date": date}
    result = []
    previous_kept: int | None = None
    for stage in stages:
        kept = _count(con, stage, where, params) if stage in tables else 0
        reasons: dict[str, int] = {}
        if "rejections" in tables:
            cond = "stage = $stage" + ("" if date is None else " AND date = $date")
            rows = con.execute(
                f"SELECT reason, count(*) FROM rejections WHERE {cond} GROUP BY reason",
                {**params, "stage": stage},
            ).fetchall()
            reasons = dict(sorted(((r, int(n)) for r, n in rows), key=lambda kv: (-kv[1], kv[0])))
        removed = sum(reasons.values())
        rows_in = kept + removed if previous_kept is None else previous_kept
        result.append(_Counts(stage, date or "all", rows_in, kept, removed, reasons))
        previous_kept = kept
    con.close()
    return result


def _day_counts(home: Home, stages: list[str], date: str) -> list[_Counts]:
    """One day's counts from that day's files alone: each partition's footer and the reason
    column of each ledger, so that a day's funnel costs the day, not every file of the tables."""
    result = []
    previous_kept: int | None = None
    for stage in stages:
        kept = (
            read_footer(partition_file(home, stage, date)).num_rows
            if has_partition(home, stage, date)
            else 0
        )
        reasons: dict[str, int] = {}
        if has_ledger(home, stage, date):
            reasons = reason_counts(read_ledger(home, stage, date).select(["reason"]))
        removed = sum(reasons.values())
        rows_in = kept + removed if previous_kept is None else previous_kept
        result.append(_Counts(stage, date, rows_in, kept, removed, reasons))
        previous_kept = kept
    return result


def _count(con: duckdb.DuckDBPyConnection, table: str, where: str, params: dict) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{table}" {where}', params).fetchone()[0])


def format_funnel(funnel: list[StageFunnel], top_reasons: int = 3) -> str:
    """A plain-text table for terminals: stage, in, kept, removed, top reasons; then every day
    whose partition and ledger disagree."""
    header = f"{'stage':<16}{'in':>7}{'kept':>7}{'removed':>9}  top reasons"
    lines = [header, "-" * len(header)]
    for f in funnel:
        shown = list(f.reasons.items())[:top_reasons]
        top = ", ".join(f"{terminal_safe(r)} {n}" for r, n in shown) or "-"
        more = len(f.reasons) - top_reasons
        if more > 0:
            top += f", +{more} more"
        lines.append(f"{terminal_safe(f.stage):<16}{f.rows_in:>7}{f.kept:>7}{f.removed:>9}  {top}")
    mismatches = [m for f in funnel for m in f.mismatches]
    if mismatches:
        lines.append("")
        lines.append(f"NOT CONSISTENT: {len(mismatches)} partition(s) and ledger(s) disagree")
        lines += [f"  {terminal_safe(m.describe())}" for m in mismatches]
    return "\n".join(lines)
