"""What a review sheet shows, read from the warehouse: samples of kept and removed rows.

One stage and one date: a deterministic sample of the kept rows with their scores, the removed
rows grouped by reason (spread over the score range), the duplicate clusters with their
originals, the pairs a takedown removed, and a thumbnail for each, all capped by
``ReviewLimits`` so a huge partition costs what a small one does. ``review_sheet`` renders it.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.ingest_folder import STAGE as RAW_PAIRS
from dataplatform.core.records.funnel import reason_counts
from dataplatform.core.records.thumbnails import (
    THUMBNAIL_PX,
    ThumbnailError,
    jpeg_data_uri,
    thumbnail_jpeg,
)
from dataplatform.core.scoring.scores import REVIEW, scores
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import LEDGER_SCHEMA
from dataplatform.core.store.warehouse import (
    LEDGER_TABLE,
    PART_FILE,
    ledger_dir,
    partition_dir,
    table_glob,
)

# The stage and reason core.takedown writes; spelled out, not imported, so that takedown code
# can import the review modules to render sheets again.
TAKEDOWN = "takedown"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# What tokens adds to a kept pair, shown after the scores.
_TOKEN_COUNT = "token_count"


def review_columns() -> tuple[str, ...]:
    """The columns kept cards show and the summary covers, where the stage table has them.

    The registered scores a review shows, then the token count; later stages carry the earlier
    stages' scores.
    """
    return (*(s.name for s in scores(shown=REVIEW)), _TOKEN_COUNT)


@dataclass(frozen=True)
class ReviewLimits:
    """How much one sheet shows; a huge partition is sampled, deterministically, to these caps.

    Remote images (``http(s)://`` locations) are not fetched by default: rendering must not
    depend on, or hammer, other people's servers; they show a placeholder instead.
    """

    kept: int = 200
    per_reason: int = 60
    clusters: int = 60
    copies_per_cluster: int = 8
    thumbnail_px: int = THUMBNAIL_PX
    workers: int = 4
    fetch_remote: bool = False


DEFAULT_LIMITS = ReviewLimits()


def review_dates_showing(home: Home, pair_ids: Iterable[str]) -> list[str]:
    """Dates whose sheets show any of ``pair_ids``: re-render these after a takedown.

    A pair appears on its own date and, as the kept original of a duplicate cluster, on the
    date of every copy that names it in ``duplicate_of``.
    """
    wanted = pa.table({"pair_id": pa.array(sorted(set(pair_ids)), pa.string())})
    con = duckdb.connect()
    con.register("wanted", wanted)
    dates: set[str] = set()
    for table in _tables_with_files(home, [RAW_PAIRS, LEDGER_TABLE]):
        source = _read_parquet(table_glob(home, table))
        match = "x.pair_id = w.pair_id"
        if table == LEDGER_TABLE:
            match += " OR x.duplicate_of = w.pair_id"
        rows = con.execute(
            f"SELECT DISTINCT x.date FROM {source} x JOIN wanted w ON {match}"
        ).fetchall()
        dates.update(r[0] for r in rows)
    con.close()
    return sorted(dates)


@dataclass
class SheetImage:
    """What a card shows in place of the picture: a data URI, or why there is none."""

    uri: str | None = None
    missing: str | None = None


@dataclass
class SheetPair:
    """A pair on a sheet, kept or the original of a cluster; ``fields`` holds its shown columns."""

    pair_id: str
    date: str
    text: str | None = None
    width: int | None = None
    height: int | None = None
    location: str | None = None
    fields: dict = field(default_factory=dict)


@dataclass
class Cluster:
    """Copies a stage removed as duplicates of one original."""

    original: SheetPair
    copies: list[dict]
    hidden_copies: int
    later: list[tuple[str, str]]  # (stage, reason) where a later stage dropped the original


@dataclass
class Sheet:
    """Everything one sheet shows, sampled within its ``ReviewLimits``."""

    stage: str
    date: str
    kept_total: int
    kept_sample: list[SheetPair]
    score_columns: list[str]
    score_summary: list[tuple[str, float | None, float | None, float | None, int]]
    ledger: list[dict]
    by_reason: dict[str, list[dict]]
    duplicate_reasons: set[str]
    clusters: list[Cluster]
    cluster_total: int
    images: dict[tuple[str, str], SheetImage]
    sizes: dict[tuple[str, str], tuple[int | None, int | None]]  # raw_pairs' width, height
    taken_down: set[str]
    taken_down_since: list[str]  # pairs of this date that a takedown removed after curation
    rendered_at: str


def load_sheet(home: Home, stage: str, date: str, limits: ReviewLimits = DEFAULT_LIMITS) -> Sheet:
    """What the sheet of ``stage`` on ``date`` shows, within ``limits``."""
    _check_name(stage, "stage")
    _check_date(date)
    kept_file = partition_dir(home, stage, date) / PART_FILE
    if not kept_file.is_file():
        raise FileNotFoundError(
            f"{stage} has no partition {date} under {kept_file.parent}: materialize {stage} for "
            f"{date} before rendering its review sheet"
        )
    con = duckdb.connect()
    kept_source = _read_parquet(kept_file)
    names = pq.read_schema(kept_file).names
    score_columns = [c for c in review_columns() if c in names]
    kept_total = pq.read_metadata(kept_file).num_rows
    kept_sample = _kept_sample(con, kept_source, names, score_columns, limits.kept)
    score_summary = _score_summary(con, kept_source, score_columns)

    ledger = _ledger(home, stage, date).to_pylist()
    taken_down, taken_down_since = _taken_down(home, con, date)
    duplicates = [r for r in ledger if r["duplicate_of"] is not None]
    others = [r for r in ledger if r["duplicate_of"] is None]
    by_reason: dict[str, list[dict]] = defaultdict(list)
    for row in others:
        by_reason[row["reason"]].append(row)
    shown_by_reason = {
        reason: spread(sorted(rows, key=score_order), limits.per_reason)
        for reason, rows in by_reason.items()
    }

    groups: dict[str, list[dict]] = defaultdict(list)
    for row in duplicates:
        groups[row["duplicate_of"]].append(row)
    ordered = sorted(groups.items(), key=lambda kv: (_closeness(min(kv[1], key=_closeness)), kv[0]))
    shown_groups = spread(ordered, limits.clusters)

    # Image locations live in raw_pairs. A removed row is the raw row of its own date (pair_ids
    # may be reused on a later day); an original is the earliest raw row of that id on or
    # before this date. raw_pairs' own rejects never made it into raw_pairs: no thumbnail.
    removed_keys = (
        []
        if stage == RAW_PAIRS
        else [(r["pair_id"], r["date"]) for rows in shown_by_reason.values() for r in rows]
    )
    removed_keys += [(r["pair_id"], r["date"]) for _, rows in shown_groups for r in rows]
    kept_keys = [(p.pair_id, p.date) for p in kept_sample]
    original_ids = [original for original, _ in shown_groups]
    raw = _raw_rows(home, con, [k[0] for k in kept_keys + removed_keys] + original_ids)

    for pair in kept_sample:
        pair.location = raw.get((pair.pair_id, pair.date), {}).get("image_location")
    originals = {pid: _original(raw, pid, date) for pid in original_ids}
    later = _later_removals(home, con, [p for p in originals.values() if p.date])

    clusters = []
    for original_id, rows in shown_groups:
        copies = sorted(rows, key=lambda r: (_closeness(r), r["pair_id"]))
        clusters.append(
            Cluster(
                original=originals[original_id],
                copies=copies[: limits.copies_per_cluster],
                hidden_copies=max(0, len(copies) - limits.copies_per_cluster),
                later=later.get((original_id, originals[original_id].date), []),
            )
        )
    con.close()

    wanted: dict[tuple[str, str], str | None] = {}
    for pair in kept_sample:
        wanted[(pair.pair_id, pair.date)] = pair.location
    for key in removed_keys:
        wanted[key] = raw.get(key, {}).get("image_location")
    for pair in originals.values():
        wanted[(pair.pair_id, pair.date)] = pair.location
    images = _thumbnails(home, wanted, taken_down, limits)

    return Sheet(
        stage=stage,
        date=date,
        kept_total=kept_total,
        kept_sample=kept_sample,
        score_columns=score_columns,
        score_summary=score_summary,
        ledger=ledger,
        by_reason=shown_by_reason,
        duplicate_reasons={r["reason"] for r in duplicates},
        clusters=clusters,
        cluster_total=len(groups),
        images=images,
        sizes={key: (row["width"], row["height"]) for key, row in raw.items()},
        taken_down=taken_down,
        taken_down_since=taken_down_since,
        rendered_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def index_rows(
    home: Home, date: str, stages: Sequence[str]
) -> list[tuple[str, int | None, int | None, dict[str, int]]]:
    """(stage, kept, removed, removed by reason) per stage on ``date``; None: not materialized."""
    _check_date(date)
    rows: list[tuple[str, int | None, int | None, dict[str, int]]] = []
    for stage in stages:
        _check_name(stage, "stage")
        kept_file = partition_dir(home, stage, date) / PART_FILE
        if not kept_file.is_file():
            rows.append((stage, None, None, {}))
            continue
        kept = pq.read_metadata(kept_file).num_rows
        reasons = reason_counts(_ledger(home, stage, date, columns=["reason"]))
        rows.append((stage, kept, sum(reasons.values()), reasons))
    return rows


def _kept_sample(
    con: duckdb.DuckDBPyConnection,
    source: str,
    names: list[str],
    score_columns: list[str],
    cap: int,
) -> list[SheetPair]:
    """Up to ``cap`` kept rows, a hash sample of pair_id (stable, spread over the partition)."""
    optional = ("text", "width", "height", "image_format", *score_columns)
    columns = ["pair_id", "date", *(c for c in optional if c in names)]
    rows = con.execute(
        f"SELECT {', '.join(_quote(c) for c in columns)} FROM {source} "
        f"ORDER BY md5(pair_id), pair_id LIMIT {int(cap)}"
    ).fetchall()
    pairs = []
    for row in rows:
        values = dict(zip(columns, row, strict=True))
        pairs.append(
            SheetPair(
                pair_id=values["pair_id"],
                date=values["date"],
                text=values.get("text"),
                width=values.get("width"),
                height=values.get("height"),
                fields=values,
            )
        )
    return sorted(pairs, key=lambda p: p.pair_id)


def _score_summary(
    con: duckdb.DuckDBPyConnection, source: str, columns: list[str]
) -> list[tuple[str, float | None, float | None, float | None, int]]:
    """(column, min, median, max, non-null count) over every kept row, not just the sample."""
    summary = []
    for column in columns:
        c = _quote(column)
        lo, mid, hi, n = con.execute(
            f"SELECT min({c}), median({c}), max({c}), count({c}) FROM {source}"
        ).fetchone()
        summary.append((column, lo, mid, hi, int(n)))
    return summary


def _ledger(home: Home, stage: str, date: str, columns: list[str] | None = None) -> pa.Table:
    path = ledger_dir(home, stage, date) / PART_FILE
    if not path.is_file():
        return (
            pa.table({"reason": pa.array([], pa.string())})
            if columns
            else LEDGER_SCHEMA.empty_table()
        )
    return pq.read_table(path, columns=columns, partitioning=None)


def _taken_down(
    home: Home, con: duckdb.DuckDBPyConnection, date: str
) -> tuple[set[str], list[str]]:
    """Every pair_id ever taken down, and those of ``date`` a takedown removed from the tables.

    Ingest refusals (reason ``takedown`` in raw_pairs' ledger) are on the raw_pairs sheet
    already; a takedown applied later (stage ``takedown``) left no row in any stage table.
    """
    if not _tables_with_files(home, [LEDGER_TABLE]):
        return set(), []
    source = _read_parquet(table_glob(home, LEDGER_TABLE))
    rows = con.execute(
        f"SELECT DISTINCT pair_id, date, stage FROM {source} WHERE stage = ? OR reason = ?",
        [TAKEDOWN, TAKEDOWN],
    ).fetchall()
    since = sorted({pid for pid, day, stage in rows if stage == TAKEDOWN and day == date})
    return {r[0] for r in rows}, since


def _raw_rows(
    home: Home, con: duckdb.DuckDBPyConnection, pair_ids: list[str]
) -> dict[tuple[str, str], dict]:
    """raw_pairs rows of any date for ``pair_ids``, keyed by (pair_id, date)."""
    if not pair_ids or not _tables_with_files(home, [RAW_PAIRS]):
        return {}
    con.register("wanted_ids", pa.table({"pair_id": pa.array(sorted(set(pair_ids)), pa.string())}))
    source = _read_parquet(table_glob(home, RAW_PAIRS))
    cursor = con.execute(
        f"SELECT r.pair_id, r.date, r.text, r.width, r.height, r.image_location "
        f"FROM {source} r JOIN wanted_ids w USING (pair_id)"
    )
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    con.unregister("wanted_ids")
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in rows}


def _original(raw: dict[tuple[str, str], dict], pair_id: str, date: str) -> SheetPair:
    candidates = sorted(d for (pid, d) in raw if pid == pair_id and d <= date)
    if not candidates:
        return SheetPair(pair_id=pair_id, date="")
    row = raw[(pair_id, candidates[0])]
    return SheetPair(
        pair_id=pair_id,
        date=row["date"],
        text=row["text"],
        width=row["width"],
        height=row["height"],
        location=row["image_location"],
    )


def _later_removals(
    home: Home, con: duckdb.DuckDBPyConnection, originals: list[SheetPair]
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Ledger rows of the originals themselves: a kept original may be dropped downstream."""
    if not originals or not _tables_with_files(home, [LEDGER_TABLE]):
        return {}
    keys = pa.table(
        {
            "pair_id": pa.array([p.pair_id for p in originals], pa.string()),
            "date": pa.array([p.date for p in originals], pa.string()),
        }
    )
    con.register("originals", keys)
    source = _read_parquet(table_glob(home, LEDGER_TABLE))
    rows = con.execute(
        f"SELECT l.pair_id, l.date, l.stage, l.reason FROM {source} l "
        f"JOIN originals o USING (pair_id, date) ORDER BY l.stage, l.reason"
    ).fetchall()
    con.unregister("originals")
    found: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for pair_id, day, stage, reason in rows:
        found[(pair_id, day)].append((stage, reason))
    return found


def _thumbnails(
    home: Home,
    wanted: dict[tuple[str, str], str | None],
    taken_down: set[str],
    limits: ReviewLimits,
) -> dict[tuple[str, str], SheetImage]:
    """One thumbnail per distinct location, decoded in parallel (Pillow releases the GIL)."""
    locations = sorted(
        {loc for (pid, _), loc in wanted.items() if loc is not None and pid not in taken_down}
    )

    def one(location: str) -> SheetImage:
        if location.startswith(("http://", "https://")) and not limits.fetch_remote:
            return SheetImage(missing="remote image, not fetched")
        try:
            data = read_location(location, home.landing)
        except (OSError, ValueError) as exc:
            # A refusal carries its ledger reason (missing_file, path_outside_landing, ...).
            why = getattr(exc, "reason", None) or type(exc).__name__
            return SheetImage(missing=f"cannot read the image: {why}")
        try:
            return SheetImage(uri=jpeg_data_uri(thumbnail_jpeg(data, limits.thumbnail_px)))
        except ThumbnailError as exc:
            return SheetImage(missing=str(exc))

    workers = max(1, min(limits.workers, len(locations), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        by_location = dict(zip(locations, pool.map(one, locations), strict=True))
    images = {}
    for key, location in wanted.items():
        if key[0] in taken_down:
            continue
        images[key] = (
            by_location[location]
            if location is not None
            else SheetImage(missing="no image location in raw_pairs")
        )
    return images


def spread(items: list, cap: int) -> list:
    """``cap`` items evenly spaced over ``items`` (first and last included), in their order."""
    if len(items) <= cap:
        return list(items)
    if cap <= 1:
        return list(items[:cap])
    step = (len(items) - 1) / (cap - 1)
    return [items[round(i * step)] for i in range(cap)]


def score_order(row: dict) -> tuple:
    """How removed rows are ordered: by their score, distance or similarity, unscored last."""
    for name in ("score", "distance", "similarity"):
        if row[name] is not None:
            return (0, row[name], row["pair_id"])
    return (1, 0.0, row["pair_id"])


def _closeness(row: dict) -> float:
    """How sure a duplicate is, lowest first: the copies nearest the threshold lead."""
    if row["similarity"] is not None:
        return row["similarity"]
    if row["distance"] is not None:
        return -row["distance"]
    return 0.0


def _tables_with_files(home: Home, tables: list[str]) -> list[str]:
    return [t for t in tables if glob.glob(table_glob(home, t))]


def _read_parquet(path: str | Path) -> str:
    quoted = str(path).replace("'", "''")
    return f"read_parquet('{quoted}', union_by_name = true, hive_partitioning = false)"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a table name (lowercase letters, digits, _)")


def _check_date(date: str) -> None:
    if not _DATE.fullmatch(date):
        raise ValueError(f"date {date!r} is not YYYY-MM-DD")
