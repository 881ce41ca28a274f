"""Stage 7 — turn similarities into a membership score and a used / not-used label per real image.

Per real image the evidence is a few named numbers, one per evidence feature (fpindex/evidence/, today five:
the top-1 cosine, the best SSIM and the best Jaccard over its k neighbours, how well the generated set's
principal subspace reconstructs the image, and the best SSIM after rigid alignment of each neighbour).
Three ways to decide, chosen by `--decision` (default `auto`: the first that the inputs allow,
in the order calibrated → reference → fixed):
- `calibrated`: labelled used / not-used real images (ImageCLEF's train split). The five scores are fused
  with non-negative weights (see `MonotoneScore`) and Platt-scaled, fitted on them; the stratified k-fold
  cross-validated quality on those images is reported. Score = P(used); label = P ≥ 0.5.
- `reference`: real images known *not* to be used. Their `--score` values model the null; each image gets
  the p-value (1 + #{null ≥ s}) / (1 + n_null); label = p ≤ α. Score = the raw similarity.
- `fixed`: the paper's way: label = `--score` ≥ a fixed threshold. Score = the raw similarity.

Before any image is labelled "used", the whole set gets a verdict: is there a membership signal at all?
- calibrated: the cross-validated AUC on the labelled split, with a bootstrap 95 % interval and a label-
  permutation test (the whole cross-validation redone on permuted labels);
- reference: a one-sided Mann-Whitney test of the real images' scores against the reference scores.
Without evidence at level α every label is 0, so a clean generator is not accused. Each image also gets a
p-value: the share of known-unused images (their out-of-fold scores when calibrated) scoring at least as high.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .config import DecideConfig
from .errors import FpindexError
from .metrics import metrics, rank_auc
from .evidence import Evidence, thresholds as default_thresholds
from .registry import Registry

@dataclass(frozen=True)
class Verdict:
    """Is there any membership signal in this generated set? `leakage` is None when it was not tested."""

    leakage: bool | None
    alpha: float
    basis: str = ""
    auc: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None

    @property
    def text(self) -> str:
        if self.leakage is None:
            return "not tested: fixed thresholds have no null to test against (give --used/--not-used or --reference)"
        if not self.leakage:
            return f"no evidence of leakage at α = {self.alpha:g} (AUC {self.auc:.3f}, p = {self.p_value:.3g}, {self.basis})"
        return (f"leakage detected: AUC {self.auc:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}] on the {self.basis}, "
                f"p = {self.p_value:.3g}")

    def as_dict(self) -> dict[str, Any]:
        return {"leakage": self.leakage, "alpha": self.alpha, "basis": self.basis, "auc": self.auc,
                "auc_ci95": list(self.ci) if self.ci else None, "p_value": self.p_value, "text": self.text}


@dataclass
class Decision:
    score: np.ndarray
    label: np.ndarray
    method: str
    verdict: Verdict
    details: dict[str, Any] = field(default_factory=dict)
    p_value: np.ndarray | None = None
    # The fitted decision applied to other evidence (the canaries' what-if): score and p-value (None: no null).
    rescore: Callable[[Evidence], tuple[np.ndarray, np.ndarray | None]] | None = field(default=None, repr=False)


def empirical_p(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(1 + #{null ≥ s}) / (1 + n): a valid p-value for "s is no higher than an unused image would score"."""
    null = np.sort(np.asarray(null, dtype=np.float64))
    at_least = len(null) - np.searchsorted(null, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + at_least) / (1.0 + len(null))


