"""The copy channel: copy-level evidence tested feature by feature, so that no fitted fusion can switch it off.

A fused decision learns its weights from whatever leak the labelled split (or the reference) happens to hold.
On a clean generator they are noise, on a GAN they point elsewhere, and an exact copy of a training image can
then rank like any other image. A privacy audit exists to find those copies, so every decision also tests each
real image on the features a copy drives to their top value of 1 (`Feature.copy`: the embedding cosine, SSIM,
SSIM after alignment, the band-passed correlation), each against its own null, and the image's p-value is the
weighted Bonferroni combination of the fused channel and the copy channel (`combine`). The fused channel keeps
`1 − COPY_SHARE` of α, the copy channel the rest, split evenly over its features: the per-image false-alarm
rate stays at α, and a copy is found whatever the fit learnt.

A copy lies beyond every unused image, so an empirical p-value, never below 1/(n + 1), cannot show it with a
small reference. Beyond the largest null value `tail_p` extrapolates with the Student-t predictive tail of a new
draw from the null's mean and spread, on s and on u = −log(1 − s) (where copies go to infinity), taking the
heavier of the two. Inside the null's range the p-value stays empirical (exact by exchangeability).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..config import DecideConfig
from ..errors import FpindexError
from ..evidence import FEATURES, Evidence
from .base import DECIDERS, Decision, Labelled, Verdict

COPY_SHARE = 0.2            # of α, for the copy channel; the fused channel keeps the rest
_TOP = 1.0 - 1e-6           # copy features are bounded by 1: a pixel-exact copy sits at the cap


def copy_features(evidence: Evidence) -> tuple[str, ...]:
    """The copy-level features this evidence carries, in its order."""
    return tuple(f for f in evidence.features if f in FEATURES and FEATURES.get(f).copy)


def to_tail(s: np.ndarray) -> np.ndarray:
    """−log(1 − s): copies (s → 1) go to infinity, so a Gaussian model of the bulk reaches them."""
    return -np.log1p(-np.minimum(np.asarray(s, np.float64), _TOP))


def _beta_tail(s: np.ndarray, null: np.ndarray) -> np.ndarray:
    """P(X ≥ s) for a Beta law on (s + 1) / 2 matched to the null's mean and (predictive) variance: a model that
    knows the scores stop at 1, so that it puts no mass where no image but a copy can be."""
    from scipy.stats import beta

    x = (null + 1.0) / 2.0
    m, v = x.mean(), x.var(ddof=1) * (1.0 + 1.0 / len(x))
    c = m * (1.0 - m) / max(v, 1e-12) - 1.0
    if not (0.0 < m < 1.0) or c <= 0:
        return np.ones(len(s))
    return beta.sf((np.minimum(s, 1.0) + 1.0) / 2.0, m * c, (1.0 - m) * c)


def tail_p(scores: np.ndarray, null: np.ndarray, robust: bool = False, bounded: bool = False) -> np.ndarray:
    """P(an unused image scores ≥ s): empirical inside the null's range, a modelled tail beyond its maximum.
    `robust`: median and MAD instead of mean and SD, for a null that may hold some copies itself (the real
    images, when nothing else is given). `bounded`: for a null that errs high by construction (the real images'
    matches among each other), the tail of s is modelled by a Beta law, which respects the cap at 1, instead of
    a Gaussian, which keeps mass beyond it and so cannot tell a copy from a wide null."""
    from scipy.stats import t as student

    s = np.asarray(scores, np.float64)
    null = np.asarray(null, np.float64)
    null = np.sort(null[np.isfinite(null)])
    n = len(null)
    if n < (5 if robust else 1):
        return np.ones(len(s))
    empirical = (1.0 + n - np.searchsorted(null, s, side="left")) / (1.0 + n)
    if n < 3:
        return empirical
    def predictive(f) -> np.ndarray:
        u = f(null)
        if robust:
            centre, spread = np.median(u), 1.4826 * np.median(np.abs(u - np.median(u)))
        else:
            centre, spread = u.mean(), u.std(ddof=1)
        return student.sf((f(s) - centre) / (max(spread, 1e-3) * np.sqrt(1.0 + 1.0 / n)), df=n - 1)

    # Gaussian on s or on −log(1 − s): whichever tail is the heavier, so that a null shaped like either (or like
    # a maximum over neighbours, in between) keeps its rate (measured in benchmarks/verdict_alpha.py).
    linear = _beta_tail(s, null) if bounded and not robust else predictive(lambda v: v)
    tail = np.maximum(linear, predictive(to_tail))
    if robust:      # the null holds the tested images themselves: only the model of its bulk speaks
        return tail
    return np.where(s > null[-1], np.minimum(empirical, tail), empirical)


@dataclass(frozen=True)
class CopyTest:
    """Per real image: each copy feature's p-value (n × m), and the channel's own p-value (Bonferroni over the
    m features) with the feature that gave it."""

    features: tuple[str, ...]
    p_features: np.ndarray
    robust: bool = False

    @property
    def p(self) -> np.ndarray:
        m = max(1, len(self.features))
        return np.minimum(1.0, m * self.p_features.min(1)) if self.features else np.ones(len(self.p_features))

    @property
    def best(self) -> list[str]:
        if not self.features:
            return [""] * len(self.p_features)
        return [self.features[j] for j in self.p_features.argmin(1)]


class CopyNull:
    """The copy features of known-unused images (or of the real images themselves, `robust`): what no copy
    scores. Applied to any evidence: the audit's, and the canaries' what-if."""

    def __init__(self, null: Evidence, features: tuple[str, ...] | None = None, robust: bool = False,
                 name: str = "the known-unused images", bounded: bool = False) -> None:
        self.name, self.bounded = name, bounded
        self.features = copy_features(null) if features is None else features
        self.null = {f: null.scores[f].astype(np.float64) for f in self.features}
        self.robust = robust
        self.n = len(null)

    def test(self, evidence: Evidence) -> CopyTest:
        feats = tuple(f for f in self.features if f in evidence.scores)
        cols = [tail_p(evidence.scores[f], self.null[f], self.robust, self.bounded) for f in feats]
        p = np.column_stack(cols) if cols else np.ones((len(evidence), 0))
        return CopyTest(feats, p, self.robust)

    def describe(self) -> dict:
        return {"features": list(self.features), "n_null": self.n, "share_of_alpha": COPY_SHARE,
                "null": "the real images themselves, median and MAD (no known-unused images)" if self.robust
                else self.name,
                "p_value": "empirical inside the null's range; beyond its maximum the heavier of two modelled "
                           "tails: the Student-t predictive tail of -log(1 - s), and that of s (a Gaussian) or, "
                           "for the real images' own background, a Beta law on s; Bonferroni over the copy "
                           "features"}


def combine(p_fused: np.ndarray, copy: CopyTest) -> np.ndarray:
    """Weighted Bonferroni: min(p_fused / (1 − share), p_copy / share), capped at 1 — a valid p-value whenever
    both channels' are, and ≤ α as soon as either channel is significant at its share of α."""
    return np.minimum(1.0, np.minimum(np.asarray(p_fused, np.float64) / (1.0 - COPY_SHARE), copy.p / COPY_SHARE))


