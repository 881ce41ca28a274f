"""Do the verdict and the per-image labels say "used" no more often than α when there is nothing to find?

With seven evidence features fused and a copy channel beside them (decide/copies.py), a decision that
over-fits, or a tail model that is too bold, would find "signal" in noise. Nulls, each built from one default
audit per bench-dev scenario (its evidence reused, nothing recomputed):
- calibrated: the 200 labelled train/ images with their used / not-used labels shuffled (seeded), sizes kept;
  the whole decision (cross-validation, permutation test, copy channel) is redone on each shuffle. Per image:
  the share of the scenario's known-unused test images whose p-value is ≤ α under the true labels.
- reference and pu (no labels): a "real" folder of 250 and a reference of `--ref-sizes` images (100, and the
  small references the copy channel's tail model exists for) drawn at random from the scenario's known-unused
  images (train/not_used plus the test images that test_labels.csv marks unused; the labels are read here only
  to build the null), so both sides are exchangeable by construction. Per image: the share of the 250 whose
  p-value is ≤ α (not gated by the verdict: the p-value's own rate).
- copies (no known-unused images at all): 250 known-unused images alone, against the copy level measured on the
  scenario's test images; any image flagged is a false alarm.
Each row: how often the verdict said "leakage detected" (95 % Clopper-Pearson interval), and the per-image
rate. Writes benchmarks/results/verdict_alpha.json and .md.

    python benchmarks/verdict_alpha.py [--root ../shared/bench-dev] [--draws 25] [--alpha 0.05] [--ref-sizes 100,25,10]
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


def null_draws(scenario: Path, draws: int, alpha: float, seed: int, ref_sizes: list[int]) -> list[dict]:
    cfg = AuditConfig(run=RunConfig(quiet=True))
    res = audit(scenario / "generated", scenario / "test", used=scenario / "train" / "used",
                not_used=scenario / "train" / "not_used", config=cfg)
    ev = res.evidence
    labels = pd.read_csv(scenario / "test_labels.csv").set_index("image")["label"]
    unused_test = np.flatnonzero(labels.loc[list(res.predictions["image"])].to_numpy() == 0)
    labelled = join(ev["used"], ev["not_used"])
    n_used = len(ev["used"])
    unused = join(ev["not_used"], take(ev["real"], unused_test))
    # The copies decision's copy level, as the pipeline measures it on this scenario's test images (no labels).
    levels = audit(scenario / "generated", scenario / "test", config=cfg).decision.details["copy_levels"]
    rng = np.random.default_rng([seed, len(scenario.name)])
    rows = []
    cells = [("calibrated", None)] + [(m, n) for n in ref_sizes for m in ("reference", "pu")] + [("copies", None)]
    for method, n_ref in cells:
        dcfg = DecideConfig(method=method, alpha=alpha, seed=seed)
        hits, flagged, tested, t = 0, 0, 0, time.perf_counter()
        if method == "calibrated":      # per image: the unused test images under the true labels
            d = decide(dcfg, ev["real"], Labelled(used=ev["used"], not_used=ev["not_used"]))
            flagged, tested = int((d.p_value[unused_test] <= alpha).sum()), len(unused_test)
        for _ in range(draws):
            if method == "calibrated":
                order = rng.permutation(len(labelled))
                data = Labelled(used=take(labelled, order[:n_used]), not_used=take(labelled, order[n_used:]))
                target = ev["real"]
            elif method == "copies":
                data, target = Labelled(copy_levels=levels), take(unused, rng.permutation(len(unused))[:250])
            else:
                order = rng.permutation(len(unused))
                n = min(n_ref, len(unused) // 3)
                data = Labelled(reference=take(unused, order[:n]))
                target = take(unused, order[n:n + 250])
            d = decide(dcfg, target, data)
            hits += bool(d.verdict.leakage)
            if method != "calibrated":      # copies has no p-value: its label is the claim
                flagged += int((d.label if d.p_value is None else d.p_value <= alpha).sum())
                tested += len(target)
        ci = binomtest(hits, draws).proportion_ci(0.95, method="exact")
        pci = binomtest(flagged, tested).proportion_ci(0.95, method="exact")
        rows.append({"scenario": scenario.name, "method": method, "n_reference": n_ref, "draws": draws,
                     "leakage_detected": hits, "rate": hits / draws, "ci95": [round(ci.low, 3), round(ci.high, 3)],
                     "images_flagged": flagged, "images_tested": tested, "image_rate": flagged / tested,
                     "image_ci95": [round(pci.low, 4), round(pci.high, 4)],
                     "features": list(ev["real"].features), "wall_s": round(time.perf_counter() - t, 1)})
        print(f"{scenario.name:12s} {method:10s} ref {n_ref or '-':>4} leakage detected {hits}/{draws} = "
              f"{hits / draws:.1%} [{ci.low:.1%}, {ci.high:.1%}]; images p ≤ α {flagged}/{tested} = "
              f"{flagged / tested:.2%}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE.parent.parent / "shared" / "bench-dev")
    ap.add_argument("--draws", type=int, default=25, help="null draws per scenario and method")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-sizes", default="100,25,10", help="reference sizes for the reference and pu nulls")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if not args.root.is_dir():
        sys.exit(f"verdict_alpha.py: scenario folder {args.root} not found (pass --root)")
    ref_sizes = [int(v) for v in args.ref_sizes.split(",")]
    scenarios = sorted(p for p in args.root.iterdir() if (p / "test_labels.csv").is_file())
    rows = [r for sc in scenarios for r in null_draws(sc, args.draws, args.alpha, args.seed, ref_sizes)]
    total = {}
    for key in dict.fromkeys((r["method"], r["n_reference"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["n_reference"]) == key]
        hits, n = sum(r["leakage_detected"] for r in mine), sum(r["draws"] for r in mine)
        fl, te = sum(r["images_flagged"] for r in mine), sum(r["images_tested"] for r in mine)
        ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
        pci = binomtest(fl, te).proportion_ci(0.95, method="exact")
        total[f"{key[0]}" + (f" ref {key[1]}" if key[1] else "")] = {
            "leakage_detected": hits, "draws": n, "rate": hits / n, "ci95": [round(ci.low, 3), round(ci.high, 3)],
            "images_flagged": fl, "images_tested": te, "image_rate": fl / te,
            "image_ci95": [round(pci.low, 4), round(pci.high, 4)]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "verdict_alpha.json", {"machine": machine(), "alpha": args.alpha, "seed": args.seed,
                                                         "command": " ".join(sys.argv), "rows": rows, "total": total})
    lines = ["| null | method | reference | leakage detected | rate | 95 % interval | images p ≤ α | image rate | 95 % interval |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    lines += [f"| {r['scenario']} | {r['method']} | {r['n_reference'] or '—'} | {r['leakage_detected']}/{r['draws']} | "
              f"{r['rate']:.1%} | {r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} | {r['images_flagged']}/{r['images_tested']} | "
              f"{r['image_rate']:.2%} | {r['image_ci95'][0]:.2%}–{r['image_ci95'][1]:.2%} |" for r in rows]
    lines += [f"| **all** | {m} | | {t['leakage_detected']}/{t['draws']} | {t['rate']:.1%} | "
              f"{t['ci95'][0]:.1%}–{t['ci95'][1]:.1%} | {t['images_flagged']}/{t['images_tested']} | "
              f"{t['image_rate']:.2%} | {t['image_ci95'][0]:.2%}–{t['image_ci95'][1]:.2%} |" for m, t in total.items()]
    write_text_atomic(args.out / "verdict_alpha.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
