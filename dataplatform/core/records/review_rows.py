"""What a review sheet shows, read from the warehouse: samples of kept and removed rows.

One stage and one date: a deterministic sample of the kept rows with their scores, the removed
rows grouped by reason (spread over the score range), the duplicate clusters with their
originals, the pairs a takedown removed, the near misses of a dedup stage (kept pairs just
outside its threshold, ``near_misses``), the run profile, and a thumbnail for each, all capped
by ``ReviewLimits`` so a huge partition costs what a small one does. ``review_sheet`` renders it.

A sheet is rendered on the daily path, so it reads what its rows need and not the history: the
raw_pairs partitions of the rows' own dates and of the days the ingested-ids state says an
original was ingested on, and every stage's ledger on those days (plus the takedown ledger, a
row per taken-down pair). A day the state cannot answer for is read instead, and the sheet
says so (``Sheet.raw_days_scanned``). The near-miss band is searched among a sample of the
day's kept rows (``ReviewLimits.near_miss_pool``) and, for pHash, the earlier-day originals the
sheet shows anyway; a search of the whole kept history at twice the threshold would pass the
reach of the stored pHash bands and read every earlier hash.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataplatform.core.dedup.dedup_state import END_OF_TIME, StateError, stale_dates
from dataplatform.core.dedup.history_state import (
    EXACT_KEPT,
    INGESTED_IDS,
    PHASH_KEPT,
    ingested_before,
    warehouse_commits,
)
from dataplatform.core.dedup.phash import from_hex
from dataplatform.core.dedup.phash_index import DEFAULT_PHASH_THRESHOLD
from dataplatform.core.dedup.semantic_history import NAME as SEMANTIC_STAGE
from dataplatform.core.dedup.semantic_index import DEFAULT_SIMILARITY_THRESHOLD
from dataplatform.core.ingest.image_store import read_location
from dataplatform.core.ingest.ingest_folder import STAGE as RAW_PAIRS
from dataplatform.core.records.funnel import reason_counts
from dataplatform.core.records.near_misses import (
    COSINE,
    HAMMING,
    NearMiss,
    cosine_band,
    hamming_band,
    phash_near_misses,
    semantic_near_misses,
)
from dataplatform.core.records.run_profile import MODEL_COLUMN, Profile, rows_profile
from dataplatform.core.records.thumbnails import (
    THUMBNAIL_PX,
    ThumbnailError,
    jpeg_data_uri,
    thumbnail_jpeg,
)
from dataplatform.core.scoring.embedding_table import matrix_of
from dataplatform.core.scoring.scores import EMBEDDINGS, REVIEW, scores
from dataplatform.core.store.home import Home
from dataplatform.core.store.schema import LEDGER_SCHEMA
from dataplatform.core.store.warehouse import (
    PART_FILE,
    document_exists,
    document_path,
    ledger_dates,
    ledger_dir,
    partition_dir,
    partition_file,
    read_document,
    write_document,
)

log = logging.getLogger(__name__)

# The stage and reason core.takedown writes; spelled out, not imported, so that takedown code
# can import the review modules to render sheets again.
TAKEDOWN = "takedown"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# What tokens adds to a kept pair, shown after the scores.
_TOKEN_COUNT = "token_count"
# The dedup stages, and what their near-miss band measures.
EXACT_STAGE = EXACT_KEPT.table
PHASH_STAGE = PHASH_KEPT.table
_DEDUP_REASONS = {PHASH_STAGE: "phash_duplicate", SEMANTIC_STAGE: "semantic_duplicate"}
_DEFAULT_THRESHOLDS = {
    PHASH_STAGE: float(DEFAULT_PHASH_THRESHOLD),
    SEMANTIC_STAGE: DEFAULT_SIMILARITY_THRESHOLD,
}


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
    # Near misses shown, and the kept rows (a hash sample of pair_id) searched for them.
    near_misses: int = 30
    near_miss_pool: int = 10_000


DEFAULT_LIMITS = ReviewLimits()


def review_dates_showing(home: Home, pair_ids: Iterable[str]) -> list[str]:
    """Dates whose sheets show any of ``pair_ids``: re-render these after a takedown.

    A pair appears on its own date and, as the kept original of a duplicate cluster, on the
    date of every copy that names it in ``duplicate_of``. Its raw_pairs dates come from the
    ingested-ids state (the days it cannot answer for are read); its ledger rows and copies
    need a scan of the whole ledger (a refused row shows its caption on its own day, which may
    precede every other), which DuckDB streams: three columns, memory bounded by the dates
    found. This runs on a takedown's refresh, not on the daily path.
    """
    ids = sorted(set(pair_ids))
    if not ids:
        return []
    wanted = pa.table({"pair_id": pa.array(ids, pa.string())})
    con = duckdb.connect()
    con.register("wanted", wanted)
    dates: set[str] = set()
    ingested, unanswered = _ingested_dates(home, ids, END_OF_TIME)
    dates.update(d for _, d in ingested)
    if unanswered:
        source = _read_parquet([partition_file(home, RAW_PAIRS, d) for d in unanswered])
        rows = con.execute(
            f"SELECT DISTINCT date FROM {source} WHERE pair_id IN (SELECT pair_id FROM wanted)"
        ).fetchall()
        dates.update(r[0] for r in rows)
    files = _ledger_files(home)
    if files:
        rows = con.execute(
            f"SELECT DISTINCT x.date FROM {_read_parquet(files)} x "
            "WHERE x.pair_id IN (SELECT pair_id FROM wanted) "
            "OR x.duplicate_of IN (SELECT pair_id FROM wanted)"
        ).fetchall()
        dates.update(r[0] for r in rows)
    con.close()
    return sorted(dates)


@dataclass
class NearMissRow:
    """A kept pair and its nearest kept neighbour, just outside the threshold."""

    pair: SheetPair
    neighbour: SheetPair
    value: float  # Hamming bits or cosine similarity
    margin: float


@dataclass
class NearMisses:
    """A dedup stage's near-miss band: what was searched, and the closest pairs found."""

    measure: str  # HAMMING or COSINE
    threshold: float
    threshold_from: str  # where the threshold was read, in words
    band: tuple[float, float]
    rows: list[NearMissRow]
    total: int  # near misses found in the pool; ``rows`` holds the closest ``near_misses``
    pool: int  # day kept rows searched
    kept_total: int
    references: int  # earlier-day kept rows searched beside the pool (shown originals)


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
    taken_down: set[str]  # the shown pairs a takedown names
    taken_down_since: list[str]  # pairs of this date that a takedown removed after curation
    rendered_at: str
    profile: Profile = field(default_factory=lambda: rows_profile(()))
    near_misses: NearMisses | None = None
    # raw_pairs days read whole because the ingested-ids state could not answer for them.
    raw_days_scanned: list[str] = field(default_factory=list)


