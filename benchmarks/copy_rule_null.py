"""The image-level copy channel's rule on null scenarios split by patient: Bonferroni over the copy features (the
smallest feature p-value times their number: the rule before intersection-union) against intersection-union
(the largest: every copy feature must agree, today's rule).

Same scenarios and draws as benchmarks/patients.py (lidc-ct128 split by patient, 60 members, 150 fresh, nothing
planted: no real image was seen by the "generator"), 20 re-decisions per scenario and method. Counted per rule:
how often the copy channel alone labels an image (Benjamini-Hochberg over the images at its share of α), and how
often the verdict (fused channel or copy channel) says leakage. Writes benchmarks/results/copy_rule_null.json
and .md.

    nice python benchmarks/copy_rule_null.py [--seeds 0,1,2,3,4,5] [--draws 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402
from scipy.stats import false_discovery_control  # noqa: E402

import patients as P  # noqa: E402
from common import machine  # noqa: E402
from fpindex.config import DecideConfig  # noqa: E402
from fpindex.decide import COPY_SHARE, CopyNull, Labelled, decide  # noqa: E402
from fpindex.evidence import Evidence  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
RULES = {"bonferroni": lambda p: np.minimum(1.0, p.shape[1] * p.min(1)), "intersection-union": lambda p: p.max(1)}


def copy_alarms(target: Evidence, null: Evidence, alpha: float) -> dict[str, bool]:
    p = CopyNull(null).test(target).p_features
    return {rule: bool((false_discovery_control(f(p), method="bh") <= COPY_SHARE * alpha).any())
            for rule, f in RULES.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=HERE.parent.parent / "shared" / "data" / "lidc-ct128")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fpindex-copy-rule-"))
    rows, t0 = [], time.perf_counter()
    for seed in map(int, a.seeds.split(",")):
        sc = P.scenario(a.real, work / f"null-{seed}", seed, 0.0, 60, 150)
        ev = P.run_audit(sc, a.alpha, seed).evidence
        rng = np.random.default_rng([seed, 20])
        labelled = P.join(ev["used"], ev["not_used"])
        everything = P.join(ev["used"], ev["not_used"], ev["real"])
        for k in range(a.draws):
            pats = np.unique(labelled.groups)
            chosen = set(rng.permutation(pats)[:len(pats) // 2].tolist())
            is_used = np.array([g in chosen for g in labelled.groups])
            used, not_used = P.take(labelled, np.flatnonzero(is_used)), P.take(labelled, np.flatnonzero(~is_used))
            d = decide(DecideConfig(method="calibrated", alpha=a.alpha, seed=seed + k), ev["real"],
                       Labelled(used=used, not_used=not_used))
            rows.append({"seed": seed, "draw": k, "method": "calibrated", "fused": bool(d.verdict.fused),
                         **copy_alarms(ev["real"], not_used, a.alpha)})
            pats = np.unique(everything.groups)
            chosen = set(rng.permutation(pats)[:len(pats) // 2].tolist())
            inside = np.array([g in chosen for g in everything.groups])
            target, ref = P.take(everything, np.flatnonzero(inside)), P.take(everything, np.flatnonzero(~inside))
            for method in ("pu", "reference"):
                d = decide(DecideConfig(method=method, alpha=a.alpha, seed=seed + k), target, Labelled(reference=ref))
                rows.append({"seed": seed, "draw": k, "method": method, "fused": bool(d.verdict.fused),
                             **copy_alarms(target, ref, a.alpha)})
        print(f"null-{seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    lines = ["| method | re-decisions | fused alone | copy alone: Bonferroni | copy alone: intersection-union | "
             "verdict: Bonferroni | verdict: intersection-union |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m in ("calibrated", "pu", "reference"):
        r = [x for x in rows if x["method"] == m]
        lines.append(f"| {m} | {len(r)} | {sum(x['fused'] for x in r)} | {sum(x['bonferroni'] for x in r)} | "
                     f"{sum(x['intersection-union'] for x in r)} | {sum(x['fused'] or x['bonferroni'] for x in r)} | "
                     f"{sum(x['fused'] or x['intersection-union'] for x in r)} |")
    info = machine()
    lines.append(f"\nα = {a.alpha}; machine: {info}; wall {time.perf_counter() - t0:.0f} s. "
                 f"Command: `benchmarks/copy_rule_null.py --seeds {a.seeds} --draws {a.draws}`.")
    write_json_atomic(a.out / "copy_rule_null.json", {"machine": info, "alpha": a.alpha, "rows": rows})
    write_text_atomic(a.out / "copy_rule_null.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
