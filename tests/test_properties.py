"""Property-based tests (Hypothesis) of what the metrics and the decisions promise for any scores: values in
their ranges or a clear error, rank-only quantities unchanged by monotone maps, order kept, no crash on ties,
one class or tiny sets; and, end to end, that an exact copy of a generated image scores at least as high as
any other real image. Few examples each, no deadline: the suite stays fast."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

from fpindex import build_index
from fpindex.config import DecideConfig
from fpindex.decide import Labelled, bootstrap_auc_ci, calibrated, empirical_p, fixed, reference
from fpindex.errors import FpindexError
from fpindex.evidence import Evidence
from fpindex.metrics import METRICS, metrics, rank_auc

# database=None: no .hypothesis/ folder is written into the checkout.
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Scores as the evidence gives them: bounded floats, drawn from few values so ties are common.
score = st.one_of(st.floats(-1.0, 1.0, allow_nan=False, width=32), st.sampled_from([0.0, 0.5, 1.0]))


@st.composite
def labelled_scores(draw, min_size: int = 1, max_size: int = 30, both: bool = False):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    if both:
        assume(0 < y.sum() < n)
    s = np.array(draw(st.lists(score, min_size=n, max_size=n)), dtype=np.float64)
    return y, s


# ---- metrics ---------------------------------------------------------------------------------------

@FAST
@given(labelled_scores(), st.data())
def test_metrics_are_in_range_or_none_for_any_scores(ys, data):
    y, s = ys
    pred = np.array(data.draw(st.lists(st.integers(0, 1), min_size=len(y), max_size=len(y))))
    m = metrics(y, pred, s)
    assert set(m) == set(METRICS)
    one_class = len(np.unique(y)) < 2
    assert (m["auc"] is None) == one_class and (m["tpr_at_5fpr"] is None) == one_class
    for name, v in m.items():
        if v is None:
            continue
        lo = -1.0 if name == "kappa" else 0.0
        assert lo <= v <= 1.0, (name, v)


@FAST
@given(labelled_scores(min_size=2, both=True))
def test_rank_quantities_ignore_monotone_maps_and_flip_with_order(ys):
    y, s = ys
    m = metrics(y, s >= 0, s)
    ranked = metrics(y, s >= 0, rankdata(s))             # strictly increasing map of the scores, ties kept
    assert ranked["auc"] == m["auc"] and ranked["tpr_at_5fpr"] == m["tpr_at_5fpr"]
    auc = rank_auc(y, s)
    assert 0.0 <= auc <= 1.0
    assert abs(auc - m["auc"]) < 1e-6                      # metrics rounds to 6 places
    assert abs(rank_auc(y, -s) - (1.0 - auc)) < 1e-12       # reversed order, reversed AUC
    assert abs(rank_auc(1 - y, s) - (1.0 - auc)) < 1e-12


@FAST
@given(arrays(np.float64, st.integers(1, 20), elements=score), arrays(np.float64, st.integers(0, 20), elements=score))
def test_empirical_p_values_are_valid_and_fall_as_scores_rise(s, null):
    p = empirical_p(s, null)
    assert ((p >= 1.0 / (1 + len(null))) & (p <= 1.0)).all()
    order = np.argsort(s, kind="stable")
    assert (np.diff(p[order]) <= 0).all()


@FAST
@given(arrays(np.float64, st.integers(1, 12), elements=score), arrays(np.float64, st.integers(1, 12), elements=score))
def test_bootstrap_interval_is_ordered_and_in_range(pos, neg):
    lo, hi = bootstrap_auc_ci(pos, neg, seed=0, n=50)
    assert 0.0 <= lo <= hi <= 1.0


# ---- decisions -------------------------------------------------------------------------------------

def _ev(x: np.ndarray) -> Evidence:
    return Evidence({"cosine": x[:, 0], "ssim": x[:, 1]})


def _monotone(score: np.ndarray, label: np.ndarray) -> bool:
    """A higher score never has a lower label."""
    order = np.argsort(score, kind="stable")
    return bool((np.diff(label[order].astype(int)) >= 0).all() or np.ptp(score) == 0)


@FAST
@given(arrays(np.float64, st.integers(1, 20), elements=score), st.floats(-1.0, 1.0, allow_nan=False))
def test_fixed_labels_exactly_the_scores_at_or_over_the_threshold(s, thr):
    d = fixed(DecideConfig(method="fixed", threshold=thr), Evidence({"cosine": s}), Labelled())
    assert (d.label == (s >= thr)).all() and _monotone(d.score, d.label)
    assert d.verdict.leakage is None


@SLOW
@given(arrays(np.float64, st.integers(1, 15), elements=score), arrays(np.float64, st.integers(1, 15), elements=score),
       st.sampled_from([0.05, 0.2, 0.5]))
def test_reference_decision_is_in_range_and_keeps_order(s, null, alpha):
    d = reference(DecideConfig(method="reference", alpha=alpha), Evidence({"cosine": s}),
                  Labelled(reference=Evidence({"cosine": null})))
    v = d.verdict
    assert 0.0 <= v.p_value <= 1.0 and 0.0 <= v.auc <= 1.0 and 0.0 <= v.ci[0] <= v.ci[1] <= 1.0
    assert ((d.p_value > 0) & (d.p_value <= 1)).all()
    assert _monotone(s, d.label)
    assert d.label.sum() == 0 or v.leakage                   # no accusation without a verdict


@st.composite
def calibration_sets(draw):
    n_used, n_not = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    rows = st.lists(st.lists(score, min_size=2, max_size=2), min_size=1, max_size=1)
    used = np.array([draw(rows)[0] for _ in range(n_used)])
    not_used = np.array([draw(rows)[0] for _ in range(n_not)])
    target = np.array([draw(rows)[0] for _ in range(draw(st.integers(1, 8)))])
    return used, not_used, target


@pytest.mark.slow
@SLOW
@given(calibration_sets())
def test_calibrated_probabilities_are_in_range_and_monotone_in_every_feature(sets):
    used, not_used, target = sets
    cfg = DecideConfig(method="calibrated", cv_folds=2, permutations=9)
    d = calibrated(cfg, _ev(target), Labelled(used=_ev(used), not_used=_ev(not_used)))
    assert ((d.score >= 0) & (d.score <= 1)).all() and ((d.p_value > 0) & (d.p_value <= 1)).all()
    assert 0.0 <= d.verdict.p_value <= 1.0
    assert all(w >= 0 for w in d.details["weights"].values())
    # Non-negative weights: an image at least as similar on every feature is at least as likely used.
    both = np.vstack([target, target + 0.25])
    p = calibrated(cfg, _ev(both), Labelled(used=_ev(used), not_used=_ev(not_used))).score
    assert (p[len(target):] >= p[:len(target)] - 1e-12).all()


@FAST
@given(st.integers(0, 1), st.integers(0, 3))
def test_calibrated_without_two_of_each_class_is_a_clear_error(n_used, n_not):
    x = np.full((4, 2), 0.5)
    with pytest.raises(FpindexError, match=r"^decision 'calibrated' needs (labelled images|at least 2 used)"):
        calibrated(DecideConfig(method="calibrated"), _ev(x),
                   Labelled(used=_ev(x[:n_used]) if n_used else None, not_used=_ev(x[:n_not])))


# ---- end to end: an exact copy is the best match ---------------------------------------------------

@pytest.fixture(scope="module")
def small_index(helpers, tmp_path_factory):
    gen = tmp_path_factory.mktemp("prop-gen")
    for i in range(8):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(100 + i))
    return gen, build_index(gen, config=helpers.CFG)


@settings(max_examples=4, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(copied=st.integers(0, 7), others=st.lists(st.integers(200, 10_000), min_size=1, max_size=3, unique=True),
       score_name=st.sampled_from(["cosine", "ssim", "jaccard"]))
def test_exact_copy_scores_at_least_as_high_as_any_other_real_image(small_index, helpers, copied, others,
                                                                    score_name):
    gen, index = small_index
    with tempfile.TemporaryDirectory() as d:
        real = Path(d)
        (real / "copy.png").write_bytes((gen / f"g{copied}.png").read_bytes())
        for s in others:
            helpers.write_png(real / f"other{s}.png", helpers.perturb(helpers.smooth_image(s), s))
        cfg = helpers.CFG.override(decide={"method": "fixed", "score": score_name})
        pred = index.query(real, config=cfg).predictions.set_index("image")["score"]
    assert (pred["copy.png"] >= pred.drop("copy.png") - 1e-6).all(), pred
