"""Image-token budget: how many tokens each day produced against the target (section 7.6).

7.6 sets image tokens at 10-20% of a 30T-token mix (3T-6T) and notes that the resolution and
the tokenizer's downsampling fix the tokens per image: ``(448 / 16) ** 2 = 784``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import (
    partition_dates,
    partition_file,
    read_footer,
    read_partition,
)

TOTAL_SCOPE = "total"
# 7.6's lower end: image tokens at 10% of a 30T-token mix. Progress is reported against it.
DEFAULT_TARGET_TOKENS = 3_000_000_000_000

WIDTH, HEIGHT, MARGIN = 480, 240, 40
TOKEN_COUNT = "token_count"


@dataclass(frozen=True)
class BudgetRow:
    """Tokens produced in one scope (a day, or ``"total"``) against the target."""

    scope: str
    images: int
    tokens: int
    tokens_per_image: float
    target_tokens: int
    progress: float  # tokens / target_tokens


def tokens_per_image(resolution: int, downsample: int) -> int:
    """Tokens per square ``resolution`` image for a tokenizer that downsamples by ``downsample``."""
    if resolution < 1 or downsample < 1:
        raise ValueError(
            f"resolution and downsample must be positive, got {resolution} and {downsample}"
        )
    if resolution % downsample:
        raise ValueError(
            f"resolution {resolution} is not divisible by the downsample factor {downsample}; "
            "pick a resolution that is a multiple of it"
        )
    return (resolution // downsample) ** 2


def _row(scope: str, images: int, tokens: int, target_tokens: int) -> BudgetRow:
    return BudgetRow(
        scope=scope,
        images=images,
        tokens=tokens,
        tokens_per_image=tokens / images if images else 0.0,
        target_tokens=target_tokens,
        progress=tokens / target_tokens,
    )


def budget(rows_per_day: Mapping[str, tuple[int, int]], target_tokens: int) -> list[BudgetRow]:
    """One row per day (ISO dates, sorted) with that day's ``(images, tokens)``, then the total.

    A day row's ``progress`` is that day's share of the target; the total row's is the overall
    progress.
    """
    if target_tokens <= 0:
        raise ValueError(f"target_tokens must be positive, got {target_tokens}")
    if TOTAL_SCOPE in rows_per_day:
        raise ValueError(f"{TOTAL_SCOPE!r} is reserved for the total row; it cannot be a day")
    rows = []
    for day in sorted(rows_per_day):
        images, tokens = rows_per_day[day]
        if images < 0 or tokens < 0:
            raise ValueError(f"day {day}: images and tokens must be >= 0, got {images}, {tokens}")
        rows.append(_row(day, int(images), int(tokens), target_tokens))
    total_images = sum(row.images for row in rows)
    total_tokens = sum(row.tokens for row in rows)
    rows.append(_row(TOTAL_SCOPE, total_images, total_tokens, target_tokens))
    return rows


def budget_plot_png(rows: Sequence[BudgetRow]) -> bytes:
    """Cumulative tokens per day (blue) against the target (dashed red), as PNG bytes."""
    days = [row for row in rows if row.scope != TOTAL_SCOPE]
    target = max((row.target_tokens for row in rows), default=0)
    cumulative = []
    running = 0
    for row in days:
        running += row.tokens
        cumulative.append(running)
    top = max([target, *cumulative, 1])

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    bottom = HEIGHT - MARGIN

    def y_of(value: float) -> float:
        return bottom - plot_h * value / top

    draw.line([MARGIN, bottom, WIDTH - MARGIN, bottom], fill="black")
    draw.line([MARGIN, MARGIN, MARGIN, bottom], fill="black")
    if target:
        y = round(y_of(target))
        for x in range(MARGIN, WIDTH - MARGIN, 8):
            draw.line([x, y, min(x + 4, WIDTH - MARGIN), y], fill=(200, 40, 40), width=1)
    if cumulative:
        step = plot_w / max(len(cumulative) - 1, 1)
        points = [(MARGIN + k * step, y_of(value)) for k, value in enumerate(cumulative)]
        if len(points) > 1:
            draw.line(points, fill=(70, 110, 180), width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(70, 110, 180))
        draw.text((MARGIN, bottom + 6), days[0].scope, fill="black")
        draw.text((WIDTH - MARGIN - 60, bottom + 6), days[-1].scope, fill="black")
    progress = cumulative[-1] / target if cumulative and target else 0.0
    draw.text(
        (MARGIN, 10),
        f"image tokens {running:,} / target {target:,} ({progress:.1%})",
        fill="black",
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tokens_per_day(home: Home, table: str = "tokens") -> dict[str, tuple[int, int]]:
    """(images, tokens) of every materialized day of ``table``, as ``budget`` takes them.

    Read from each partition's footer: its row count, and the sum of ``token_count`` from the
    column's statistics, exact wherever a row group's min equals its max (one resolution and
    tokenizer give every image of a day the same count). Only a day whose counts vary within a
    row group has that column read, that day alone; no day's other columns are read.
    """
    totals = {}
    for date in partition_dates(home, table):
        footer = read_footer(partition_file(home, table, date))
        tokens = _footer_tokens(footer, table, date)
        if tokens is None:
            column = read_partition(home, table, date, [TOKEN_COUNT]).column(TOKEN_COUNT)
            tokens = int(pc.sum(column).as_py() or 0)
        totals[date] = (footer.num_rows, tokens)
    return totals


def _footer_tokens(footer: pq.FileMetaData, table: str, date: str) -> int | None:
    """The day's token sum from the statistics alone, or None where they cannot give it."""
    names = footer.schema.names
    if TOKEN_COUNT not in names:
        raise ValueError(
            f"{table} {date} has no {TOKEN_COUNT} column: it is not a tokens table; "
            f"materialize tokens for {date}"
        )
    index = names.index(TOKEN_COUNT)
    total = 0
    for k in range(footer.num_row_groups):
        group = footer.row_group(k)
        if not group.num_rows:
            continue
        stats = group.column(index).statistics
        if stats is None:
            return None
        if not stats.has_min_max:
            if stats.has_null_count and stats.null_count == group.num_rows:
                continue  # every count null: nothing to add
            return None
        if stats.min != stats.max or not stats.has_null_count:
            return None
        total += (group.num_rows - stats.null_count) * int(stats.min)
    return total