def load_sheet(
    home: Home,
    stage: str,
    date: str,
    limits: ReviewLimits = DEFAULT_LIMITS,
    threshold: float | None = None,
) -> Sheet:
    """What the sheet of ``stage`` on ``date`` shows, within ``limits``.

    ``threshold`` is the dedup threshold the stage's run used (``sheet_threshold`` says what
    is assumed without it); other stages ignore it.
    """
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
    profile = _profile(con, kept_source, names)

    ledger = _ledger(home, stage, date).to_pylist()
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
    # Only the days holding these rows are read, and the ledgers of those days.
    removed_keys = (
        []
        if stage == RAW_PAIRS
        else [(r["pair_id"], r["date"]) for rows in shown_by_reason.values() for r in rows]
    )
    removed_keys += [(r["pair_id"], r["date"]) for _, rows in shown_groups for r in rows]
    kept_keys = [(p.pair_id, p.date) for p in kept_sample]
    original_ids = [original for original, _ in shown_groups]
    raw, raw_days_scanned = _raw_rows(home, con, date, kept_keys + removed_keys, original_ids)
    near = _near_misses(
        home,
        con,
        stage,
        date,
        (kept_source, names, kept_total),
        ledger,
        raw,
        original_ids,
        limits,
        threshold,
    )
    if near is not None:
        # The day's pairs of the band not yet read; their neighbours are the day's or originals.
        unread = [
            (p.pair_id, p.date)
            for row in near.rows
            for p in (row.pair, row.neighbour)
            if (p.pair_id, p.date) not in raw
        ]
        raw.update(_raw_rows(home, con, date, unread, [])[0])
        for row in near.rows:
            for p in (row.pair, row.neighbour):
                _fill(p, raw.get((p.pair_id, p.date)))

    for pair in kept_sample:
        pair.location = raw.get((pair.pair_id, pair.date), {}).get("image_location")
    originals = {pid: _original(raw, pid, date) for pid in original_ids}
    found = [p for p in originals.values() if p.date]
    around = _ledger_rows_on(home, con, sorted({date, *(p.date for p in found)}))
    shown = {p.pair_id for p in kept_sample} | {r["pair_id"] for r in ledger} | set(original_ids)
    shown |= {p.pair_id for row in (near.rows if near else []) for p in (row.pair, row.neighbour)}
    taken_down, taken_down_since = _taken_down(home, con, date, around, shown)
    later = _later_removals(around, found)

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
    for row in near.rows if near is not None else []:
        for p in (row.pair, row.neighbour):
            wanted[(p.pair_id, p.date)] = p.location
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
        profile=profile,
        near_misses=near,
        raw_days_scanned=raw_days_scanned,
    )