def bootstrap_auc_ci(pos: np.ndarray, neg: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """Percentile interval, each class resampled on its own; kept by hand because scipy.stats.bootstrap draws
    its resamples in another order from the same seed (endpoints moved by up to 0.011 on eight seeded cases)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    aucs = [rank_auc(y, np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(n)]
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


@dataclass(frozen=True)
class Labelled:
    """What a decision may learn from: labelled real images and/or a known-unused reference set."""

    used: Evidence | None = None
    not_used: Evidence | None = None
    reference: Evidence | None = None


Decider = Callable[[DecideConfig, Evidence, Labelled], Decision]
DECIDERS: Registry[Decider] = Registry("decision method")


def _score(cfg: DecideConfig, *given: Evidence) -> str:
    """The score must be one that every Evidence given carries (listed in the first one's order)."""
    known = [f for f in given[0].features if all(f in e.scores for e in given[1:])]
    if cfg.score not in known:
        raise FpindexError(f"unknown score {cfg.score!r}; choose from: {', '.join(known)}")
    return cfg.score


def _features(target: Evidence, used: Evidence, not_used: Evidence) -> tuple[str, ...]:
    """The fusion's features, in the labelled images' order: both labelled sets must carry the same ones (a
    weight is learnt from both classes) and the target at least those (its extra features are not read)."""
    features = used.features
    if set(not_used.features) != set(features):
        raise FpindexError(f"used and not-used evidence carry different features: {', '.join(features)} vs "
                           f"{', '.join(not_used.features)}")
    missing = [f for f in features if f not in target.scores]
    if missing:
        raise FpindexError(f"the real images' evidence lacks feature(s) {', '.join(missing)} that the fusion reads")
    return features


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
                    rescore=lambda ev: (ev.scores[name].astype(np.float64), None))


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

    return Decision(score=s, label=label.astype(np.int8), method="reference", p_value=p, verdict=verdict,
                    rescore=rescore, details={"score": name, "alpha": cfg.alpha, "n_reference": int(len(null)),
                             "min_possible_p": 1.0 / (1.0 + len(null))})


class MonotoneScore:
    """Evidence fusion that can only read "more similar" as "more likely used".

    Features are standardised, then combined with non-negative weights (class-balanced least squares under
    w ≥ 0, scipy's NNLS), and the combined score is mapped to P(used) by a 1-D logistic fit (Platt scaling).
    An unconstrained classifier would happily learn "less similar ⇒ used" from a noisy labelled split, and
    then accuse every image of a clean generator; with w ≥ 0 a set without signal gets a flat score.
    """

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MonotoneScore":
        from sklearn.linear_model import LogisticRegression

        self.w, self.mu, self.sd = _nnls_direction(x, y)
        s = self.score(x)[:, None]
        self.platt = LogisticRegression(class_weight="balanced").fit(s, y) if np.ptp(s) > 0 else None
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mu) / self.sd) @ self.w

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if self.platt is None:
            return np.full(len(x), 0.5)
        return self.platt.predict_proba(self.score(x)[:, None])[:, 1]


def _nnls_direction(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LinearRegression(positive=True, sample_weight=wt) finds the same weights bit for bit (it runs this NNLS),
    but its input checks over the ~1000 fits of a permutation test made a calibrated decision 2.6x slower."""
    from scipy.optimize import nnls

    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    wt = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    zc = z - (wt[:, None] * z).sum(0) / wt.sum()
    yc = y - (wt * y).sum() / wt.sum()
    r = np.sqrt(wt)[:, None]
    w, _ = nnls(zc * r, yc * r.ravel())
    return w, mu, sd


def _oof_scores(x: np.ndarray, y: np.ndarray, splits) -> np.ndarray:
    out = np.empty(len(y))
    for tr, te in splits:
        w, mu, sd = _nnls_direction(x[tr], y[tr])
        out[te] = ((x[te] - mu) / sd) @ w
    return out


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold P and fused score of every image, the folds' weights, and the permutation test of the whole
    cross-validated fit: how often do shuffled labels separate as well?"""

    p: np.ndarray
    score: np.ndarray
    weights: list[np.ndarray]
    observed_auc: float
    perm_p: float


def cross_fit(x: np.ndarray, y: np.ndarray, folds: int, cfg: DecideConfig) -> CrossFit:
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed).split(x, y))
    p_cv, s_cv, weights = np.empty(len(y)), np.empty(len(y)), []
    for tr, te in splits:
        fold = MonotoneScore().fit(x[tr], y[tr])
        p_cv[te], s_cv[te] = fold.predict_proba(x[te]), fold.score(x[te])
        weights.append(fold.w)
    observed = rank_auc(y, s_cv)
    rng = np.random.default_rng(cfg.seed)
    null = [rank_auc(yp, _oof_scores(x, yp, splits)) for yp in (rng.permutation(y) for _ in range(cfg.permutations))]
    perm_p = (1.0 + np.sum(np.asarray(null) >= observed)) / (1.0 + cfg.permutations)
    return CrossFit(p_cv, s_cv, weights, observed, float(perm_p))