def _flagged_by(fused: np.ndarray, copy: np.ndarray, best: list[str]) -> list[str]:
    return ["+".join((["fused"] if f else []) + ([f"copy:{b}"] if c else []))
            for f, c, b in zip(fused.tolist(), copy.tolist(), best)]


def with_copy_channel(cfg: DecideConfig, fused: Decision, target: Evidence, null: CopyNull) -> Decision:
    """`fused` was decided at (1 − COPY_SHARE)·α; the copy channel gets the rest. The set shows leakage when
    either channel does (the copy channel: its most extreme image, Bonferroni over the images), and an image is
    labelled when its fused label or its copy-channel test says so."""
    alpha, n = cfg.alpha, len(target)
    test = null.test(target)
    set_p = float(min(1.0, n * test.p.min())) if n else 1.0
    share = COPY_SHARE * alpha
    proven = int(np.sum(n * test.p <= share))
    leakage = bool(fused.verdict.leakage) or set_p <= share
    copy_label = (test.p <= share) & leakage
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

    return Decision(score=fused.score, label=(fused_label | copy_label).astype(np.int8), method=fused.method,
                    verdict=verdict, details=details, p_value=combine(fused.p_value, test),
                    flagged_by=_flagged_by(fused_label, copy_label, test.best), rescore=rescore,
                    p_channels={"fused": fused.p_value, "copy": test.p})


def _bh(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    return false_discovery_control(p, method="bh") if len(p) else p


@DECIDERS.register("copies", "no known-unused images: flags only images with copy-level evidence beyond the real "
                             "images' matches among each other (Benjamini-Hochberg at alpha)")
def copies_only(cfg: DecideConfig, target: Evidence, data: Labelled) -> Decision:
    """Without known-unused images nothing says what an unused image scores, so no label can be calibrated. The
    null is the real images' best matches among each other (`data.background`: siblings and byte-identical
    copies excluded, so no leak inflates it; the siblings it misses make it cautious), or, without it, the real
    images' own scores by a median and MAD. An image is flagged when its copy-channel p-value survives the
    Benjamini-Hochberg procedure at α over all the images: of the images flagged, a share of at most α is
    expected to be no copy (and with no copy at all, any flag at most α of the time). Score: −log10 of the copy
    channel's p-value; p_value: the BH-adjusted one."""
    bg = data.background
    null = CopyNull(target, robust=True) if bg is None or len(bg) < 3 else CopyNull(
        bg, name="the real images' best matches among each other (siblings excluded)", bounded=True)
    if not null.features:
        raise FpindexError("decision 'copies' needs copy-level evidence features (" +
                           ", ".join(f for f in FEATURES if FEATURES.get(f).copy) + "); none was computed")
    test = null.test(target)
    raw = test.p
    adjusted = _bh(raw)
    label = adjusted <= cfg.alpha
    n = len(target)

    def rescore(ev: Evidence) -> tuple[np.ndarray, np.ndarray]:
        """Each row as if it were one more real image: its BH-adjusted p-value among the audit's."""
        p = null.test(ev).p
        return -np.log10(np.maximum(p, 1e-300)), np.array([_bh(np.r_[raw, v])[-1] for v in p.tolist()])

    verdict = Verdict(leakage=bool(label.any()), alpha=cfg.alpha, copies=int(label.sum()),
                      copy_p=float(adjusted.min()) if n else 1.0,
                      basis="copy-level evidence beyond " + null.describe()["null"])
    details = {"copy_channel": null.describe() | {"proven_copies": int(label.sum()), "set_p_value": verdict.copy_p},
               "basis": verdict.basis, "score": "-log10 of the copy channel's p-value",
               "p_value": "Benjamini-Hochberg adjusted over the real images (a q-value)", "uncalibrated": True}
    return Decision(score=-np.log10(np.maximum(raw, 1e-300)), label=label.astype(np.int8), method="copies",
                    verdict=verdict, details=details, p_value=adjusted,
                    flagged_by=_flagged_by(np.zeros(n, bool), label, test.best), rescore=rescore,
                    p_channels={"copy": raw})
