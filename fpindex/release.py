"""What a data steward does with an audit: a release gate (`--fail-on`) and a filtered copy of the generated
set without the images graded as copies (`fpindex filter`).

The gate reads the typed summary only. `filter_generated` writes a NEW folder holding every generated image
except those withheld (hard links where the file system allows, else copies) and `withheld.csv` saying which
and why; the generated folder itself is only read. A multi-image file (a DICOM series, a NIfTI volume) is
withheld whole when any of its images is graded a copy: its other images cannot be released apart from it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FpindexError
from .decide.replication import GRADES
from .safeio import shown

if TYPE_CHECKING:
    import pandas as pd

    from .report.schema import Summary

POLICIES = ("never", "copies", "leakage")
EXIT_GATE = 3
WITHHELD = "withheld.csv"


@dataclass(frozen=True)
class Gate:
    policy: str
    passed: bool
    reason: str

    def as_dict(self) -> dict:
        return {"policy": self.policy, "passed": self.passed, "reason": self.reason,
                "exit_code": 0 if self.passed else EXIT_GATE}


def check_policy(policy: str, method: str | None) -> None:
    """Refused before any work: a policy the chosen decision cannot answer."""
    if policy not in POLICIES:
        raise FpindexError(f"--fail-on {policy!r}: choose from {', '.join(POLICIES)}")
    if method == "fixed" and policy != "never":
        raise FpindexError(f"--fail-on {policy}: the fixed decision tests no verdict and grades no generated image "
                           "(it reads one score); give --used/--not-used or --reference, or drop --decision fixed")


def release_gate(summary: Summary, policy: str) -> Gate:
    """copies: no generated image may be graded a copy of a real image; leakage: the set-level verdict must
    show no leakage (which includes proven copies); never: always passes."""
    if policy == "never":
        return Gate(policy, True, "no release policy (--fail-on never)")
    g = summary.generated
    if policy == "copies":
        if g is None:
            return Gate(policy, False, "the audit graded no generated image (its decision reads no copy feature), "
                                       "so it cannot show the set holds no copies")
        if g.withhold:
            which = ", ".join(f"{n} {grade}" for grade, n in g.grades.items() if n and grade in GRADES)
            return Gate(policy, False, f"{g.withhold} generated image{'s' if g.withhold != 1 else ''} graded a copy "
                                       f"of a real image ({which}); see generated.parquet, or `fpindex filter`")
        return Gate(policy, True, f"none of {g.graded} generated images graded a copy")
    v = summary.verdict
    if v.leakage is None:
        return Gate(policy, False, "the verdict was not tested (fixed threshold), so it cannot show no leakage")
    if v.leakage:
        return Gate(policy, False, f"the verdict shows leakage: {v.text}")
    return Gate(policy, True, v.text)


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def filter_generated(generated: str | Path, out: str | Path, dest: str | Path,
                     grades: tuple[str, ...] = GRADES) -> pd.DataFrame:
    """Write `dest` (new): `generated`'s images minus those the audit in `out` graded one of `grades`, and
    dest/withheld.csv. Returns the withheld rows. The audit must be of this very folder and its images must
    still be the graded ones (content ids)."""
    import pandas as pd

    from .load import list_folder, split_frame
    from .report.html import read_outputs
    from .safeio import atomic_dir
    from .utils import sha256_file

    generated, dest = Path(generated), Path(dest)
    unknown = [g for g in grades if g not in GRADES]
    if unknown:
        raise FpindexError(f"--grade {unknown[0]!r}: choose from {', '.join(GRADES)}")
    if not generated.is_dir():
        raise FpindexError(f"generated-image folder {shown(generated)}: no such folder")
    if os.path.lexists(dest):
        raise FpindexError(f"{shown(dest)} exists; `fpindex filter` writes a new folder only: choose another --into")
    if _inside(dest, generated) or _inside(generated, dest):
        raise FpindexError(f"{shown(dest)} and {shown(generated)} are one inside the other; the filtered set goes "
                           "to a folder of its own")
    o = read_outputs(out)
    path = Path(out) / "generated.parquet"
    try:
        table = pd.read_parquet(path)
    except FileNotFoundError:
        raise FpindexError(f"{shown(path)}: no such file (an audit of fpindex before generated.parquet); run the "
                           "audit again") from None
    if o.summary.generated is None:
        raise FpindexError(f"{shown(out)}: this audit graded no generated image (decision "
                           f"{o.summary.decision.method} reads no copy feature); audit with --used/--not-used or "
                           "--reference, or with neither (the copies decision)")
    # The audited folder is recognised by content, not by its path (it may have been moved since): each graded
    # image must be at its place in it with the bytes that were graded.
    plain = [(r, s) for r, s in zip(table["relative"], table["generated_sha256"])
             if split_frame(generated / r)[1] is None]
    differ = [r for r, s in plain if not (generated / r).is_file() or sha256_file(generated / r) != s]
    if plain and len(differ) == len(plain):
        raise FpindexError(f"{shown(generated)} is not the generated folder {shown(out)} audited (none of its "
                           f"{len(plain)} graded images is there with the content graded); give the audited folder")
    if differ:
        more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
        raise FpindexError(f"{shown(generated / differ[0])} is missing or changed since the audit{more}; audit "
                           "again before filtering")
    chosen = table[table["grade"].isin(list(grades))]
    files, _ = list_folder(generated, "generated-image folder")
    on_disk = dict.fromkeys(split_frame(f)[0].relative_to(generated).as_posix() for f in files)   # files, in order
    withheld_files: dict[str, list] = {}
    for row in chosen.itertuples(index=False):
        name = split_frame(generated / row.relative)[0].relative_to(generated).as_posix()
        withheld_files.setdefault(name, []).append(row)
    with atomic_dir(dest) as tmp:
        for name in on_disk:
            if name in withheld_files:
                continue
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(generated / name, target)
            except OSError:
                shutil.copy2(generated / name, target)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "image", "grade", "real", "folder", "rank", "cosine", "copy_margin", "reason"])
        for name, rows in sorted(withheld_files.items()):
            for r in rows:
                whole = "" if split_frame(generated / r.relative)[1] is None else \
                    f" (the whole file {name} is withheld with it)"
                w.writerow([name, r.relative, r.grade, r.real, r.folder, int(r.rank), f"{r.cosine:.6f}",
                            f"{r.copy_margin:.6f}", f"graded {r.grade} of {r.folder} image {r.real}{whole}"])
        (tmp / WITHHELD).write_text(buf.getvalue(), encoding="utf-8")
    return chosen
