"""Stage 7 — fixed, reference and calibrated decisions, and how `auto` picks one."""

from __future__ import annotations

import numpy as np
import pytest

import fpindex.decide as decide_module
from fpindex.config import DecideConfig
from fpindex.decide import DECIDERS, Labelled, calibrated, choose_method, decide, fixed, reference
from fpindex.errors import FpindexError
from fpindex.evidence import FEATURES as REGISTRY, Evidence, Feature, feature, thresholds

FEATURES = tuple(REGISTRY.names())
DEFAULT_THRESHOLDS = thresholds()


def ev(cosine, ssim=None, jaccard=None, subspace=None, ssim_aligned=None, bandpass=None, density_ratio=None):
    cosine = np.asarray(cosine, float)

    def given(v):
        return np.asarray(v if v is not None else np.zeros_like(cosine), float)

    return Evidence({"cosine": cosine, "ssim": given(ssim), "jaccard": given(jaccard), "subspace": given(subspace),
                     "ssim_aligned": given(ssim_aligned), "bandpass": given(bandpass),
                     "density_ratio": given(density_ratio)})


def synthetic(n, used, seed):
    """Well separated evidence: members near-copies (high scores), non-members clearly lower."""
    rng = np.random.default_rng(seed)
    if used:
        return ev(rng.normal(0.97, 0.01, n), rng.normal(0.8, 0.05, n), rng.normal(0.85, 0.03, n))
    return ev(rng.normal(0.80, 0.03, n), rng.normal(0.3, 0.05, n), rng.normal(0.55, 0.03, n))


