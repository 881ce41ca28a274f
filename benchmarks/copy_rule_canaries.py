"""Every canary cell (each plant kind at each default strength, 20 planted per cell) on bench-dev under the
copy channel's two rules: intersection-union (today: the largest copy-feature p-value) and Bonferroni over the
copy features (the rule before: the smallest, times their number). The old rule is put back for its runs by
replacing `CopyTest.p` in this process only; the second run of a scenario reuses the first one's cached
evidence, so only the decision differs. Writes benchmarks/results/copy_rule_canaries.json and .md.

    nice python benchmarks/copy_rule_canaries.py dev-gan dev-null dev-strong dev-blend
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402

from common import machine  # noqa: E402
from fpindex import audit  # noqa: E402
from fpindex.config import AuditConfig, RunConfig  # noqa: E402
import fpindex.decide.copies as copies  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
RULES = {"intersection-union": copies.CopyTest.p,
         "bonferroni": property(lambda self: np.minimum(1.0, len(self.features) * self.p_features.min(1))
                                if self.features else np.ones(len(self.p_features)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="+")
    ap.add_argument("--root", type=Path, default=HERE.parent.parent / "shared" / "bench-dev")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    rows = []
    for sc in a.scenarios:
        d = a.root / sc
        for rule, p in RULES.items():
            copies.CopyTest.p = p
            res = audit(d / "generated", d / "test", used=d / "train" / "used", not_used=d / "train" / "not_used",
                        config=AuditConfig(run=RunConfig(quiet=True)))
            s = res.summary
            rows.append({"scenario": sc, "rule": rule, "leakage": s["verdict"]["leakage"],
                         "flagged": int(res.decision.label.sum()),
                         "cells": {f"{t['kind']} {t['strength']:g}": [t["found"], t["planted"]]
                                   for t in s["canaries"]["table"]}})
            print(sc, rule, rows[-1]["flagged"], flush=True)
    copies.CopyTest.p = RULES["intersection-union"]
    cells = list(rows[0]["cells"])
    lines = ["| scenario | rule | flagged | " + " | ".join(cells) + " |", "|---|---|---:|" + "---:|" * len(cells)]
    lines += [f"| {r['scenario']} | {r['rule']} | {r['flagged']} | " +
              " | ".join(str(r["cells"][c][0]) for c in cells) + " |" for r in rows]
    lines.append(f"\nFound of 20 planted per cell; machine: {machine()}.")
    write_json_atomic(a.out / "copy_rule_canaries.json", {"machine": machine(), "rows": rows})
    write_text_atomic(a.out / "copy_rule_canaries.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
