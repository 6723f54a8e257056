"""Small PNG charts for asset metadata, drawn with Pillow (no plotting library to install).

Dagster's UI renders Markdown images, so a histogram travels inside the metadata as a data URI.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 480, 240, 32


def histogram_png(
    values: Sequence[float] | np.ndarray,
    *,
    bins: int = 40,
    value_range: tuple[float, float] | None = None,
    title: str = "",
    marker: float | None = None,
) -> bytes:
    """A bar histogram of ``values`` with an optional vertical marker (a threshold)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if value_range is None:
        value_range = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
    lo, hi = value_range
    if hi <= lo:
        hi = lo + 1.0
    counts, _ = np.histogram(data, bins=bins, range=(lo, hi))
    return bars_png(counts, (lo, hi), title=title, marker=marker, n=int(data.size))


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
        draw.rectangle([x0, y0, x0 + bar_w - 1, HEIGHT - MARGIN], fill=(70, 110, 180))
    draw.line([MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], fill="black")
    if marker is not None and lo <= marker <= hi:
        x = MARGIN + plot_w * (marker - lo) / (hi - lo)
        draw.line([x, MARGIN, x, HEIGHT - MARGIN], fill=(200, 40, 40), width=2)
    shown = int(counts.sum()) if n is None else n
    draw.text((MARGIN, 8), f"{title}  n={shown}  max bin={top}", fill="black")
    draw.text((MARGIN, HEIGHT - MARGIN + 6), f"{lo:.3g}", fill="black")
    draw.text((WIDTH - MARGIN - 30, HEIGHT - MARGIN + 6), f"{hi:.3g}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
