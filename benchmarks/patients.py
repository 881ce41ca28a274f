"""Patients: the patient-level answer beside the image-level one, on scenarios with real patient ids.

Scenarios come from `fpindex simulate --manifest` on ../shared/data/lidc-ct128 (its manifest.csv gives each
file's patient; the simulator splits by patient and writes groups.csv for every real image it writes). Every
audit is a default one (cnn, self-supervised at build time) with `--groups groups.csv` and no canaries.
- leak: members with planted copies of every plant kind at its default strengths (`--rate`): image AUC and
  patient AUC on test/ (a patient's truth: it is a member; its score the highest of its images' scores, and
  also ranked by its p-value), for the calibrated decision (the audit) and pu (test/ against train/not_used,
  decided again from the same evidence); the verdicts and how many exposed patients are members.
- null: nothing planted (`--rate 0`), the generated set only other patients' images, so no real image was
  seen by the "generator". Per scenario: the audit's own calibrated decision; then `--draws` reshuffles of the
  labelled split by whole patients (calibrated), and `--draws` random splits of all the real patients into
  target and reference (pu and reference), each decided again from the audit's evidence with the patients as
  groups. Counted: how often the image-level and the patient-level verdict say leakage (Clopper-Pearson 95 %).
Writes benchmarks/results/patients.json and .md.

    nice python benchmarks/patients.py [--real ../shared/data/lidc-ct128] [--leak-seeds 0,1] [--null-seeds 0,1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from common import machine  # noqa: E402

from fpindex import audit, simulate  # noqa: E402
from fpindex.config import AuditConfig, CanaryConfig, DecideConfig, RunConfig  # noqa: E402
from fpindex.decide import Labelled, decide  # noqa: E402
from fpindex.decide.grouping import Grouping  # noqa: E402
from fpindex.decide.patients import patient_level  # noqa: E402
from fpindex.evidence import Evidence  # noqa: E402
from fpindex.metrics import rank_auc  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent


def scenario(real: Path, out: Path, seed: int, rate: float, members: int, fresh: int) -> Path:
    simulate(real, out, members=members, rate=rate, seed=seed, manifest=real / "manifest.csv", fresh=fresh)
    return out


def run_audit(sc: Path, alpha: float, seed: int):
    cfg = AuditConfig(decide=DecideConfig(groups=str(sc / "groups.csv"), alpha=alpha, seed=seed),
                      canaries=CanaryConfig(n=0), run=RunConfig(quiet=True))
    return audit(sc / "generated", sc / "test", used=sc / "train" / "used", not_used=sc / "train" / "not_used",
                 config=cfg)


def take(ev: Evidence, rows: np.ndarray) -> Evidence:
    return Evidence({f: v[rows] for f, v in ev.scores.items()}, groups=ev.groups[rows])


def join(*evs: Evidence) -> Evidence:
    return Evidence({f: np.concatenate([e.scores[f] for e in evs]) for f in evs[0].features},
                    groups=np.concatenate([e.groups + 10**6 * i for i, e in enumerate(evs)]))


def grouping(ev: Evidence) -> Grouping:
    return Grouping(ev.groups, [f"P{g}" for g in ev.groups.tolist()], ["groups CSV (patient)"] * len(ev))


def patients_of(d, ev_real: Evidence, ev_null: Evidence, alpha: float, null_name: str):
    images = [f"i{k}" for k in range(len(ev_real))]
    return patient_level(d, images, {"real": grouping(ev_real), null_name: grouping(ev_null)}, alpha)


def leak(sc: Path, alpha: float, seed: int) -> list[dict]:
    t = time.perf_counter()
    res = run_audit(sc, alpha, seed)
    audit_s = time.perf_counter() - t
    labels = pd.read_csv(sc / "test_labels.csv").set_index("image")["label"]
    groups = pd.read_csv(sc / "groups.csv").set_index("image")["patient"]
    images = list(res.predictions["image"])
    y = labels.loc[images].to_numpy()
    patient = groups.loc[images].to_numpy()
    member_patients = set(patient[y == 1])
    ev = res.evidence
    rows = []
    for method, d, p in (("calibrated", res.decision, res.patients),
                         ("pu", *_pu(ev, list(patient), alpha, seed))):
        table = p.table.set_index("patient")
        truth = np.array([int(q in member_patients) for q in table.index])
        rows.append({"scenario": sc.name, "method": method, "images": len(images), "patients": len(table),
                     "member_patients": int(truth.sum()),
                     "image_auc": round(rank_auc(y, np.asarray(d.score)), 4),
                     "patient_auc_max_score": round(rank_auc(truth, table["score"].to_numpy()), 4),
                     "patient_auc_p_value": round(rank_auc(truth, -table["p_value"].to_numpy()), 4),
                     "image_verdict": bool(d.verdict.leakage), "image_p": d.verdict.p_value,
                     "patient_verdict": p.verdict.leakage, "patient_auc_labelled": p.verdict.auc,
                     "patient_p": p.verdict.p_value, "patients_exposed": int(table["label"].sum()),
                     "exposed_members": int(truth[table["label"].to_numpy() == 1].sum()),
                     "audit_s": round(audit_s, 1)})
        r = rows[-1]
        print(f"leak {sc.name} {method:10s} image AUC {r['image_auc']:.3f}  patient AUC {r['patient_auc_max_score']:.3f} "
              f"(max score) {r['patient_auc_p_value']:.3f} (p)  verdicts {r['image_verdict']}/{r['patient_verdict']}  "
              f"exposed {r['patients_exposed']} ({r['exposed_members']} members of {r['member_patients']})", flush=True)
    return rows


def _pu(ev: dict[str, Evidence], names: list[str], alpha: float, seed: int):
    """pu from the audit's evidence: test/ against train/not_used, the test patients under their own names."""
    d = decide(DecideConfig(method="pu", alpha=alpha, seed=seed), ev["real"], Labelled(reference=ev["not_used"]))
    real = Grouping(ev["real"].groups, names, ["groups CSV (patient)"] * len(names))
    return d, patient_level(d, [f"i{k}" for k in range(len(names))],
                            {"real": real, "reference": grouping(ev["not_used"])}, alpha)


