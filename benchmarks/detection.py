"""Detection quality on leak scenarios laid out like ImageCLEFmed GAN (default: ../shared/bench-dev).

For each scenario: `fpindex audit` calibrated on train/used + train/not_used, predictions on test/, then
`fpindex evaluate` against test_labels.csv (read only here, after the audit). Writes
benchmarks/results/detection.json and detection.md.

    python benchmarks/detection.py [--root ../shared/bench-dev] [--preset default|zoq-...|all]
    python benchmarks/detection.py --model pixels --label "pixels baseline"      # any embedding settings
    python benchmarks/detection.py --preset default --seed 1                    # the spread from the seed alone
    python benchmarks/detection.py --preset default --labels none --decision pu  # no labels: train/not_used only
    python benchmarks/detection.py --preset default --screen 2 --seed 1         # bandpass on 2 neighbours of 20
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fpindex, not an installed one

from common import machine  # noqa: E402

from fpindex import audit  # noqa: E402
from fpindex.config import AuditConfig, DecideConfig, EmbedConfig, EvidenceConfig, RunConfig  # noqa: E402
from fpindex.enhance import parse_enhance  # noqa: E402
from fpindex.errors import FpindexError  # noqa: E402
from fpindex.evaluate import evaluate_files  # noqa: E402
from fpindex.presets import PRESETS  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_scenario(scenario: Path, embed: EmbedConfig, decide: DecideConfig, k: int, work: Path,
                 labels: str = "train", screen: int | None = None) -> dict:
    """labels 'train': calibrated on train/used + train/not_used; 'none': train/not_used as a reference only;
    'nothing': no labelled or known-unused folder (the `copies` decision)."""
    out = work / scenario.name
    t = time.perf_counter()
    config = AuditConfig(embed=embed, evidence=EvidenceConfig(k=k, screen=screen), decide=decide,
                         run=RunConfig(quiet=True))
    given = ({"used": scenario / "train" / "used", "not_used": scenario / "train" / "not_used"} if labels == "train"
             else {"reference": scenario / "train" / "not_used"} if labels == "none" else {})
    summary = audit(scenario / "generated", scenario / "test", config=config, out=out, **given).summary
    wall = time.perf_counter() - t
    ev = evaluate_files(out / "predictions.csv", scenario / "test_labels.csv")
    m = ev["method"]
    return {"scenario": scenario.name, "auc": m["auc"], "kappa": m["kappa"], "f1": m["f1"],
            "tpr_at_5fpr": m["tpr_at_5fpr"], "tpr_at_1fpr": m["tpr_at_1fpr"], "accuracy": m["accuracy"],
            "decision": summary["decision"]["method"], "used_share": summary["decision"].get("used_share"),
            "flag_rate": summary["counts"]["predicted_used"] / summary["counts"]["real"]["embedded"],
            "calibration_cv_auc": summary["decision"].get("cross_validation", {}).get("auc"),
            "verdict": summary["verdict"]["text"], "canaries": canary_cells(summary),
            "copy_channel": {k: v for k, v in summary["decision"].get("copy_channel", {}).items()
                             if k in ("proven_copies", "set_p_value", "labelled_by", "n_null")},
            "warnings": summary.get("warnings", []),
            "wall_s": round(wall, 2), "timings": summary["timings"]}


# The canary cells the copies issue sets targets on: (kind, strength) → found/planted.
COPY_CELLS = (("exact", 0.0), ("rigid", 3.0), ("noise", 0.02), ("blur", 1.0))


def canary_cells(summary: dict) -> dict:
    table = (summary.get("canaries") or {}).get("table") or []
    got = {(t["kind"], float(t["strength"])): f"{t['found']}/{t['planted']}" for t in table}
    return {f"{k} {s:g}": got.get((k, s), "—") for k, s in COPY_CELLS}


def _f(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE.parent.parent / "shared" / "bench-dev")
    ap.add_argument("--preset", default=None, help="a preset name, or 'all' for every preset")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--enhance", default="none")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--finetune", type=int, default=None, help="self-supervised steps on top of the weights")
    ap.add_argument("--scenarios", default=None, help="comma-separated scenario names (default: all)")
    ap.add_argument("--name", default="detection", help="results file stem under --out (default: detection)")
    ap.add_argument("--k", type=int, default=EvidenceConfig().k)
    ap.add_argument("--screen", type=int, default=None, help="fpindex audit --screen (default: none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the embedding (random weights, self-supervised "
                    "training, samples); rows of other seeds are labelled 'seed N' and kept beside seed 0's")
    ap.add_argument("--label", default=None, help="row label (default: model+enhance)")
    ap.add_argument("--labels", choices=("train", "none", "nothing"), default="train",
                    help="train: calibrate on train/used + train/not_used; none: train/not_used as --reference only; "
                         "nothing: no known-unused images at all (auto → copies)")
    ap.add_argument("--decision", default=None, help="decision method (default: the preset's, usually auto)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if not args.root.is_dir():
        sys.exit(f"detection.py: scenario folder {args.root} not found (pass --root)")
    scenarios = sorted(p for p in args.root.iterdir() if (p / "test_labels.csv").is_file()
                       and (not args.scenarios or p.name in args.scenarios.split(",")))
    if args.preset:
        names = PRESETS.names() if args.preset == "all" else [args.preset]
        configs = [(n, replace(PRESETS.get(n).embed, seed=args.seed), PRESETS.get(n).decide)
                   for n in names]
    else:
        embed = EmbedConfig(model=args.model, weights=args.weights, enhance=parse_enhance(args.enhance),
                            image_size=args.image_size, seed=args.seed, finetune=args.finetune)
        configs = [(args.label or f"{args.model}/{'+'.join(embed.enhance)}", embed, DecideConfig())]
    if args.decision:
        configs = [(f"{label}, {args.decision}", embed, replace(decide, method=args.decision))
                   for label, embed, decide in configs]
    if args.labels == "none":
        configs = [(f"{label}, no labels", embed, decide) for label, embed, decide in configs]
    if args.labels == "nothing":
        configs = [(f"{label}, nothing known", embed, decide) for label, embed, decide in configs]
    if args.seed:
        configs = [(f"{label}, seed {args.seed}", embed, decide) for label, embed, decide in configs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, embed, decide in configs:
            for sc in scenarios:
                try:
                    r = {"config": label, **run_scenario(sc, embed, decide, args.k, Path(tmp), args.labels,
                                                         args.screen)}
                except FpindexError as e:
                    print(f"{label:24s} {sc.name:12s} skipped: {e}", flush=True)
                    continue
                print(f"{label:24s} {r['scenario']:12s} AUC {_f(r['auc'])} kappa {_f(r['kappa'])} F1 {_f(r['f1'])} "
                      f"TPR@5%FPR {_f(r['tpr_at_5fpr'])} TPR@1%FPR {_f(r['tpr_at_1fpr'])} flagged {r['flag_rate']:.1%} wall {r['wall_s']:.1f}s "
                      f"| {r['verdict']} | canaries {r['canaries']}", flush=True)
                rows.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in old if r["config"] not in {c[0] for c in configs}] + rows
    write_json_atomic(path, {"machine": machine(), "root": str(args.root), "rows": rows})
    cells = [f"{k} {s:g}" for k, s in COPY_CELLS]
    lines = ["| config | scenario | AUC | kappa | F1 | TPR@5%FPR | TPR@1%FPR | flagged | verdict | canaries " +
             " / ".join(cells) + " | wall (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    lines += [f"| {r['config']} | {r['scenario']} | {_f(r['auc'])} | {_f(r['kappa'])} | {_f(r['f1'])} | "
              f"{_f(r['tpr_at_5fpr'])} | {_f(r.get('tpr_at_1fpr'))} | {r['flag_rate']:.1%} | {r.get('verdict', '').split(':')[0]} | "
              f"{' / '.join(r.get('canaries', {}).get(c, '—') for c in cells)} | {r['wall_s']:.1f} |" for r in rows]
    write_text_atomic(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
