"""Static HTML review sheets: what one stage kept and removed on one day, with thumbnails.

Thresholds (pHash distance, CLIP score, quality scores, semantic similarity) are calibrated by
looking at samples, so a reviewer needs kept and removed images side by side. A sheet is one
self-contained file, ``warehouse/review/date=<D>/<stage>.html``: thumbnails are ``data:`` URIs,
there is no script and no remote resource, so it opens from disk and can be mailed. An index
per date, ``index.html`` next to the sheets, links them with the day's funnel.

Captions, details and URLs are untrusted web text: every string is HTML-escaped, and a
Content-Security-Policy forbids scripts and remote loads should anything slip through.
A taken-down pair shows its pair_id only, wherever it appears (kept, removed, or as the original
of a duplicate cluster on a later day). What a sheet shows is read by ``review_rows``; this module
renders and writes it.

Every sheet says the run profile it comes from (a smoke run's scores mean nothing), and a dedup
sheet lists its near misses. Numbers are rounded for reading (``readable_numbers``). A reviewer
opens the sheets from the Dagster UI through ``dataplatform.review_server``, whose address
(``REVIEW_URL_ENV``) the metadata links with ``sheet_url``.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa

from dataplatform.core.ingest.ingest_folder import STAGE as RAW_PAIRS
from dataplatform.core.records.funnel import reason_counts
from dataplatform.core.records.near_misses import HAMMING
from dataplatform.core.records.readable_numbers import format_cosine, format_number
from dataplatform.core.records.review_rows import (
    DEFAULT_LIMITS,
    EXACT_STAGE,
    TAKEDOWN,
    ReviewLimits,
    Sheet,
    SheetImage,
    SheetPair,
    index_rows,
    load_sheet,
    partition_profile,
    remember_threshold,
    score_order,
    spread,
)
from dataplatform.core.records.run_profile import Profile
from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import PART_FILE, partition_dir, write_document

REVIEW_FOLDER = "review"
INDEX_NAME = "index"
# The review server's address as a reviewer's browser reaches it (http://127.0.0.1:8070 on
# this machine, the deployment's name for it elsewhere); unset, the metadata has no link.
REVIEW_URL_ENV = "DATAPLATFORM_REVIEW_URL"


def review_root(home: Home) -> Path:
    """The folder of every date's review sheets: all that the review server serves."""
    return home.warehouse / REVIEW_FOLDER


def sheet_url(base_url: str, date: str, name: str) -> str:
    """The review server's URL of the sheet ``name`` (a stage, or ``index``) of ``date``."""
    relative = _relative(date, name).removeprefix(f"{REVIEW_FOLDER}/")
    return f"{base_url.rstrip('/')}/{quote(relative, safe='/=')}"


def review_path(home: Home, date: str, name: str) -> Path:
    """Where the sheet ``name`` (a stage, or ``index``) of ``date`` is written."""
    return home.warehouse / _relative(date, name)


def render_partition_review(
    home: Home, date: str, stages: Sequence[str], limits: ReviewLimits = DEFAULT_LIMITS
) -> list[Path]:
    """A sheet for each of ``stages`` materialized on ``date``, then the date's index."""
    paths = [
        render_review_sheet(home, stage, date, limits)
        for stage in stages
        if (partition_dir(home, stage, date) / PART_FILE).is_file()
    ]
    paths.append(render_review_index(home, date, stages))
    return paths


def render_review_sheet(
    home: Home,
    stage: str,
    date: str,
    limits: ReviewLimits = DEFAULT_LIMITS,
    threshold: float | None = None,
) -> Path:
    """Write the review sheet of ``stage`` on ``date`` and return its path.

    ``threshold``: the dedup threshold the stage's run used, for its near-miss band; it is
    kept beside the sheet so that a later render (after a takedown) uses it too.
    """
    sheet = load_sheet(home, stage, date, limits, threshold)
    if threshold is not None:
        remember_threshold(home, stage, date, threshold)
    return write_document(home, _relative(date, stage), _sheet_html(sheet, limits))


def render_review_index(home: Home, date: str, stages: Sequence[str]) -> Path:
    """Write ``index.html`` for ``date``: each stage's funnel and a link to its sheet."""
    rows = index_rows(home, date, stages)
    profile = partition_profile(home, stages, date)
    return write_document(home, _relative(date, INDEX_NAME), _index_html(date, rows, profile))


