"""Why a pair is where it is: its source, each stage's decision, its duplicate_of chain, takedowns.

Answers come from the warehouse as stored (the stage tables and the rejection ledger), never from
a separate log that could drift from them. One DuckDB connection serves a question, and every
query is filtered by pair_id, so nothing but the matching rows reaches Python. Only the two
tables that say where a pair arrived (the ingest stage and the ledger) are searched across all
dates, through their views, where DuckDB pushes the filter into the Parquet scan; every later
stage is read from the one partition of the date the pair arrived on.

``explain`` and ``duplicates_of`` return dataclasses; ``audit_text`` renders them as text and
JSON. :func:`terminal_safe` shows every control or invisible format character in the data as an
escape, so an id or caption printed to a terminal cannot move the cursor, clear the screen or
reorder what is printed after it.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb

from dataplatform.core.scoring import scores as registry
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    PART_FILE,
    connect,
    corrupt_file_in,
    has_partition,
    partition_dir,
)

# The ledger stage of retroactive removals, and the ledger reason of a pair excluded at ingest.
TAKEDOWN = "takedown"
# A pair is in the training set once it has tokens, and a data card where that table exists.
TRAINING_TABLE = "tokens"
CARDS_TABLE = "data_cards"

# What each decision can be, for one stage and one arrival of a pair.
KEPT = "kept"
DROPPED = "dropped"
NOT_REACHED = "not_reached"  # an earlier stage dropped it
NOT_MATERIALIZED = "not_materialized"  # the stage has no partition for the date yet
TAKEN_DOWN = "taken_down"  # absent from the stage's table, with a takedown on record
MISSING = "missing"  # absent from the stage's table and its ledger: the two disagree

# Where a pair is now.
IN_TRAINING_SET = "in_training_set"
IN_PROGRESS = "in_progress"
REMOVED = "removed"
INCONSISTENT = "inconsistent"
UNKNOWN = "unknown"  # a duplicate_of that names no pair in this warehouse

# The columns a stage without registered scores adds that explain its decision for a kept pair;
# a scoring stage's are its registered scores shown in `explain` (``stage_columns``).
_STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "phash_deduped": ("phash",),
    "tokens": ("token_count", "resolution", "crop_policy", "crop_box", "tokenizer"),
}


def stage_columns(stage: str) -> tuple[str, ...]:
    """The columns ``stage`` adds that explain its decision for a kept pair."""
    registered = tuple(s.name for s in registry.scores(stage, shown=registry.EXPLAIN))
    return _STAGE_COLUMNS.get(stage, ()) + registered


MAX_CHAIN = 100  # a duplicate_of chain longer than this is reported as cut, not followed
SIMILAR_IDS = 5
_LOCATOR = re.compile(r"^(?P<source>.+?) (?P<locator>(?:line|key|row) \S+)$")
# C0 and C1 controls and DEL (ESC sequences, CR, BEL, backspace, newline), and the format
# characters that reorder or hide text: bidi marks, embeddings, overrides and isolates,
# zero-width spaces and joiners, line and paragraph separators, the byte order mark.
_TERMINAL_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def terminal_safe(text: str) -> str:
    """``text`` with every control and invisible format character shown as its escape.

    ESC becomes ``\\x1b``, CR ``\\r``, U+202E ``\\u202e``: data printed to a terminal reads as
    the characters it holds and cannot rewrite the screen or reorder what follows it.
    """
    return _TERMINAL_UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class AuditError(LookupError):
    """A question the warehouse cannot answer; the message says why and what to do."""


class WarehouseNotFound(AuditError):
    def __init__(self, home: Home) -> None:
        self.warehouse = str(home.warehouse)
        super().__init__(
            f"no warehouse at {home.warehouse}: nothing has been materialized under this home. "
            "Pass --home (or set DATAPLATFORM_HOME) to the platform home, or run "
            "`dataplatform materialize DATE` or `dataplatform demo` first."
        )


class UnknownPair(AuditError):
    def __init__(self, pair_id: str, home: Home, similar: list[str]) -> None:
        self.pair_id = pair_id
        self.warehouse = str(home.warehouse)
        self.similar = similar
        hint = f" Similar ids: {terminal_safe(', '.join(similar))}." if similar else ""
        super().__init__(
            f"pair_id {pair_id!r} is not in the warehouse at {home.warehouse}: no stage table "
            f"and no ledger row has it.{hint}"
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One rejection ledger row: a stage dropped the pair, or a takedown removed it."""

    pair_id: str
    date: str
    stage: str
    reason: str
    detail: str | None = None
    duplicate_of: str | None = None
    distance: float | None = None
    similarity: float | None = None
    score: float | None = None
    threshold: float | None = None
    source: str | None = None


