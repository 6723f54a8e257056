"""The funnel: for each stage, rows in, rows kept and rows removed by reason.

Computed from the warehouse itself (kept tables and the ledger), so the numbers a reviewer
reads are the numbers stored, not a separate tally that could drift from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from dataplatform.core.home import Home
from dataplatform.core.warehouse import connect


@dataclass(frozen=True)
class StageFunnel:
    stage: str
    date: str
    rows_in: int
    kept: int
    removed: int
    reasons: dict[str, int]

    @property
    def conserved(self) -> bool:
        return self.rows_in == self.kept + self.removed


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
    kept rows plus its ledger rows (the rows that arrived).
    """
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
        result.append(StageFunnel(stage, date or "all", rows_in, kept, removed, reasons))
        previous_kept = kept
    con.close()
    return result


def _count(con: duckdb.DuckDBPyConnection, table: str, where: str, params: dict) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{table}" {where}', params).fetchone()[0])


def format_funnel(funnel: list[StageFunnel], top_reasons: int = 3) -> str:
    """A plain-text table for terminals: stage, in, kept, removed, top reasons."""
    header = f"{'stage':<16}{'in':>7}{'kept':>7}{'removed':>9}  top reasons"
    lines = [header, "-" * len(header)]
    for f in funnel:
        top = ", ".join(f"{r} {n}" for r, n in list(f.reasons.items())[:top_reasons]) or "-"
        more = len(f.reasons) - top_reasons
        if more > 0:
            top += f", +{more} more"
        lines.append(f"{f.stage:<16}{f.rows_in:>7}{f.kept:>7}{f.removed:>9}  {top}")
    return "\n".join(lines)
