"""The resampling loops' fast AUC against scikit-learn's and against the Mann-Whitney statistic it replaced."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from fpindex.metrics import rank_auc


def tied_sets(seed, count=300):
    """Random labelled score sets of many sizes and class balances, rounded so that ties are common."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(4, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]                                  # both classes, always
        yield y, np.round(rng.normal(y * rng.uniform(0, 2), 1.0), int(rng.integers(0, 3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_auc_matches_roc_auc_score_with_ties(seed):
    diffs = [abs(rank_auc(y, s) - roc_auc_score(y, s)) for y, s in tied_sets(seed)]
    assert max(diffs) <= 1e-12


def test_rank_auc_is_the_mann_whitney_statistic_bit_for_bit():
    for y, s in tied_sets(3, count=100):
        pos, neg = s[y == 1], s[y == 0]
        u = mannwhitneyu(pos, neg, alternative="greater").statistic
        assert rank_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]) == float(u) / (len(pos) * len(neg))


def test_rank_auc_by_hand():
    # 0.8 vs {0.8, 0.1, 0.3, 0.2} = ½ + 3; 0.3 vs the same = 0 + 1 + ½ + 1  →  6 of 8 pairs
    assert rank_auc([1, 0, 0, 0, 1, 0], [0.8, 0.8, 0.1, 0.3, 0.3, 0.2]) == 0.75
    assert rank_auc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert rank_auc([0, 1], [0.2, 0.1]) == 0.0
