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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dataplatform.core.records.funnel import warehouse_funnel
from dataplatform.core.records.plots import histogram_png
from dataplatform.core.scoring.scores import CARD, DATASET_CARD, Score, scores
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import connect, write_document
from dataplatform.core.tokens.token_budget import DEFAULT_TARGET_TOKENS, budget, tokens_per_day

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


def dataset_card(
    home: Home,
    stages: Sequence[str],
    date: str | None,
    runs: Sequence[StageRun] = (),
    target_tokens: int = DEFAULT_TARGET_TOKENS,
    now: dt.datetime | None = None,
) -> dict:
    """The dataset card of one partition (``date``) or of every partition (None), as data."""
    now = now or dt.datetime.now(dt.UTC)
    funnel = warehouse_funnel(home, list(stages), date)
    con = connect(home)
    try:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        where, params = ("", {}) if date is None else ("WHERE date = $date", {"date": date})
        cards = (
            con.sql(f"SELECT * FROM {CARDS_TABLE} {where}", params=params).to_arrow_table()
            if CARDS_TABLE in tables
            else None
        )
        if isinstance(cards, pa.RecordBatchReader):
            cards = cards.read_all()
        takedowns = _takedown_count(con, tables, date)
        license_drops = _license_drops(con, tables, date)
        versions = (
            sorted({v for v in cards.column("dataset_version").to_pylist() if v})
            if cards is not None and cards.num_rows
            else []
        )
    finally:
        con.close()
    rows = cards.to_pylist() if cards is not None else []
    per_day = tokens_per_day(home, CARDS_TABLE) if cards is not None else {}
    if date is not None:
        per_day = {d: v for d, v in per_day.items() if d == date}
    budget_rows = budget(per_day, target_tokens) if per_day else []
    return {
        "scope": date or ALL_SCOPE,
        "generated_at": now.isoformat(timespec="seconds"),
        "dataset_versions": versions,
        "pairs": len(rows),
        "arrived": (funnel[0].rows_in if funnel else 0) + takedowns,
        "taken_down": takedowns,
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
            "kept": dict(Counter(r["license"] or "(none)" for r in rows).most_common()),
            "kept_by_status": dict(Counter(r["license_status"] or "(unknown)" for r in rows)),
            "dropped": license_drops,
        },
        # .get: cards written before a scorer was registered lack its column.
        "scores": {s.name: _summary([r.get(s.name) for r in rows]) for s in card_scores()},
        "token_budget": [
            {
                "scope": b.scope,
                "images": b.images,
                "tokens": b.tokens,
                "tokens_per_image": b.tokens_per_image,
                "progress": b.progress,
            }
            for b in budget_rows
        ],
        "stage_runs": [r.as_dict() for r in runs],
    }


def _ledger_query(
    con, tables: set[str], select: str, cond: str, date: str | None, tail: str = ""
) -> list:
    """``select`` over ledger rows matching ``cond`` (and ``date`` when given), then ``tail``."""
    if "rejections" not in tables:
        return []
    params = {} if date is None else {"date": date}
    where = cond + ("" if date is None else " AND date = $date")
    return con.execute(f"SELECT {select} FROM rejections WHERE {where} {tail}", params).fetchall()


def _takedown_count(con, tables: set[str], date: str | None) -> int:
    rows = _ledger_query(con, tables, "count(*)", "stage = 'takedown'", date)
    return int(rows[0][0]) if rows else 0


def _license_drops(con, tables: set[str], date: str | None) -> dict[str, int]:
    rows = _ledger_query(
        con,
        tables,
        "coalesce(license, '(none)') AS license, count(*) AS n",
        "reason LIKE 'license_%'",
        date,
        "GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    return {str(k): int(n) for k, n in rows}


def _summary(values: list) -> dict:
    data = np.array([v for v in values if v is not None], dtype=np.float64)
    data = data[np.isfinite(data)]
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


def score_plots(home: Home, date: str | None) -> dict[str, bytes]:
    """A histogram PNG per score with at least one value, over the cards in scope."""
    con = connect(home)
    try:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if CARDS_TABLE not in tables:
            return {}
        where, params = ("", {}) if date is None else ("WHERE date = $date", {"date": date})
        present = {d[0] for d in con.execute(f"SELECT * FROM {CARDS_TABLE} LIMIT 0").description}
        plots = {}
        for score in card_scores():
            name = score.name
            if name not in present:  # registered after every card in scope was written
                continue
            values = [
                r[0]
                for r in con.execute(f"SELECT {name} FROM {CARDS_TABLE} {where}", params).fetchall()
                if r[0] is not None
            ]
            if values:
                plots[name] = histogram_png(values, value_range=score.plot_range, title=name)
        return plots
    finally:
        con.close()


def card_markdown(card: dict, images: Sequence[str]) -> str:
    """The dataset card as Markdown; ``images`` are the Markdown image lines of the plots.

    On disk they link ``plots/<score>.png`` beside the card; in the Dagster UI they are inline.
    """
    lines = [
        f"# Dataset card: {card['scope']}",
        "",
        f"Generated {card['generated_at']}. Dataset version(s): "
        f"{', '.join(card['dataset_versions']) or '-'}.",
        "",
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
    lines += ["", "## Licenses", "", "| license | pairs kept |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in card["licenses"]["kept"].items()]
    status = ", ".join(f"{k} {n}" for k, n in card["licenses"]["kept_by_status"].items())
    lines += ["", f"License status of kept pairs: {status or '-'}."]
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
            lines.append(
                f"| {name} | {s['count']} | {s['mean']:.4g} | {s['p5']:.4g} | "
                f"{s['p50']:.4g} | {s['p95']:.4g} |"
            )
        else:
            lines.append(f"| {name} | 0 | - | - | - | - |")
    lines.append("")
    lines += list(images)
    lines += ["", "## Token budget", "", "| scope | images | tokens | tokens/image | progress |"]
    lines.append("|---|---:|---:|---:|---:|")
    for b in card["token_budget"]:
        lines.append(
            f"| {b['scope']} | {b['images']} | {b['tokens']} | {b['tokens_per_image']:.0f} | "
            f"{b['progress']:.3e} |"
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
    """Compute and write ``card.json``, ``card.md`` and ``plots/*.png`` for one scope."""
    card = dataset_card(home, stages, date, runs, now=now)
    plots = score_plots(home, date)
    folder = f"{CARD_FOLDER}/{'date=' + date if date else ALL_SCOPE}"
    for name, png in plots.items():
        write_document(home, f"{folder}/plots/{name}.png", png)
    markdown = card_markdown(card, [f"![{name}](plots/{name}.png)" for name in plots])
    write_document(home, f"{folder}/card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    write_document(home, f"{folder}/card.md", markdown)
    return WrittenCard(card, markdown, plots, folder)