def partition_profile(home: Home, stages: Sequence[str], date: str) -> Profile:
    """The profile of ``date``'s partitions: read from the last of ``stages`` whose table
    names the model that scored it, else the rendering process's environment."""
    con = duckdb.connect()
    try:
        for stage in reversed(list(stages)):
            _check_name(stage, "stage")
            kept_file = partition_dir(home, stage, date) / PART_FILE
            if kept_file.is_file() and MODEL_COLUMN in pq.read_schema(kept_file).names:
                return _profile(con, _read_parquet(kept_file), [MODEL_COLUMN])
    finally:
        con.close()
    return rows_profile(())


def _profile(con: duckdb.DuckDBPyConnection, source: str, names: list[str]) -> Profile:
    if MODEL_COLUMN not in names:
        return rows_profile(())
    rows = con.execute(f"SELECT DISTINCT {_quote(MODEL_COLUMN)} FROM {source} LIMIT 100").fetchall()
    return rows_profile(r[0] for r in rows)


# --- the near-miss band ------------------------------------------------------------------------


def settings_relative(date: str, stage: str) -> str:
    """Where a sheet's settings (the run's threshold) are kept, beside the sheet."""
    return f"review/date={date}/{stage}.settings.json"


def remember_threshold(home: Home, stage: str, date: str, threshold: float) -> None:
    """Keep the run's ``threshold`` beside the sheet, for sheets rendered again later."""
    if stage in _DEDUP_REASONS:
        payload = json.dumps({"threshold": float(threshold)}) + "\n"
        write_document(home, settings_relative(date, stage), payload)


def sheet_threshold(
    home: Home, stage: str, date: str, ledger: list[dict], given: float | None
) -> tuple[float, str] | None:
    """The threshold a dedup stage ran with on ``date``, and where it was read; None for a
    stage without one.

    In order: ``given`` (the run's own); the one ``remember_threshold`` stored beside the
    sheet when the run rendered it, so that a sheet rendered again later (after a takedown)
    uses it too; the threshold the day's ledger rows of the stage's duplicates carry; else the
    stage's default, said to be assumed.
    """
    if stage not in _DEDUP_REASONS:
        return None
    relative = settings_relative(date, stage)
    if given is not None:
        return float(given), "the run's threshold"
    if document_exists(home, relative):
        stored = json.loads(read_document(home, relative)).get("threshold")
        if stored is not None:
            return float(stored), f"the run's threshold, kept in {document_path(home, relative)}"
    in_ledger = sorted(
        {
            r["threshold"]
            for r in ledger
            if r["reason"] == _DEDUP_REASONS[stage] and r["threshold"] is not None
        }
    )
    if in_ledger:
        return float(in_ledger[-1]), "the threshold the day's duplicates carry in the ledger"
    return (
        _DEFAULT_THRESHOLDS[stage],
        "the stage's default, assumed: the run's threshold is not recorded where the sheet "
        "can read it and no duplicate was removed this day",
    )


