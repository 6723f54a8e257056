import numpy as np
import pytest

from dataplatform.core.scoring.score_filter import ScoreRule, cut_for, keep_mask


def test_absolute_cut():
    scores = np.array([0.1, 0.28, 0.3, np.nan], dtype=np.float32)
    cut = cut_for(scores, ScoreRule(threshold=0.28))
    assert cut == 0.28
    assert keep_mask(scores, np.float32(cut)).tolist() == [False, True, True, False]


def test_percentile_keeps_the_top_share():
    scores = np.arange(100, dtype=np.float64) / 100
    cut = cut_for(scores, ScoreRule(mode="percentile", keep_top_percent=30))
    assert keep_mask(scores, cut).sum() == 30
    assert cut == pytest.approx(0.70)


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="mode"):
        ScoreRule(mode="top")
    with pytest.raises(ValueError, match="keep_top_percent"):
        ScoreRule(mode="percentile", keep_top_percent=0)