def test_evidence_matrix_in_feature_order():
    e = ev([0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [0.9, 1.0], [1.1, 1.2], [1.3, 1.4])
    assert len(e) == 2 and FEATURES == ("cosine", "ssim", "jaccard", "subspace", "ssim_aligned", "bandpass",
                                        "density_ratio")
    assert e.features == FEATURES
    np.testing.assert_array_equal(e.matrix(), [[0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3], [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]])


def test_evidence_carries_its_own_feature_order():
    e = Evidence({"toy": np.array([1.0, 2.0]), "cosine": np.array([0.5, 0.6])})
    assert e.features == ("toy", "cosine") and len(Evidence({})) == 0
    np.testing.assert_array_equal(e.matrix(), [[1.0, 0.5], [2.0, 0.6]])
    np.testing.assert_array_equal(e.matrix(("cosine", "toy")), [[0.5, 1.0], [0.6, 2.0]])


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
    with pytest.raises(FpindexError, match="unknown score 'psnr'; choose from: cosine, ssim, jaccard, subspace, "
                                          "ssim_aligned, bandpass, density_ratio$"):
        decide(DecideConfig(method="fixed", score="psnr"), ev([0.5]), Labelled())


def test_unknown_score_is_checked_against_the_evidence_given():
    toy = Evidence({"cosine": np.array([0.95]), "toy": np.array([0.7])})
    with pytest.raises(FpindexError, match="^unknown score 'ssim'; choose from: cosine, toy$"):
        decide(DecideConfig(method="fixed", score="ssim"), toy, Labelled())
    # reference: the score must be in the reference set too
    with pytest.raises(FpindexError, match="^unknown score 'toy'; choose from: cosine$"):
        decide(DecideConfig(method="reference", score="toy"), toy, Labelled(reference=Evidence({"cosine": np.ones(3)})))


def test_fixed_threshold_table_is_an_argument_or_the_replaceable_default(monkeypatch):
    toy = Evidence({"cosine": np.array([0.95, 0.5]), "toy": np.array([0.7, 0.2])})
    cfg = DecideConfig(method="fixed", score="toy")
    with pytest.raises(FpindexError, match="^score 'toy' has no default threshold; give one"):
        decide(cfg, toy, Labelled())
    d = fixed(cfg, toy, Labelled(), thresholds={"toy": 0.3})
    np.testing.assert_array_equal(d.label, [1, 0])
    assert d.details == {"score": "toy", "threshold": 0.3}
    # A registered feature brings its own default threshold.
    @feature
    class Toy(Feature):
        name, help, threshold = "toy", "a test feature", 0.1
    try:
        np.testing.assert_array_equal(decide(cfg, toy, Labelled()).label, [1, 1])
    finally:
        REGISTRY.unregister("toy")
    np.testing.assert_array_equal(fixed(DecideConfig(method="fixed"), toy, Labelled(),
                                        thresholds={"cosine": 0.99}).label, [0, 0])


# ---- reference ------------------------------------------------------------------------------------

def test_reference_p_values_by_hand():
    null = ev([0.4, 0.1, 0.3, 0.2])            # sorted: 0.1 0.2 0.3 0.4
    target = ev([0.05, 0.25, 0.4, 0.5, 0.3])
    # #{null ≥ s}: 4, 2, 1, 0, 2   →   p = (1 + #) / (1 + 4)
    expected_p = np.array([5, 3, 2, 1, 3]) / 5
    # The method alone (the fused channel); `decide` adds the copy channel (tests/test_copies.py).
    d = reference(DecideConfig(method="reference", alpha=0.2), target, Labelled(reference=null))
    assert d.method == "reference"
    np.testing.assert_allclose(d.p_value, expected_p)
    np.testing.assert_array_equal(d.score, target.scores["cosine"])
    assert d.details["n_reference"] == 4 and d.details["min_possible_p"] == pytest.approx(0.2)
    # Five targets against four null values: Mann-Whitney U = #pairs target > null (+½ per tie) = 12 of 20,
    # one-sided p ≈ 0.36, so at α = 0.2 there is no evidence and nothing is labelled used.
    assert d.verdict.auc == pytest.approx(12 / 20)
    assert d.verdict.leakage is False and not d.label.any()
    d = reference(DecideConfig(method="reference", alpha=0.4), target, Labelled(reference=null))
    assert d.verdict.leakage is True
    np.testing.assert_array_equal(d.label, [0, 0, 1, 1, 0])      # p ≤ 0.4 once the set shows a signal


def test_reference_verdict_on_planted_signal_and_on_none():
    rng = np.random.default_rng(0)
    null = ev(rng.normal(0.0, 1.0, 200))
    clean = decide(DecideConfig(method="reference"), ev(rng.normal(0.0, 1.0, 300)), Labelled(reference=null))
    assert clean.verdict.leakage is False and clean.label.mean() <= 0.05
    leaky = decide(DecideConfig(method="reference"), ev(np.r_[rng.normal(0, 1, 150), rng.normal(3, 0.5, 150)]),
                   Labelled(reference=null))
    assert leaky.verdict.leakage is True and "leakage detected" in leaky.verdict.text
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
    d = reference(DecideConfig(method="reference", score="jaccard", alpha=1 / 3), ev([0.9, 0.9], jaccard=[0.6, 0.8]),
                  Labelled(not_used=null))
    np.testing.assert_allclose(d.p_value, [2 / 3, 1 / 3])
    np.testing.assert_array_equal(d.label, [0, 1])


def test_reference_needs_data():
    with pytest.raises(FpindexError, match="^decision 'reference' needs known-unused real images: pass --reference"):
        decide(DecideConfig(method="reference"), ev([0.5]), Labelled())
    with pytest.raises(FpindexError, match="^decision 'reference' needs known-unused real images: pass --reference"):
        decide(DecideConfig(method="reference"), ev([0.5]), Labelled(reference=ev([])))


# ---- calibrated -----------------------------------------------------------------------------------

def test_calibrated_separates_and_reports_cross_validation():
    used, not_used = synthetic(30, True, 0), synthetic(30, False, 1)
    t_used, t_not = synthetic(10, True, 2), synthetic(10, False, 3)
    target = Evidence({f: np.r_[t_used.scores[f], t_not.scores[f]] for f in FEATURES})
    # The fused channel alone (its last not-used image has a cosine 3.3 SD above the rest: the copy channel,
    # tests/test_copies.py, would flag it).
    d = calibrated(DecideConfig(method="calibrated", cv_folds=5, seed=0), target, Labelled(used=used, not_used=not_used))
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
    with pytest.raises(FpindexError, match="needs at least 2 used and 2 not-used images"):   # one labelled member
        decide(cfg, synthetic(4, True, 9), Labelled(used=synthetic(1, True, 0), not_used=not_used))


def test_calibrated_needs_both_classes():
    needs = "^decision 'calibrated' needs labelled images: pass both --used DIR and --not-used DIR$"
    with pytest.raises(FpindexError, match=needs):
        decide(DecideConfig(method="calibrated"), ev([0.5]), Labelled(used=synthetic(5, True, 0)))
    with pytest.raises(FpindexError, match=needs):
        decide(DecideConfig(method="calibrated"), ev([0.5]),
               Labelled(used=synthetic(5, True, 0), not_used=ev([])))


# ---- auto -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,expected", [
    ({}, "copies"),
    ({"reference": True}, "pu"),
    ({"not_used": True}, "pu"),
    ({"used": True, "not_used": True}, "calibrated"),
    ({"used": True, "not_used": True, "reference": True}, "calibrated"),
])
def test_auto_picks_the_first_method_the_inputs_allow(given, expected):
    data = Labelled(**{k: synthetic(6, k == "used", 0) for k in given},
                    copy_levels={"ssim_aligned": 0.9, "bandpass": 0.95})   # read by copies only
    assert choose_method(DecideConfig(method="auto"), data) == expected
    d = decide(DecideConfig(method="auto"), synthetic(4, True, 5), data)
    assert d.method == expected


def test_explicit_method_wins_and_unknown_refused():
    data = Labelled(used=synthetic(6, True, 0), not_used=synthetic(6, False, 1))
    assert choose_method(DecideConfig(method="fixed"), data) == "fixed"
    assert choose_method(DecideConfig(method="reference"), data) == "reference"
    with pytest.raises(FpindexError, match="^unknown decision method 'vote'; choose one of: fixed, reference, calibrated, pu, copies$"):
        choose_method(DecideConfig(method="vote"), data)
    assert DECIDERS.names() == ["fixed", "reference", "calibrated", "pu", "copies"]


