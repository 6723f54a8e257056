"""Data cards: one record per pair that enters training, and a dataset card per partition.

A pair's card answers the audit questions without joining anything: where it came from, under
which license, which run of which code version produced each stage, every score it got, every
transform applied to it (EXIF transpose, caption normalisation, crop, tokenizer) and how many
tokens it costs. The dataset card sums a partition (or all of them): the funnel per stage and
reason, licenses, score distributions as PNG plots and the token budget, as Markdown and JSON.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataplatform.core.engine.chunk_map import ChunkRun, map_chunks
from dataplatform.core.engine.engine_spec import EngineSpec
from dataplatform.core.ingest.license_policy import normalize_license
from dataplatform.core.records.funnel import warehouse_funnel
from dataplatform.core.records.plots import bars_png
from dataplatform.core.records.readable_numbers import format_number, format_share
from dataplatform.core.records.run_profile import MODEL_COLUMN, SMOKE, Profile, rows_profile
from dataplatform.core.records.score_stats import Binning, ScoreStats
from dataplatform.core.records.takedown_requests import TAKEDOWN_STAGE
from dataplatform.core.scoring.scores import CARD, DATASET_CARD, Score, scores
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    REMOTE_READ_THREADS,
    commit_id,
    document_exists,
    has_ledger,
    has_partition,
    partition_dates,
    partition_file,
    read_document,
    read_ledger,
    read_partition,
    write_document,
)
from dataplatform.core.tokens.token_budget import DEFAULT_TARGET_TOKENS, budget

CARDS_TABLE = "data_cards"
CARD_FOLDER = "dataset_cards"
ALL_SCOPE = "all"

# Columns copied as they are from the tokens table into the card table, around the registered
# scores a card shows (``card_columns``).
_LEADING_COLUMNS = (
    "pair_id",
    "date",
    "url",
    "license",
    "license_status",
    "source",
    "source_locator",
    "text",
    "image_uri",
    "image_sha256",
    "width",
    "height",
    "phash",
)
_TRAILING_COLUMNS = (
    "resolution",
    "crop_policy",
    "crop_box",
    "token_grid",
    "token_count",
    "tokenizer",
)


def card_scores() -> tuple[Score, ...]:
    """The scores the dataset card summarises and plots, in registration order."""
    return scores(shown=DATASET_CARD)


def card_columns() -> tuple[str, ...]:
    """Every column of the card table copied from the tokens table, in table order."""
    return (*_LEADING_COLUMNS, *(s.name for s in scores(shown=CARD)), *_TRAILING_COLUMNS)


@dataclass(frozen=True)
class StageRun:
    """Which run produced a stage's partition, under which code version."""

    stage: str
    run_id: str | None
    code_version: str | None
    materialized_at: str | None

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "run_id": self.run_id,
            "code_version": self.code_version,
            "materialized_at": self.materialized_at,
        }


def dataset_version(date: str, runs: Sequence[StageRun]) -> str:
    """A short fingerprint of the runs behind a partition: it changes when any stage re-runs."""
    body = json.dumps([date, *[r.as_dict() for r in runs]], sort_keys=True)
    return f"{date}+{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def build_cards(tokens: pa.Table, runs: Sequence[StageRun], version: str) -> pa.Table:
    """One card per row of ``tokens``: the audit columns, transforms and stage runs."""
    columns = {}
    for name in card_columns():
        if name in tokens.column_names:
            columns[name] = tokens.column(name)
        else:
            columns[name] = pa.nulls(tokens.num_rows, _null_type(name))
    rows = tokens.to_pylist()
    columns["transforms"] = pa.array([json.dumps(_transforms(r)) for r in rows], pa.string())
    runs_json = json.dumps([r.as_dict() for r in runs])
    columns["stage_runs"] = pa.array([runs_json] * tokens.num_rows, pa.string())
    columns["dataset_version"] = pa.array([version] * tokens.num_rows, pa.string())
    return pa.table(columns)


class _ChunkCardBuilder:
    """The Ray engine's worker: cards for a slice of the tokens table."""

    def __init__(self, runs: Sequence[StageRun], version: str) -> None:
        self._runs = list(runs)
        self._version = version

    def __call__(self, tokens: pa.Table) -> pa.Table:
        return build_cards(tokens, self._runs, self._version)


