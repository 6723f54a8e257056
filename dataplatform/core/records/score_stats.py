"""Mergeable statistics of one score: what a day stores so that no card rereads its rows.

The overall dataset card is the merge of every day's statistics: O(days) small records, never
a row of the history. Count, sum, min and max merge exactly. Percentiles cannot be merged
exactly from summaries, so each day also keeps a histogram over FIXED bins (the same bins every
day, so histograms add): percentiles read from it are within one bin of the exact value, and
the overall plot is drawn from it.

A score with a finite ``plot_range`` is binned linearly over that range (values outside it land
in the end bins; min and max stay exact). A score without one (a scale, not a range) is binned
over ``asinh(value)``, which is linear near zero and logarithmic far from it, so one fixed set
of bins covers any magnitude with a bounded relative error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# 400 linear bins: a multiple of the plot's 40 bars, and 0.25% of the range per bin.
LINEAR_BINS = 400
PLOT_BINS = 40
# asinh bins over +-asinh(1e13): 0.6% relative width far from zero, 0.006 absolute near it.
ASINH_BINS = 10_000
ASINH_LIMIT = math.asinh(1e13)

LINEAR = "linear"
ASINH = "asinh"


@dataclass(frozen=True)
class Binning:
    """Fixed bins: ``kind`` linear over [lo, hi], or asinh-transformed over [lo, hi]."""

    kind: str
    lo: float
    hi: float
    bins: int

    @classmethod
    def for_range(cls, plot_range: tuple[float, float] | None) -> Binning:
        """The bins of a score whose plot axis is ``plot_range`` (None: it spans the data)."""
        if plot_range is None:
            return cls(ASINH, -ASINH_LIMIT, ASINH_LIMIT, ASINH_BINS)
        lo, hi = plot_range
        if not hi > lo:
            raise ValueError(f"a score's plot_range must have hi > lo, got {plot_range}")
        return cls(LINEAR, float(lo), float(hi), LINEAR_BINS)

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def _forward(self, values: np.ndarray) -> np.ndarray:
        return np.arcsinh(values) if self.kind == ASINH else values

    def value(self, position: float) -> float:
        """The score at ``position`` bins from the low end (fractions lie inside a bin)."""
        x = self.lo + position * self.width
        return math.sinh(x) if self.kind == ASINH else x

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value; values beyond the ends fall in the end bins."""
        position = (self._forward(values) - self.lo) / self.width
        return np.clip(np.floor(position), 0, self.bins - 1).astype(np.int64)

    def resolution(self) -> str:
        """How close a percentile read from these bins is to the exact one, in words."""
        if self.kind == LINEAR:
            return f"{self.bins} bins of width {self.width:.3g}"
        return f"{self.bins} asinh bins: within {math.expm1(self.width):.2%} (|x| > 1)"

    def as_list(self) -> list:
        return [self.kind, self.lo, self.hi, self.bins]


