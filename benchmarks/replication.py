"""The per-generated-image answer (generated.parquet's replication grades), measured against known truth.

1. Scenarios made by `fpindex simulate` from ../shared/data/lidc-ct128 (patients kept apart by its manifest),
   every plant kind at its default strengths; planted.json says which generated image copies which real image
   and how. Each is audited with the default settings, calibrated on train/used + train/not_used, and the
   grades are compared with the plants: precision and recall of the `exact` and `near copy` grades (a plant's
   grade is replication.KIND_GRADE of its kind), recall of partial copies per kind, and whether the graded
   image's best real match is the planted source.
2. bench-dev's dev-null (no test image was used): how many generated images are graded a copy of a test image.
3. Cost: the time spent grading (replication.assess, timed around the call) against the whole audit, in the
   same process and run.

    nice python benchmarks/replication.py [--seeds 0 1] [--members 66] [--no-null]

Writes benchmarks/results/replication.json and replication.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fpindex, not an installed one

from common import machine  # noqa: E402

import fpindex.pipeline as pipeline  # noqa: E402
from fpindex import audit  # noqa: E402
from fpindex.config import AuditConfig, RunConfig  # noqa: E402
from fpindex.decide.replication import GRADES, KIND_GRADE  # noqa: E402
from fpindex.simulator import simulate  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
_spent: list[float] = []


def _timed(fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _spent.append(time.perf_counter() - t)
    return wrapper


pipeline.assess = _timed(pipeline.assess)       # fpindex's own function, timed where the pipeline calls it


def run_audit(root: Path, out: Path, config: AuditConfig, **folders) -> tuple:
    _spent.clear()
    t = time.perf_counter()
    r = audit(root / "generated", root / "test", config=config, out=out, **folders)
    wall = time.perf_counter() - t
    return r, wall, sum(_spent)


def ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score_scenario(sim_root: Path, result) -> dict:
    planted = json.loads((sim_root / "planted.json").read_text())["planted"]
    g = result.generated
    by_rel = {r: row for r, row in zip(g["relative"], g.itertuples(index=False))}
    truth = {Path(p["generated"]).relative_to("generated").as_posix(): p for p in planted}
    out: dict = {"n_generated_graded": int(len(g)), "n_planted": len(planted)}
    for grade in ("exact", "near copy"):
        graded = {r for r, row in by_rel.items() if row.grade == grade}
        true = {r for r, p in truth.items() if KIND_GRADE[p["kind"]] == grade}
        hit = graded & true
        out[grade] = {"graded": len(graded), "planted": len(true), "precision": ratio(len(hit), len(graded)),
                      "recall": ratio(len(hit), len(true)),
                      "graded_not_planted": sorted(graded - set(truth)),
                      "graded_other_kind": sorted((graded & set(truth)) - true)}
    per_kind: dict = {}
    for r, p in truth.items():
        row = by_rel.get(r)
        k = per_kind.setdefault(p["kind"], {"grade": KIND_GRADE[p["kind"]], "planted": 0, "as_own_grade": 0,
                                            "as_any_copy": 0, "source_is_best_match": 0, "not_listed": 0})
        k["planted"] += 1
        if row is None:
            k["not_listed"] += 1
            continue
        k["as_own_grade"] += int(row.grade == KIND_GRADE[p["kind"]])
        k["as_any_copy"] += int(row.grade in GRADES)
        src = Path(p["source"])
        k["source_is_best_match"] += int(row.real == src.name and row.folder == {"test": "real"}.get(
            src.parts[0], src.parts[-2]))
    for k in per_kind.values():
        k["recall_own_grade"] = ratio(k["as_own_grade"], k["planted"])
        k["recall_any_copy"] = ratio(k["as_any_copy"], k["planted"])
    out["per_kind"] = per_kind
    copies = {r for r, row in by_rel.items() if row.grade in GRADES}
    out["any_copy_precision"] = ratio(len(copies & set(truth)), len(copies))
    out["grades"] = result.summary.generated.grades
    out["levels"] = {k: result.summary.generated.levels[k] for k in ("floor", "exact", "cosine", "planted")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=SHARED / "data" / "lidc-ct128")
    ap.add_argument("--bench", type=Path, default=SHARED / "bench-dev")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--members", type=int, default=66)
    ap.add_argument("--no-null", action="store_true")
    args = ap.parse_args()
    config = AuditConfig(run=RunConfig(quiet=True))
    rows, work = [], Path(tempfile.mkdtemp(prefix="fpindex-replication-"))
    for seed in args.seeds:
        sim = simulate(args.real, work / f"sim-{seed}", members=args.members, seed=seed,
                       manifest=args.real / "manifest.csv")
        r, wall, spent = run_audit(sim.root, work / f"out-{seed}", config, used=sim.root / "train" / "used",
                                   not_used=sim.root / "train" / "not_used")
        rows.append({"scenario": f"simulate seed {seed}, {args.members} members, every kind at default strengths",
                     "seed": seed, "wall_s": round(wall, 2), "grading_s": round(spent, 3),
                     "grading_share": round(spent / wall, 4), "timings": r.summary.timings,
                     **score_scenario(sim.root, r)})
        print(json.dumps(rows[-1], indent=1), flush=True)
    null = None
    if not args.no_null:
        d = args.bench / "dev-null"
        r, wall, spent = run_audit(d, work / "dev-null", config, used=d / "train" / "used",
                                   not_used=d / "train" / "not_used")
        g = r.generated
        on_test = g[(g["folder"] == "real") & g["grade"].isin(list(GRADES))]
        null = {"scenario": "bench-dev dev-null", "graded": int(len(g)), "grades": r.summary.generated.grades,
                "graded_copy_of_a_test_image": int(len(on_test)),
                "graded_copy_of_a_train_image": int(g[g["folder"] != "real"]["grade"].isin(list(GRADES)).sum()),
                "wall_s": round(wall, 2), "grading_s": round(spent, 3), "grading_share": round(spent / wall, 4),
                "timings": r.summary.timings,
                "levels": {k: r.summary.generated.levels[k] for k in ("floor", "exact", "cosine", "planted")}}
        print(json.dumps(null, indent=1), flush=True)
    record = {"scenarios": rows, "dev_null": null, "machine": machine(), "load_avg": os.getloadavg(),
              "command": " ".join(["python", *sys.argv])}
    res = HERE / "results"
    write_json_atomic(res / "replication.json", record)
    lines = ["| scenario | exact P / R | near copy P / R | any-copy precision | grading s / audit s |",
             "|---|---|---|---|---|"]
    for r in rows:
        e, n = r["exact"], r["near copy"]
        lines.append(f"| {r['scenario']} | {e['precision']} / {e['recall']} | {n['precision']} / {n['recall']} | "
                     f"{r['any_copy_precision']} | {r['grading_s']} / {r['wall_s']} ({100 * r['grading_share']:.1f} %) |")
    lines += ["", "| kind | grade | planted | recall (own grade) | recall (any copy grade) | best match = source |",
              "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        for kind, k in r["per_kind"].items():
            lines.append(f"| {kind} (seed {r['seed']}) | {k['grade']} | {k['planted']} | {k['recall_own_grade']} | "
                         f"{k['recall_any_copy']} | {k['source_is_best_match']} |")
    if null:
        lines += ["", f"dev-null: {null['graded_copy_of_a_test_image']} generated images graded a copy of a test "
                      f"image ({null['grades']}); grading {null['grading_s']} s of a {null['wall_s']} s audit "
                      f"({100 * null['grading_share']:.1f} %)."]
    write_text_atomic(res / "replication.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
