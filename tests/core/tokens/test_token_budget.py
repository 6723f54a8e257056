"""Token budget: tokens per image from 7.6, per-day and total rows, the PNG plot."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataplatform.core.store.home import Home
from dataplatform.core.store.warehouse import commit_stage, partition_file, write_partition
from dataplatform.core.tokens import token_budget
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


def _tokens_day(home, date: str, counts: list[int | None], row_group_size: int | None = None):
    table = pa.table(
        {
            "pair_id": [f"{date}-{k}" for k in range(len(counts))],
            "date": [date] * len(counts),
            "token_count": pa.array(counts, pa.int32()),
        }
    )
    commit_stage(home, date, {"tokens": table})
    if row_group_size:  # several row groups, as a large day has
        pq.write_table(
            pq.read_table(partition_file(home, "tokens", date)),
            partition_file(home, "tokens", date),
            row_group_size=row_group_size,
        )


def test_tokens_per_day_reads_footers_and_only_a_varying_days_column(tmp_path, monkeypatch):
    home = Home(tmp_path / "home")
    _tokens_day(home, "2025-01-01", [784] * 5)
    _tokens_day(home, "2025-01-02", [784, 784, None, 784], row_group_size=2)
    _tokens_day(home, "2025-01-03", [256, 784, 784])  # two resolutions in one day
    _tokens_day(home, "2025-01-04", [])
    read = []
    original = token_budget.read_partition

    def spy(home, table, date, columns=None):
        read.append((date, columns))
        return original(home, table, date, columns)

    monkeypatch.setattr(token_budget, "read_partition", spy)
    assert token_budget.tokens_per_day(home) == {
        "2025-01-01": (5, 5 * 784),
        "2025-01-02": (4, 3 * 784),
        "2025-01-03": (3, 256 + 2 * 784),
        "2025-01-04": (0, 0),
    }
    assert read == [("2025-01-03", ["token_count"])]


def test_tokens_per_day_names_a_table_without_token_counts(tmp_path):
    home = Home(tmp_path / "home")
    write_partition(home, "raw_pairs", "2025-01-01", pa.table({"pair_id": ["a"]}))
    with pytest.raises(ValueError, match="raw_pairs 2025-01-01 has no token_count column"):
        token_budget.tokens_per_day(home, "raw_pairs")