def _relative(date: str, name: str) -> str:
    return f"{REVIEW_FOLDER}/date={date}/{name}.html"


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
:root { --kept: #1a7f37; --removed: #cf222e; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { margin: 0; color: #1f2328; background: #f6f8fa;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
header { background: #24292f; color: #fff; padding: 10px 24px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header p { margin: 2px 0 0; color: #c9d1d9; font-size: 13px; }
header a { color: #9ecbff; }
nav.toc { font-size: 13px; margin-top: 6px; }
nav.toc a { margin-right: 14px; }
main { padding: 8px 24px 40px; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px;
  margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
h3 code { font-size: 14px; }
p.note, p.cap { color: var(--muted); margin: 4px 0 10px; font-size: 13px; }
p.cap { color: #9a6700; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eaeef2; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(186px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-top: 4px solid var(--muted);
  border-radius: 6px; padding: 8px; margin: 0; min-width: 0; }
.card.kept, .card.original { border-top-color: var(--kept); }
.card.removed, .card.copy { border-top-color: var(--removed); }
.card.taken-down { border-top-color: #000; }
.thumb { display: block; width: 160px; height: 160px; margin: 0 auto 6px; object-fit: contain;
  background: #eaeef2; }
div.thumb { display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 10px; font-size: 12px; color: var(--muted); border: 2px dashed #afb8c1;
  overflow-wrap: anywhere; }
div.thumb.taken-down { background: #24292f; color: #fff; border-color: #24292f;
  font-weight: 600; }
.pid { font: 600 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
.meta, .detail { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; margin: 2px 0; }
.caption { font-size: 13px; margin: 4px 0; overflow-wrap: anywhere; display: -webkit-box;
  -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden; }
dl.scores { display: grid; grid-template-columns: 1fr auto; gap: 0 8px; font-size: 12px;
  margin: 4px 0; }
dl.scores dt { color: var(--muted); }
dl.scores dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
dl.scores dd.hit { color: var(--removed); font-weight: 600; }
.badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 9px;
  color: #fff; background: var(--muted); margin-right: 4px; }
.badge.kept { background: var(--kept); }
.badge.removed { background: var(--removed); }
.clusters { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.cluster { display: flex; gap: 8px; align-items: stretch; max-width: 100%; overflow-x: auto;
  background: #eaeef2; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.cluster .card { flex: 0 0 186px; }
.cluster .arrow { align-self: center; font-size: 20px; color: var(--muted); }
.cluster .more { align-self: center; color: var(--muted); font-size: 13px; }
table.rejects td { max-width: 520px; overflow-wrap: anywhere; }
.bar { display: flex; width: 240px; height: 12px; border-radius: 3px; overflow: hidden;
  background: #eaeef2; margin-top: 3px; }
.bar .k { background: var(--kept); }
.bar .r { background: var(--removed); }
p.profile { margin: 6px 0 0; padding: 4px 10px; border-radius: 4px; font-size: 13px;
  background: #2d333b; color: #c9d1d9; display: inline-block; }
p.profile.smoke { background: #9a6700; color: #fff; font-weight: 600; }
.cluster.near-miss .arrow { font-size: 16px; }
dl.scores dd.margin { color: #9a6700; font-weight: 600; }
"""

# No script, no remote loads: images only from data: URIs, styles only from this page.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | int | None) -> str:
    return format_number(value)


def _profile_html(profile: Profile) -> str:
    """The banner that says which profile the page's numbers come from."""
    return (
        f'<p class="profile {_e(profile.name)}" data-profile="{_e(profile.name)}">'
        f"{_e(profile.describe())}. <span>From {_e(profile.basis)}.</span></p>"
    )


def _page(title: str, heading: str, subtitle: str, nav: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{heading}</h1><p>{subtitle}</p>{nav}</header>\n"
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _sheet_html(sheet: Sheet, limits: ReviewLimits) -> str:
    removed = len(sheet.ledger)
    rows_in = sheet.kept_total + removed
    nav = (
        '<nav class="toc"><a href="index.html">all stages of this date</a>'
        '<a href="#summary">summary</a><a href="#removed">removed by reason</a>'
        '<a href="#clusters">duplicate clusters</a>'
        + ('<a href="#near-misses">near misses</a>' if _has_near_section(sheet) else "")
        + '<a href="#kept">kept sample</a></nav>'
    )
    subtitle = (
        f"{rows_in} in · {sheet.kept_total} kept · {removed} removed · rendered "
        f"{_e(sheet.rendered_at)}. Green: kept. Red: removed. Black: taken down."
    )
    body = [
        _summary_html(sheet, rows_in),
        _removed_html(sheet, limits),
        _clusters_html(sheet, limits),
        _near_misses_html(sheet),
        _kept_html(sheet),
    ]
    return _page(
        f"{sheet.stage} {sheet.date} review",
        f"Review: <code>{_e(sheet.stage)}</code> · {_e(sheet.date)}",
        subtitle,
        _profile_html(sheet.profile) + nav,
        "\n".join(b for b in body if b),
    )


def _has_near_section(sheet: Sheet) -> bool:
    return sheet.near_misses is not None or sheet.stage == EXACT_STAGE


def _near_misses_html(sheet: Sheet) -> str:
    """Kept pairs just outside the threshold: the copies a looser threshold would remove."""
    if sheet.stage == EXACT_STAGE:
        return (
            '<section id="near-misses"><h2>Near misses</h2><p class="note" '
            'data-near-misses="none">Exact dedup removes byte-identical images (equal SHA-256): '
            "it has no threshold, so there is no near miss to show. Near copies are "
            "phash_deduped's and semantic_deduped's to find; their sheets list the kept pairs "
            "just outside their thresholds.</p></section>"
        )
    near = sheet.near_misses
    if near is None:
        return ""
    hamming = near.measure == HAMMING
    if hamming:
        unit = "Hamming bits"
        band = f"{_num(near.band[0])} &lt; bits ≤ {_num(near.band[1])}"
        threshold = f"{_num(near.threshold)} bits"
    else:
        unit = "cosine"
        band = f"{format_cosine(near.band[0])} ≤ cosine &lt; {format_cosine(near.band[1])}"
        threshold = f"cosine {format_cosine(near.threshold)}"
    searched = f"{near.pool} of {near.kept_total} kept rows of this day"
    if near.pool < near.kept_total:
        searched += " (a fixed sample by hash of pair_id)"
    if near.references:
        searched += f", and the {near.references} earlier-day original(s) shown above"
    parts = [
        f'<section id="near-misses" data-near-misses="{near.total}" '
        f'data-threshold="{_e(near.threshold)}"><h2>Near misses · {_rows(near.total)}</h2>',
        f'<p class="note">Kept pairs whose nearest kept neighbour lies within twice the '
        f"threshold but outside it ({band}), closest to the threshold first: the copies this "
        f"threshold may have let through. Threshold {threshold}, {_e(near.threshold_from)}. "
        f"Searched: {searched}; other earlier kept pairs are not searched here.</p>",
    ]
    if not near.rows:
        parts.append('<p class="note">No kept pair lies in the band.</p></section>')
        return "\n".join(parts)
    if len(near.rows) < near.total:
        hidden = near.total - len(near.rows)
        parts.append(
            f'<p class="cap" data-not-shown="{hidden}">Showing the {len(near.rows)} closest of '
            f"{near.total}; {hidden} not shown.</p>"
        )
    parts.append('<div class="clusters">')
    for row in near.rows:
        value = _num(row.value) if hamming else format_cosine(row.value)
        margin = _num(row.margin) if hamming else format_cosine(row.margin)
        scores = _scores([(unit, value, False), ("margin", margin, False)]).replace(
            f"<dd>{_e(margin)}</dd>", f'<dd class="margin">{_e(margin)}</dd>'
        )
        parts.append(
            f'<div class="cluster near-miss" data-pair-id="{_e(row.pair.pair_id)}" '
            f'data-neighbour="{_e(row.neighbour.pair_id)}" data-value="{_e(row.value)}" '
            f'data-margin="{_e(row.margin)}">'
            f'{_near_card(sheet, row.pair, scores)}<div class="arrow">⟷</div>'
            f"{_near_card(sheet, row.neighbour, '')}</div>"
        )
    parts.append("</div></section>")
    return "\n".join(parts)


def _near_card(sheet: Sheet, pair: SheetPair, scores: str) -> str:
    if pair.pair_id in sheet.taken_down:
        return _takedown_card(pair.pair_id, "kept")
    return _card(
        "kept",
        pair.pair_id,
        sheet.images.get((pair.pair_id, pair.date)) or SheetImage(missing="not found in raw_pairs"),
        f'<span class="badge kept">kept {_e(pair.date or "?")}</span>',
        _size(pair.width, pair.height),
        pair.text,
        scores,
        "",
    )


_MEASURES = (
    ("threshold", "threshold(s) in ledger"),
    ("score", "score"),
    ("distance", "distance"),
    ("similarity", "similarity"),
)


def _summary_html(sheet: Sheet, rows_in: int) -> str:
    counts = (
        '<table class="funnel"><tr><th>rows</th><th class="num">count</th></tr>'
        f'<tr><td>in</td><td class="num" data-count="in">{rows_in}</td></tr>'
        f'<tr><td>kept</td><td class="num" data-count="kept">{sheet.kept_total}</td></tr>'
        f'<tr><td>removed</td><td class="num" data-count="removed">{len(sheet.ledger)}</td></tr>'
        "</table>"
    )
    by_reason: dict[str, list[dict]] = defaultdict(list)
    for row in sheet.ledger:
        by_reason[row["reason"]].append(row)
    # Only the measure columns that some ledger row fills: raw_pairs rejects have none.
    measures = [
        (column, title)
        for column, title in _MEASURES
        if any(r[column] is not None for r in sheet.ledger)
    ]
    reason_rows = []
    for reason, n in _reason_counts(sheet.ledger).items():
        rows = by_reason[reason]
        anchor = "clusters" if reason in sheet.duplicate_reasons else f"reason-{reason}"
        cells = "".join(f"<td>{_range(rows, column)}</td>" for column, _ in measures)
        reason_rows.append(
            f'<tr data-reason="{_e(reason)}"><td><a href="#{_e(anchor)}">{_e(reason)}</a></td>'
            f'<td class="num">{n}</td>{cells}</tr>'
        )
    heads = "".join(f"<th>{title}</th>" for _, title in measures)
    reasons = (
        '<table class="reasons"><tr><th>removed: reason</th><th class="num">rows</th>'
        f"{heads}</tr>{''.join(reason_rows)}</table>"
        if reason_rows
        else '<p class="note">Nothing removed.</p>'
    )
    scores = ""
    if sheet.score_summary:
        lines = "".join(
            f'<tr><td>{_e(c)}</td><td class="num">{_num(lo)}</td><td class="num">{_num(mid)}'
            f'</td><td class="num">{_num(hi)}</td><td class="num">{n}</td></tr>'
            for c, lo, mid, hi, n in sheet.score_summary
        )
        scores = (
            '<table class="kept-scores"><tr><th>kept: score</th><th class="num">min</th>'
            '<th class="num">median</th><th class="num">max</th><th class="num">non-null</th>'
            f"</tr>{lines}</table>"
        )
    return (
        '<section id="summary"><h2>Summary</h2><div class="summary">'
        f"{counts}{reasons}{scores}</div></section>"
    )


def _reason_counts(ledger: list[dict]) -> dict[str, int]:
    return reason_counts(pa.table({"reason": pa.array([r["reason"] for r in ledger], pa.string())}))


def _range(rows: list[dict], column: str) -> str:
    values = sorted({r[column] for r in rows if r[column] is not None})
    if not values:
        return ""
    if len(values) == 1:
        return _num(values[0])
    return f"{_num(values[0])} … {_num(values[-1])}"


def _removed_html(sheet: Sheet, limits: ReviewLimits) -> str:
    parts = ['<section id="removed"><h2>Removed, by reason</h2>']
    if sheet.taken_down_since:
        parts.append(_taken_down_since_html(sheet.taken_down_since, limits.per_reason))
    if sheet.stage == RAW_PAIRS:
        parts.append(
            '<p class="note">These rows never entered the warehouse (the bytes or the manifest '
            "line were unusable), so there is no image to show; the detail says why.</p>"
        )
    if not sheet.by_reason and not sheet.taken_down_since:
        parts.append(
            '<p class="note">No removals here other than duplicates (see below).</p>'
            if sheet.duplicate_reasons
            else '<p class="note">Nothing removed.</p>'
        )
    for reason in _reason_counts(sheet.ledger):
        if reason not in sheet.by_reason:
            continue
        rows = sheet.by_reason[reason]
        total = sum(1 for r in sheet.ledger if r["reason"] == reason and r["duplicate_of"] is None)
        scored = any(score_order(r)[0] == 0 for r in rows)
        order = "by score (or distance), lowest first" if scored else "by pair_id"
        parts.append(
            f'<h3 id="reason-{_e(reason)}"><code>{_e(reason)}</code> · {_rows(total)}</h3>'
            f'<p class="note">Ordered {order}.</p>'
        )
        if len(rows) < total:
            parts.append(
                f'<p class="cap" data-not-shown="{total - len(rows)}">Showing {len(rows)} of '
                f"{total}, evenly spread over the score range; {total - len(rows)} not shown.</p>"
            )
        if sheet.stage == RAW_PAIRS:
            parts.append(_rejects_table(sheet, reason, rows))
        else:
            cards = "".join(_removed_card(sheet, r) for r in rows)
            parts.append(f'<div class="grid" data-reason="{_e(reason)}">{cards}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _taken_down_since_html(pair_ids: list[str], cap: int) -> str:
    shown = spread(pair_ids, cap)
    parts = [
        f'<div id="taken-down"><h3>taken down after curation · {_rows(len(pair_ids))}</h3>'
        '<p class="note">A takedown removed these pairs of this date from the tables after the '
        "stages ran; only their pair_ids are shown.</p>"
    ]
    if len(shown) < len(pair_ids):
        hidden = len(pair_ids) - len(shown)
        parts.append(
            f'<p class="cap" data-not-shown="{hidden}">Showing {len(shown)} of {len(pair_ids)}; '
            f"{hidden} not shown.</p>"
        )
    cards = "".join(_takedown_card(pid, "removed", TAKEDOWN) for pid in shown)
    parts.append(f'<div class="grid" data-reason="{TAKEDOWN}">{cards}</div></div>')
    return "".join(parts)


def _rejects_table(sheet: Sheet, reason: str, rows: list[dict]) -> str:
    """Rows that never became pairs have no image: a table reads better than empty cards."""
    lines = []
    for row in rows:
        attrs = f'data-pair-id="{_e(row["pair_id"])}" data-reason="{_e(reason)}"'
        if row["pair_id"] in sheet.taken_down:
            lines.append(
                f'<tr class="removed taken-down" {attrs}><td class="pid">{_e(row["pair_id"])}'
                '</td><td colspan="3"><span class="badge">taken down</span></td></tr>'
            )
            continue
        caption = (
            _e(row["text"])
            if (row["text"] or "").strip()
            else '<span class="meta">(no caption)</span>'
        )
        lines.append(
            f'<tr class="removed" {attrs}><td class="pid">{_e(row["pair_id"])}</td>'
            f'<td class="meta">{_e(row["source"])}</td><td>{_e(row["detail"])}</td>'
            f"<td>{caption}</td></tr>"
        )
    return (
        f'<table class="rejects" data-reason="{_e(reason)}"><tr><th>pair_id</th><th>source</th>'
        f"<th>detail</th><th>caption</th></tr>{''.join(lines)}</table>"
    )


def _clusters_html(sheet: Sheet, limits: ReviewLimits) -> str:
    parts = ['<section id="clusters"><h2>Duplicate clusters</h2>']
    if not sheet.clusters:
        parts.append('<p class="note">No duplicates removed here.</p></section>')
        return "\n".join(parts)
    parts.append(
        '<p class="note">Each group: the kept original (green; it may be from an earlier day) and '
        "the copies removed as its duplicates (red), least certain first.</p>"
    )
    if len(sheet.clusters) < sheet.cluster_total:
        hidden = sheet.cluster_total - len(sheet.clusters)
        parts.append(
            f'<p class="cap" data-not-shown="{hidden}">Showing {len(sheet.clusters)} of '
            f"{sheet.cluster_total} clusters, evenly spread from the least to the most certain; "
            f"{hidden} not shown.</p>"
        )
    parts.append('<div class="clusters">')
    for cluster in sheet.clusters:
        original = cluster.original
        note = "".join(
            f'<div class="detail">later removed at {_e(stage)}: {_e(reason)}</div>'
            for stage, reason in cluster.later
            if stage != TAKEDOWN and reason != TAKEDOWN
        )
        badge = f'<span class="badge kept">kept {_e(original.date or "?")}</span>'
        first = (
            _takedown_card(original.pair_id, "original")
            if original.pair_id in sheet.taken_down
            else _card(
                "original",
                original.pair_id,
                sheet.images.get((original.pair_id, original.date))
                or SheetImage(missing="original not found in raw_pairs"),
                badge,
                _size(original.width, original.height),
                original.text,
                "",
                note,
            )
        )
        copies = "".join(_copy_card(sheet, r) for r in cluster.copies)
        more = (
            f'<div class="more" data-not-shown="{cluster.hidden_copies}">'
            f"+{cluster.hidden_copies} more copies not shown</div>"
            if cluster.hidden_copies
            else ""
        )
        parts.append(
            f'<div class="cluster" data-original="{_e(original.pair_id)}">{first}'
            f'<div class="arrow">⟵</div>{copies}{more}</div>'
        )
    parts.append("</div></section>")
    return "\n".join(parts)


def _kept_html(sheet: Sheet) -> str:
    total = sheet.kept_total
    shown = len(sheet.kept_sample)
    parts = [f'<section id="kept"><h2>Kept · {_rows(total)}</h2>']
    if shown < total:
        parts.append(
            f'<p class="cap" data-not-shown="{total - shown}">Showing {shown} of {total}: a '
            f"fixed sample by hash of pair_id, in pair_id order; {total - shown} not shown.</p>"
        )
    if not shown:
        parts.append('<p class="note">Nothing kept.</p>')
    cards = []
    for pair in sheet.kept_sample:
        if pair.pair_id in sheet.taken_down:
            cards.append(_takedown_card(pair.pair_id, "kept"))
            continue
        scores = [
            (c, _num(pair.fields.get(c)), False)
            for c in sheet.score_columns
            if pair.fields.get(c) is not None
        ]
        cards.append(
            _card(
                "kept",
                pair.pair_id,
                sheet.images[(pair.pair_id, pair.date)],
                "",
                _size(pair.width, pair.height, pair.fields.get("image_format")),
                pair.text,
                _scores(scores),
                "",
            )
        )
    parts.append(f'<div class="grid">{"".join(cards)}</div></section>')
    return "\n".join(parts)


def _removed_card(sheet: Sheet, row: dict) -> str:
    if row["pair_id"] in sheet.taken_down:
        return _takedown_card(row["pair_id"], "removed", row["reason"])
    image = sheet.images[(row["pair_id"], row["date"])]
    scores = []
    if row["score"] is not None:
        scores.append(("score", _num(row["score"]), True))
    if row["distance"] is not None:
        scores.append(("distance", _num(row["distance"]), True))
    if row["similarity"] is not None:
        scores.append(("similarity", format_cosine(row["similarity"]), True))
    if row["threshold"] is not None:
        scores.append(("threshold", _threshold(row), False))
    size = _size(*sheet.sizes.get((row["pair_id"], row["date"]), (None, None)))
    meta = " · ".join(_e(p) for p in (size, row["source"]) if p)
    return _card(
        "removed",
        row["pair_id"],
        image,
        "",
        meta,
        row["text"],
        _scores(scores),
        f'<div class="detail">{_e(row["detail"])}</div>' if row["detail"] else "",
        {"data-reason": row["reason"]},
    )


def _copy_card(sheet: Sheet, row: dict) -> str:
    attrs = {"data-duplicate-of": row["duplicate_of"], "data-reason": row["reason"]}
    if row["pair_id"] in sheet.taken_down:
        return _takedown_card(row["pair_id"], "copy", row["reason"], attrs)
    scores = []
    if row["similarity"] is not None:
        scores.append(("cosine", format_cosine(row["similarity"]), True))
    if row["distance"] is not None:
        label = "Hamming bits" if row["reason"] == "phash_duplicate" else "distance"
        scores.append((label, _num(row["distance"]), True))
    if row["threshold"] is not None:
        scores.append(("threshold", _threshold(row), False))
    raw = sheet.images.get((row["pair_id"], row["date"]))
    return _card(
        "copy",
        row["pair_id"],
        raw or SheetImage(missing="not found in raw_pairs"),
        f'<span class="badge removed">{_e(row["reason"])}</span>',
        _size(*sheet.sizes.get((row["pair_id"], row["date"]), (None, None))),
        row["text"],
        _scores(scores),
        "",
        attrs,
    )


def _card(
    kind: str,
    pair_id: str,
    image: SheetImage,
    badge: str,
    meta: str,
    text: str | None,
    scores: str,
    extra: str,
    attrs: dict[str, str] | None = None,
) -> str:
    attributes = "".join(f' {k}="{_e(v)}"' for k, v in (attrs or {}).items())
    caption = (
        f'<p class="caption" title="{_e(text)}">{_e(text)}</p>'
        if (text or "").strip()
        else '<p class="caption meta">(no caption)</p>'
    )
    return (
        f'<figure class="card {kind}" data-pair-id="{_e(pair_id)}"{attributes}>'
        f'{_thumb(image, pair_id)}<figcaption>{badge}<div class="pid">{_e(pair_id)}</div>'
        f'<div class="meta">{meta}</div>{scores}{caption}{extra}</figcaption></figure>'
    )


def _takedown_card(
    pair_id: str, kind: str, reason: str | None = None, attrs: dict[str, str] | None = None
) -> str:
    attributes = "".join(f' {k}="{_e(v)}"' for k, v in (attrs or {}).items())
    if reason and "data-reason" not in (attrs or {}):
        attributes += f' data-reason="{_e(reason)}"'
    return (
        f'<figure class="card {kind} taken-down" data-pair-id="{_e(pair_id)}"{attributes}>'
        '<div class="thumb taken-down">taken down</div>'
        f'<figcaption><div class="pid">{_e(pair_id)}</div></figcaption></figure>'
    )


def _thumb(image: SheetImage, pair_id: str) -> str:
    if image.uri:
        return f'<img class="thumb" src="{image.uri}" alt="{_e(pair_id)}">'
    return f'<div class="thumb placeholder">{_e(image.missing or "no image")}</div>'


_HIT = ' class="hit"'


def _scores(items: list[tuple[str, str, bool]]) -> str:
    if not items:
        return ""
    cells = "".join(
        f"<dt>{_e(name)}</dt><dd{_HIT if hit else ''}>{_e(value)}</dd>"
        for name, value, hit in items
    )
    return f'<dl class="scores">{cells}</dl>'


def _threshold(row: dict) -> str:
    """A ledger row's threshold: a cosine to four decimals beside a similarity, else rounded."""
    if row["similarity"] is not None:
        return format_cosine(row["threshold"])
    return _num(row["threshold"])


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _size(width: int | None, height: int | None, fmt: str | None = None) -> str:
    parts = []
    if width and height:
        parts.append(f"{width}×{height}")
    if fmt:
        parts.append(_e(fmt))
    return " · ".join(parts)


def _index_html(
    date: str,
    rows: list[tuple[str, int | None, int | None, dict[str, int]]],
    profile: Profile,
) -> str:
    lines = []
    for stage, kept, removed, reasons in rows:
        if kept is None:
            lines.append(
                f'<tr data-stage="{_e(stage)}"><td><code>{_e(stage)}</code></td>'
                '<td colspan="5" class="note">not materialized for this date</td></tr>'
            )
            continue
        rows_in = kept + (removed or 0)
        share = kept / rows_in if rows_in else 1.0
        top = ", ".join(f"{_e(r)} {n}" for r, n in reasons.items()) or "–"
        lines.append(
            f'<tr data-stage="{_e(stage)}"><td><a href="{_e(stage)}.html"><code>{_e(stage)}'
            f'</code></a></td><td class="num">{rows_in}</td><td class="num">{kept}</td>'
            f'<td class="num">{removed}</td><td><div class="bar"><div class="k" style="width:'
            f'{share * 100:.1f}%"></div><div class="r" style="width:{(1 - share) * 100:.1f}%">'
            f"</div></div></td><td>{top}</td></tr>"
        )
    body = (
        '<section id="stages"><h2>Stages</h2><table><tr><th>stage (review sheet)</th>'
        '<th class="num">in</th><th class="num">kept</th><th class="num">removed</th>'
        "<th>kept / removed</th><th>removed by reason</th></tr>"
        + "".join(lines)
        + "</table></section>"
    )
    return _page(
        f"{date} review",
        f"Review sheets · {_e(date)}",
        "Each stage's sheet shows its kept and removed pairs with thumbnails and scores.",
        _profile_html(profile),
        body,
    )
