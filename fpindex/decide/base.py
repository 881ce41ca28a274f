"""What every decision method shares: the verdict and decision records, the registry, p-values and the
bootstrap interval, and the checks of the evidence given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..config import DecideConfig
from ..errors import FpindexError
from ..metrics import rank_auc
from ..evidence import Evidence
from ..registry import Registry

@dataclass(frozen=True)
class Verdict:
    """Is there any membership signal in this generated set? `leakage` is None when it was not tested."""

    leakage: bool | None
    alpha: float
    basis: str = ""
    auc: float | None = None
    ci: tuple[float, float] | None = None
    p_value: float | None = None
    # The copy channel (copies.py): how many real images carry copy-level evidence on their own, and the
    # smallest Benjamini-Hochberg adjusted p-value over the images (None: no null, as for `copies`);
    # copies None: no copy channel.
    copies: int | None = None
    copy_p: float | None = None
    fused: bool | None = None       # with a copy channel: did the fused score alone show leakage (at its share of α)?

    @property
    def text(self) -> str:
        if self.leakage is None:
            return "not tested: fixed thresholds have no null to test against (give --used/--not-used or --reference)"
        fused = "" if self.auc is None else f"AUC {self.auc:.3f}, p = {self.p_value:.3g}, {self.basis}"
        at = "" if self.copy_p is None else f" (set-level p = {self.copy_p:.3g})"
        copies = "" if self.copies is None else (
            f"{self.copies} real image{'' if self.copies == 1 else 's'} with copy-level evidence{at}" if self.copies
            else f"no copy-level evidence{at}")
        if not self.leakage:
            return f"no evidence of leakage at α = {self.alpha:g} ({'; '.join(t for t in (fused, copies) if t)})"
        if self.auc is None or self.fused is False:
            head = f"leakage detected: {copies}"
            return head if self.auc is None else f"{head}; the fused score alone shows none ({fused})"
        text = (f"leakage detected: AUC {self.auc:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}] on the {self.basis}, "
                f"p = {self.p_value:.3g}")
        return f"{text}; {copies}" if self.copies else text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        """The inverse of `as_dict` (summary.json); `text` is recomputed, never trusted."""
        ci = d.get("auc_ci95")
        return cls(leakage=d.get("leakage"), alpha=float(d.get("alpha", 0.05)), basis=d.get("basis") or "",
                   auc=d.get("auc"), ci=tuple(ci) if ci else None, p_value=d.get("p_value"),
                   copies=d.get("copies"), copy_p=d.get("copy_p_value"), fused=d.get("fused_leakage"))

    def as_dict(self) -> dict[str, Any]:
        return {"leakage": self.leakage, "alpha": self.alpha, "basis": self.basis, "auc": self.auc,
                "auc_ci95": list(self.ci) if self.ci else None, "p_value": self.p_value, "copies": self.copies,
                "copy_p_value": self.copy_p, "fused_leakage": self.fused, "text": self.text}


@dataclass(frozen=True)
class LabelRule:
    """How a decision labels one image, recorded by the method that applies it, so that the canaries and the
    report apply the rule instead of re-deriving it from the method's name.

    An image is found (`found`) when its p-value is ≤ `alpha` (methods with a null), else when its score is ≥
    `threshold`. `gated`: labels are given only when the set-level verdict shows leakage (the canaries ignore
    the gate: the verdict is what they qualify). `threshold` is also where the report draws the line on the
    score (None: the rule is on the p-value, which no single score threshold states for every image)."""

    score: str                          # what the score is ("P(used)", a feature's name, "copy margin", …)
    threshold: float | None = None      # label = score ≥ threshold
    alpha: float | None = None          # label = p ≤ alpha
    gated: bool = False
    text: str = ""

    def found(self, score: np.ndarray, p_value: np.ndarray | None) -> np.ndarray:
        if self.alpha is not None and p_value is not None:
            return np.asarray(p_value, np.float64) <= self.alpha
        if self.threshold is None:
            raise FpindexError(f"the labelling rule '{self.text}' needs a p-value")
        return np.asarray(score, np.float64) >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "alpha": self.alpha, "gated": self.gated,
                "text": self.text}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelRule":
        return cls(score=str(d.get("score", "")), threshold=d.get("threshold"), alpha=d.get("alpha"),
                   gated=bool(d.get("gated", False)), text=str(d.get("text", "")))


@dataclass(frozen=True)
class GroupTest:
    """The verdict's permutation test read at the level of whole groups (patients, or the sibling proxy): the
    AUC of each group's highest score, against the same permutations of whole groups' labels."""

    auc: float
    p_value: float
    groups: tuple[int, int]          # groups on the positive side (used / real), on the negative side
    permutations: int


@dataclass
class Decision:
    score: np.ndarray
    label: np.ndarray
    method: str
    verdict: Verdict
    details: dict[str, Any] = field(default_factory=dict)
    p_value: np.ndarray | None = None
    # Per image, which channel makes its p-value ≤ α ('fused', 'copy:<feature>', both joined by '+', or '');
    # None: the method has no copy channel (fixed).
    flagged_by: list[str] | None = None
    # Each channel's own per-image p-value ('fused', 'copy') before they are combined into `p_value`.
    p_channels: dict[str, np.ndarray] = field(default_factory=dict)
    # The fitted decision applied to other evidence (the canaries' what-if): score and p-value (None: no null).
    rescore: Callable[[Evidence], tuple[np.ndarray, np.ndarray | None]] | None = field(default=None, repr=False)
    rule: LabelRule | None = None       # how `label` was given (each method states its own)
    # The set-level test at the level of the evidence's groups (decide/patients.py); None: no groups given.
    group_test: GroupTest | None = None


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
    # Per copy-level feature, what near copies of the audit's own real images score (canaries.copy_levels): what
    # "a copy" means to the `copies` decision when nothing is known to be unused.
    copy_levels: dict[str, float] | None = None


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
