"""No labels: positive-unlabelled fusion of every feature against known-unused images."""

from __future__ import annotations

import numpy as np

from ..config import DecideConfig
from ..errors import FpindexError
from ..metrics import rank_auc
from ..evidence import Evidence
from .base import DECIDERS, Decision, LabelRule, Labelled, Verdict, _features, bootstrap_auc_ci, empirical_p
from .fusion import MonotoneScore, _grouping, cross_fit, groups_of


def storey_share(p: np.ndarray, lam: float = 0.5) -> float:
    """Share of non-null p-values, 1 − π0 with Storey's π0 = #{p > λ} / ((1 − λ) n): how many candidates carry
    a membership signal, read from their p-values alone."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.clip(1.0 - np.mean(p > lam) / (1.0 - lam), 0.0, 1.0)) if len(p) else 0.0


@DECIDERS.register("pu", "no labels: every feature fused by telling the real images from known-unused ones "
                         "(positive-unlabelled, cross-fitted, non-negative weights)")
def positive_unlabelled(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    """The real images are a mix of used and unused ones, the reference only unused: a monotone fusion that
    tells the two apart can only do so by what the used ones add, so it ranks the real images by membership.
    Every image is scored by a fold model that never saw it, so no image vouches for itself; the verdict is the
    permutation test of that cross-fitted separation, as for `calibrated`."""
    ref = data.reference if data.reference is not None else data.not_used
    if ref is None or len(ref) == 0:
        raise FpindexError("decision 'pu' needs known-unused real images: pass --reference DIR or --not-used DIR")
    features = _features(target, ref, ref)
    n_t, n_r = len(target), len(ref)
    x = np.vstack([target.matrix(features), ref.matrix(features)])
    y = np.r_[np.ones(n_t, np.int8), np.zeros(n_r, np.int8)]
    groups, folds, siblings = _grouping(y, groups_of(target, ref), cfg.cv_folds, ("real", "reference"))
    if folds < 2:
        raise FpindexError("decision 'pu' needs at least 2 real images and 2 known-unused ones")
    cv = cross_fit(x, y, folds, cfg, groups)
    score, null_score = cv.p[:n_t], cv.p[n_t:]
    verdict = Verdict(leakage=bool(cv.perm_p <= cfg.alpha and cv.observed_auc > 0.5), alpha=cfg.alpha,
                      basis="real images vs the reference (cross-fitted)", auc=round(rank_auc(y, cv.p), 4),
                      ci=bootstrap_auc_ci(score, null_score, cfg.seed), p_value=cv.perm_p)
    p = empirical_p(score, null_score)
    label = (p <= cfg.alpha) if verdict.leakage else np.zeros(n_t, bool)
    share = storey_share(p)
    boot = np.random.default_rng(cfg.seed)
    shares = [storey_share(empirical_p(boot.choice(score, n_t), boot.choice(null_score, n_r))) for _ in range(200)]
    details = {"features": list(features), "n_reference": n_r, "folds": folds, "sibling_groups": siblings,
               "model": "non-negative weights on standardised scores (NNLS), Platt-scaled, per fold",
               "weights": dict(zip(features, np.round(np.mean(cv.weights, 0), 6).tolist())),
               "used_share": {"estimate": round(share, 4), "ci95": [round(float(v), 4) for v in
                                                                    np.percentile(shares, [2.5, 97.5])],
                              "method": "Storey's pi0 at lambda 0.5 on the per-image p-values, bootstrap interval"},
               "min_possible_p": 1.0 / (1.0 + n_r)}
    clf = MonotoneScore().fit(x, y)     # as for `calibrated`: what-if evidence is scored by the fit on all images

    def rescore(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        q = clf.predict_proba(ev.matrix(features))
        return q, empirical_p(q, null_score)

    rule = LabelRule(score="P(real, not reference), cross-fitted", alpha=cfg.alpha, gated=True,
                     text=f"p ≤ α = {cfg.alpha:g} against the known-unused images' out-of-fold scores")
    return Decision(score=score, label=label.astype(np.int8), method="pu", p_value=p, verdict=verdict,
                    details=details, rescore=rescore, rule=rule, group_test=cv.group_test)
