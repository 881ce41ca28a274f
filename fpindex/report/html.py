"""OUT/report.html: one page a person can read to judge an audit, made from the audit's output files alone.

The page (templates/report.html.j2, Jinja2 with autoescape) shows the verdict, score distributions, the ROC
curve when labels are known, galleries of the most suspicious real images beside their neighbours with every
pair-level evidence score and an aligned difference view, the fusion weights, settings, versions, timings,
unreadable files, and a sortable, filterable table of all real images. Images and figures are PNG files in
OUT/report_files/, so the page needs no network. Written atomically: report_files/ is built under a temporary
name and swapped in, then report.html is renamed into place; either is replaced only when fpindex wrote it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import numpy as np
import pandas as pd

from .._version import __version__
from ..errors import FpindexError
from ..load import image_id
from ..load.tables import read_labels
from ..metrics import METRICS
from ..utils import atomic_dir, write_text_atomic
from .schema import REQUIRED, Summary
from .outputs import FILES, GENERATOR, MARK, REPORT, recover, verify
from .pictures import Images, pair_views, read_options
from .withhold import answers, withhold_section

OPEN_GALLERIES = 5      # shown unfolded; the rest and the full table sit in <details>, so the page stays short
META = ("image", "rank", "generated_id", "generated")    # neighbours.parquet columns that are not evidence
HASHES = ("sha256", "generated_sha256")                 # content ids of the scored images (newer audits)


@dataclass
class Outputs:
    """What an audit wrote into OUT, read and checked."""

    out: Path
    summary: Summary
    predictions: pd.DataFrame
    neighbours: pd.DataFrame


def read_outputs(out: str | Path) -> Outputs:
    """Read OUT's summary.json, predictions.csv and neighbours.parquet; anything missing or damaged, or files
    of two runs together, is one FpindexError naming the file."""
    out = Path(out)
    if not out.is_dir():
        raise FpindexError(f"{out}: no such output folder (run `fpindex audit --out {out}` first)")
    recover(out)                    # a save a kill cut short after its commit point is finished first
    path = out / "summary.json"
    if not path.is_file():
        raise FpindexError(f"{path}: no such file (is {out} an audit's output folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FpindexError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise FpindexError(f"{path}: not an audit summary (no {', '.join(missing)})")
    try:
        summary = Summary.from_dict(raw)
    except (TypeError, ValueError, AttributeError) as e:
        raise FpindexError(f"{path}: not an audit summary of a known schema ({e})") from None
    path = out / "predictions.csv"
    try:
        predictions = pd.read_csv(path, dtype={"image": str})
    except FileNotFoundError:
        raise FpindexError(f"{path}: no such file") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise FpindexError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    lack = [c for c in ("image", "score", "label") if c not in predictions.columns]
    if lack:
        raise FpindexError(f"{path}: missing column(s) {', '.join(lack)}")
    path = out / "neighbours.parquet"
    try:
        neighbours = pd.read_parquet(path)
    except FileNotFoundError:
        raise FpindexError(f"{path}: no such file") from None
    except Exception as e:          # pyarrow raises several types for a damaged file
        raise FpindexError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    lack = [c for c in META if c not in neighbours.columns]
    if lack:
        raise FpindexError(f"{path}: missing column(s) {', '.join(lack)}")
    verify(out, {"run_id": summary.run_id})
    return Outputs(out, summary, predictions, neighbours)


def _threshold(summary: Summary) -> Optional[float]:
    """The line the decision's own labelling rule draws on the score (decide/base.LabelRule); None when the
    rule is on the p-value (reference, pu) or an older summary.json did not record it (then a stored
    `threshold` detail, as `fixed` and `copies` always wrote one, is still read)."""
    rule = summary.decision.rule
    if rule is not None:
        return rule.threshold
    thr = summary.decision.details.get("threshold")
    return float(thr) if isinstance(thr, (int, float)) and not isinstance(thr, bool) else None


def _num(v: Any, fmt: str = ".3f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(f) else format(f, fmt)


def _galleries(o: Outputs, images: Images, top: int, evidence: list[str]) -> list[dict[str, Any]]:
    real_dir = Path(o.summary.settings.folders.get("real", ""))
    best = o.predictions.sort_values(["score", "image"], ascending=[False, True], kind="mergesort").head(top)
    by_image = {img: g.sort_values("rank") for img, g in o.neighbours.groupby("image", sort=False)}
    out = []
    for rank, row in enumerate(best.itertuples(index=False), start=1):
        real = str(real_dir / row.image)
        nb = by_image.get(row.image)
        neighbours = []
        if nb is not None:
            for n in nb.itertuples(index=False):
                if int(n.generated_id) < 0:
                    continue            # fewer generated images than k
                neighbours.append({"rank": int(n.rank), "name": PurePosixPath(str(n.generated)).name,
                                   "path": str(n.generated),
                                   **images.picture(str(n.generated), getattr(n, "generated_sha256", None)),
                                   "scores": [(c, _num(getattr(n, c))) for c in evidence]})
        shown = images.picture(real, nb["sha256"].iloc[0] if nb is not None and "sha256" in nb else None)
        views = pair_views(images, real, neighbours[0]["path"]) if neighbours else []
        out.append({"position": rank, "image": row.image, "anchor": f"g{rank}", "score": _num(row.score, ".4f"),
                    "label": int(row.label), "neighbours": neighbours,
                    "real": shown,
                    "views": views})
    return out


def _sensitivity(out: Path, files: Path) -> Optional[dict[str, Any]]:
    """OUT/sensitivity.json and .png, when `fpindex sensitivity` wrote them there: shown in the report."""
    table, png = out / "sensitivity.json", out / "sensitivity.png"
    if not (table.is_file() and png.is_file()):
        return None
    try:
        data = json.loads(table.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FpindexError(f"{table}: not valid JSON ({e})") from None
    fpr = data.get("fpr") if isinstance(data, dict) else None
    if not (isinstance(fpr, (int, float)) and not isinstance(fpr, bool) and 0 < fpr < 1):
        raise FpindexError(f"{table}: not a sensitivity table (needs \"fpr\", a number between 0 and 1, "
                           f"got {fpr!r})")
    (files / "sensitivity.png").write_bytes(png.read_bytes())
    return data


def check_target(out: Path) -> None:
    """Refuse to replace a report.html or report_files/ that fpindex did not write."""
    page, files = out / REPORT, out / FILES
    if page.exists():
        head = page.read_bytes()[:4096] if page.is_file() else b""
        if f'<meta name="generator" content="{GENERATOR}'.encode() not in head:
            raise FpindexError(f"{page} exists and was not written by fpindex; move it away first")
    if files.exists() and not (files / MARK).is_file():
        raise FpindexError(f"{files} exists and was not written by fpindex; move it away first")


def write_report(out: str | Path, top: int = 50, labels: Optional[str | Path] = None,
                 evaluation: Optional[dict[str, Any]] = None) -> Path:
    """Write OUT/report.html (and OUT/report_files/) from an audit's outputs. `labels`: a CSV image,label to
    split the score distribution and draw the ROC curve; `evaluation`: metrics to show (default: OUT's
    evaluation.json when present). Returns the page's path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from . import plots

    o = read_outputs(out)
    out = o.out
    check_target(out)
    if evaluation is None and (out / "evaluation.json").is_file():
        try:
            evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FpindexError(f"{out / 'evaluation.json'}: not valid JSON ({e})") from None
    s, p = o.summary, o.predictions
    truth = read_labels(labels) if labels is not None else {}
    known = np.array([truth.get(image_id(i), -1) for i in p["image"]])     # joined as `fpindex evaluate` joins
    scores = p["score"].to_numpy(np.float64)
    threshold = _threshold(s)
    evidence = [c for c in o.neighbours.columns if c not in META + HASHES]
    size = int(s.settings.embedder.get("image_size") or 256)
    best = o.neighbours.sort_values("rank").groupby("image", sort=False).first()
    with atomic_dir(out / FILES) as tmp:
        (tmp / MARK).write_text("written by fpindex report; replaced whole on the next report\n")
        images = Images(tmp, size, read_options(s))
        (tmp / "scores.png").write_bytes(plots.score_histogram(
            {"used": scores[known == 1], "not used": scores[known == 0], "unlabelled": scores[known < 0]},
            threshold, "membership score"))
        roc = bool(truth) and len(set(known[known >= 0].tolist())) == 2
        if roc:
            (tmp / "roc.png").write_bytes(plots.roc_curve(known[known >= 0], scores[known >= 0]))
        sensitivity = _sensitivity(out, tmp)
        galleries = _galleries(o, images, top, evidence)
        withhold = withhold_section(out, s, o.neighbours, images, top)
        anchors = {g["image"]: g["anchor"] for g in galleries}
        rows = [{"image": img, "score": float(sc), "score_text": _num(sc, ".4f"), "label": int(lab),
                 "p_value": _num(pv, ".3g"), "truth": {1: "used", 0: "not used"}.get(int(t), ""),
                 "cosine": _num(best["cosine"].get(img) if img in best.index else None),
                 "anchor": anchors.get(img, ""), "flagged_by": by if isinstance(by, str) else ""}
                for img, sc, lab, pv, t, by in zip(p["image"], scores, p["label"],
                                                   p.get("p_value", [math.nan] * len(p)), known,
                                                   p.get("flagged_by", [""] * len(p)))]
        env = Environment(loader=PackageLoader("fpindex.report", "templates"),
                          autoescape=select_autoescape(["html", "j2"], default=True),
                          trim_blocks=True, lstrip_blocks=True)
        env.filters["num"] = _num
        html = env.get_template("report.html.j2").render(
            generator=f"{GENERATOR} {__version__}", s=s.to_dict(), verdict=s.verdict.as_dict(),
            decision=s.decision.to_dict(), rule=s.decision.rule, threshold=threshold, evaluation=evaluation, metrics=METRICS, roc=roc, galleries=galleries,
            evidence=evidence, rows=rows, top=top, open_galleries=OPEN_GALLERIES, labelled=bool(truth), files=FILES,
            canaries=s.canaries, sensitivity=sensitivity, withhold=withhold, answers=answers(s),
            settings_json=json.dumps(s.to_dict()["settings"], indent=2, sort_keys=True),
            config_json=json.dumps(s.config, indent=2, sort_keys=True),
            bad_files=[(name, b) for name, bad in s.bad_files.items() for b in bad])
    write_text_atomic(out / REPORT, html)
    return out / REPORT
