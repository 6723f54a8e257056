"""What the global dedup assets share around their persistent state: sync, metadata, lookups."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.dedup.history_state import StateSpec, sync
from dataplatform.core.dedup.semantic_history import SemanticSpec
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import commit_id, partition_file


def input_commit(home: Home, table: str, date: str) -> str | None:
    """The commit of the input partition, read before the partition itself: if it is replaced
    meanwhile, the state records the older commit and the next run rebuilds that day."""
    return commit_id(partition_file(home, table, date))


def sync_history(
    context: dg.AssetExecutionContext, home: Home, specs: Sequence[StateSpec], date: str
) -> list[str]:
    """Bring each state in line with the warehouse before ``date``; log what was rebuilt."""
    rebuilt: list[str] = []
    for spec in specs:
        days = sync(home, spec, date)
        if days:
            context.log.warning(
                f"{spec.name} state rebuilt from the warehouse for {len(days)} day(s) "
                f"({', '.join(days[:5])}{', ...' if len(days) > 5 else ''}): they were missing "
                "from it or written by another commit (a run killed after its commit, a re-run "
                "day, or a warehouse older than the state)"
            )
        rebuilt += [f"{spec.name}:{d}" for d in days]
    return rebuilt


def state_metadata(
    context: dg.AssetExecutionContext,
    home: Home,
    spec: StateSpec | SemanticSpec,
    date: str,
    rebuilt: list[str],
) -> dict[str, object]:
    """The history's size, the state's segments and repairs, and the later days a re-run of
    ``date`` leaves stale."""
    store = spec.store(home)
    dates = store.dates()
    later = sorted(d for d in dates if d > date)
    if later:
        context.log.warning(
            f"{spec.name} for {date} was re-materialized while later days exist; they were "
            f"deduplicated against the earlier version of {date}: re-materialize "
            f"{later[0]}..{later[-1]} ({len(later)} day(s)) to decide them again"
        )
    return {
        "history_pairs": store.rows_before(date),
        "state_segments": len([s for s in store.manifest() if s.name]),
        "state_days_rebuilt": ", ".join(rebuilt) or "-",
        "stale_later_days": ", ".join(later) or "-",
    }


def rows_by_id(table: pa.Table, pair_ids: Sequence[str]) -> list[dict]:
    """The rows of ``table`` with these pair_ids, in that order (only those rows become dicts)."""
    if not pair_ids:
        return []
    index = pc.index_in(pa.array(pair_ids, pa.string()), value_set=table.column("pair_id"))
    return table.take(index).to_pylist()


def rows_with(table: pa.Table, column: str, values: Sequence[object] | pa.ChunkedArray) -> pa.Table:
    """The rows of ``table`` whose ``column`` is one of ``values``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return table.slice(0, 0)
    value_set = values if isinstance(values, pa.Array) else pa.array(values)
    return table.filter(pc.is_in(table.column(column), value_set=value_set))


def concat_columns(*columns: pa.ChunkedArray) -> pa.ChunkedArray:
    """String columns end to end, without a Python list (for the uniqueness checks)."""
    return pa.chunked_array([chunk for column in columns for chunk in column.chunks], pa.string())
