"""The patient-level answer beside the image-level one: which patients are exposed, and is any?

For each patient (group) of the real images (decide/grouping.py says how they were grouped):
- score: the highest of its images' scores: a generator that memorised one slice exposes the patient.
- p-value: Bonferroni over its images' p-values, min(1, n · min p). Valid whatever the dependence between one
  patient's slices (strong, and of unknown form: Simes would need positive regression dependence, not shown for
  the combined fused + copy p-values), and equal to Simes in the case this answers, one memorised slice.
- verdict: the decision's own permutation test (whole groups' labels shuffled; for the fused decisions the
  cross-fit redone each time, fusion.cross_fit) read with a group-level statistic, the AUC of each group's
  highest score (`GroupTest`), at the fused channel's share of α; beside it the copy channel at patient level,
  each patient's copy p-value (Bonferroni over its images) through Benjamini-Hochberg at the copy share of α.
  Leakage when either finds it, so α in all, as for the image-level verdict (copies.py). Per image the copy
  p-value is the copy channel's own: every copy feature at copy level at once (copies.CopyTest.p).
- exposed: the patient-level verdict says leakage and the patient's p-value ≤ α, or its copy p-value survives
  BH; for `copies` and `fixed` (no null, no p-value) any of its images labelled used.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np

from ..metrics import rank_auc
from .base import Decision, GroupTest, empirical_p
from .grouping import PROXY, GroupSource, Grouping

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["patient", "source", "images", "score", "p_value", "label", "top_image", "flagged_images"]
HINT = "no patient ids: give --groups CSV (columns image,patient) or DICOM files with PatientID"


def group_max(scores: np.ndarray, inv: np.ndarray, n: int) -> np.ndarray:
    """Each group's highest score (`inv`: each image's group, 0..n-1)."""
    out = np.full(n, -np.inf)
    np.maximum.at(out, inv, np.asarray(scores, np.float64))
    return out


def group_min(values: np.ndarray, inv: np.ndarray, n: int) -> np.ndarray:
    """Each group's smallest value (a p-value: the group's most significant image)."""
    out = np.full(n, np.inf)
    np.minimum.at(out, inv, np.asarray(values, np.float64))
    return out


def permutation_group_test(pos: np.ndarray, pos_groups: np.ndarray, neg: np.ndarray, neg_groups: np.ndarray,
                           permutations: int, seed: int) -> GroupTest | None:
    """For a decision without a fit (`reference`): the groups' highest raw scores, labels shuffled over whole
    groups; exact, since nothing is refitted. None with fewer than 2 groups on a side."""
    a = np.unique(pos_groups, return_inverse=True)[1].reshape(-1)
    b = np.unique(neg_groups, return_inverse=True)[1].reshape(-1)
    na, nb = int(a.max()) + 1 if len(a) else 0, int(b.max()) + 1 if len(b) else 0
    if na < 2 or nb < 2:
        return None
    top = group_max(np.r_[pos, neg], np.r_[a, b + na], na + nb)
    y = np.r_[np.ones(na), np.zeros(nb)]
    observed = rank_auc(y, top)
    rng = np.random.default_rng([seed, 20])
    null = np.array([rank_auc(rng.permutation(y), top) for _ in range(permutations)])
    return GroupTest(round(float(observed), 4), float(empirical_p(np.array([observed]), null)[0]), (na, nb),
                     permutations)


@dataclass(frozen=True)
class PatientVerdict:
    """Is any patient exposed? `leakage` None: not tested (no null, or too few patients)."""

    leakage: bool | None
    alpha: float
    basis: str = ""
    auc: float | None = None
    p_value: float | None = None
    copies: int | None = None        # patients with copy-level evidence (BH at the copy share of α)
    exposed: int = 0

    @property
    def text(self) -> str:
        copies = "" if self.copies is None else (f"{self.copies} patient{'' if self.copies == 1 else 's'} with "
                                                 "copy-level evidence" if self.copies else "no copy-level evidence")
        fused = "" if self.auc is None else f"patient AUC {self.auc:.3f}, p = {self.p_value:.3g}, {self.basis}"
        why = "; ".join(t for t in (fused, copies) if t) or self.basis
        if self.leakage is None:
            return f"not tested at patient level ({why})" if why else "not tested at patient level"
        head = f"{self.exposed} patient{'' if self.exposed == 1 else 's'} exposed" if self.leakage else \
            f"no evidence of leakage at patient level at α = {self.alpha:g}"
        return f"{head} ({why})"

    def to_dict(self) -> dict:
        return {"leakage": self.leakage, "alpha": self.alpha, "basis": self.basis, "auc": self.auc,
                "p_value": self.p_value, "copies": self.copies, "exposed": self.exposed, "text": self.text}


@dataclass
class Patients:
    """The patients of the real images, with the patient-level verdict, and how every folder was grouped."""

    table: pd.DataFrame                  # COLUMNS, most exposed first
    verdict: PatientVerdict
    grouping: dict[str, GroupSource] = field(default_factory=dict)
    known: bool = False                  # some image's patient is known (not only the proxy)
    note: str = ""                       # what keeps the patient-level test from being made, said as a warning

    def warnings(self, table: str | None) -> list[str]:
        """Images a groups CSV left unknown: counted per folder and said, since they keep the proxy."""
        left = {name: g.by.get(PROXY, 0) for name, g in self.grouping.items()}
        notes = [self.note] if self.note else []
        if table is None or not any(left.values()):
            return notes
        return notes + [f"{table}: {', '.join(f'{n} of {self.grouping[f].images} {f} images' for f, n in left.items() if n)} "
                "are not listed (nor have DICOM patient tags); they keep the sibling proxy (mutual 2-NN groups "
                "among themselves) in the folds and permutations"]

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.table.itertuples(index=False):
            w.writerow([r.patient, r.source, r.images, f"{r.score:.6f}",
                        "" if np.isnan(r.p_value) else f"{r.p_value:.6g}", int(r.label), r.top_image,
                        r.flagged_images])
        return buf.getvalue()

    def to_dict(self, top: int = 20) -> dict:
        """summary.json's `patients`: the verdict, the grouping, and the `top` most exposed patients."""
        return {"known": self.known, "n": int(len(self.table)), "exposed": int(self.table["label"].sum()),
                "verdict": self.verdict.to_dict(),
                "grouping": {name: g.to_dict() for name, g in self.grouping.items()},
                "score": "the highest of the patient's image scores",
                "p_value": "Bonferroni over the patient's image p-values, min(1, n * min p)",
                "top": [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                        for r in self.table.head(top).to_dict("records")]}