def build_cards_on_engine(
    tokens: pa.Table,
    runs: Sequence[StageRun],
    version: str,
    engine: EngineSpec | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[pa.Table, ChunkRun]:
    """``build_cards`` on the engine: slices of the table on Ray actors, concatenated in order."""
    engine = engine or EngineSpec()
    if not engine.is_ray or tokens.num_rows == 0:
        started = time.monotonic()
        cards = build_cards(tokens, runs, version)
        return cards, ChunkRun("local", 1, 1, time.monotonic() - started)
    size = engine.chunk_rows
    slices = [tokens.slice(i, size) for i in range(0, tokens.num_rows, size)]
    parts, run = map_chunks(engine, partial(_ChunkCardBuilder, runs, version), slices, log=log)
    return pa.concat_tables(parts), run


def _null_type(name: str) -> pa.DataType:
    declared = {s.name: s.type for s in scores()}
    if name in declared:
        return declared[name]
    if name in ("width", "height", "resolution", "token_count"):
        return pa.int32()
    if name in ("crop_box", "token_grid"):
        return pa.list_(pa.int32())
    return pa.string()


def _transforms(row: dict) -> list[dict]:
    """What was done to the pair between the landing folder and its tokens, in order."""
    steps = [
        {"step": "decode", "format": row.get("image_format"), "mode": row.get("image_mode")},
        {"step": "exif_transpose", "applied": bool(row.get("exif_transposed"))},
        {"step": "caption_normalize", "truncated": bool(row.get("text_truncated"))},
    ]
    if row.get("resolution") is not None:
        steps.append(
            {
                "step": "crop",
                "policy": row.get("crop_policy"),
                "box": row.get("crop_box"),
                "resolution": row.get("resolution"),
            }
        )
        steps.append(
            {
                "step": "tokenize",
                "tokenizer": row.get("tokenizer"),
                "grid": row.get("token_grid"),
                "tokens": row.get("token_count"),
            }
        )
    return steps


# --- dataset cards ---------------------------------------------------------------------------
#
# A day's card is computed from that day's files alone and stores its aggregates, all of them
# mergeable, as ``summary.json`` beside it. The overall card is the merge of every carded day's
# summary: O(days) small documents and footers, never a row of the history.

SUMMARY_FILE = "summary.json"
# Bump when what a summary holds changes: a summary of another layout is rebuilt from its day.
# 3: licenses bucketed by their normalised name (MISSING_LICENSE as the policy's "missing"),
# and the day's run profile.
SUMMARY_VERSION = 3
# The license bucket of pairs without a usable license: no value, or a placeholder such as
# "unknown" or "none". Exactly the pairs whose license_status is "missing" (license_policy).
MISSING_LICENSE = "(missing)"
# The status bucket of cards written before license_status existed.
NO_STATUS = "(no status)"

log = logging.getLogger(__name__)


def card_folder(date: str | None) -> str:
    """The folder (relative to the warehouse) of a day's dataset card, or of the overall one."""
    return f"{CARD_FOLDER}/{'date=' + date if date else ALL_SCOPE}"


def _binnings() -> dict[str, Binning]:
    return {s.name: Binning.for_range(s.plot_range) for s in card_scores()}


def _layout(stages: Sequence[str]) -> dict:
    """What a summary's numbers mean: a summary of another layout cannot be merged as it is."""
    bins = {name: b.as_list() for name, b in _binnings().items()}
    return {"version": SUMMARY_VERSION, "stages": list(stages), "bins": bins}


def day_summary(home: Home, stages: Sequence[str], date: str) -> dict:
    """The mergeable aggregates of one day, read from that day's files alone.

    ``stamp`` is the commit of the day's card partition, read before the rows: a summary whose
    stamp no longer matches that partition's footer describes other rows and is rebuilt.
    """
    return _summarise_day(home, stages, date)[0]


def _summarise_day(home: Home, stages: Sequence[str], date: str) -> tuple[dict, dict[str, dict]]:
    """The day's summary and its exact score summaries (the day card has every value)."""
    carded = has_partition(home, CARDS_TABLE, date)
    stamp = commit_id(partition_file(home, CARDS_TABLE, date)) if carded else None
    cards = read_partition(home, CARDS_TABLE, date) if carded else None
    funnel = warehouse_funnel(home, list(stages), date)
    ledger = _day_ledger(home, [*stages, TAKEDOWN_STAGE], date)
    stats, exact = {}, {}
    for name, binning in _binnings().items():
        # Cards written before a scorer was registered lack its column.
        values = (
            cards.column(name).cast(pa.float64()).to_numpy()
            if cards is not None and name in cards.column_names
            else np.empty(0)
        )
        stats[name] = ScoreStats.of(values, binning).as_dict()
        exact[name] = _summary(values)
    rows = cards.num_rows if cards is not None else 0
    tokens = pc.sum(cards.column("token_count")).as_py() if rows else 0
    versions = cards.column("dataset_version").drop_null().unique().to_pylist() if rows else []
    drops = Counter(
        license_bucket(lic)
        for lic, reason in zip(ledger["license"], ledger["reason"], strict=True)
        if reason.startswith("license_")
    )
    profile = (
        rows_profile(cards.column(MODEL_COLUMN).unique().to_pylist())
        if cards is not None and MODEL_COLUMN in cards.column_names
        else rows_profile([])
    )
    summary = {
        "layout": _layout(stages),
        "date": date,
        "carded": carded,
        "stamp": stamp,
        "pairs": rows,
        "taken_down": sum(1 for s in ledger["stage"] if s == TAKEDOWN_STAGE),
        "funnel": [
            {
                "stage": f.stage,
                "in": f.rows_in,
                "kept": f.kept,
                "removed": f.removed,
                "reasons": f.reasons,
            }
            for f in funnel
        ],
        "licenses": {
            "kept": _license_counts(cards),
            "kept_by_status": _value_counts(cards, "license_status", NO_STATUS),
            "dropped": _ranked(drops),
        },
        "profile": {"name": profile.name, "basis": profile.basis},
        "dataset_versions": sorted(v for v in versions if v),
        "tokens": [rows, int(tokens or 0)],
        "scores": stats,
    }
    return summary, exact


def _day_ledger(home: Home, stages: Sequence[str], date: str) -> dict[str, list]:
    """``stage``, ``reason`` and ``license`` of the day's ledger rows of ``stages``."""
    columns: dict[str, list] = {"stage": [], "reason": [], "license": []}
    for stage in stages:
        if has_ledger(home, stage, date):
            table = read_ledger(home, stage, date)
            for name in columns:
                columns[name] += table.column(name).to_pylist()
    return columns


def license_bucket(value: str | None) -> str:
    """The dataset card's bucket of a license: its normalised name, as the license policy
    decides on it, or ``MISSING_LICENSE`` where the policy calls it missing."""
    return normalize_license(value) or MISSING_LICENSE


def _license_counts(cards: pa.Table | None) -> dict[str, int]:
    if cards is None or not cards.num_rows:
        return {}
    counts: Counter[str] = Counter()
    for row in pc.value_counts(cards.column("license")).to_pylist():
        counts[license_bucket(row["values"])] += int(row["counts"])
    return _ranked(counts)


def _value_counts(cards: pa.Table | None, column: str, missing: str) -> dict[str, int]:
    if cards is None or not cards.num_rows:
        return {}
    counts: Counter[str] = Counter()
    for row in pc.value_counts(cards.column(column)).to_pylist():
        counts[row["values"] or missing] += int(row["counts"])
    return _ranked(counts)


def _ranked(counts: Mapping[str, int]) -> dict[str, int]:
    """Most frequent first, ties by name: the same order whatever order the days merge in."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def carded_summaries(home: Home, stages: Sequence[str]) -> tuple[list[dict], list[str]]:
    """Every carded day's summary, oldest first, and the days whose summary was rebuilt.

    A summary is read as stored when its layout is the current one and its stamp is the commit
    of the day's card partition (one footer). Otherwise (written before summaries existed, by
    other code, or before the partition was rewritten) it is rebuilt from that day's files
    alone, written back and logged, so the next overall card reads it as stored.
    """
    layout = _layout(stages)

    def load(date: str) -> tuple[dict, bool]:
        relative = f"{card_folder(date)}/{SUMMARY_FILE}"
        stored = (
            json.loads(read_document(home, relative)) if document_exists(home, relative) else None
        )
        if (
            stored is not None
            and stored.get("layout") == layout
            and stored.get("stamp") == commit_id(partition_file(home, CARDS_TABLE, date))
        ):
            return stored, False
        log.warning(
            "dataset card summary of %s is %s: rebuilding it from that day's partitions",
            date,
            "missing" if stored is None else "stale",
        )
        summary = day_summary(home, stages, date)
        write_document(home, relative, json.dumps(summary, sort_keys=True) + "\n")
        return summary, True

    dates = partition_dates(home, CARDS_TABLE)
    if isinstance(home.warehouse, str):
        with ThreadPoolExecutor(REMOTE_READ_THREADS) as pool:
            loaded = list(pool.map(load, dates))
    else:
        loaded = [load(d) for d in dates]
    return [s for s, _ in loaded], [
        d for d, (_, rebuilt) in zip(dates, loaded, strict=True) if rebuilt
    ]


def merge_summaries(summaries: Sequence[dict], stages: Sequence[str]) -> dict:
    """The summaries of several days as one: every count and histogram added, versions joined."""
    funnel = [{"stage": s, "in": 0, "kept": 0, "removed": 0, "reasons": Counter()} for s in stages]
    kept, status, dropped = Counter(), Counter(), Counter()
    stats = {name: ScoreStats(b) for name, b in _binnings().items()}
    pairs = taken_down = 0
    versions: set[str] = set()
    profiles: Counter[str] = Counter()
    for summary in summaries:
        profiles[summary["profile"]["name"]] += 1
        pairs += summary["pairs"]
        taken_down += summary["taken_down"]
        for total, day in zip(funnel, summary["funnel"], strict=True):
            for key in ("in", "kept", "removed"):
                total[key] += day[key]
            total["reasons"].update(day["reasons"])
        kept.update(summary["licenses"]["kept"])
        status.update(summary["licenses"]["kept_by_status"])
        dropped.update(summary["licenses"]["dropped"])
        versions.update(summary["dataset_versions"])
        for name, day_stats in summary["scores"].items():
            stats[name] = stats[name].merge(ScoreStats.from_dict(day_stats))
    for total in funnel:
        total["reasons"] = _ranked(total["reasons"])
    return {
        "pairs": pairs,
        "taken_down": taken_down,
        "funnel": funnel,
        "licenses": {
            "kept": _ranked(kept),
            "kept_by_status": _ranked(status),
            "dropped": _ranked(dropped),
        },
        "dataset_versions": sorted(versions),
        "profile": _merged_profile(summaries, profiles),
        # A day without a card partition has no token budget row (nothing of it was carded).
        "tokens": {s["date"]: tuple(s["tokens"]) for s in summaries if s["carded"]},
        "scores": stats,
    }


def _merged_profile(summaries: Sequence[dict], days: Counter[str]) -> dict:
    """One profile for several days: theirs when they agree, ``mixed`` with the day counts."""
    if len(days) == 1:
        return {**summaries[0]["profile"], "days": dict(days)}
    if not days:
        profile = rows_profile([])
        return {"name": profile.name, "basis": profile.basis, "days": {}}
    return {"name": "mixed", "basis": "the days' cards (clip_model)", "days": _ranked(days)}


@dataclass(frozen=True)
class _Scope:
    """A computed card and what writing it needs beside the card itself."""

    card: dict
    stats: dict[str, ScoreStats]
    day_summary: dict | None  # the day's summary to store; None for the overall card


def _compute(
    home: Home,
    stages: Sequence[str],
    date: str | None,
    runs: Sequence[StageRun],
    target_tokens: int,
    now: dt.datetime | None,
) -> _Scope:
    if date is not None:
        day, exact = _summarise_day(home, stages, date)
        merged = merge_summaries([day], stages)
        score_summaries, rebuilt, days = exact, None, 1
    else:
        summaries, rebuilt = carded_summaries(home, stages)
        merged = merge_summaries(summaries, stages)
        score_summaries = {name: s.summary() for name, s in merged["scores"].items()}
        day, days = None, len(summaries)
    funnel = merged["funnel"]
    per_day = {d: v for d, v in merged["tokens"].items() if d == date or date is None}
    card = {
        "scope": date or ALL_SCOPE,
        "generated_at": (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        "dataset_versions": merged["dataset_versions"],
        "profile": merged["profile"],
        "days": days,
        "pairs": merged["pairs"],
        "arrived": (funnel[0]["in"] if funnel else 0) + merged["taken_down"],
        "taken_down": merged["taken_down"],
        "funnel": funnel,
        "licenses": merged["licenses"],
        "scores": score_summaries,
        "token_budget": [
            {
                "scope": b.scope,
                "images": b.images,
                "tokens": b.tokens,
                "tokens_per_image": b.tokens_per_image,
                "progress": b.progress,
            }
            for b in (budget(per_day, target_tokens) if per_day else [])
        ],
        "stage_runs": [r.as_dict() for r in runs],
    }
    if rebuilt is not None:
        card["summaries_rebuilt"] = rebuilt
    return _Scope(card, merged["scores"], day)


def dataset_card(
    home: Home,
    stages: Sequence[str],
    date: str | None,
    runs: Sequence[StageRun] = (),
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    now: dt.datetime | None = None,
) -> dict:
    """The dataset card of one partition (``date``) or of every carded partition (None).

    A day's card reads that day's files; the overall card merges the days' stored summaries
    (``carded_summaries``), so both cost a day, not the history. The overall percentiles are
    read from fixed-bin histograms (each score's ``percentiles_from`` says how fine); its
    counts, sums, means, min and max are exact.
    """
    return _compute(home, stages, date, runs, target_tokens, now).card


def _summary(values: np.ndarray) -> dict:
    """Exact summary of one day's values (NaN for nulls), keys as ``ScoreStats.summary``."""
    data = values[np.isfinite(values)]
    if not data.size:
        return {"count": 0}
    p5, p50, p95 = np.percentile(data, [5, 50, 95])
    return {
        "count": int(data.size),
        "mean": round(float(data.mean()), 6),
        "min": round(float(data.min()), 6),
        "p5": round(float(p5), 6),
        "p50": round(float(p50), 6),
        "p95": round(float(p95), 6),
        "max": round(float(data.max()), 6),
    }


def score_plots(stats: Mapping[str, ScoreStats]) -> dict[str, bytes]:
    """A histogram PNG per score with at least one value, drawn from its binned counts."""
    plots = {}
    for name, score_stats in stats.items():
        if score_stats.count:
            bars, value_range = score_stats.plot_counts()
            plots[name] = bars_png(bars, value_range, title=name, n=score_stats.count)
    return plots


def _merge_lines(card: dict) -> list[str]:
    """What the overall card merged, and which days' summaries it had to rebuild."""
    if card["scope"] != ALL_SCOPE:
        return []
    lines = [f"Merged from the summaries of {card['days']} carded day(s)."]
    if card.get("summaries_rebuilt"):
        rebuilt = ", ".join(card["summaries_rebuilt"])
        lines.append(f"Summaries missing or stale, rebuilt from their day's partitions: {rebuilt}.")
    return [*lines, ""]


def _profile_lines(card: dict) -> list[str]:
    """The card's profile, first thing a reader sees: smoke numbers mean nothing."""
    profile = card["profile"]
    if profile["name"] == "mixed":
        days = ", ".join(f"{name} {n} day(s)" for name, n in profile["days"].items())
        return [
            f"**Profile: mixed** ({days}): the smoke days' CLIP scores and semantic duplicates "
            "come from the small built-in test model and mean nothing.",
            "",
        ]
    described = Profile(profile["name"], profile["basis"]).describe()
    emphasis = "**" if profile["name"] == SMOKE else ""
    return [f"{emphasis}{described}.{emphasis} From {profile['basis']}.", ""]


def card_markdown(card: dict, images: Sequence[str]) -> str:
    """The dataset card as Markdown; ``images`` are the Markdown image lines of the plots.

    On disk they link ``plots/<score>.png`` beside the card; in the Dagster UI they are inline.
    Numbers are rounded for reading; ``card.json`` keeps them whole.
    """
    lines = [
        f"# Dataset card: {card['scope']}",
        "",
        *_profile_lines(card),
        f"Generated {card['generated_at']}. Dataset version(s): "
        f"{', '.join(card['dataset_versions']) or '-'}.",
        "",
        *_merge_lines(card),
        f"**{card['pairs']}** pairs enter training, of {card['arrived']} that arrived"
        + (f" ({card['taken_down']} later taken down)" if card["taken_down"] else "")
        + ".",
        "",
        "## Funnel",
        "",
        "| stage | in | kept | removed | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for f in card["funnel"]:
        reasons = ", ".join(f"{r} {n}" for r, n in f["reasons"].items()) or "-"
        lines.append(f"| {f['stage']} | {f['in']} | {f['kept']} | {f['removed']} | {reasons} |")
    if card["taken_down"]:
        lines.append(f"| takedown | | | {card['taken_down']} | takedown {card['taken_down']} |")
    lines += ["", "## Licenses", "", "| license (normalised) | pairs kept |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in card["licenses"]["kept"].items()]
    status = ", ".join(f"{k} {n}" for k, n in card["licenses"]["kept_by_status"].items())
    lines += [
        "",
        f"License status of kept pairs: {status or '-'}. {MISSING_LICENSE}: no license, or a "
        'placeholder such as "unknown" or "none"; the same pairs as the status missing.',
    ]
    dropped = ", ".join(f"{k} {n}" for k, n in card["licenses"]["dropped"].items())
    lines += [f"Dropped for their license: {dropped or 'none'}.", ""]
    lines += [
        "## Scores",
        "",
        "| score | count | mean | p5 | p50 | p95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in card["scores"].items():
        if s["count"]:
            cells = " | ".join(format_number(s[k]) for k in ("mean", "p5", "p50", "p95"))
            lines.append(f"| {name} | {s['count']} | {cells} |")
        else:
            lines.append(f"| {name} | 0 | - | - | - | - |")
    binned = [
        f"{name} {s['percentiles_from']}"
        for name, s in card["scores"].items()
        if s.get("percentiles_from")
    ]
    if binned:
        lines += [
            "",
            "Counts, means, min and max are exact; p5, p50 and p95 are read from the days' "
            "fixed-bin histograms, each within one bin of the exact value: "
            + "; ".join(binned)
            + ".",
        ]
    lines.append("")
    lines += list(images)
    lines += [
        "",
        "## Token budget",
        "",
        "| scope | images | tokens | tokens/image | progress to target |",
    ]
    lines.append("|---|---:|---:|---:|---:|")
    for b in card["token_budget"]:
        lines.append(
            f"| {b['scope']} | {b['images']} | {b['tokens']} | "
            f"{format_number(b['tokens_per_image'])} | {format_share(b['progress'])} |"
        )
    if card["stage_runs"]:
        lines += ["", "## Stage runs", "", "| stage | run | code version | materialized |"]
        lines.append("|---|---|---|---|")
        for r in card["stage_runs"]:
            lines.append(
                f"| {r['stage']} | {r['run_id'] or '-'} | {r['code_version'] or '-'} | "
                f"{r['materialized_at'] or '-'} |"
            )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WrittenCard:
    card: dict
    markdown: str
    plots: dict[str, bytes]
    folder: str  # relative to the warehouse


def write_dataset_card(
    home: Home,
    stages: Sequence[str],
    date: str | None,
    runs: Sequence[StageRun] = (),
    now: dt.datetime | None = None,
) -> WrittenCard:
    """Compute and write ``card.json``, ``card.md`` and ``plots/*.png`` for one scope.

    A day's card also (re)writes the day's ``summary.json`` first, so the overall card written
    next merges this day's current numbers.
    """
    scope = _compute(home, stages, date, runs, DEFAULT_TARGET_TOKENS, now)
    folder = card_folder(date)
    if scope.day_summary is not None:
        summary = json.dumps(scope.day_summary, sort_keys=True) + "\n"
        write_document(home, f"{folder}/{SUMMARY_FILE}", summary)
    plots = score_plots(scope.stats)
    for name, png in plots.items():
        write_document(home, f"{folder}/plots/{name}.png", png)
    markdown = card_markdown(scope.card, [f"![{name}](plots/{name}.png)" for name in plots])
    card_json = json.dumps(scope.card, indent=2, sort_keys=True) + "\n"
    write_document(home, f"{folder}/card.json", card_json)
    write_document(home, f"{folder}/card.md", markdown)
    return WrittenCard(scope.card, markdown, plots, folder)
