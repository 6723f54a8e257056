"""The answers of ``audit`` as text for a terminal and as JSON for machines.

Text shows every control or invisible format character in the data as an escape
(``audit.terminal_safe``), so an id or caption cannot move the cursor, clear the screen or
reorder what is printed after it; JSON keeps the real characters and escapes them itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from dataplatform.core.records.audit import (
    DROPPED,
    IN_PROGRESS,
    IN_TRAINING_SET,
    INCONSISTENT,
    KEPT,
    MAX_CHAIN,
    MISSING,
    NOT_MATERIALIZED,
    NOT_REACHED,
    REMOVED,
    TAKEDOWN,
    TAKEN_DOWN,
    AuditError,
    Copies,
    Decision,
    DuplicateChain,
    Explanation,
    LedgerEntry,
    Origin,
    Status,
    terminal_safe,
)
from dataplatform.core.store.warehouse import CorruptPartitionError


def _for_terminal(value: Any) -> Any:
    """``value`` (a result dataclass, or anything inside one) with every string terminal-safe."""
    if isinstance(value, str):
        return terminal_safe(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value,
            **{
                f.name: _for_terminal(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.init
            },
        )
    if isinstance(value, list | tuple):
        return type(value)(_for_terminal(v) for v in value)
    if isinstance(value, dict):
        return {_for_terminal(k): _for_terminal(v) for k, v in value.items()}
    return value


_LONG = (
    72  # longer strings (model identities, OCR text) are cut in text output; JSON has them whole
)


def describe_status(status: Status) -> str:
    """One line: where a pair is now."""
    if status.state == IN_TRAINING_SET:
        return f"in the training set (kept through {status.stage}, {status.date})"
    if status.state == IN_PROGRESS:
        kept = f"kept by {status.stage}" if status.stage else "arrived"
        waiting = (
            f"; {status.next_stage} is not materialized yet for {status.date}"
            if status.next_stage
            else ""
        )
        return f"in progress: {kept} on {status.date}{waiting}"
    if status.state == TAKEN_DOWN:
        if status.entry is None:
            return f"taken down (removed from {status.stage} for {status.date})"
        e = status.entry
        where = "removed from the warehouse" if e.stage == TAKEDOWN else f"excluded at {e.stage}"
        return f"taken down ({where}, {e.date}): {e.detail or TAKEDOWN}"
    if status.state == REMOVED and status.entry is not None:
        e = status.entry
        if e.duplicate_of:
            what = f"{e.reason} of {e.duplicate_of}"
        else:
            what = e.reason + (f" ({e.detail})" if e.detail else "")
        return f"removed at {e.stage} on {e.date}: {what}"
    if status.state == INCONSISTENT and status.entry is not None:
        e = status.entry
        return (
            f"inconsistent: the {e.stage} ledger of {e.date} names it ({e.reason}) but the "
            f"ingest table does not have it; re-materialize {e.stage} for {e.date}"
        )
    if status.state == INCONSISTENT:
        return (
            f"inconsistent: not in {status.stage} for {status.date} and no ledger row says why; "
            f"re-materialize {status.stage} for {status.date}"
        )
    return "not in this warehouse"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    if isinstance(value, str) and len(value) > _LONG:
        return value[: _LONG - 1] + "…"
    return str(value)


def _measures(e: LedgerEntry, with_duplicate_of: bool = True) -> str:
    """The numbers behind a drop: what it was compared with, and against which threshold."""
    parts = []
    if e.duplicate_of and with_duplicate_of:
        parts.append(f"duplicate_of {e.duplicate_of}")
    for name, value in (("distance", e.distance), ("similarity", e.similarity)):
        if value is not None:
            parts.append(f"{name} {_num(value)}")
    if e.score is not None:
        parts.append(f"score {_num(e.score)}")
    if e.threshold is not None:
        if e.score is not None:
            parts[-1] += f" vs threshold {_num(e.threshold)}"
        elif parts and not parts[-1].startswith("duplicate_of"):
            parts[-1] += f" (threshold {_num(e.threshold)})"
        else:
            parts.append(f"threshold {_num(e.threshold)}")
    return ", ".join(parts)


def _decision_lines(d: Decision, width: int) -> list[str]:
    pad = " " * (width + 4)
    head = f"  {d.stage:<{width}}  "
    if d.outcome == KEPT:
        shown = [f"{k} {_num(v)}" for k, v in d.scores.items() if v not in (None, "", [])]
        return [head + "kept" + (f"  ({', '.join(shown)})" if shown else "")]
    if d.outcome == DROPPED and d.entry is not None:
        lines = [
            head + f"DROPPED {d.entry.reason}" + (f": {d.entry.detail}" if d.entry.detail else "")
        ]
        measures = _measures(d.entry)
        if measures:
            lines.append(pad + measures)
        return lines
    words = {
        NOT_REACHED: "not reached",
        NOT_MATERIALIZED: "not materialized yet for this date",
        TAKEN_DOWN: "removed by a takedown",
        MISSING: "MISSING: not in the table and not in the ledger",
    }
    return [head + words[d.outcome]]


def _origin_lines(o: Origin) -> list[str]:
    where = " ".join(p for p in (o.source, o.source_locator) if p) or "unknown source"
    lines = [f"arrived {o.date} from {where}"]
    image = o.image_uri or "-"
    if o.width is not None and o.height is not None:
        image += f", {o.width}x{o.height}"
    if o.image_sha256:
        image += f", sha256 {o.image_sha256}"
    for label, value in (
        ("url", o.url),
        ("license", o.license or "(none recorded)"),
        ("image", image),
        ("text", o.text),
        ("extra", o.extra if o.extra not in (None, "", "{}") else None),
    ):
        if value is not None:
            lines.append(f"  {label:<8} {value}")
    return lines


def _chain_lines(chain: DuplicateChain) -> list[str]:
    lines = ["  duplicate_of chain"]
    for hop in chain.hops:
        e = hop.entry
        measures = _measures(e, with_duplicate_of=False)
        lines.append(
            f"    {e.pair_id} -> {e.duplicate_of}: {e.stage} {e.date}"
            + (f", {measures}" if measures else "")
        )
    if chain.cycle:
        lines.append(
            f"    cycle: {chain.hops[-1].entry.duplicate_of} is already on this chain; "
            "the ledger contradicts itself"
        )
    elif chain.cut:
        lines.append(f"    cut after {MAX_CHAIN} links")
    elif chain.hops:
        last = chain.hops[-1]
        lines.append(f"    {last.entry.duplicate_of}: {describe_status(last.target_status)}")
    return lines


def format_explanation(x: Explanation) -> str:
    """The journey as text for a terminal (every string from the data terminal-safe)."""
    x = _for_terminal(x)
    width = max((len(d.stage) for a in x.arrivals for d in a.decisions), default=10)
    lines = [f"pair {x.pair_id}", f"status: {describe_status(x.status)}"]
    for i, arrival in enumerate(x.arrivals, 1):
        lines.append("")
        if len(x.arrivals) > 1:
            lines.append(f"[{i} of {len(x.arrivals)}] {describe_status(arrival.status)}")
        lines += _origin_lines(arrival.origin)
        for d in arrival.decisions:
            lines += _decision_lines(d, width)
        if arrival.chain is not None:
            lines += _chain_lines(arrival.chain)
    lines.append("")
    if x.takedowns:
        lines.append("takedowns")
        for t in x.takedowns:
            lines.append(f"  {t.date} {t.stage}: {t.detail or t.reason}")
    else:
        lines.append("takedowns: none")
    for e in x.other_ledger_rows:
        lines.append(
            f"ledger {e.stage} {e.date}: {e.reason}" + (f": {e.detail}" if e.detail else "")
        )
    lines.append(f"(warehouse {x.warehouse})")
    return "\n".join(lines)


def format_copies(c: Copies, stages: Sequence[str]) -> str:
    """The copies of a pair as text, grouped by the stage that removed them (terminal-safe)."""
    c = _for_terminal(c)
    if not c.copies:
        return f"no ledger row names {c.pair_id} as duplicate_of (warehouse {c.warehouse})"
    direct = sum(1 for copy in c.copies if copy.depth == 1)
    lines = [
        f"{len(c.copies)} pairs removed as copies of {c.pair_id} "
        f"({direct} directly, {len(c.copies) - direct} as copies of copies)"
    ]
    groups = c.by_stage(stages)
    width = max(len(copy.entry.pair_id) for copy in c.copies)
    for stage, copies in groups.items():
        lines.append(f"{stage} ({len(copies)})")
        for copy in copies:
            e = copy.entry
            measures = _measures(e, with_duplicate_of=False)
            via = f"  copy of {e.duplicate_of}" if copy.depth > 1 else ""
            lines.append(f"  {e.pair_id:<{width}}  {e.date}  {e.reason}  {measures}{via}".rstrip())
    lines.append(f"(warehouse {c.warehouse})")
    return "\n".join(lines)


def to_json(result: Explanation | Copies) -> str:
    """The result as JSON for machines; statuses carry their one-line summary too."""
    data = dataclasses.asdict(result)
    if isinstance(result, Explanation):
        data["status"]["summary"] = describe_status(result.status)
        for arrival, out in zip(result.arrivals, data["arrivals"], strict=True):
            out["status"]["summary"] = describe_status(arrival.status)
            if arrival.chain is not None:
                for hop, hop_out in zip(arrival.chain.hops, out["chain"]["hops"], strict=True):
                    hop_out["target_status"]["summary"] = describe_status(hop.target_status)
    return json.dumps(data, indent=2, default=str)


def error_json(error: AuditError | CorruptPartitionError) -> str:
    """An unknown pair, a missing warehouse or an unreadable file as JSON, for callers that parse
    the output."""
    data: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
    for name in ("pair_id", "warehouse", "similar", "path", "asset", "date"):
        if hasattr(error, name):
            data[name] = getattr(error, name)
    return json.dumps(data, indent=2)