def _near_misses(
    home: Home,
    con: duckdb.DuckDBPyConnection,
    stage: str,
    date: str,
    kept: tuple[str, list[str], int],
    ledger: list[dict],
    raw: dict[tuple[str, str], dict],
    original_ids: list[str],
    limits: ReviewLimits,
    given: float | None,
) -> NearMisses | None:
    """The stage's near-miss band within ``limits``; None for a stage without a threshold.

    ``kept`` is the kept partition's DuckDB source, its column names and its row count.
    """
    kept_source, names, kept_total = kept
    found = sheet_threshold(home, stage, date, ledger, given)
    if found is None:
        return None
    threshold, threshold_from = found
    # A hash sample of the kept rows (spread over the partition), searched in pair_id order.
    pool_limit = int(limits.near_miss_pool)
    if stage == PHASH_STAGE:
        if "phash" not in names:
            return None
        rows = con.execute(
            f"SELECT * FROM (SELECT pair_id, date, phash FROM {kept_source} "
            f"WHERE phash IS NOT NULL ORDER BY md5(pair_id), pair_id LIMIT {pool_limit}) "
            "ORDER BY pair_id, date"
        ).fetchall()
        pool = [(pid, day) for pid, day, _ in rows]
        # The originals the sheet shows are earlier kept pairs whose pHash it already read.
        originals = set(original_ids)
        references = [
            (pid, day, row["phash"])
            for (pid, day), row in sorted(raw.items())
            if pid in originals and day < date and row.get("phash")
        ]
        misses = phash_near_misses(
            np.array([from_hex(h) for _, _, h in rows], dtype=np.uint64),
            int(threshold),
            np.array([from_hex(h) for _, _, h in references], dtype=np.uint64),
        )
        keys = pool + [(pid, day) for pid, day, _ in references]
        measure, band = HAMMING, hamming_band(int(threshold))
    else:
        embeddings = partition_dir(home, EMBEDDINGS, date) / PART_FILE
        if not Path(embeddings).is_file():
            return None
        table = con.sql(
            f"SELECT * FROM (SELECT k.pair_id, k.date, e.image_embedding FROM {kept_source} k "
            f"JOIN {_read_parquet(embeddings)} e USING (pair_id) "
            f"ORDER BY md5(k.pair_id), k.pair_id LIMIT {pool_limit}) ORDER BY pair_id, date"
        ).to_arrow_table()
        pool = list(
            zip(table.column("pair_id").to_pylist(), table.column("date").to_pylist(), strict=True)
        )
        column = table.column("image_embedding")
        dim = getattr(column.type, "list_size", None) or (
            len(column[0].as_py()) if table.num_rows else 1
        )
        vectors = matrix_of(column, dim)
        misses = semantic_near_misses(vectors, threshold)
        keys, references = pool, []
        measure, band = COSINE, cosine_band(threshold)
    shown = misses[: max(0, int(limits.near_misses))]
    return NearMisses(
        measure=measure,
        threshold=threshold,
        threshold_from=threshold_from,
        band=(float(band[0]), float(band[1])),
        rows=[_near_miss_row(m, keys) for m in shown],
        total=len(misses),
        pool=len(pool),
        kept_total=kept_total,
        references=len(references),
    )


def _near_miss_row(miss: NearMiss, keys: list[tuple[str, str]]) -> NearMissRow:
    pid, day = keys[miss.row]
    other_id, other_day = keys[miss.neighbour]
    return NearMissRow(
        pair=SheetPair(pair_id=pid, date=day),
        neighbour=SheetPair(pair_id=other_id, date=other_day),
        value=miss.value,
        margin=miss.margin,
    )


def _fill(pair: SheetPair, row: dict | None) -> None:
    if row is not None:
        pair.text, pair.width, pair.height = row["text"], row["width"], row["height"]
        pair.location = row["image_location"]


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
        ((lo, mid, hi, n),) = con.execute(
            f"SELECT min({c}), median({c}), max({c}), count({c}) FROM {source}"
        ).fetchall()
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


def _ledger_rows_on(
    home: Home, con: duckdb.DuckDBPyConnection, dates: list[str]
) -> list[tuple[str, str, str, str]]:
    """(pair_id, date, stage, reason) of every stage's ledger on ``dates``, by stage, reason."""
    files = [f for d in dates for f in _ledger_files(home, date=d)]
    if not files:
        return []
    return con.execute(
        f"SELECT pair_id, date, stage, reason FROM {_read_parquet(files)} ORDER BY stage, reason"
    ).fetchall()


def _taken_down(
    home: Home,
    con: duckdb.DuckDBPyConnection,
    date: str,
    around: list[tuple[str, str, str, str]],
    shown: set[str],
) -> tuple[set[str], list[str]]:
    """The pairs a takedown names among ``shown`` and ``around`` (the ledgers of the sheet's
    days), and those of ``date`` a takedown removed from the tables.

    Ingest refusals (reason ``takedown`` in raw_pairs' ledger) are on the raw_pairs sheet
    already; a takedown applied later (stage ``takedown``) left no row in any stage table, and
    its row is under the pair's ingest date, which for an original taken down (gone from
    raw_pairs) is unknown: the takedown ledger is read on every date it has, a row per
    taken-down pair, not per pair ingested.
    """
    named = {pid for pid, _, stage, reason in around if TAKEDOWN in (stage, reason)}
    since = sorted({pid for pid, day, stage, _ in around if stage == TAKEDOWN and day == date})
    files = [ledger_dir(home, TAKEDOWN, d) / PART_FILE for d in ledger_dates(home, TAKEDOWN)]
    if files and shown:
        con.register("shown_ids", pa.table({"pair_id": pa.array(sorted(shown), pa.string())}))
        rows = con.execute(
            f"SELECT DISTINCT pair_id FROM {_read_parquet(files)} "
            "WHERE pair_id IN (SELECT pair_id FROM shown_ids)"
        ).fetchall()
        con.unregister("shown_ids")
        named.update(r[0] for r in rows)
    return named | set(since), since


