"""Stage 7 — turn similarities into a membership score and a used / not-used label per real image.

Per real image the evidence is a few named numbers, one per evidence feature (fpindex/evidence/, today seven:
the top-1 cosine, the best SSIM and the best Jaccard over its k neighbours, how well the generated set's
principal subspace reconstructs the image, the best SSIM after rigid alignment of each neighbour, the best
band-passed correlation after affine alignment, and the generated-vs-real density ratio).
Five ways to decide, chosen by `--decision` (default `auto`: the first that the inputs allow, in the order
calibrated → pu → copies):
- `calibrated` (fusion.py): labelled used / not-used real images (ImageCLEF's train split). All the scores are
  fused with non-negative weights (see `MonotoneScore`) and Platt-scaled, fitted on them; the stratified
  k-fold cross-validated quality on those images is reported. Score = P(used); label = P ≥ 0.5.
- `pu` (pu.py): only real images known *not* to be used (a reference). The same fusion, fitted to tell the
  real images from the reference (positive-unlabelled, cross-fitted); p-value against the reference's
  out-of-fold scores; label = p ≤ α; the share of used images estimated with an interval.
- `reference` (simple.py, opt-in): one `--score` against the reference: p = (1 + #{null ≥ s}) / (1 + n_null);
  label = p ≤ α. Score = the raw similarity.
- `copies` (copies.py): nothing known to be unused: only copy-level evidence, an image whose copy features reach
  what near copies of the audit's own images score (canaries.copy_levels). Score = that margin; no p-value.
- `fixed` (simple.py): the paper's way: label = `--score` ≥ a fixed threshold. Score = the raw similarity.

calibrated, pu and reference are each one channel of two: `decide` runs them at 0.8 α and adds the copy
channel (copies.py) at 0.2 α, which tests the features a copy saturates one by one, so that no fit can hide a
copy; an image's p-value and label, and the verdict, take either channel's evidence.

Before any image is labelled "used", the whole set gets a verdict: is there a membership signal at all?
- calibrated and pu: the cross-validated AUC, with a bootstrap 95 % interval and a permutation test (the
  whole cross-validation redone on permuted labels). Real images come in series (a patient's slices), so
  folds and permutations move whole patients (`--groups`, DICOM tags) or, where none is known, sibling groups
  (`search.sibling_groups`), never single images (grouping.py); patients.py reads the same test per patient;
- reference: a one-sided Mann-Whitney test of the real images' scores against the reference scores.
Without evidence at level α every label is 0, so a clean generator is not accused. Each image also gets a
p-value: per channel, the share of known-unused images (their out-of-fold scores when fused) scoring at least
as high, or beyond them, for the copy channel, a modelled tail; then combined.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import DecideConfig
from ..errors import FpindexError
from ..evidence import Evidence
from .base import DECIDERS, Decider, Decision, LabelRule, Labelled, Verdict, bootstrap_auc_ci, empirical_p
from .simple import fixed, reference
from .fusion import CrossFit, MonotoneScore, calibrated, cross_fit, fold_count, groups_of
from .pu import positive_unlabelled, storey_share
from .copies import (COPY_CHECKED, COPY_SHARE, NULL_TESTED, CopyNull, copy_features, copies_only, tail_p,
                     with_copy_channel)
from .guardrails import Inputs, audit_warnings, emit


FUSING = frozenset({"calibrated", "pu"})   # methods that read every evidence feature, not one score


def choose_method(cfg: DecideConfig, data: Labelled) -> str:
    """The one place that picks the method; the pipeline calls it before any work and passes the answer on."""
    if cfg.method != "auto":
        DECIDERS.get(cfg.method)
    if data.used is not None and data.not_used is None and cfg.method != "calibrated":   # it says so itself
        raise FpindexError("--used was given without --not-used: labelled used images calibrate only against "
                           "labelled not-used ones; add --not-used DIR, or pass known-unused images as "
                           "--reference DIR and drop --used")
    if cfg.method != "auto":
        return cfg.method
    if data.used is not None and data.not_used is not None:
        return "calibrated"
    if data.reference is not None or data.not_used is not None:
        return "pu"
    return "copies"


def null_of(method: str, data: Labelled) -> Evidence | None:
    """The known-unused images a method's null is made of (the canaries' sources too)."""
    if method == "calibrated":
        return data.not_used
    return data.reference if data.reference is not None else data.not_used


def _stated(cfg: DecideConfig, d: Decision) -> Decision:
    """A method registered without its own LabelRule (a plugin's) gets the generic one: p ≤ α when it gives
    p-values, else its `threshold` detail."""
    if d.rule is not None:
        return d
    thr = d.details.get("threshold")
    thr = float(thr) if isinstance(thr, (int, float)) and not isinstance(thr, bool) else None
    if d.p_value is None and thr is None:
        raise FpindexError(f"decision method {d.method!r} states no labelling rule (Decision.rule), no p-values "
                           "and no threshold")
    score = str(d.details.get("score", d.method))
    alpha = cfg.alpha if d.p_value is not None else None
    text = f"p ≤ α = {cfg.alpha:g}" if alpha is not None else f"{score} ≥ {thr:g}"
    return replace(d, rule=LabelRule(score=score, threshold=thr, alpha=alpha, text=text))


def decide(cfg: DecideConfig, target: Evidence, data: Labelled, method: str | None = None) -> Decision:
    """method: what choose_method picked earlier (None: pick it now), so the choice is made once."""
    if method is None:
        method = choose_method(cfg, data)
    elif cfg.method not in ("auto", method):
        raise FpindexError(f"decision method {method!r} given, but the settings ask for {cfg.method!r}")
    if method not in NULL_TESTED:
        return _stated(cfg, DECIDERS.get(method)(cfg, target, data))
    fused = _stated(cfg, DECIDERS.get(method)(replace(cfg, alpha=cfg.alpha * (1.0 - COPY_SHARE)), target, data))
    null = null_of(method, data)
    return with_copy_channel(cfg, fused, target, CopyNull(null if null is not None else Evidence({})))


__all__ = ["DECIDERS", "Decider", "Decision", "LabelRule", "Labelled", "Verdict", "FUSING", "NULL_TESTED", "COPY_CHECKED", "choose_method",
           "decide", "null_of", "fixed", "COPY_SHARE", "CopyNull", "copy_features", "copies_only", "tail_p",
           "with_copy_channel", "Inputs", "audit_warnings", "emit",
           "reference", "calibrated", "positive_unlabelled", "MonotoneScore", "CrossFit", "cross_fit", "groups_of",
           "fold_count", "storey_share", "empirical_p", "bootstrap_auc_ci"]