@DECIDERS.register("calibrated", "cosine, SSIM and Jaccard fused with non-negative weights fitted on labelled images")
def calibrated(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    if data.used is None or data.not_used is None or len(data.used) == 0 or len(data.not_used) == 0:
        raise FpindexError("decision 'calibrated' needs labelled images: pass both --used DIR and --not-used DIR")
    features = _features(target, data.used, data.not_used)
    x = np.vstack([data.used.matrix(features), data.not_used.matrix(features)])
    y = np.r_[np.ones(len(data.used), np.int8), np.zeros(len(data.not_used), np.int8)]
    folds = min(cfg.cv_folds, int(min(len(data.used), len(data.not_used))))
    details: dict[str, Any] = {"features": list(features), "n_used": len(data.used),
                               "n_not_used": len(data.not_used)}
    if folds < 2:
        raise FpindexError("decision 'calibrated' needs at least 2 used and 2 not-used images")
    cv = cross_fit(x, y, folds, cfg)
    p_cv = cv.p
    details["cross_validation"] = {"folds": folds, **metrics(y, (p_cv >= 0.5).astype(int), p_cv)}
    verdict = Verdict(leakage=bool(cv.perm_p <= cfg.alpha and cv.observed_auc > 0.5), alpha=cfg.alpha,
                      basis="labelled split (cross-validated)", auc=details["cross_validation"]["auc"],
                      ci=bootstrap_auc_ci(p_cv[y == 1], p_cv[y == 0], cfg.seed), p_value=cv.perm_p)
    clf = MonotoneScore().fit(x, y)
    details["model"] = "non-negative weights on standardised scores (NNLS), Platt-scaled"
    details["weights"] = dict(zip(features, np.round(clf.w, 6).tolist()))
    p = clf.predict_proba(target.matrix(features))
    label = (p >= 0.5) if verdict.leakage else np.zeros(len(p), bool)
    if clf.w.any():
        def ranked(m: np.ndarray) -> np.ndarray:
            return clf.predict_proba(m)
        null = p_cv[y == 0]
    else:
        # No direction learnt (a clean generator's labelled split): every P is 0.5 and would rank nothing. The
        # per-image p-values then read the monotone prior — every feature, standardised on the labelled images,
        # with equal weight — against the not-used images, so an image far more similar than any unused one
        # (a canary's exact copy) still stands out; labels stay 0 without a verdict.
        mu, sd = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)

        def ranked(m: np.ndarray) -> np.ndarray:
            return ((m - mu) / sd).mean(1)
        null = ranked(x[y == 0])
        details["p_values"] = "monotone prior (equal weights on standardised features): the fit found no direction"

    def rescore(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        m = ev.matrix(features)
        return clf.predict_proba(m), empirical_p(ranked(m), null)

    return Decision(score=p, label=label.astype(np.int8), method="calibrated", verdict=verdict,
                    p_value=empirical_p(ranked(target.matrix(features)), null), details=details, rescore=rescore)


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
    folds = min(cfg.cv_folds, n_t, n_r)
    if folds < 2:
        raise FpindexError("decision 'pu' needs at least 2 real images and 2 known-unused ones")
    x = np.vstack([target.matrix(features), ref.matrix(features)])
    y = np.r_[np.ones(n_t, np.int8), np.zeros(n_r, np.int8)]
    cv = cross_fit(x, y, folds, cfg)
    score, null_score = cv.p[:n_t], cv.p[n_t:]
    verdict = Verdict(leakage=bool(cv.perm_p <= cfg.alpha and cv.observed_auc > 0.5), alpha=cfg.alpha,
                      basis="real images vs the reference (cross-fitted)", auc=round(rank_auc(y, cv.p), 4),
                      ci=bootstrap_auc_ci(score, null_score, cfg.seed), p_value=cv.perm_p)
    p = empirical_p(score, null_score)
    label = (p <= cfg.alpha) if verdict.leakage else np.zeros(n_t, bool)
    share = storey_share(p)
    boot = np.random.default_rng(cfg.seed)
    shares = [storey_share(empirical_p(boot.choice(score, n_t), boot.choice(null_score, n_r))) for _ in range(200)]
    details = {"features": list(features), "n_reference": n_r, "folds": folds,
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

    return Decision(score=score, label=label.astype(np.int8), method="pu", p_value=p, verdict=verdict,
                    details=details, rescore=rescore)


FUSING = frozenset({"calibrated", "pu"})   # methods that read every evidence feature, not one score


def choose_method(cfg: DecideConfig, data: Labelled) -> str:
    """The one place that picks the method; the pipeline calls it before any work and passes the answer on."""
    if cfg.method != "auto":
        DECIDERS.get(cfg.method)
        return cfg.method
    if data.used is not None and data.not_used is not None:
        return "calibrated"
    if data.reference is not None or data.not_used is not None:
        return "reference"
    return "fixed"


def decide(cfg: DecideConfig, target: Evidence, data: Labelled, method: str | None = None) -> Decision:
    """method: what choose_method picked earlier (None: pick it now), so the choice is made once."""
    if method is None:
        method = choose_method(cfg, data)
    elif cfg.method not in ("auto", method):
        raise FpindexError(f"decision method {method!r} given, but the settings ask for {cfg.method!r}")
    return DECIDERS.get(method)(cfg, target, data)
