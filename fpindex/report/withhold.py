"""The report's "synthetic images to withhold": the generated images graded copies (OUT/generated.parquet,
decide/replication.py), each beside its real match with the aligned views and its grade, and the three answers the
verdict box names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..errors import FpindexError
from ..decide.replication import GRADES
from .schema import Summary
from .pictures import Images, pair_views


def _num(v: Any, fmt: str = ".3f") -> str:
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return "—"


def withhold_section(out: Path, summary: Summary, neighbours: pd.DataFrame, images: Images,
                     top: int) -> Optional[dict[str, Any]]:
    """None when the audit graded no generated image (the `fixed` decision, or an audit before the grades)."""
    path = out / "generated.parquet"
    if summary.generated is None or not path.is_file():
        return None
    try:
        table = pd.read_parquet(path)
    except Exception as e:          # pyarrow raises several types for a damaged file
        raise FpindexError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    copies = table[table["grade"].isin(list(GRADES))]
    sha = dict(zip(neighbours["image"], neighbours["sha256"])) if "sha256" in neighbours else {}
    items = []
    for r in copies.head(top).itertuples(index=False):
        root = summary.settings.folders.get(r.folder)
        real = str(Path(root) / r.real) if root else ""
        items.append({"generated": r.relative, "grade": r.grade, "real": r.real,
                      "folder": r.folder.replace("_", "-"), "rank": int(r.rank), "cosine": _num(r.cosine),
                      "margin": _num(r.copy_margin), "also": r.also.split(";") if r.also else [],
                      "generated_pic": images.picture(r.generated, r.generated_sha256),
                      "real_pic": images.picture(real, sha.get(r.real) if r.folder == "real" else None),
                      "views": pair_views(images, real, r.generated) if real else []})
    return {"n": len(copies), "items": items, "graded": summary.generated.graded,
            "grades": summary.generated.grades, "levels": summary.generated.levels}


def answers(summary: Summary) -> list[tuple[str, str]]:
    """The verdict box's three answers: which real images were used, which synthetic images to withhold, which
    patients are exposed."""
    c, v = summary.counts, summary.verdict
    used = (f"{c.predicted_used} of {c.real.embedded} real images labelled used ({summary.decision.rule.text})"
            if summary.decision.rule else f"{c.predicted_used} of {c.real.embedded} real images labelled used")
    g = summary.generated
    if g is None:
        withhold = "not graded: the decision reads no copy feature (give --used/--not-used or --reference)"
    else:
        which = ", ".join(f"{n} {grade}" for grade, n in g.grades.items() if n and grade in GRADES)
        withhold = (f"{g.withhold} of {g.graded} generated images graded a copy ({which})" if g.withhold else
                    f"none of {g.graded} generated images graded a copy")
    p = summary.patients or {}
    patients = (p["verdict"]["text"] if p.get("known") else
                "not asked: no patient groups were given (--groups CSV, or DICOM patient tags)")
    leak = {True: "leakage detected", False: "no evidence of leakage"}.get(v.leakage, "not tested")
    return [("Was the generator trained on these real images?", f"{leak}; {used}"),
            ("Which synthetic images must be withheld?", withhold),
            ("Which patients are exposed?", patients)]