@dataclass(frozen=True)
class Origin:
    """Where one arrival of the pair came from, as ingest recorded it."""

    date: str
    source: str | None
    source_locator: str | None
    url: str | None
    license: str | None
    image_uri: str | None
    image_sha256: str | None
    width: int | None
    height: int | None
    text: str | None
    extra: str | None = None


@dataclass(frozen=True)
class Decision:
    """What one stage did with one arrival: kept (with its scores) or dropped (with its row)."""

    stage: str
    outcome: str
    scores: dict[str, Any] = field(default_factory=dict)
    entry: LedgerEntry | None = None


@dataclass(frozen=True)
class Status:
    """Where a pair (or one arrival of it) is now."""

    state: str
    stage: str | None = None
    date: str | None = None
    entry: LedgerEntry | None = None  # the row that removed or took it down
    next_stage: str | None = None  # in progress: the first stage not materialized yet


@dataclass(frozen=True)
class Hop:
    """One duplicate_of link: ``entry`` removed its pair as a copy of ``entry.duplicate_of``."""

    entry: LedgerEntry
    target_status: Status


@dataclass(frozen=True)
class DuplicateChain:
    hops: list[Hop]
    cycle: bool = False  # a duplicate_of led back to a pair already on the chain
    cut: bool = False  # longer than MAX_CHAIN


@dataclass(frozen=True)
class Arrival:
    """One time the pair_id arrived: a day and a source, and its journey through the stages."""

    origin: Origin
    decisions: list[Decision]
    status: Status
    chain: DuplicateChain | None = None


@dataclass(frozen=True)
class Explanation:
    pair_id: str
    warehouse: str
    status: Status
    arrivals: list[Arrival]
    takedowns: list[LedgerEntry]
    other_ledger_rows: list[LedgerEntry] = field(default_factory=list)


@dataclass(frozen=True)
class Copy:
    entry: LedgerEntry
    depth: int  # 1: a copy of the pair asked about; 2: a copy of one of its copies; ...


@dataclass(frozen=True)
class Copies:
    pair_id: str
    warehouse: str
    copies: list[Copy]

    def by_stage(self, stages: Sequence[str]) -> dict[str, list[Copy]]:
        """Copies grouped by the stage that removed them, in pipeline order."""
        order = {s: i for i, s in enumerate(stages)}
        groups: dict[str, list[Copy]] = {}
        for copy in sorted(
            self.copies,
            key=lambda c: (
                order.get(c.entry.stage, len(order)),
                c.entry.stage,
                c.depth,
                c.entry.date,
                c.entry.pair_id,
            ),
        ):
            groups.setdefault(copy.entry.stage, []).append(copy)
        return groups


def explain(home: Home, pair_id: str, stages: Sequence[str]) -> Explanation:
    """The journey of ``pair_id`` through ``stages`` (pipeline order, ingest first).

    Raises WarehouseNotFound when nothing is materialized, UnknownPair (with similar ids) when
    neither a table nor the ledger has the pair, CorruptPartitionError (naming the file and what
    to re-materialize) when a file it reads cannot be read.
    """
    with _Lookup(home, stages) as lookup, _unreadable_files_named(home):
        found = lookup.pair(pair_id)
        if found is None:
            raise UnknownPair(pair_id, home, lookup.similar_ids(pair_id))
        arrivals = [
            dataclasses.replace(a, chain=lookup.chain(pair_id, a.status.entry))
            if a.status.entry is not None and a.status.entry.duplicate_of
            else a
            for a in found.arrivals
        ]
        return Explanation(
            pair_id=pair_id,
            warehouse=str(home.warehouse),
            status=found.status,
            arrivals=arrivals,
            takedowns=found.takedowns,
            other_ledger_rows=found.other,
        )