@dataclass
class ScoreStats:
    """Count, sum, min, max and fixed-bin counts of a score's finite values."""

    binning: Binning
    count: int = 0
    total: float = 0.0
    low: float | None = None
    high: float | None = None
    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, values: np.ndarray | Sequence[float | None], binning: Binning) -> ScoreStats:
        """The statistics of ``values``; nulls (NaN) and infinities are not counted."""
        data = np.asarray(values, dtype=np.float64)
        data = data[np.isfinite(data)]
        if not data.size:
            return cls(binning)
        bins, counts = np.unique(binning.index(data), return_counts=True)
        return cls(
            binning,
            count=int(data.size),
            total=math.fsum(data.tolist()),
            low=float(data.min()),
            high=float(data.max()),
            counts={int(b): int(c) for b, c in zip(bins, counts, strict=True)},
        )

    def merge(self, other: ScoreStats) -> ScoreStats:
        """These statistics and ``other``'s together (both over the same bins)."""
        if other.binning != self.binning:
            raise ValueError(
                f"cannot merge score statistics over different bins: {self.binning} and "
                f"{other.binning}; rebuild the days summarised with the old bins"
            )
        counts = dict(self.counts)
        for b, c in other.counts.items():
            counts[b] = counts.get(b, 0) + c
        lows = [v for v in (self.low, other.low) if v is not None]
        highs = [v for v in (self.high, other.high) if v is not None]
        return ScoreStats(
            self.binning,
            count=self.count + other.count,
            total=self.total + other.total,
            low=min(lows) if lows else None,
            high=max(highs) if highs else None,
            counts=counts,
        )

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile by numpy's linear rule, between two order statistics that are
        each read from their bin (values spread evenly inside it): within one bin of the exact
        value for values inside the bins' range."""
        if not self.count:
            raise ValueError("no values: a percentile of an empty score is undefined")
        rank = q / 100 * (self.count - 1)
        below = math.floor(rank)
        lower = self._order_statistic(below)
        if rank == below:
            return lower
        return lower + (rank - below) * (self._order_statistic(below + 1) - lower)

    def _order_statistic(self, k: int) -> float:
        """The ``k``-th smallest value (0-based): exact at the ends, else within its bin."""
        if k <= 0 or k >= self.count - 1:
            return float(self.low if k <= 0 else self.high)
        seen = 0
        for b in sorted(self.counts):
            c = self.counts[b]
            if k < seen + c:
                value = self.binning.value(b + (k - seen + 0.5) / c)
                return min(max(value, self.low), self.high)
            seen += c
        return float(self.high)

    def summary(self) -> dict:
        """What the dataset card reports: exact count, mean, min and max; binned percentiles."""
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 6),
            "min": round(self.low, 6),
            "p5": round(self.percentile(5), 6),
            "p50": round(self.percentile(50), 6),
            "p95": round(self.percentile(95), 6),
            "max": round(self.high, 6),
            "percentiles_from": self.binning.resolution(),
        }

    def plot_counts(self) -> tuple[np.ndarray, tuple[float, float]]:
        """At most ``PLOT_BINS`` bar heights and their axis, spanning the data, not the range.

        Linear bins: the bars are whole groups of the stored bins from the lowest occupied one
        to the highest, so every bar is an exact count (CLIP scores fill a few of the 400 bins
        over [-1, 1], and a plot of the whole range would squeeze them into one bar). Asinh
        bins: ``PLOT_BINS`` bars over [min, max], each bin counted at its centre.
        """
        if self.binning.kind == LINEAR:
            return self._linear_plot_counts()
        bars = np.zeros(PLOT_BINS, dtype=np.int64)
        lo, hi = (self.low, self.high) if self.count else (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        for b, c in self.counts.items():
            center = self.binning.value(b + 0.5)
            bar = int((min(max(center, lo), hi) - lo) / span * PLOT_BINS)
            bars[min(bar, PLOT_BINS - 1)] += c
        return bars, (lo, lo + span)

    def _linear_plot_counts(self) -> tuple[np.ndarray, tuple[float, float]]:
        binning = self.binning
        if not self.counts:
            return np.zeros(PLOT_BINS, dtype=np.int64), (binning.lo, binning.hi)
        first, last = min(self.counts), max(self.counts)
        per_bar = math.ceil((last - first + 1) / PLOT_BINS)
        n_bars = math.ceil((last - first + 1) / per_bar)
        # Bars end on stored bin edges; near the top of the range they start lower instead.
        start = min(first, binning.bins - n_bars * per_bar)
        bars = np.zeros(n_bars, dtype=np.int64)
        for b, c in self.counts.items():
            bars[(b - start) // per_bar] += c
        return bars, (binning.value(start), binning.value(start + n_bars * per_bar))

    def as_dict(self) -> dict:
        return {
            "bins": self.binning.as_list(),
            "count": self.count,
            "sum": self.total,
            "min": self.low,
            "max": self.high,
            "counts": [[b, c] for b, c in sorted(self.counts.items())],
        }

    @classmethod
    def from_dict(cls, data: dict) -> ScoreStats:
        kind, lo, hi, bins = data["bins"]
        return cls(
            Binning(kind, float(lo), float(hi), int(bins)),
            count=int(data["count"]),
            total=float(data["sum"]),
            low=data["min"],
            high=data["max"],
            counts={int(b): int(c) for b, c in data["counts"]},
        )
