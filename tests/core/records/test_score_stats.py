"""Mergeable score statistics: exact counts and extremes, percentiles within one bin."""

import numpy as np
import pytest

from dataplatform.core.records.score_stats import (
    ASINH,
    LINEAR,
    LINEAR_BINS,
    PLOT_BINS,
    Binning,
    ScoreStats,
)

RANGED = Binning.for_range((-1.0, 1.0))
UNRANGED = Binning.for_range(None)


def _days(seed: int, sizes=(500, 3, 1200)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.2, 0.3, n).clip(-1, 1) for n in sizes]


def test_merged_days_equal_the_statistics_of_all_values():
    days = _days(0)
    merged = ScoreStats(RANGED)
    for values in days:
        merged = merged.merge(ScoreStats.from_dict(ScoreStats.of(values, RANGED).as_dict()))
    every = np.concatenate(days)
    whole = ScoreStats.of(every, RANGED)
    assert merged.counts == whole.counts
    assert merged.count == every.size
    assert merged.low == every.min() and merged.high == every.max()
    assert merged.total == pytest.approx(every.sum(), abs=1e-9)
    summary = merged.summary()
    for q in (5, 50, 95):
        assert abs(summary[f"p{q}"] - np.percentile(every, q)) <= RANGED.width
    assert summary["percentiles_from"] == f"{LINEAR_BINS} bins of width 0.005"


def test_nulls_and_infinities_are_not_counted():
    stats = ScoreStats.of([0.5, np.nan, np.inf, -np.inf, 0.25], RANGED)
    assert (stats.count, stats.low, stats.high, stats.total) == (2, 0.25, 0.5, 0.75)
    assert ScoreStats.of([np.nan], RANGED).summary() == {"count": 0}


def test_values_beyond_the_range_keep_exact_extremes():
    stats = ScoreStats.of([-3.0, 0.0, 7.0], RANGED)
    assert (stats.low, stats.high) == (-3.0, 7.0)
    assert sorted(stats.counts) == [0, LINEAR_BINS // 2, LINEAR_BINS - 1]
    assert stats.percentile(0) == -3.0 and stats.percentile(100) == 7.0


def test_unranged_scores_bin_on_asinh_with_bounded_relative_error():
    rng = np.random.default_rng(1)
    values = rng.lognormal(5, 2, 5000)  # blur-variance-like: many magnitudes
    stats = ScoreStats.of(values, UNRANGED)
    assert UNRANGED.kind == ASINH and RANGED.kind == LINEAR
    for q in (5, 50, 95):
        exact = np.percentile(values, q)
        assert abs(stats.percentile(q) - exact) <= 0.01 * exact


def test_plot_counts_cover_every_value_on_the_plot_axis():
    values = np.concatenate(_days(2))
    bars, (lo, hi) = ScoreStats.of(values, RANGED).plot_counts()
    assert lo <= values.min() and values.max() <= hi and len(bars) <= PLOT_BINS
    assert bars.tolist() == np.histogram(values, bins=len(bars), range=(lo, hi))[0].tolist()
    bars, axis = ScoreStats.of([2.0, 10.0, 500.0], UNRANGED).plot_counts()
    assert axis == (2.0, 500.0) and bars.sum() == 3 and bars[0] == 2 and bars[-1] == 1


def test_statistics_over_different_bins_do_not_merge():
    other = Binning.for_range((0.0, 1.0))
    with pytest.raises(ValueError, match="different bins"):
        ScoreStats.of([0.1], RANGED).merge(ScoreStats.of([0.1], other))
    with pytest.raises(ValueError, match="hi > lo"):
        Binning.for_range((1.0, 1.0))


def test_plot_counts_span_the_data_not_the_declared_range():
    # CLIP-like scores: a sliver of [-1, 1]. The bars group whole stored bins (width 0.005)
    # from the lowest occupied bin to the highest, so each bar is an exact count.
    values = np.random.default_rng(3).uniform(0.18, 0.34, 1000)
    bars, (lo, hi) = ScoreStats.of(values, RANGED).plot_counts()
    assert lo <= values.min() < values.max() < hi
    assert hi - lo < 0.2 and len(bars) <= PLOT_BINS and bars.sum() == 1000
    assert bars[0] > 0 and bars[-1] > 0
    edges = np.linspace(lo, hi, len(bars) + 1)
    assert bars.tolist() == np.histogram(values, bins=edges)[0].tolist()
    # Near the top of the range the bars start lower rather than run past it.
    bars, axis = ScoreStats.of([-0.97, 1.0], RANGED).plot_counts()
    assert axis == (-1.0, 1.0) and len(bars) == PLOT_BINS and bars[0] == bars[-1] == 1