def _raw_rows(
    home: Home,
    con: duckdb.DuckDBPyConnection,
    date: str,
    keys: list[tuple[str, str]],
    original_ids: list[str],
) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """raw_pairs rows of ``keys`` (pair_id, date) and of ``original_ids`` on or before ``date``,
    keyed by (pair_id, date); and the days read whole because the state could not answer.

    Only the days that hold them are read: the keys' own dates, ``date``, and the earlier days
    on which the ingested-ids state says an original was ingested.
    """
    days = {d for _, d in keys}
    scanned: list[str] = []
    if original_ids:
        ingested, scanned = _ingested_dates(home, original_ids, date)
        days |= {d for _, d in ingested} | set(scanned) | {date}
    files = [partition_file(home, RAW_PAIRS, d) for d in sorted(days)]
    files = [f for f in files if Path(f).is_file()]
    ids = sorted({pid for pid, _ in keys} | set(original_ids))
    if not files or not ids:
        return {}, scanned
    con.register("wanted_ids", pa.table({"pair_id": pa.array(ids, pa.string())}))
    cursor = con.execute(
        f"SELECT r.pair_id, r.date, r.text, r.width, r.height, r.image_location, r.phash "
        f"FROM {_read_parquet(files)} r JOIN wanted_ids w USING (pair_id)"
    )
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    con.unregister("wanted_ids")
    return {(row[0], row[1]): dict(zip(names, row, strict=True)) for row in rows}, scanned


def _ingested_dates(
    home: Home, pair_ids: list[str], before: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """(pair_id, date) of the raw_pairs rows of ``pair_ids`` dated before ``before``, from the
    ingested-ids state; and the raw_pairs days it cannot answer for, to be read instead.

    The state answers for a day it holds from the commit that day's partition has now (one
    footer read a day, no rows). A day it lacks or holds from another commit (a warehouse
    written before the state, a run killed between its commit and its state update) is
    returned and logged, and so is every day when the state cannot be read: the caller reads
    those partitions, so the answer is the warehouse's either way.
    """
    commits = warehouse_commits(home, RAW_PAIRS, before)
    if not commits or not pair_ids:
        return [], []
    try:
        stale, _ = stale_dates(INGESTED_IDS.store(home).dates(), commits, before)
        current = pa.table({"pair_id": pa.array(pair_ids, pa.string())})
        found = ingested_before(home, current, before)
    except StateError as exc:
        log.warning(
            "%s state unreadable (%s): reading all %d raw_pairs day(s) before %s instead",
            INGESTED_IDS.name,
            exc,
            len(commits),
            before,
        )
        return [], sorted(commits)
    if stale:
        log.warning(
            "%s state lacks %d raw_pairs day(s) before %s or holds them from another commit "
            "(%s%s): reading those partitions instead; the next run's sync or "
            "`dataplatform rebuild-state` brings it up to date",
            INGESTED_IDS.name,
            len(stale),
            before,
            ", ".join(stale[:5]),
            ", ..." if len(stale) > 5 else "",
        )
    unanswered = set(stale)
    pairs = zip(found.column("pair_id").to_pylist(), found.column("date").to_pylist(), strict=True)
    return [(p, d) for p, d in pairs if d in commits and d not in unanswered], stale


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
    around: list[tuple[str, str, str, str]], originals: list[SheetPair]
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Ledger rows of the originals themselves: a kept original may be dropped downstream.

    ``around`` holds every stage's ledger on each original's date, where its rows are.
    """
    keys = {(p.pair_id, p.date) for p in originals}
    found: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for pair_id, day, stage, reason in around:
        if (pair_id, day) in keys:
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


def _ledger_files(home: Home, date: str = "*") -> list[str]:
    """Every stage's ledger file on ``date`` (every date by default)."""
    return sorted(glob.glob(str(ledger_dir(home, "*", date) / PART_FILE)))


def _read_parquet(paths: str | Path | Sequence[str | Path]) -> str:
    """A DuckDB read of the named files (every read of the warehouse here goes through it)."""
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    return f"read_parquet([{quoted}], union_by_name = true, hive_partitioning = false)"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a table name (lowercase letters, digits, _)")


def _check_date(date: str) -> None:
    if not _DATE.fullmatch(date):
        raise ValueError(f"date {date!r} is not YYYY-MM-DD")
