"""Stage 8 — score predictions against labels, beside the trivial answers any method must beat.

Reading and joining the files happens here; the metrics themselves live in metrics.py (decide uses them too).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .errors import FpindexError
from .load import image_id
from .metrics import METRICS, metrics

__all__ = ["METRICS", "evaluate_files", "format_table", "metrics", "read_csv_columns"]


def read_csv_columns(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise FpindexError(f"{p}: no such file")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = rows and list(rows[0].keys())
    except (UnicodeDecodeError, csv.Error) as e:
        raise FpindexError(f"{p}: not a readable CSV ({e})") from None
    if not rows:
        raise FpindexError(f"{p}: no rows")
    missing = [c for c in required if c not in fields]
    if missing:
        raise FpindexError(f"{p}: missing column(s) {', '.join(missing)} (has {', '.join(fields)})")
    return rows


def _key(name: str) -> str:
    return image_id(name)


def _claim(seen: dict[str, tuple[int, str]], key: str, path, line: int, image: str, what: str) -> None:
    """Two rows with one key would make the join keep whichever came last; refuse, naming both rows."""
    if key in seen:
        first_line, first_image = seen[key]
        raise FpindexError(f"{path}:{line}: {what} {image!r} has the id {key!r} of line {first_line} "
                           f"({first_image!r}); images are matched by file stem, so each needs its own")
    seen[key] = (line, image)


def _as_label(value: str, path: Path, line: int) -> int:
    v = value.strip().lower()
    if v in ("1", "used", "true", "yes"):
        return 1
    if v in ("0", "not_used", "not used", "unused", "false", "no"):
        return 0
    raise FpindexError(f"{path}:{line}: label {value!r} is not 0/1 (or used/not_used)")


def evaluate_files(predictions: str | Path, labels: str | Path) -> dict[str, Any]:
    """Join predictions and labels on the image's file stem (one row per stem in each file) and compute metrics
    plus baselines."""
    preds = read_csv_columns(predictions, ("image", "score", "label"))
    labs = read_csv_columns(labels, ("image", "label"))
    truth, seen = {}, {}
    for i, r in enumerate(labs, start=2):
        _claim(seen, _key(r["image"]), labels, i, r["image"], "label of")
        truth[_key(r["image"])] = _as_label(r["label"], Path(labels), i)
    y_true, y_pred, y_score, unmatched = [], [], [], []
    seen = {}
    for i, r in enumerate(preds, start=2):
        key = _key(r["image"])
        _claim(seen, key, predictions, i, r["image"], "prediction for")
        if key not in truth:
            unmatched.append(r["image"])
            continue
        try:
            score = float(r["score"])
        except ValueError:
            raise FpindexError(f"{predictions}:{i}: score {r['score']!r} is not a number") from None
        y_true.append(truth[key])
        y_pred.append(_as_label(r["label"], Path(predictions), i))
        y_score.append(score)
    if not y_true:
        raise FpindexError(f"no image of {predictions} appears in {labels} (images are matched by file stem)")
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
