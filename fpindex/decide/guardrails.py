"""What an audit says when its inputs look wrong or too thin for its answer: one line each, never fatal.

A swapped pair of folders, a labelled split read backwards or a reference of five images all give numbers
that look like answers. These checks read what the audit already has (counts, hashes, the verdict) and name
the likely cause; the pipeline prints them (as `FpindexWarning`s) and records them in summary.json.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from .base import Decision
from .copies import COPY_SHARE, NULL_TESTED
from ..errors import FpindexWarning

SAME_SET_SHARE = 0.9        # this share of real images byte-identical to generated ones: likely the same folder
# A cross-validated AUC below this (and its interval below 0.5) is more than patients differing: bench-dev's
# dev-null, a clean generator, gives 0.437 [0.382, 0.492]; folders given the wrong way round gave 0.315.
BELOW_CHANCE = 0.4


@dataclass(frozen=True)
class Inputs:
    """The few facts the checks read."""

    n_real: int
    n_generated: int
    n_null: int                 # known-unused images the decision's null is made of (0: none)
    real_in_generated: int      # real images byte-identical to an indexed generated image


def needed_null(alpha: float) -> int:
    """Known-unused images needed before the fused score's smallest p-value, 1/(n + 1), reaches its share of α."""
    return math.ceil(1.0 / ((1.0 - COPY_SHARE) * alpha)) - 1


def audit_warnings(decision: Decision, facts: Inputs) -> list[str]:
    alpha, out = decision.verdict.alpha, []
    if decision.method == "copies":
        out.append("no known-unused images (--not-used or --reference): labels cannot be calibrated, so only "
                   "images with copy-level evidence are flagged; give --reference DIR (real images known not to "
                   "be in the training set) for a calibrated audit")
    if decision.method in NULL_TESTED:
        need = needed_null(alpha)
        if facts.n_null < 3:
            out.append(f"only {facts.n_null} known-unused images: too few for any claim (the copy channel needs "
                       f"at least 3, the fused score {need}); give more with --not-used or --reference")
        elif facts.n_null < need and decision.method != "calibrated":   # calibrated labels by P ≥ 0.5, not by p
            out.append(f"only {facts.n_null} known-unused images: the fused score's p-values cannot go below "
                       f"1/{facts.n_null + 1} = {1 / (facts.n_null + 1):.3g}, above its share of α "
                       f"({(1 - COPY_SHARE) * alpha:.3g}), so only copy-level evidence can flag an image; give at "
                       f"least {need} known-unused images for the fused score to count")
    v = decision.verdict
    if v.ci is not None and v.auc is not None and v.auc < BELOW_CHANCE and v.ci[1] < 0.5:
        out.append(f"the cross-validated AUC is {v.auc:.3f} [{v.ci[0]:.3f}, {v.ci[1]:.3f}], well below chance: "
                   "the known-unused images look more like the generated ones than the others do; are the "
                   "generated and real folders swapped, or --used and --not-used?")
    if facts.n_generated < facts.n_real:
        out.append(f"only {facts.n_generated} generated images for {facts.n_real} real ones: a generated set is "
                   "usually the larger; are the generated and real folders swapped?")
    if facts.n_real and facts.real_in_generated >= SAME_SET_SHARE * facts.n_real:
        out.append(f"{facts.real_in_generated} of {facts.n_real} real images are byte-identical to generated "
                   "images: is the real folder the generated one (or a copy of it)?")
    return out


def emit(messages: list[str]) -> None:
    for m in messages:
        warnings.warn(m, FpindexWarning, stacklevel=3)