@pytest.mark.parametrize("method", ["auto", "fixed", "reference", "pu", "copies"])
@pytest.mark.parametrize("given", [{"used": True}, {"used": True, "reference": True}])
def test_used_without_not_used_is_refused_never_ignored(method, given):
    data = Labelled(**{k: synthetic(6, k == "used", 0) for k in given})
    with pytest.raises(FpindexError, match="^--used was given without --not-used: .* add --not-used DIR"):
        choose_method(DecideConfig(method=method), data)


def test_decide_takes_the_chosen_method_and_does_not_choose_again(monkeypatch):
    data = Labelled(used=synthetic(6, True, 0), not_used=synthetic(6, False, 1))
    cfg = DecideConfig(method="auto", permutations=9)
    method = choose_method(cfg, data)
    calls = []
    monkeypatch.setattr(decide_module, "choose_method", lambda *a: calls.append(a) or "fixed")
    d = decide(cfg, synthetic(4, True, 5), data, method=method)
    assert d.method == method == "calibrated" and calls == []
    assert decide(cfg, synthetic(4, True, 5), data).method == "fixed" and len(calls) == 1   # no method: chosen here


def test_decide_refuses_a_method_the_settings_do_not_ask_for():
    with pytest.raises(FpindexError, match="^decision method 'reference' given, but the settings ask for 'fixed'$"):
        decide(DecideConfig(method="fixed"), ev([0.5]), Labelled(reference=ev([0.1])), method="reference")
    with pytest.raises(FpindexError, match="^unknown decision method 'vote'"):
        decide(DecideConfig(), ev([0.5]), Labelled(), method="vote")


# ---- features come from the evidence ----------------------------------------------------------------

def toy_split(seed, n, order=("cosine", "toy")):
    """Only the extra feature 'toy' separates used from not-used; cosine is noise."""
    rng = np.random.default_rng(seed)

    def draw(m, mu):
        v = {"cosine": rng.normal(0, 1, m), "toy": rng.normal(mu, 1, m)}
        return Evidence({f: v[f] for f in order})

    return draw(n, 2.0), draw(n, 0.0), draw(n, 1.0)


def test_calibrated_fuses_a_feature_it_was_never_told_about():
    used, not_used, target = toy_split(3, 60)
    d = decide(DecideConfig(method="calibrated", permutations=49), target, Labelled(used=used, not_used=not_used))
    assert d.details["features"] == ["cosine", "toy"] and list(d.details["weights"]) == ["cosine", "toy"]
    assert d.details["weights"]["toy"] > 0.2 and d.details["weights"]["cosine"] < 0.05   # measured 0.358, 0.013
    assert d.verdict.leakage is True and d.verdict.auc > 0.85
    # The target may list its features in another order: columns are matched by name, not position.
    flipped = Evidence({"toy": target.scores["toy"], "cosine": target.scores["cosine"]})
    again = decide(DecideConfig(method="calibrated", permutations=49), flipped, Labelled(used=used, not_used=not_used))
    np.testing.assert_array_equal(again.score, d.score)


def test_calibrated_refuses_evidence_sets_with_other_features():
    used, not_used, target = toy_split(4, 10)
    cfg = DecideConfig(method="calibrated", permutations=9)
    with pytest.raises(FpindexError, match="^used and not-used evidence carry different features: cosine, toy vs cosine$"):
        decide(cfg, target, Labelled(used=used, not_used=Evidence({"cosine": not_used.scores["cosine"]})))
    with pytest.raises(FpindexError, match="^the real images' evidence lacks feature.s. toy that the fusion reads$"):
        decide(cfg, Evidence({"cosine": target.scores["cosine"]}), Labelled(used=used, not_used=not_used))


def test_calibrated_without_a_direction_still_gives_p_values_from_the_monotone_prior():
    """A labelled split where NNLS finds no direction (used images no more similar): every P is 0.5 and nothing
    is labelled, but an image more similar than every not-used one on every feature (an exact copy) still gets
    the smallest p-value, here and in rescore."""
    rng = np.random.default_rng(7)
    used = Evidence({f: rng.normal(-0.8, 1, 60) for f in FEATURES})
    not_used = Evidence({f: rng.normal(0.0, 1, 60) for f in FEATURES})
    target = Evidence({f: np.r_[rng.normal(0.0, 1, 30), 9.0] for f in FEATURES})
    d = calibrated(DecideConfig(method="calibrated"), target, Labelled(used=used, not_used=not_used))   # fused alone
    assert not any(d.details["weights"].values()) and "monotone prior" in d.details["p_values"]
    assert np.all(d.score == 0.5) and not d.label.any() and d.verdict.leakage is False
    assert d.p_value[-1] == pytest.approx(1 / 61) and np.median(d.p_value[:-1]) > 0.2
    score, p = d.rescore(Evidence({f: np.array([9.0, 0.0]) for f in FEATURES}))
    assert np.all(score == 0.5) and p[0] == pytest.approx(1 / 61) and p[1] > p[0]
