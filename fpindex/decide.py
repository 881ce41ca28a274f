"""Stage 7 — turn similarities into a membership score and a used / not-used label per real image.

Per real image the evidence is three numbers: the top-1 cosine, the best SSIM and the best Jaccard over its
k neighbours. Three ways to decide, chosen by `--decision` (default `auto`: the first that the inputs allow,
in the order calibrated → reference → fixed):
- `calibrated`: labelled used / not-used real images (ImageCLEF's train split). A standardised logistic
  regression on the three scores (balanced class weights) is fitted on them; its stratified k-fold
  cross-validated quality on those images is reported. Score = P(used); label = P ≥ 0.5.
- `reference`: real images known *not* to be used. Their `--score` values model the null; each image gets
  the p-value (1 + #{null ≥ s}) / (1 + n_null); label = p ≤ α. Score = the raw similarity.
- `fixed`: the paper's way: label = `--score` ≥ a fixed threshold. Score = the raw similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .config import DecideConfig
from .errors import FpindexError
from .registry import Registry

FEATURES = ("cosine", "ssim", "jaccard")
DEFAULT_THRESHOLDS = {"cosine": 0.90, "ssim": 0.50, "jaccard": 0.60}


@dataclass(frozen=True)
class Evidence:
    """Per-image scores, each an (n,) float array keyed by FEATURES."""

    scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.scores.values())))

    def matrix(self) -> np.ndarray:
        return np.column_stack([self.scores[f] for f in FEATURES]).astype(np.float64)


@dataclass
class Decision:
    score: np.ndarray
    label: np.ndarray
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    p_value: np.ndarray | None = None


@dataclass(frozen=True)
class Labelled:
    """What a decision may learn from: labelled real images and/or a known-unused reference set."""

    used: Evidence | None = None
    not_used: Evidence | None = None
    reference: Evidence | None = None


Decider = Callable[[DecideConfig, Evidence, Labelled], Decision]
DECIDERS: Registry[Decider] = Registry("decision method")


def _score(cfg: DecideConfig) -> str:
    if cfg.score not in FEATURES:
        raise FpindexError(f"unknown score {cfg.score!r}; choose from: {', '.join(FEATURES)}")
    return cfg.score


@DECIDERS.register("fixed", "label = similarity ≥ a fixed threshold (the paper's rule)")
def fixed(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    name = _score(cfg)
    thr = DEFAULT_THRESHOLDS[name] if cfg.threshold is None else float(cfg.threshold)
    s = target.scores[name].astype(np.float64)
    return Decision(score=s, label=(s >= thr).astype(np.int8), method="fixed",
                    details={"score": name, "threshold": thr})


@DECIDERS.register("reference", "p-value against known-unused real images; label = p ≤ alpha")
def reference(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    name = _score(cfg)
    ref = data.reference if data.reference is not None else data.not_used
    if ref is None or len(ref) == 0:
        raise FpindexError("decision 'reference' needs known-unused real images: pass --reference DIR or --not-used DIR")
    null = np.sort(ref.scores[name].astype(np.float64))
    s = target.scores[name].astype(np.float64)
    at_least = len(null) - np.searchsorted(null, s, side="left")
    p = (1.0 + at_least) / (1.0 + len(null))
    return Decision(score=s, label=(p <= cfg.alpha).astype(np.int8), method="reference", p_value=p,
                    details={"score": name, "alpha": cfg.alpha, "n_reference": int(len(null)),
                             "min_possible_p": 1.0 / (1.0 + len(null))})


def _classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", random_state=seed))


@DECIDERS.register("calibrated", "logistic regression on cosine, SSIM and Jaccard, fitted on labelled images")
def calibrated(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from .evaluate import metrics

    if data.used is None or data.not_used is None or len(data.used) == 0 or len(data.not_used) == 0:
        raise FpindexError("decision 'calibrated' needs labelled images: pass both --used DIR and --not-used DIR")
    x = np.vstack([data.used.matrix(), data.not_used.matrix()])
    y = np.r_[np.ones(len(data.used), np.int8), np.zeros(len(data.not_used), np.int8)]
    folds = min(cfg.cv_folds, int(min(len(data.used), len(data.not_used))))
    details: dict[str, Any] = {"features": list(FEATURES), "n_used": len(data.used),
                               "n_not_used": len(data.not_used), "model": "standardised logistic regression"}
    if folds >= 2:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
        p_cv = cross_val_predict(_classifier(cfg.seed), x, y, cv=cv, method="predict_proba")[:, 1]
        details["cross_validation"] = {"folds": folds, **metrics(y, (p_cv >= 0.5).astype(int), p_cv)}
    clf = _classifier(cfg.seed).fit(x, y)
    lr = clf[-1]
    details["coefficients"] = dict(zip(FEATURES, np.round(lr.coef_[0], 6).tolist()))
    details["intercept"] = round(float(lr.intercept_[0]), 6)
    p = clf.predict_proba(target.matrix())[:, 1]
    return Decision(score=p, label=(p >= 0.5).astype(np.int8), method="calibrated", details=details)


def choose_method(cfg: DecideConfig, data: Labelled) -> str:
    if cfg.method != "auto":
        DECIDERS.get(cfg.method)
        return cfg.method
    if data.used is not None and data.not_used is not None:
        return "calibrated"
    if data.reference is not None or data.not_used is not None:
        return "reference"
    return "fixed"


def decide(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    return DECIDERS.get(choose_method(cfg, data))(cfg, target, data)
