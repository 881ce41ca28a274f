"""Does the set-level verdict say "leakage detected" no more often than α when there is nothing to find?

With seven evidence features fused, a verdict that over-fits would find "signal" in noise. Two nulls, each
built from one default audit per bench-dev scenario (its evidence reused, nothing recomputed):
- calibrated: the 200 labelled train/ images with their used / not-used labels shuffled (seeded), sizes kept;
  the whole decision (cross-validation, permutation test) is redone on each shuffle.
- reference and pu (no labels): a "real" folder of 250 and a reference of 100 drawn at random from the
  scenario's known-unused images (train/not_used plus the test images that test_labels.csv marks unused;
  the labels are read here only to build the null), so both sides are exchangeable by construction.
Each row: how often the verdict said "leakage detected", with a 95 % Clopper-Pearson interval. Writes
benchmarks/results/verdict_alpha.json and .md.

    python benchmarks/verdict_alpha.py [--root ../shared/bench-dev] [--draws 25] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from common import machine  # noqa: E402

from fpindex import audit  # noqa: E402
from fpindex.config import AuditConfig, DecideConfig, RunConfig  # noqa: E402
from fpindex.decide import Labelled, decide  # noqa: E402
from fpindex.evidence import Evidence  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent


def take(ev: Evidence, rows: np.ndarray) -> Evidence:
    return Evidence({f: v[rows] for f, v in ev.scores.items()})


def join(*evs: Evidence) -> Evidence:
    return Evidence({f: np.concatenate([e.scores[f] for e in evs]) for f in evs[0].features})


def null_draws(scenario: Path, draws: int, alpha: float, seed: int) -> list[dict]:
    cfg = AuditConfig(run=RunConfig(quiet=True))
    res = audit(scenario / "generated", scenario / "test", used=scenario / "train" / "used",
                not_used=scenario / "train" / "not_used", config=cfg)
    ev = res.evidence
    labels = pd.read_csv(scenario / "test_labels.csv").set_index("image")["label"]
    unused_test = np.flatnonzero(labels.loc[list(res.predictions["image"])].to_numpy() == 0)
    labelled = join(ev["used"], ev["not_used"])
    n_used = len(ev["used"])
    unused = join(ev["not_used"], take(ev["real"], unused_test))
    rng = np.random.default_rng([seed, len(scenario.name)])
    rows = []
    for method in ("calibrated", "reference", "pu"):
        dcfg = DecideConfig(method=method, alpha=alpha, seed=seed)
        hits, t = 0, time.perf_counter()
        for _ in range(draws):
            if method == "calibrated":
                order = rng.permutation(len(labelled))
                data = Labelled(used=take(labelled, order[:n_used]), not_used=take(labelled, order[n_used:]))
                target = ev["real"]
            else:
                order = rng.permutation(len(unused))
                n_ref = min(100, len(unused) // 3)
                data = Labelled(reference=take(unused, order[:n_ref]))
                target = take(unused, order[n_ref:n_ref + 250])
            hits += bool(decide(dcfg, target, data).verdict.leakage)
        ci = binomtest(hits, draws).proportion_ci(0.95, method="exact")
        rows.append({"scenario": scenario.name, "method": method, "draws": draws, "leakage_detected": hits,
                     "rate": hits / draws, "ci95": [round(ci.low, 3), round(ci.high, 3)],
                     "features": list(ev["real"].features), "wall_s": round(time.perf_counter() - t, 1)})
        print(f"{scenario.name:12s} {method:10s} leakage detected {hits}/{draws} = {hits / draws:.1%} "
              f"[{ci.low:.1%}, {ci.high:.1%}]", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE.parent.parent / "shared" / "bench-dev")
    ap.add_argument("--draws", type=int, default=25, help="null draws per scenario and method")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if not args.root.is_dir():
        sys.exit(f"verdict_alpha.py: scenario folder {args.root} not found (pass --root)")
    scenarios = sorted(p for p in args.root.iterdir() if (p / "test_labels.csv").is_file())
    rows = [r for sc in scenarios for r in null_draws(sc, args.draws, args.alpha, args.seed)]
    total = {}
    for method in ("calibrated", "reference", "pu"):
        mine = [r for r in rows if r["method"] == method]
        hits, n = sum(r["leakage_detected"] for r in mine), sum(r["draws"] for r in mine)
        ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
        total[method] = {"leakage_detected": hits, "draws": n, "rate": hits / n, "ci95": [round(ci.low, 3), round(ci.high, 3)]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "verdict_alpha.json", {"machine": machine(), "alpha": args.alpha, "seed": args.seed,
                                                         "rows": rows, "total": total})
    lines = ["| null | method | leakage detected | rate | 95 % interval |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['scenario']} | {r['method']} | {r['leakage_detected']}/{r['draws']} | {r['rate']:.1%} | "
              f"{r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} |" for r in rows]
    lines += [f"| **all** | {m} | {t['leakage_detected']}/{t['draws']} | {t['rate']:.1%} | "
              f"{t['ci95'][0]:.1%}–{t['ci95'][1]:.1%} |" for m, t in total.items()]
    write_text_atomic(args.out / "verdict_alpha.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
