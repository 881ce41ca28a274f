"""Stage 7 — fixed, reference and calibrated decisions, and how `auto` picks one."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.config import DecideConfig
from fpindex.decide import (DECIDERS, DEFAULT_THRESHOLDS, FEATURES, Evidence, Labelled, choose_method, decide)
from fpindex.errors import FpindexError


def ev(cosine, ssim=None, jaccard=None, subspace=None, ssim_aligned=None):
    cosine = np.asarray(cosine, float)

    def given(v):
        return np.asarray(v if v is not None else np.zeros_like(cosine), float)

    return Evidence({"cosine": cosine, "ssim": given(ssim), "jaccard": given(jaccard), "subspace": given(subspace),
                     "ssim_aligned": given(ssim_aligned)})


def synthetic(n, used, seed):
    """Well separated evidence: members near-copies (high scores), non-members clearly lower."""
    rng = np.random.default_rng(seed)
    if used:
        return ev(rng.normal(0.97, 0.01, n), rng.normal(0.8, 0.05, n), rng.normal(0.85, 0.03, n))
    return ev(rng.normal(0.80, 0.03, n), rng.normal(0.3, 0.05, n), rng.normal(0.55, 0.03, n))


def test_evidence_matrix_in_feature_order():
    e = ev([0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [0.9, 1.0])
    assert len(e) == 2 and FEATURES == ("cosine", "ssim", "jaccard", "subspace", "ssim_aligned")
    np.testing.assert_array_equal(e.matrix(), [[0.1, 0.3, 0.5, 0.7, 0.9], [0.2, 0.4, 0.6, 0.8, 1.0]])


# ---- fixed ----------------------------------------------------------------------------------------

def test_fixed_default_threshold_is_inclusive():
    target = ev([0.95, 0.90, 0.8999, 0.2])
    d = decide(DecideConfig(method="fixed"), target, Labelled())
    assert d.method == "fixed" and d.p_value is None
    np.testing.assert_array_equal(d.label, [1, 1, 0, 0])
    np.testing.assert_array_equal(d.score, target.scores["cosine"])
    assert d.details == {"score": "cosine", "threshold": DEFAULT_THRESHOLDS["cosine"]}


def test_fixed_other_score_and_threshold():
    target = ev([0.99, 0.1, 0.5], ssim=[0.2, 0.6, 0.5])
    d = decide(DecideConfig(method="fixed", score="ssim"), target, Labelled())
    np.testing.assert_array_equal(d.label, [0, 1, 1])                   # default ssim threshold 0.5
    d = decide(DecideConfig(method="fixed", score="ssim", threshold=0.55), target, Labelled())
    np.testing.assert_array_equal(d.label, [0, 1, 0])
    assert d.details["threshold"] == 0.55


def test_unknown_score():
    with pytest.raises(FpindexError, match="unknown score"):
        decide(DecideConfig(method="fixed", score="psnr"), ev([0.5]), Labelled())


# ---- reference ------------------------------------------------------------------------------------

def test_reference_p_values_by_hand():
    null = ev([0.4, 0.1, 0.3, 0.2])            # sorted: 0.1 0.2 0.3 0.4
    target = ev([0.05, 0.25, 0.4, 0.5, 0.3])
    # #{null ≥ s}: 4, 2, 1, 0, 2   →   p = (1 + #) / (1 + 4)
    expected_p = np.array([5, 3, 2, 1, 3]) / 5
    d = decide(DecideConfig(method="reference", alpha=0.2), target, Labelled(reference=null))
    assert d.method == "reference"
    np.testing.assert_allclose(d.p_value, expected_p)
    np.testing.assert_array_equal(d.score, target.scores["cosine"])
    assert d.details["n_reference"] == 4 and d.details["min_possible_p"] == pytest.approx(0.2)
    # Five targets against four null values: Mann-Whitney U = #pairs target > null (+½ per tie) = 12 of 20,
    # one-sided p ≈ 0.36, so at α = 0.2 there is no evidence and nothing is labelled used.
    assert d.verdict.auc == pytest.approx(12 / 20)
    assert d.verdict.leakage is False and not d.label.any()
    d = decide(DecideConfig(method="reference", alpha=0.4), target, Labelled(reference=null))
    assert d.verdict.leakage is True
    np.testing.assert_array_equal(d.label, [0, 0, 1, 1, 0])      # p ≤ 0.4 once the set shows a signal


def test_reference_verdict_on_planted_signal_and_on_none():
    rng = np.random.default_rng(0)
    null = ev(rng.normal(0.0, 1.0, 200))
    clean = decide(DecideConfig(method="reference"), ev(rng.normal(0.0, 1.0, 300)), Labelled(reference=null))
    assert clean.verdict.leakage is False and clean.label.mean() <= 0.05
    leaky = decide(DecideConfig(method="reference"), ev(np.r_[rng.normal(0, 1, 150), rng.normal(3, 0.5, 150)]),
                   Labelled(reference=null))
    assert leaky.verdict.leakage is True and "leakage detected" in leaky.verdict.text()
    assert leaky.label[150:].mean() > 0.8 and leaky.label[:150].mean() <= 0.1


def test_calibrated_never_learns_that_less_similar_means_used():
    """A labelled split where 'used' images are *less* similar is no evidence of leakage, whatever a free fit says."""
    rng = np.random.default_rng(1)
    used = Evidence({f: rng.normal(-0.8, 1, 100) for f in FEATURES})
    not_used = Evidence({f: rng.normal(0.0, 1, 100) for f in FEATURES})
    target = Evidence({f: rng.normal(0.0, 1, 400) for f in FEATURES})
    d = decide(DecideConfig(method="calibrated"), target, Labelled(used=used, not_used=not_used))
    assert d.verdict.leakage is False and not d.label.any()
    assert all(w == 0 for w in d.details["weights"].values())


def test_calibrated_verdict_and_p_values_on_planted_signal():
    rng = np.random.default_rng(2)
    used = Evidence({f: rng.normal(1.5, 1, 100) for f in FEATURES})
    not_used = Evidence({f: rng.normal(0.0, 1, 100) for f in FEATURES})
    target = Evidence({f: np.r_[rng.normal(1.5, 1, 200), rng.normal(0, 1, 200)] for f in FEATURES})
    d = decide(DecideConfig(method="calibrated"), target, Labelled(used=used, not_used=not_used))
    v = d.verdict
    assert v.leakage is True and v.auc > 0.95 and v.ci[0] < v.auc < v.ci[1] and v.p_value <= 0.05
    assert d.p_value[:200].mean() < 0.1 < d.p_value[200:].mean()
    assert d.label[:200].mean() > 0.9 and d.label[200:].mean() < 0.1


def test_reference_uses_not_used_when_no_reference_and_other_score():
    null = ev([0.0, 0.0], jaccard=[0.5, 0.7])
    d = decide(DecideConfig(method="reference", score="jaccard", alpha=1 / 3), ev([0.9, 0.9], jaccard=[0.6, 0.8]),
               Labelled(not_used=null))
    np.testing.assert_allclose(d.p_value, [2 / 3, 1 / 3])
    np.testing.assert_array_equal(d.label, [0, 1])


def test_reference_needs_data():
    with pytest.raises(FpindexError, match="known-unused"):
        decide(DecideConfig(method="reference"), ev([0.5]), Labelled())
    with pytest.raises(FpindexError, match="known-unused"):
        decide(DecideConfig(method="reference"), ev([0.5]), Labelled(reference=ev([])))


# ---- calibrated -----------------------------------------------------------------------------------

def test_calibrated_separates_and_reports_cross_validation():
    used, not_used = synthetic(30, True, 0), synthetic(30, False, 1)
    t_used, t_not = synthetic(10, True, 2), synthetic(10, False, 3)
    target = Evidence({f: np.r_[t_used.scores[f], t_not.scores[f]] for f in FEATURES})
    d = decide(DecideConfig(method="calibrated", cv_folds=5, seed=0), target, Labelled(used=used, not_used=not_used))
    assert d.method == "calibrated"
    np.testing.assert_array_equal(d.label, [1] * 10 + [0] * 10)
    assert ((d.score >= 0) & (d.score <= 1)).all()
    assert d.score[:10].min() > 0.5 > d.score[10:].max()
    cv = d.details["cross_validation"]
    assert cv["folds"] == 5
    assert cv["auc"] == 1.0 and cv["accuracy"] == 1.0 and cv["kappa"] == 1.0
    assert d.details["n_used"] == 30 and d.details["n_not_used"] == 30
    assert set(d.details["weights"]) == set(FEATURES)
    assert all(c >= 0 for c in d.details["weights"].values())   # higher similarity can only mean more likely used
    assert d.verdict.leakage is True


def test_calibrated_is_deterministic_and_folds_limited_by_smaller_class():
    used, not_used = synthetic(3, True, 0), synthetic(12, False, 1)
    cfg = DecideConfig(method="calibrated", cv_folds=5, seed=4)
    a = decide(cfg, synthetic(4, True, 9), Labelled(used=used, not_used=not_used))
    b = decide(cfg, synthetic(4, True, 9), Labelled(used=used, not_used=not_used))
    np.testing.assert_array_equal(a.score, b.score)
    assert a.details["cross_validation"]["folds"] == 3
    with pytest.raises(FpindexError, match="at least 2"):   # one labelled member: no verdict possible
        decide(cfg, synthetic(4, True, 9), Labelled(used=synthetic(1, True, 0), not_used=not_used))


def test_calibrated_needs_both_classes():
    with pytest.raises(FpindexError, match="--used"):
        decide(DecideConfig(method="calibrated"), ev([0.5]), Labelled(used=synthetic(5, True, 0)))
    with pytest.raises(FpindexError, match="--used"):
        decide(DecideConfig(method="calibrated"), ev([0.5]),
               Labelled(used=synthetic(5, True, 0), not_used=ev([])))


# ---- auto -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ({}, "fixed"),
    ({"used": True}, "fixed"),
    ({"reference": True}, "reference"),
    ({"not_used": True}, "reference"),
    ({"used": True, "reference": True}, "reference"),
    ({"used": True, "not_used": True}, "calibrated"),
    ({"used": True, "not_used": True, "reference": True}, "calibrated"),
])
def test_auto_picks_the_first_method_the_inputs_allow(given, expected):
    data = Labelled(**{k: synthetic(6, k == "used", 0) for k in given})
    assert choose_method(DecideConfig(method="auto"), data) == expected
    d = decide(DecideConfig(method="auto"), synthetic(4, True, 5), data)
    assert d.method == expected


def test_explicit_method_wins_and_unknown_refused():
    data = Labelled(used=synthetic(6, True, 0), not_used=synthetic(6, False, 1))
    assert choose_method(DecideConfig(method="fixed"), data) == "fixed"
    assert choose_method(DecideConfig(method="reference"), data) == "reference"
    with pytest.raises(FpindexError, match="unknown decision method"):
        choose_method(DecideConfig(method="vote"), data)
    assert DECIDERS.names() == ["fixed", "reference", "calibrated"]
