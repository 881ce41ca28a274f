"""Sensitivity curves: how recall at a fixed false-positive rate falls as a planted leak gets harder to see.

For each (kind, strength) of the grid a scenario is simulated (simulator.py) and audited, calibrated on its
train/ split; the test/ images' scores are then compared with the labels the simulator wrote. Each cell's
scenario and audit stay under OUT/cells/<kind>-<strength>/; the table goes to OUT/sensitivity.json and
OUT/sensitivity.csv, the curves to OUT/sensitivity.png. Audits of cells run without canaries (the curve is
the measurement here).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import AuditConfig
from .errors import FpindexError
from .load import image_id
from .load.tables import read_labels
from .plants import PLANTS, grid
from .simulator import check_arguments, read_manifest, simulate
from .metrics import metrics, tpr_at_fpr
from .utils import atomic_path, versions, write_json_atomic, write_text_atomic

COLUMNS = ("kind", "strength", "unit", "description", "recall", "auc", "n_used", "n_not_used", "flagged",
           "leakage")


def recall_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float | None:
    """Recall at a fixed false-positive rate (metrics.tpr_at_fpr); None with one class only."""
    from sklearn.metrics import roc_curve

    if len(set(y.tolist())) < 2:
        return None
    return round(tpr_at_fpr(roc_curve(y, s), fpr), 6)


def sensitivity(real: str | Path, out: str | Path, generated: str | Path | None = None, *,
                kinds: Sequence[str] | None = None, strengths: Sequence[float] | None = None,
                members: int | None = None, rate: float = 1.0, seed: int = 0, manifest: str | Path | None = None,
                size: int = 128, fresh: int | None = None, fpr: float = 0.05,
                config: AuditConfig | None = None) -> dict[str, Any]:
    """Simulate and audit every cell of the grid; returns what OUT/sensitivity.json holds."""
    from . import pipeline
    from .report import plots

    out = Path(out)
    try:
        ok = 0.0 < float(fpr) < 1.0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise FpindexError(f"--fpr must be between 0 and 1, got {fpr!r}")
    check_arguments(real, out, generated, members=members, rate=rate, seed=seed, size=size, fresh=fresh)
    cells = grid(kinds, strengths)
    names: dict[str, tuple[str, float]] = {}
    for kind, strength in cells:        # each cell's folder is its own: two cells never share one
        name = f"{kind}-{strength:g}"
        if name in names:
            raise FpindexError(f"--strength {names[name][1]!r} and {strength!r} of {kind} would share the cell "
                               f"folder cells/{name}; give strengths that differ in their first 6 digits")
        names[name] = (kind, strength)
    if manifest is not None:
        read_manifest(manifest)
    cfg = (config or AuditConfig()).override(canaries={"n": 0})
    rows = []
    for kind, strength in cells:
        cell = out / "cells" / f"{kind}-{strength:g}"
        sim = simulate(real, cell / "data", generated, members=members, kinds=[kind], strengths=[strength],
                       rate=rate, seed=seed, manifest=manifest, size=size, fresh=fresh)
        d = sim.root
        result = pipeline.audit(d / "generated", d / "test", cfg, index_dir=cell / "audit" / "index",
                                used=d / "train" / "used", not_used=d / "train" / "not_used")
        result.save(cell / "audit")
        truth = read_labels(d / "test_labels.csv")
        p = result.predictions
        y = np.array([truth[image_id(i)] for i in p["image"]])
        s = p["score"].to_numpy(np.float64)
        rows.append({"kind": kind, "strength": strength, "unit": PLANTS.get(kind).unit,
                     "description": PLANTS.get(kind).describe(strength), "recall": recall_at_fpr(y, s, fpr),
                     "auc": metrics(y, p["label"].to_numpy(), s)["auc"], "n_used": int(y.sum()),
                     "n_not_used": int((1 - y).sum()), "flagged": int(p["label"].sum()),
                     "leakage": result.verdict.leakage})
    record = {"fpr": fpr, "table": rows,
              "parameters": {"real": str(real), "generated": str(generated) if generated else None,
                             "manifest": str(manifest) if manifest else None, "members": members, "rate": rate,
                             "seed": seed, "size": size, "fresh": fresh,
                             "kinds": list(dict.fromkeys(k for k, _ in cells)),
                             "strengths": list(strengths) if strengths is not None else None},
              "config": cfg.to_dict(), "versions": versions()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "sensitivity.csv", buf.getvalue())
    with atomic_path(out / "sensitivity.png") as tmp:
        tmp.write_bytes(plots.sensitivity_curves(rows, fpr))
    write_json_atomic(out / "sensitivity.json", record)
    return record