def duplicates_of(home: Home, pair_id: str, stages: Sequence[str]) -> Copies:
    """Every ledger row naming ``pair_id`` as duplicate_of, and transitively their copies."""
    with _Lookup(home, stages) as lookup, _unreadable_files_named(home):
        copies = lookup.copies(pair_id)
        if not copies and not lookup.exists(pair_id):
            raise UnknownPair(pair_id, home, lookup.similar_ids(pair_id))
        return Copies(pair_id=pair_id, warehouse=str(home.warehouse), copies=copies)


@contextmanager
def _unreadable_files_named(home: Home) -> Iterator[None]:
    """A DuckDB error over a file that cannot be read, as the CorruptPartitionError naming it."""
    try:
        yield
    except duckdb.Error as exc:
        raise (corrupt_file_in(home, exc) or exc) from exc


@dataclass(frozen=True)
class _Found:
    arrivals: list[Arrival]
    status: Status
    takedowns: list[LedgerEntry]
    other: list[LedgerEntry]


class _Lookup:
    """One DuckDB connection over one warehouse, answering per-pair questions."""

    def __init__(self, home: Home, stages: Sequence[str]) -> None:
        if not stages:
            raise ValueError("explain needs the pipeline's stage list, ingest stage first")
        self.home = home
        self.stages = list(stages)
        self.ingest = self.stages[0]
        self.con = connect(home)
        self.tables = {
            r[0]
            for r in self.con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        }
        if CARDS_TABLE in self.tables and CARDS_TABLE not in self.stages:
            self.stages.append(CARDS_TABLE)
        if not self.tables & {self.ingest, LEDGER_TABLE}:
            self.con.close()
            raise WarehouseNotFound(home)
        self._cache: dict[str, _Found | None] = {}

    def __enter__(self) -> _Lookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def _rows(self, sql: str, params: dict | list | None = None) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql, params or {})
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _ledger(self, pair_id: str) -> list[dict[str, Any]]:
        if LEDGER_TABLE not in self.tables:
            return []
        return self._rows(
            f"SELECT * FROM {LEDGER_TABLE} WHERE pair_id = $id ORDER BY date, stage",
            {"id": pair_id},
        )

    def _ingested(self, pair_id: str) -> list[dict[str, Any]]:
        if self.ingest not in self.tables:
            return []
        return self._rows(
            f'SELECT * FROM "{self.ingest}" WHERE pair_id = $id ORDER BY date', {"id": pair_id}
        )

    def exists(self, pair_id: str) -> bool:
        return bool(self._ingested(pair_id) or self._ledger(pair_id))

    def pair(self, pair_id: str) -> _Found | None:
        if pair_id not in self._cache:
            self._cache[pair_id] = self._find(pair_id)
        return self._cache[pair_id]

    def _find(self, pair_id: str) -> _Found | None:
        ingested = self._ingested(pair_id)
        ledger_rows = self._ledger(pair_id)
        if not ingested and not ledger_rows:
            return None
        ledger = [(_entry(r), r) for r in ledger_rows]
        stage_set = set(self.stages)
        # Retroactive removals (stage takedown) and exclusions at a gate (reason takedown).
        takedowns = [(e, r) for e, r in ledger if TAKEDOWN in (e.stage, e.reason)]
        # Ingest rejections are arrivals of their own; a kept ingest row never has one.
        drops = {
            (e.stage, e.date): e
            for e, _ in ledger
            if e.stage in stage_set and e.stage != self.ingest
        }
        other = [e for e, _ in ledger if e.stage not in stage_set and e.stage != TAKEDOWN]

        arrivals = [self._journey(pair_id, _origin(r), drops, bool(takedowns)) for r in ingested]
        for e, r in ledger:
            if e.stage == self.ingest:
                decisions = [Decision(self.ingest, DROPPED, entry=e)] + [
                    Decision(s, NOT_REACHED) for s in self.stages[1:]
                ]
                arrivals.append(
                    Arrival(_origin_from_ledger(r), decisions, _status(decisions, e.date))
                )
        if not arrivals and takedowns:
            # A takedown that also removed the ingest row: its ledger row still says where the
            # pair came from.
            origin = _origin_from_ledger(takedowns[0][1])
            arrivals.append(
                self._journey(pair_id, origin, drops, has_takedown=True, ingested=False)
            )
        if not arrivals:
            # Only a later stage's ledger names the pair: the ingest table no longer has it (it
            # was re-materialized since, from a changed landing), so the stages disagree.
            entry, row = ledger[0]
            origin = _origin_from_ledger(row)
            decisions = [Decision(self.ingest, MISSING)] + [
                Decision(s, DROPPED, entry=drops[(s, origin.date)])
                if (s, origin.date) in drops
                else Decision(s, NOT_REACHED)
                for s in self.stages[1:]
            ]
            status = Status(INCONSISTENT, entry.stage, entry.date, entry)
            arrivals.append(Arrival(origin, decisions, status))
        arrivals.sort(key=lambda a: (a.origin.date, a.origin.source or ""))
        if takedowns:
            first = takedowns[0][0]
            status = Status(TAKEN_DOWN, first.stage, first.date, first)
        else:
            status = min((a.status for a in arrivals), key=_status_rank)
        return _Found(arrivals, status, [e for e, _ in takedowns], other)

    def _journey(
        self,
        pair_id: str,
        origin: Origin,
        drops: dict[tuple[str, str], LedgerEntry],
        has_takedown: bool,
        ingested: bool = True,
    ) -> Arrival:
        decisions: list[Decision] = []
        stopped = False
        for stage in self.stages:
            if stopped:
                decisions.append(Decision(stage, NOT_REACHED))
                continue
            if stage == self.ingest and ingested:
                decisions.append(Decision(stage, KEPT))
                continue
            dropped = drops.get((stage, origin.date))
            if dropped is not None:
                decisions.append(Decision(stage, DROPPED, entry=dropped))
                stopped = True
                continue
            if not has_partition(self.home, stage, origin.date):
                decisions.append(Decision(stage, NOT_MATERIALIZED))
                continue
            # A folder or an object-store URL: DuckDB reads either.
            path = posixpath.join(str(partition_dir(self.home, stage, origin.date)), PART_FILE)
            scores = self._kept_scores(stage, path, pair_id)
            if scores is not None:
                decisions.append(Decision(stage, KEPT, scores=scores))
            elif has_takedown:
                # A takedown rewrites every table without the pair, so absence says nothing
                # about this stage; a stage's own ledger row further on still does.
                decisions.append(Decision(stage, TAKEN_DOWN))
            else:
                decisions.append(Decision(stage, MISSING))
                stopped = True
        return Arrival(origin, decisions, _status(decisions, origin.date))

    def _kept_scores(self, stage: str, path: str, pair_id: str) -> dict[str, Any] | None:
        """The stage's own columns for the pair in that partition, or None when it is absent."""
        wanted = stage_columns(stage)
        present = set()
        if wanted:
            schema = self.con.execute("SELECT * FROM read_parquet($path) LIMIT 0", {"path": path})
            present = {d[0] for d in schema.description}
        columns = [c for c in wanted if c in present]
        select = ", ".join(["pair_id"] + [f'"{c}"' for c in columns])
        rows = self._rows(
            f"SELECT {select} FROM read_parquet($path) WHERE pair_id = $id",
            {"path": str(path), "id": pair_id},
        )
        if not rows:
            return None
        return {c: _plain(rows[0][c]) for c in columns}

    def chain(self, pair_id: str, first: LedgerEntry) -> DuplicateChain:
        hops: list[Hop] = []
        seen = {pair_id}
        entry = first
        while entry is not None and entry.duplicate_of:
            target = entry.duplicate_of
            if target in seen:
                return DuplicateChain(hops + [Hop(entry, Status(UNKNOWN))], cycle=True)
            if len(hops) >= MAX_CHAIN:
                return DuplicateChain(hops, cut=True)
            seen.add(target)
            found = self.pair(target)
            status = found.status if found is not None else Status(UNKNOWN)
            hops.append(Hop(entry, status))
            entry = status.entry if status.state == REMOVED else None
        return DuplicateChain(hops)

    def copies(self, pair_id: str) -> list[Copy]:
        if LEDGER_TABLE not in self.tables:
            return []
        found: list[Copy] = []
        seen = {pair_id}
        frontier = [pair_id]
        depth = 0
        while frontier and depth < MAX_CHAIN:
            depth += 1
            marks = ", ".join("?" for _ in frontier)
            rows = self._rows(
                f"SELECT * FROM {LEDGER_TABLE} WHERE duplicate_of IN ({marks}) "
                "ORDER BY date, stage, pair_id",
                frontier,
            )
            frontier = []
            for row in rows:
                entry = _entry(row)
                found.append(Copy(entry, depth))
                if entry.pair_id not in seen:
                    seen.add(entry.pair_id)
                    frontier.append(entry.pair_id)
        return found

    def similar_ids(self, pair_id: str, limit: int = SIMILAR_IDS) -> list[str]:
        """Ids that share a prefix or substring with ``pair_id``, then the closest by difflib.

        SQL narrows the warehouse's ids to a few candidates (substring matches, then the best by
        Jaro-Winkler), so that no id list is ever loaded whole into Python.
        """
        sources = [
            f'SELECT DISTINCT pair_id FROM "{t}"'
            for t in (self.ingest, LEDGER_TABLE)
            if t in self.tables
        ]
        if not sources or not pair_id:
            return []
        rows = self.con.execute(
            f"""
            WITH ids AS ({" UNION ".join(sources)}),
            scored AS (
                SELECT pair_id,
                       starts_with(lower(pair_id), lower($q)) AS prefix,
                       contains(lower(pair_id), lower($q)) OR contains(lower($q), lower(pair_id))
                           AS substring,
                       jaro_winkler_similarity(lower(pair_id), lower($q)) AS closeness
                FROM ids
            )
            SELECT pair_id, prefix OR substring AS overlaps FROM scored
            ORDER BY prefix DESC, substring DESC, closeness DESC, pair_id
            LIMIT 50
            """,
            {"q": pair_id},
        ).fetchall()
        overlapping = [pid for pid, overlaps in rows if overlaps]
        close = difflib.get_close_matches(
            pair_id, [pid for pid, overlaps in rows if not overlaps], n=limit, cutoff=0.6
        )
        return (overlapping + close)[:limit]


