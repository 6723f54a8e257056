"""Histograms for metadata: the axis spans the data and the threshold, which is drawn."""

import io

import numpy as np
from PIL import Image

from dataplatform.core.records.plots import (
    HEIGHT,
    MARGIN,
    MARKER_RGB,
    WIDTH,
    data_axis,
    histogram_png,
)


def _marker_columns(png: bytes) -> list[int]:
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    middle = image[HEIGHT // 2]  # below the label, above the axis
    return [x for x in range(WIDTH) if tuple(middle[x]) == MARKER_RGB]


def test_the_axis_spans_the_data_and_the_threshold_within_the_declared_range():
    scores = np.array([0.21, 0.25, 0.33])
    lo, hi = data_axis(scores, (-1.0, 1.0), marker=0.18)
    assert 0.17 < lo < 0.18 and 0.33 < hi < 0.34  # padded by 2% of the span
    assert data_axis(np.array([0.99, 1.0]), (-1.0, 1.0)) == (0.9898, 1.0)  # clipped to 1
    assert data_axis(np.array([]), (0.0, 10.0)) == (0.0, 10.0)
    assert data_axis(np.array([5.0, 5.0]), None) == (4.99, 5.01)


def test_the_threshold_is_a_line_where_its_value_lies():
    scores = np.random.default_rng(0).uniform(0.2, 0.3, 500)
    png = histogram_png(scores, value_range=(-1.0, 1.0), title="clip_score", marker=0.22)
    lo, hi = data_axis(scores, (-1.0, 1.0), 0.22)
    plot_w = WIDTH - 2 * MARGIN
    columns = _marker_columns(png)
    assert columns and abs(np.mean(columns) - (MARGIN + plot_w * (0.22 - lo) / (hi - lo))) <= 1.5
    # Drawn over the declared [-1, 1], the line would sit 150 px further right.
    assert MARGIN + plot_w * 1.22 / 2 - np.mean(columns) > 150
    assert _marker_columns(histogram_png(scores, value_range=(-1.0, 1.0))) == []