def null(sc: Path, alpha: float, seed: int, draws: int) -> list[dict]:
    t = time.perf_counter()
    res = run_audit(sc, alpha, seed)
    audit_s = time.perf_counter() - t
    ev = res.evidence
    rng = np.random.default_rng([seed, 20])
    out = [{"scenario": sc.name, "method": "calibrated (audit)", "draw": 0,
            "image": bool(res.verdict.leakage), "patient": bool(res.patients.verdict.leakage), "audit_s": audit_s}]
    labelled = join(ev["used"], ev["not_used"])
    everything = join(ev["used"], ev["not_used"], ev["real"])
    for k in range(draws):
        # calibrated: whole patients of the labelled split reshuffled between used and not used
        pats = np.unique(labelled.groups)
        chosen = set(rng.permutation(pats)[:len(pats) // 2].tolist())
        is_used = np.array([g in chosen for g in labelled.groups])
        used, not_used = take(labelled, np.flatnonzero(is_used)), take(labelled, np.flatnonzero(~is_used))
        d = decide(DecideConfig(method="calibrated", alpha=alpha, seed=seed + k), ev["real"],
                   Labelled(used=used, not_used=not_used))
        p = patient_level(d, [f"i{i}" for i in range(len(ev["real"]))],
                          {"real": grouping(ev["real"]), "used": grouping(used), "not_used": grouping(not_used)},
                          alpha)
        out.append({"scenario": sc.name, "method": "calibrated", "draw": k + 1, "image": bool(d.verdict.leakage),
                    "patient": bool(p.verdict.leakage)})
        # pu and reference: all the real patients split at random into target and reference
        pats = np.unique(everything.groups)
        chosen = set(rng.permutation(pats)[:len(pats) // 2].tolist())
        in_target = np.array([g in chosen for g in everything.groups])
        target, ref = take(everything, np.flatnonzero(in_target)), take(everything, np.flatnonzero(~in_target))
        for method in ("pu", "reference"):
            d = decide(DecideConfig(method=method, alpha=alpha, seed=seed + k), target, Labelled(reference=ref))
            p = patients_of(d, target, ref, alpha, "reference")
            out.append({"scenario": sc.name, "method": method, "draw": k + 1, "image": bool(d.verdict.leakage),
                        "patient": bool(p.verdict.leakage)})
    for m in ("calibrated (audit)", "calibrated", "pu", "reference"):
        mine = [r for r in out if r["method"] == m]
        print(f"null {sc.name} {m:18s} image verdict {sum(r['image'] for r in mine)}/{len(mine)}, patient verdict "
              f"{sum(r['patient'] for r in mine)}/{len(mine)}", flush=True)
    return out


def rate(hits: int, n: int) -> dict:
    ci = binomtest(hits, n).proportion_ci(0.95, method="exact") if n else None
    return {"hits": hits, "n": n, "rate": hits / n if n else None,
            "ci95": [round(ci.low, 3), round(ci.high, 3)] if ci else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=HERE.parent.parent / "shared" / "data" / "lidc-ct128")
    ap.add_argument("--leak-seeds", default="0,1")
    ap.add_argument("--null-seeds", default="0,1,2,3,4,5")
    ap.add_argument("--members", type=int, default=60, help="member images per scenario (whole patients)")
    ap.add_argument("--fresh", type=int, default=150, help="other patients' images standing in for the generator")
    ap.add_argument("--rate", type=float, default=0.5, help="leak: share of members given a planted copy")
    ap.add_argument("--draws", type=int, default=10, help="null: re-decisions per scenario and method")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if not (args.real / "manifest.csv").is_file():
        sys.exit(f"patients.py: {args.real}/manifest.csv not found (pass --real)")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    leak_rows, null_rows = [], []
    with tempfile.TemporaryDirectory(prefix="fpindex-patients-") as tmp:
        for s in [int(v) for v in args.leak_seeds.split(",") if v]:
            sc = scenario(args.real, Path(tmp) / f"leak-{s}", s, args.rate, args.members, args.fresh)
            leak_rows += leak(sc, args.alpha, s)
        for s in [int(v) for v in args.null_seeds.split(",") if v]:
            sc = scenario(args.real, Path(tmp) / f"null-{s}", s, 0.0, args.members // 3 * 2, args.fresh // 3 * 2)
            null_rows += null(sc, args.alpha, s, args.draws)
    totals = {m: {"image": rate(sum(r["image"] for r in null_rows if r["method"] == m),
                                sum(1 for r in null_rows if r["method"] == m)),
                  "patient": rate(sum(r["patient"] for r in null_rows if r["method"] == m),
                                  sum(1 for r in null_rows if r["method"] == m))}
              for m in dict.fromkeys(r["method"] for r in null_rows)}
    pooled = [r for r in null_rows if r["method"] != "calibrated (audit)"]
    totals["all re-decisions"] = {"image": rate(sum(r["image"] for r in pooled), len(pooled)),
                                  "patient": rate(sum(r["patient"] for r in pooled), len(pooled))}
    record = {"machine": machine() | {"load_before": load_before, "load_after": os.getloadavg()},
              "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(sys.argv), "alpha": args.alpha,
              "parameters": vars(args) | {"real": str(args.real), "out": str(args.out)},
              "leak": leak_rows, "null": null_rows, "null_totals": totals}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "patients.json", record)
    lines = ["| scenario | method | images | patients (members) | image AUC | patient AUC (max score) | "
             "patient AUC (p-value) | image verdict | patient verdict | exposed (members) |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    lines += [f"| {r['scenario']} | {r['method']} | {r['images']} | {r['patients']} ({r['member_patients']}) | "
              f"{r['image_auc']:.3f} | {r['patient_auc_max_score']:.3f} | {r['patient_auc_p_value']:.3f} | "
              f"{'leakage' if r['image_verdict'] else 'none'} (p = {r['image_p']:.3g}) | "
              f"{'leakage' if r['patient_verdict'] else 'none'} (p = {r['patient_p'] if r['patient_p'] is None else format(r['patient_p'], '.3g')}) | "
              f"{r['patients_exposed']} ({r['exposed_members']}) |" for r in leak_rows]
    lines += ["", f"Null draws (α = {args.alpha}): how often each verdict says leakage.", "",
              "| method | draws | image verdict | rate (95 % interval) | patient verdict | rate (95 % interval) |",
              "|---|---:|---:|---|---:|---|"]
    for m, t in totals.items():
        i, p = t["image"], t["patient"]
        lines.append(f"| {m} | {i['n']} | {i['hits']} | {i['rate']:.1%} ({i['ci95'][0]:.1%}–{i['ci95'][1]:.1%}) | "
                     f"{p['hits']} | {p['rate']:.1%} ({p['ci95'][0]:.1%}–{p['ci95'][1]:.1%}) |")
    lines += ["", f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, load average "
              f"{load_before[0]:.1f} before and {record['machine']['load_after'][0]:.1f} after (shared); "
              f"wall {record['wall_s']:.0f} s. Command: `{record['command']}`."]
    write_text_atomic(args.out / "patients.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
