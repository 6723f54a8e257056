"""Small PNG charts for asset metadata, drawn with Pillow (no plotting library to install).

Dagster's UI renders Markdown images, so a histogram travels inside the metadata as a data URI.
The axis spans the data (and the threshold), not the score's whole declared range: CLIP scores
of real pairs lie within about 0.1 of each other, a sliver of [-1, 1]. The threshold is a red
line, labelled with its value.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dataplatform.core.records.readable_numbers import format_number

WIDTH, HEIGHT, MARGIN = 480, 240, 32
# Room left on each side of the data, as a share of its span, so the end bars stay visible.
_PAD = 0.02
BAR_RGB = (70, 110, 180)
MARKER_RGB = (200, 40, 40)


def histogram_png(
    values: Sequence[float] | np.ndarray,
    *,
    bins: int = 40,
    value_range: tuple[float, float] | None = None,
    title: str = "",
    marker: float | None = None,
) -> bytes:
    """A bar histogram of ``values`` with an optional vertical marker (a threshold).

    ``value_range`` bounds the axis (a score's declared range); within it the axis spans the
    data and the marker, so the bars fill the plot whatever the score's scale.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    lo, hi = data_axis(data, value_range, marker)
    counts, _ = np.histogram(data, bins=bins, range=(lo, hi))
    return bars_png(counts, (lo, hi), title=title, marker=marker, n=int(data.size))


def data_axis(
    data: np.ndarray, bounds: tuple[float, float] | None, marker: float | None = None
) -> tuple[float, float]:
    """The axis of a plot of ``data``: its span and ``marker``'s, padded, within ``bounds``."""
    points = [float(data.min()), float(data.max())] if data.size else []
    if marker is not None and math.isfinite(marker):
        points.append(float(marker))
    if not points:
        return bounds if bounds is not None else (0.0, 1.0)
    lo, hi = min(points), max(points)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    lo, hi = lo - _PAD * span, hi + _PAD * span
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def bars_png(
    counts: Sequence[int] | np.ndarray,
    value_range: tuple[float, float],
    *,
    title: str = "",
    marker: float | None = None,
    n: int | None = None,
) -> bytes:
    """Histogram bars already counted (equal bins over ``value_range``), as PNG bytes.

    Apart from ``histogram_png`` so that a histogram merged from stored counts (the overall
    dataset card's) draws without the values it counts.
    """
    counts = np.asarray(counts, dtype=np.int64)
    bins = len(counts)
    lo, hi = value_range
    if hi <= lo:
        hi = lo + 1.0
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    top = max(int(counts.max()) if bins else 0, 1)
    bar_w = plot_w / max(bins, 1)
    for k, count in enumerate(counts):
        x0 = MARGIN + k * bar_w
        y0 = HEIGHT - MARGIN - plot_h * count / top
        draw.rectangle([x0, y0, x0 + bar_w - 1, HEIGHT - MARGIN], fill=BAR_RGB)
    draw.line([MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], fill="black")
    if marker is not None and lo <= marker <= hi:
        x = MARGIN + plot_w * (marker - lo) / (hi - lo)
        draw.line([x, MARGIN, x, HEIGHT - MARGIN], fill=MARKER_RGB, width=2)
        label = f"threshold {format_number(marker)}"
        # Left of the line when it sits in the right half, so the label stays on the plot.
        width = draw.textlength(label)
        draw.text((x - width - 4 if x > WIDTH / 2 else x + 4, MARGIN + 2), label, fill=MARKER_RGB)
    shown = int(counts.sum()) if n is None else n
    draw.text((MARGIN, 8), f"{title}  n={shown}  max bin={top}", fill="black")
    draw.text((MARGIN, HEIGHT - MARGIN + 6), format_number(lo), fill="black")
    right = format_number(hi)
    draw.text((WIDTH - MARGIN - draw.textlength(right), HEIGHT - MARGIN + 6), right, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """``png`` as a Markdown image with a data URI: Dagster's UI shows it inline."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
