"""Token budget: tokens per image from 7.6, per-day and total rows, the PNG plot."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dataplatform.core.tokens.token_budget import (
    HEIGHT,
    MARGIN,
    WIDTH,
    BudgetRow,
    budget,
    budget_plot_png,
    tokens_per_image,
)


def test_tokens_per_image_matches_section_7_6() -> None:
    assert tokens_per_image(448, 16) == 784
    assert tokens_per_image(256, 16) == 256
    assert tokens_per_image(336, 14) == 576
    assert tokens_per_image(336, 16) == 441


def test_tokens_per_image_rejects_indivisible() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        tokens_per_image(448, 14 * 3)
    with pytest.raises(ValueError, match="positive"):
        tokens_per_image(256, 0)


def test_budget_rows_sorted_then_total() -> None:
    rows = budget({"2025-01-02": (10, 2560), "2025-01-01": (4, 1024)}, target_tokens=10_000)
    assert rows == [
        BudgetRow("2025-01-01", 4, 1024, 256.0, 10_000, 0.1024),
        BudgetRow("2025-01-02", 10, 2560, 256.0, 10_000, 0.256),
        BudgetRow("total", 14, 3584, 256.0, 10_000, 0.3584),
    ]


def test_budget_empty_and_zero_image_days() -> None:
    assert budget({}, 100) == [BudgetRow("total", 0, 0, 0.0, 100, 0.0)]
    rows = budget({"2025-01-01": (0, 0)}, 100)
    assert rows[0].tokens_per_image == 0.0


def test_budget_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target_tokens"):
        budget({"2025-01-01": (1, 1)}, 0)
    with pytest.raises(ValueError, match="reserved"):
        budget({"total": (1, 1)}, 10)
    with pytest.raises(ValueError, match="2025-01-01"):
        budget({"2025-01-01": (-1, 1)}, 10)


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (WIDTH, HEIGHT)
    return np.asarray(image.convert("RGB"))


def test_plot_draws_target_line_and_cumulative_curve() -> None:
    rows = budget({"2025-01-01": (1, 250), "2025-01-02": (1, 250)}, target_tokens=1000)
    pixels = _decode(budget_plot_png(rows))
    red = (pixels == (200, 40, 40)).all(axis=-1)
    blue = (pixels == (70, 110, 180)).all(axis=-1)
    # The axis runs up to the target (the largest value), so the target sits at the top margin.
    assert set(np.nonzero(red)[0]) == {MARGIN}
    assert blue.any()
    # The curve ends at half the target: halfway up the plot.
    plot_h = HEIGHT - 2 * MARGIN
    last_x = WIDTH - MARGIN
    blue_rows = np.nonzero(blue[:, last_x])[0]
    assert abs(blue_rows.mean() - (HEIGHT - MARGIN - plot_h / 2)) <= 2


def test_plot_without_days() -> None:
    pixels = _decode(budget_plot_png(budget({}, 1000)))
    assert not (pixels == (70, 110, 180)).all(axis=-1).any()
    assert (pixels == (200, 40, 40)).all(axis=-1).any()
