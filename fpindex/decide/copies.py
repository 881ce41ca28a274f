"""The copy channel: copy-level evidence tested feature by feature, so that no fitted fusion can switch it off.

A fused decision learns its weights from whatever leak the labelled split (or the reference) happens to hold.
On a clean generator they are noise, on a GAN they point elsewhere, and an exact copy of a training image can
then rank like any other image. A privacy audit exists to find those copies, so every decision also tests each
real image on the features a copy drives to their top value of 1 (`Feature.copy`: SSIM after alignment and the
band-passed correlation; not the embedding cosine, which typical CT images push to 0.98 as well), each against
its own null. The copy channel's p-value is the largest of the features' (intersection-union: a copy moves
every copy feature to its cap, while one feature alone is reached by look-alikes: on null scenarios split by
patient, taking the smallest, Bonferroni over the features, alarmed in 61 of 360 re-decisions, the largest in
none; benchmarks/README.md § Patients). The image's p-value is the weighted Bonferroni combination of the fused
channel and the copy channel (`combine`). The fused channel keeps `1 − COPY_SHARE` of α, the copy channel the
rest: the per-image false-alarm rate stays at α, and a copy is found whatever the fit learnt.

A copy lies beyond every unused image, so an empirical p-value, never below 1/(n + 1), cannot show it with a
small reference. Beyond the largest null value `tail_p` extrapolates with the Student-t predictive tail of a new
draw from the null's mean and spread, on s and on u = −log(1 − s) (where copies go to infinity), taking the
heavier of the two. Inside the null's range the p-value stays empirical (exact by exchangeability).

With no known-unused images at all there is no null: the `copies` decision flags only images at copy level,
the level measured by planting near copies of the audit's own real images (canaries.copy_levels).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..config import DecideConfig
from ..errors import FpindexError
from ..evidence import FEATURES, Evidence
from .base import DECIDERS, Decision, LabelRule, Labelled, Verdict

COPY_SHARE = 0.2            # of α, for the copy channel; the fused channel keeps the rest
# Methods tested against known-unused images: `decide` gives each the copy channel, and 1 − COPY_SHARE of α to
# the method itself. `copies` is copy-level evidence alone; `fixed` (the paper's rule) has no null.
NULL_TESTED = frozenset({"calibrated", "pu", "reference"})
COPY_CHECKED = NULL_TESTED | {"copies"}       # methods that read the copy-level features
_TOP = 1.0 - 1e-6           # copy features are bounded by 1: a pixel-exact copy sits at the cap
# The tail's degrees of freedom, at most: hundreds of images are tested at once, so the set-level test reads
# the tail at 1e-5 and beyond, where a skewed null outruns a Gaussian one (right-skewed nulls: 7 % of sets
# alarmed at df 99, 1.5 % at 30, for a nominal 1 %); an exact copy still reaches 1e-8 against 100 unused images.
MAX_DF = 30


def copy_features(evidence: Evidence) -> tuple[str, ...]:
    """The copy-level features this evidence carries, in its order."""
    return tuple(f for f in evidence.features if f in FEATURES and FEATURES.get(f).copy)


def to_tail(s: np.ndarray) -> np.ndarray:
    """−log(1 − s): copies (s → 1) go to infinity, so a Gaussian model of the bulk reaches them."""
    return -np.log1p(-np.minimum(np.asarray(s, np.float64), _TOP))


def tail_p(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """P(an unused image scores ≥ s): empirical inside the null's range; beyond its maximum the heavier of the
    Student-t predictive tails of s and of −log(1 − s), so that a null shaped like either (or like a maximum over
    neighbours, in between) keeps its rate (measured in benchmarks/verdict_alpha.py)."""
    from scipy.stats import t as student

    s = np.asarray(scores, np.float64)
    null = np.asarray(null, np.float64)
    null = np.sort(null[np.isfinite(null)])
    n = len(null)
    if n == 0:
        return np.ones(len(s))
    empirical = (1.0 + n - np.searchsorted(null, s, side="left")) / (1.0 + n)
    if n < 3:
        return empirical

    def predictive(f) -> np.ndarray:
        u = f(null)
        return student.sf((f(s) - u.mean()) / (max(u.std(ddof=1), 1e-3) * np.sqrt(1.0 + 1.0 / n)),
                          df=min(n - 1, MAX_DF))

    tail = np.maximum(predictive(lambda v: v), predictive(to_tail))
    return np.where(s > null[-1], np.minimum(empirical, tail), empirical)


@dataclass(frozen=True)
class CopyTest:
    """Per real image: each copy feature's p-value (n × m), and the channel's own p-value: the largest of them
    (every copy feature at copy level at once, the `copies` decision's rule that two measures agree)."""

    features: tuple[str, ...]
    p_features: np.ndarray

    @property
    def p(self) -> np.ndarray:
        """Intersection-union: valid, since it is ≤ α only where every feature's own valid p-value is."""
        return self.p_features.max(1) if self.features else np.ones(len(self.p_features))

    @property
    def best(self) -> list[str]:
        if not self.features:
            return [""] * len(self.p_features)
        return [self.features[j] for j in self.p_features.argmin(1)]


class CopyNull:
    """The copy features of known-unused images: what no copy scores. Applied to any evidence: the audit's, and
    the canaries' what-if."""

    def __init__(self, null: Evidence, features: tuple[str, ...] | None = None) -> None:
        self.features = copy_features(null) if features is None else features
        self.null = {f: null.scores[f].astype(np.float64) for f in self.features}
        self.n = len(null)

    def test(self, evidence: Evidence) -> CopyTest:
        feats = tuple(f for f in self.features if f in evidence.scores)
        cols = [tail_p(evidence.scores[f], self.null[f]) for f in feats]
        p = np.column_stack(cols) if cols else np.ones((len(evidence), 0))
        return CopyTest(feats, p)

    def describe(self) -> dict:
        return {"features": list(self.features), "n_null": self.n, "share_of_alpha": COPY_SHARE,
                "null": "the known-unused images",
                "p_value": "empirical inside the null's range; beyond its maximum the heavier of the Student-t "
                           "predictive tails of s and of -log(1 - s); the largest over the copy features "
                           "(all must agree)"}


def combine(p_fused: np.ndarray, copy: CopyTest) -> np.ndarray:
    """Weighted Bonferroni: min(p_fused / (1 − share), p_copy / share), capped at 1 — a valid p-value whenever
    both channels' are, and ≤ α as soon as either channel is significant at its share of α."""
    return np.minimum(1.0, np.minimum(np.asarray(p_fused, np.float64) / (1.0 - COPY_SHARE), copy.p / COPY_SHARE))


def _flagged_by(fused: np.ndarray, copy: np.ndarray, best: list[str]) -> list[str]:
    return ["+".join((["fused"] if f else []) + ([f"copy:{b}"] if c else []))
            for f, c, b in zip(fused.tolist(), copy.tolist(), best)]


def with_copy_channel(cfg: DecideConfig, fused: Decision, target: Evidence, null: CopyNull) -> Decision:
    """`fused` was decided at (1 − COPY_SHARE)·α; the copy channel gets the rest. Over the images, its p-values
    go through Benjamini-Hochberg at that share: the images it keeps are labelled (at most that share of them
    expected to be no copy), and the set shows leakage when either channel does (BH keeps nothing on a set
    without copies but at that rate). Each image's p-value stays the per-image combination (`combine`), which
    the canaries read."""
    from scipy.stats import false_discovery_control

    alpha, n = cfg.alpha, len(target)
    test = null.test(target)
    share = COPY_SHARE * alpha
    adjusted = false_discovery_control(test.p, method="bh") if n else test.p
    set_p = float(adjusted.min()) if n else 1.0
    copy_label = adjusted <= share
    proven = int(copy_label.sum())
    leakage = bool(fused.verdict.leakage) or proven > 0
    fused_label = np.asarray(fused.label, bool)
    verdict = replace(fused.verdict, leakage=leakage, alpha=alpha, copies=proven, copy_p=set_p,
                      fused=bool(fused.verdict.leakage))
    details = {**fused.details, "copy_channel": null.describe() | {
        "alpha_share": {"fused": round(1.0 - COPY_SHARE, 6), "copy": COPY_SHARE},
        "proven_copies": proven, "set_p_value": set_p,
        "labelled_by": {"fused": int(fused_label.sum()), "copy": int(copy_label.sum()),
                        "both": int((fused_label & copy_label).sum())}}}

    def rescore(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        score, p = fused.rescore(ev)
        return score, combine(p, null.test(ev))

    base = fused.rule or LabelRule(score=fused.method)
    rule = replace(base, alpha=alpha, text=f"{base.text} (fused channel at {1 - COPY_SHARE:g} α), or the copy channel: "
                                           f"Benjamini-Hochberg-adjusted copy p ≤ {share:g}")
    return Decision(score=fused.score, label=(fused_label | copy_label).astype(np.int8), method=fused.method,
                    verdict=verdict, details=details, p_value=combine(fused.p_value, test),
                    flagged_by=_flagged_by(fused_label, copy_label, test.best), rescore=rescore,
                    p_channels={"fused": fused.p_value, "copy": test.p}, rule=rule,
                    group_test=fused.group_test)


AGREE = 2          # copy-level features that must agree before the `copies` decision calls an image a copy


@DECIDERS.register("copies", "no known-unused images: flags only images at copy level (at least as similar, on "
                             "two copy features, as near copies of the audit's own real images are)")
def copies_only(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    """Without known-unused images nothing says what an unused image scores, so no label can be calibrated and no
    p-value computed. What can be measured is what a copy scores: `data.copy_levels`, per copy feature, the 5th
    percentile of near copies of the audit's own real images against their sources (canaries.copy_levels). An
    image is flagged when AGREE of its copy features reach that level (one alone can be an accident of one
    measure, two together only a copy). Score: the margin by which
    the AGREE-th feature passes its level, as a share of the way from the level to the cap of 1."""
    levels = data.copy_levels or {}
    feats = tuple(f for f in copy_features(target) if f in levels)
    if not feats:
        raise FpindexError("decision 'copies' needs the copy level of the audit's own images for at least one "
                           "copy-level feature (" + ", ".join(f for f in FEATURES if FEATURES.get(f).copy) +
                           "); the pipeline measures it, or give known-unused images (--reference)")
    need = min(AGREE, len(feats))

    def margins(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        m = np.column_stack([(ev.scores[f] - levels[f]) / max(1.0 - levels[f], 1e-6) for f in feats])
        return np.sort(m, axis=1)[:, -need], m

    def rescore(ev: Evidence) -> tuple[np.ndarray, None]:
        return margins(ev)[0], None

    score, each = margins(target)
    label = score >= 0.0
    best = [feats[j] for j in each.argmax(1)]
    verdict = Verdict(leakage=bool(label.any()), alpha=cfg.alpha, copies=int(label.sum()),
                      basis=f"copy level: {need} copy features at least as high as near copies of these images")
    details = {"copy_levels": {f: round(levels[f], 6) for f in feats}, "agree": need, "score": "copy margin",
               "threshold": 0.0, "basis": verdict.basis, "uncalibrated": True,
               "copy_channel": {"features": list(feats), "proven_copies": int(label.sum()),
                                "null": "none: no known-unused images; the copy level of near copies instead"}}
    rule = LabelRule(score="copy margin", threshold=0.0,
                     text=f"{need} copy features at least at the copy level of near copies of the real images")
    return Decision(score=score, label=label.astype(np.int8), method="copies", verdict=verdict, details=details,
                    flagged_by=_flagged_by(np.zeros(len(label), bool), label, best), rescore=rescore, rule=rule)