_STATUS_RANK = {
    IN_TRAINING_SET: 0,
    IN_PROGRESS: 1,
    INCONSISTENT: 2,
    REMOVED: 3,
    TAKEN_DOWN: 4,
    UNKNOWN: 5,
}


def _status_rank(status: Status) -> int:
    return _STATUS_RANK[status.state]


def _status(decisions: list[Decision], date: str) -> Status:
    """Where one arrival is now: the first decision that is not `kept` says it.

    After a takedown the pair is absent everywhere, so a stage's own ledger row further on
    (a duplicate, a low score) is the better answer for the arrival; the pair as a whole is
    reported as taken down either way.
    """
    last_kept: str | None = None
    taken_down_at: str | None = None
    for d in decisions:
        if d.outcome == KEPT:
            last_kept = d.stage
        elif d.outcome == TAKEN_DOWN:
            taken_down_at = taken_down_at or d.stage
        elif d.outcome == DROPPED and d.entry is not None:
            state = TAKEN_DOWN if d.entry.reason == TAKEDOWN else REMOVED
            return Status(state, d.stage, d.entry.date, d.entry)
        elif d.outcome == MISSING:
            return Status(INCONSISTENT, d.stage, date)
        elif d.outcome == NOT_MATERIALIZED and taken_down_at is None:
            return Status(IN_PROGRESS, last_kept, date, next_stage=d.stage)
    if taken_down_at is not None:
        return Status(TAKEN_DOWN, taken_down_at, date)
    if any(d.stage == TRAINING_TABLE for d in decisions):
        return Status(IN_TRAINING_SET, last_kept, date)
    return Status(IN_PROGRESS, last_kept, date)


def _plain(value: Any) -> Any:
    """DuckDB values as JSON-ready Python values."""
    if isinstance(value, tuple):
        return list(value)
    return value


def _entry(row: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(**{f.name: row.get(f.name) for f in dataclasses.fields(LedgerEntry)})


def _origin(row: dict[str, Any]) -> Origin:
    return Origin(**{f.name: row.get(f.name) for f in dataclasses.fields(Origin)})


def _origin_from_ledger(row: dict[str, Any]) -> Origin:
    """The origin a ledger row carries: the pair's audit columns and where it was read."""
    where = row.get("source") or ""
    split = _LOCATOR.match(where)
    return Origin(
        date=row["date"],
        source=split["source"] if split else (where or None),
        source_locator=split["locator"] if split else None,
        url=row.get("url"),
        license=row.get("license"),
        image_uri=row.get("image_uri"),
        image_sha256=row.get("image_sha256"),
        width=None,
        height=None,
        text=row.get("text"),
    )
