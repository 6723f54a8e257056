"""Score thresholds, absolute or by percentile, applied after the scores are stored.

Scores are written for every pair before any filtering, so a threshold can be changed and
re-applied without recomputing them; this module only turns a rule into a cut and a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

# The modes, declared once: the Literal is what a run config is checked against at launch.
ScoreMode = Literal["absolute", "percentile"]
ABSOLUTE, PERCENTILE = get_args(ScoreMode)
# Image-text cosine at or above which a pair is kept: LAION-5B's cut with OpenAI ViT-B/32 (its
# English pairs; LAION-400M used a stricter 0.3), the architecture the CLIP resource loads by
# default, and the low end of seed 003's 0.28-0.32 range. Another model needs its own cut.
DEFAULT_CLIP_THRESHOLD = 0.28
# Share kept in percentile mode: DataComp's CLIP-score baseline keeps the top 30% of its pool.
DEFAULT_KEEP_TOP_PERCENT = 30.0


@dataclass(frozen=True)
class ScoreRule:
    mode: str = ABSOLUTE
    threshold: float = DEFAULT_CLIP_THRESHOLD
    keep_top_percent: float = DEFAULT_KEEP_TOP_PERCENT

    def __post_init__(self) -> None:
        if self.mode not in (ABSOLUTE, PERCENTILE):
            raise ValueError(f"mode must be {ABSOLUTE!r} or {PERCENTILE!r}, not {self.mode!r}")
        if not 0.0 < self.keep_top_percent <= 100.0:
            raise ValueError(f"keep_top_percent must be in (0, 100], not {self.keep_top_percent}")

    def describe(self) -> str:
        if self.mode == ABSOLUTE:
            return f"keep score >= {self.threshold:g}"
        return f"keep the top {self.keep_top_percent:g}% by score"


def cut_for(scores: np.ndarray, rule: ScoreRule) -> float:
    """The score at or above which a pair is kept.

    Percentile mode cuts at the partition's own quantile (DataComp keeps the top 30% of its
    pool); ties at the cut are all kept, so slightly more than the share can survive.
    """
    if rule.mode == ABSOLUTE:
        return float(rule.threshold)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return float("inf")
    keep = max(1, math.ceil(finite.size * rule.keep_top_percent / 100.0))
    return float(np.sort(finite)[::-1][keep - 1])


def keep_mask(scores: np.ndarray, cut: float) -> np.ndarray:
    return np.isfinite(scores) & (scores >= cut)
