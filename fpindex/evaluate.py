"""Stage 8 — score predictions against labels, beside the trivial answers any method must beat.

Reading and joining the files happens here; the metrics themselves live in metrics.py (decide uses them too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import FpindexError
from .load import image_id
from .load.tables import MATCHED_BY, as_label, claim, read_csv_columns, read_labels
from .metrics import METRICS, metrics

__all__ = ["METRICS", "evaluate_files", "format_table", "metrics", "read_csv_columns"]


def _score(value: str, path, line: int) -> float:
    try:
        score = float(value)
    except ValueError:
        raise FpindexError(f"{path}:{line}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise FpindexError(f"{path}:{line}: score {value!r} is not finite")
    return score


def evaluate_files(predictions: str | Path, labels: str | Path) -> dict[str, Any]:
    """Join predictions and labels on the submission id (load/tables.py: one row per id in each file) and compute
    metrics plus baselines."""
    preds = read_csv_columns(predictions, ("image", "score", "label"))
    truth = read_labels(labels)
    y_true, y_pred, y_score, unmatched = [], [], [], []
    seen: dict[str, tuple[int, str]] = {}
    for r in preds:
        i = r["_line"]
        key = image_id(r["image"])
        claim(seen, key, predictions, i, r["image"], "prediction for")
        score = _score(r["score"], predictions, i)
        label = as_label(r["label"], predictions, i)
        if key not in truth:
            unmatched.append(r["image"])
            continue
        y_true.append(truth[key])
        y_pred.append(label)
        y_score.append(score)
    if not y_true:
        raise FpindexError(f"no image of {predictions} appears in {labels} ({MATCHED_BY})")
    n = len(y_true)
    result = {
        "n": n,
        "positives": int(sum(y_true)),
        "unmatched_predictions": unmatched,
        "missing_predictions": len(truth) - n,
        "method": metrics(y_true, y_pred, y_score),
        "all_used": metrics(y_true, [1] * n, [1.0] * n),
        "all_not_used": metrics(y_true, [0] * n, [0.0] * n),
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per metric, the method beside the two chance baselines."""
    rows = ["| metric | fpindex | all used | all not used |", "|---|---:|---:|---:|"]
    for m in METRICS:
        vals = [result[c][m] for c in ("method", "all_used", "all_not_used")]
        rows.append(f"| {m} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(rows)
