"""The one-score decisions: the paper's fixed threshold, and a p-value against known-unused images."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..config import DecideConfig
from ..errors import FpindexError
from ..metrics import rank_auc
from ..evidence import Evidence, thresholds as default_thresholds
from .base import DECIDERS, Decision, LabelRule, Labelled, Verdict, _score, bootstrap_auc_ci, empirical_p
from .patients import permutation_group_test


@DECIDERS.register("fixed", "label = similarity ≥ a fixed threshold (the paper's rule)")
def fixed(cfg: DecideConfig, target: Evidence, data: Labelled,
          thresholds: Mapping[str, float] | None = None) -> Decision:
    """thresholds: each score's default (None: the evidence features' own, from the registry)."""
    name = _score(cfg, target)
    table = default_thresholds() if thresholds is None else thresholds
    if cfg.threshold is None and name not in table:
        raise FpindexError(f"score {name!r} has no default threshold; give one (--threshold)")
    thr = table[name] if cfg.threshold is None else float(cfg.threshold)
    s = target.scores[name].astype(np.float64)
    return Decision(score=s, label=(s >= thr).astype(np.int8), method="fixed",
                    verdict=Verdict(leakage=None, alpha=cfg.alpha), details={"score": name, "threshold": thr},
                    rescore=lambda ev: (ev.scores[name].astype(np.float64), None),
                    rule=LabelRule(score=name, threshold=thr, text=f"{name} ≥ {thr:g} (fixed threshold)"))


@DECIDERS.register("reference", "p-value against known-unused real images; label = p ≤ alpha")
def reference(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    name = _score(cfg, target)
    ref = data.reference if data.reference is not None else data.not_used
    if ref is None or len(ref) == 0:
        raise FpindexError("decision 'reference' needs known-unused real images: pass --reference DIR or --not-used DIR")
    _score(cfg, target, ref)
    from scipy.stats import mannwhitneyu

    null = ref.scores[name].astype(np.float64)
    s = target.scores[name].astype(np.float64)
    p = empirical_p(s, null)
    test = mannwhitneyu(s, null, alternative="greater")
    auc = rank_auc(np.r_[np.ones(len(s)), np.zeros(len(null))], np.r_[s, null])   # = U / (n·m), bit for bit
    verdict = Verdict(leakage=bool(test.pvalue <= cfg.alpha), alpha=cfg.alpha, basis="real images vs the reference",
                      auc=round(auc, 4), ci=bootstrap_auc_ci(s, null, cfg.seed), p_value=float(test.pvalue))
    label = (p <= cfg.alpha) if verdict.leakage else np.zeros(len(s), bool)
    def rescore(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        v = ev.scores[name].astype(np.float64)
        return v, empirical_p(v, null)

    rule = LabelRule(score=name, alpha=cfg.alpha, gated=True,
                     text=f"p ≤ α = {cfg.alpha:g} against the known-unused images' {name}")
    group_test = None
    if target.groups is not None and ref.groups is not None:    # patients known (decide/patients.py)
        group_test = permutation_group_test(s, target.groups, null, ref.groups, cfg.permutations, cfg.seed)
    return Decision(score=s, label=label.astype(np.int8), method="reference", p_value=p, verdict=verdict,
                    rescore=rescore, rule=rule, details={"score": name, "alpha": cfg.alpha,
                                                         "n_reference": int(len(null)),
                                                         "min_possible_p": 1.0 / (1.0 + len(null))},
                    group_test=group_test)