def _tested(method: str, grouping: dict[str, Grouping]) -> list[str]:
    if method == "calibrated":
        return ["used", "not_used"]
    return ["real", "reference" if "reference" in grouping else "not_used"]


def patient_level(decision: Decision, images: list[str], grouping: dict[str, Grouping] | None,
                  alpha: float) -> Patients:
    """`images`: the real images in the decision's order; `grouping`: every folder's (None: no groups)."""
    from .copies import COPY_SHARE      # here: importing copies.py first would register `copies` first

    known = grouping is not None and any(g.exact for g in grouping.values())
    described = {name: g.describe() for name, g in (grouping or {}).items()}
    if not known:
        import pandas as pd

        return Patients(pd.DataFrame({c: [] for c in COLUMNS}), PatientVerdict(None, alpha, HINT), described)
    g = grouping["real"]
    names, inv = np.unique(np.array(g.names, dtype=str), return_inverse=True)
    inv = inv.reshape(-1)
    n = len(names)
    size = np.bincount(inv, minlength=n)
    score = np.asarray(decision.score, np.float64)
    top_score = group_max(score, inv, n)
    has_p = decision.p_value is not None
    p_img = np.asarray(decision.p_value, np.float64) if has_p else np.full(len(score), np.nan)
    p = np.minimum(1.0, size * group_min(p_img, inv, n)) if has_p else np.full(n, np.nan)
    label_img = np.asarray(decision.label, bool)
    flagged = np.bincount(inv, weights=label_img, minlength=n).astype(int)
    order_in = np.lexsort((-score, p_img if has_p else np.zeros(len(score)), inv))   # best image of each first
    first = order_in[np.r_[0, np.flatnonzero(np.diff(inv[order_in])) + 1]]
    source = np.array(g.sources, dtype=object)[first]

    copies = None
    copy_hit = np.zeros(n, bool)
    if "copy" in decision.p_channels:
        from scipy.stats import false_discovery_control

        c_min = group_min(decision.p_channels["copy"], inv, n)
        copy_hit = false_discovery_control(np.minimum(1.0, size * c_min), method="bh") <= COPY_SHARE * alpha
        copies = int(copy_hit.sum())
    test = decision.group_test
    if has_p:
        fused = test is not None and test.p_value <= (1.0 - COPY_SHARE) * alpha and test.auc > 0.5
        leakage = bool(fused or copy_hit.any()) if (test is not None or copies is not None) else None
        label = (bool(leakage) & (p <= alpha)) | copy_hit
    else:                                   # copies, fixed: no null; a patient is what its images are
        label = flagged > 0
        leakage = bool(label.any()) if decision.method == "copies" else None
    tested = _tested(decision.method, grouping)
    unit = "patients" if all(grouping[f].exact for f in tested if f in grouping) else "groups (patients where " \
        "known, else the sibling proxy)"
    basis = (f"{decision.verdict.basis}, {unit}" if test is not None else
             decision.verdict.basis or "no null to test against")
    verdict = PatientVerdict(leakage, alpha, basis, test.auc if test is not None else None,
                             test.p_value if test is not None else None, copies, int(label.sum()))
    import pandas as pd

    table = pd.DataFrame({"patient": names, "source": source, "images": size, "score": top_score, "p_value": p,
                          "label": label.astype(np.int8), "top_image": np.array(images, dtype=object)[first],
                          "flagged_images": flagged})
    note = "" if test is not None or not has_p else (
        f"fewer than 2 patients on a side of the {decision.method} decision's test ({', '.join(tested)}): no "
        "patient-level test; a fused decision then cross-fits and permutes single images, which overstates the "
        "evidence when slices of one patient are alike")
    table = table.sort_values(["label", "p_value", "score"], ascending=[False, True, False], kind="stable",
                              na_position="last").reset_index(drop=True)
    return Patients(table, verdict, described, known=True, note=note)


__all__ = ["PROXY", "Patients", "PatientVerdict", "patient_level", "permutation_group_test", "group_max"]
