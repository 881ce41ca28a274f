"""Stage 8 — score predictions against labels, beside the trivial answers any method must beat.

Reading and joining the files happens here; the metrics themselves live in metrics.py (decide uses them too).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from .errors import FpindexError
from .load import image_id
from .metrics import METRICS, metrics

__all__ = ["METRICS", "evaluate_files", "format_table", "metrics", "read_csv_columns"]


def read_csv_columns(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV with at least the `required` columns. Excel's byte-order mark and CRLF line ends are
    read like plain UTF-8; a row with fewer or more fields than the header is refused with its line number."""
    p = Path(path)
    if not p.is_file():
        raise FpindexError(f"{p}: no such file")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
            fields = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise FpindexError(f"{p}: not a readable CSV ({e})") from None
    except OSError as e:
        raise FpindexError(f"{p}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise FpindexError(f"{p}: no rows")
    fields = [f.strip() for f in fields]
    missing = [c for c in required if c not in fields]
    if missing:
        raise FpindexError(f"{p}: missing column(s) {', '.join(missing)} (has {', '.join(fields)})")
    out = []
    for row, line in zip(rows, lines):
        if None in row:
            raise FpindexError(f"{p}:{line}: {len(fields) + len(row[None])} fields, but the header has "
                               f"{len(fields)}")
        if any(v is None for v in row.values()):
            have = sum(v is not None for v in row.values())
            raise FpindexError(f"{p}:{line}: {have} field(s), but the header has {len(fields)}")
        clean = {k.strip(): v for k, v in row.items()}
        if "image" in clean and not clean["image"].strip():
            raise FpindexError(f"{p}:{line}: empty image name")
        out.append(clean | {"_line": line})
    return out


def _score(value: str, path, line: int) -> float:
    try:
        score = float(value)
    except ValueError:
        raise FpindexError(f"{path}:{line}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise FpindexError(f"{path}:{line}: score {value!r} is not finite")
    return score


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
    for r in labs:
        i = r["_line"]
        _claim(seen, _key(r["image"]), labels, i, r["image"], "label of")
        truth[_key(r["image"])] = _as_label(r["label"], Path(labels), i)
    y_true, y_pred, y_score, unmatched = [], [], [], []
    seen = {}
    for r in preds:
        i = r["_line"]
        key = _key(r["image"])
        _claim(seen, key, predictions, i, r["image"], "prediction for")
        score = _score(r["score"], predictions, i)
        label = _as_label(r["label"], Path(predictions), i)
        if key not in truth:
            unmatched.append(r["image"])
            continue
        y_true.append(truth[key])
        y_pred.append(label)
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
