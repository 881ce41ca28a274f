"""fpindex against its peers on the same scenarios, side by side.

Why: an AUC means little alone. On each scenario (bench-dev layout) this scores test/ four ways and
evaluates all of them on test_labels.csv with sklearn (AUC, TPR at 1 % and 5 % FPR):

- fpindex: the default audit through the Python API, calibrated on train/used + train/not_used; also its
  canary table (planted copies of known-unused images found / planted, per kind and strength);
- naive: 32-px pixel cosine (INTER_AREA, each image's mean subtracted), max over the generated images, as
  in ../shared/bench-dev/README.md (its AUC 0.927 on dev-strong needs the centring: raw cosine gives 0.864);
- imagededup's perceptual hashes (PHash, DHash, WHash, AHash; encode_images): score = minus the smallest
  Hamming distance to any generated image. Optional: `.venv/bin/pip install imagededup`;
- oracle (white-box, knows the generator's training set T): Carlini et al. (2023)'s copy ratio turned
  into a per-image score. At 48 px, pixels in [0, 1], L2: for test image t and generated image g,
  r(g, t) = d(g, t) / min over x in T, x != t of d(g, x); score(t) = -min over g of r(g, t). A member
  copied by g has r << 1 (g is close to t and to no other training image); a non-member is compared
  with the training image g really copies. T is scenario.json's training_set when present (dev-ddpm),
  else train/used + the test images labelled used (bench-dev: its extra patients' images are not
  there, so T is incomplete). It uses the training set, so it is a ceiling for copy evidence, not a
  method anyone auditing could run.

    python benchmarks/peers.py ../shared/bench-dev/dev-strong /tmp/fpindex-bench/dev-ddpm-200
    python benchmarks/peers.py SCENARIO --skip-fpindex          # the peers only (seconds)

Results merge by scenario name into benchmarks/results/peers.json and peers.md (a re-run of a scenario
replaces its rows).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fpindex, not an installed one

from common import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
HASHES = ["PHash", "DHash", "WHash", "AHash"]


def pngs(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.png"))


def read(paths, size: int) -> np.ndarray:
    out = []
    for p in paths:
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        out.append(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) if im.shape != (size, size) else im)
    return np.stack(out).reshape(len(out), -1).astype(np.float32) / 255.0


def metrics(y: np.ndarray, score: np.ndarray) -> dict:
    """AUC and the best TPR whose FPR does not exceed 1 % / 5 % (sklearn's ROC, ties kept together)."""
    fpr, tpr, _ = roc_curve(y, score)
    return {"auc": round(float(roc_auc_score(y, score)), 4),
            "tpr_at_1fpr": round(float(tpr[fpr <= 0.01].max()), 4),
            "tpr_at_5fpr": round(float(tpr[fpr <= 0.05].max()), 4)}


def run_fpindex(sc: Path, names: list[str]) -> tuple[np.ndarray, dict]:
    from fpindex import audit
    from fpindex.config import AuditConfig, RunConfig

    cfg = AuditConfig(run=RunConfig(quiet=True))
    r = audit(sc / "generated", sc / "test", used=sc / "train" / "used", not_used=sc / "train" / "not_used", config=cfg)
    p = r.predictions.assign(name=[Path(str(i)).name for i in r.predictions["image"]]).set_index("name")
    can = r.summary.get("canaries", {})
    extra = {"verdict": r.summary["verdict"]["text"], "decision": r.summary["decision"]["method"],
             "flag_rate": round(float(p["label"].mean()), 4),
             "canaries": [{k: t[k] for k in ("kind", "strength", "found", "planted", "rate", "description")}
                          for t in can.get("table", [])],
             "canary_criterion": can.get("criterion"),
             "seeds": {"embed": cfg.embed.seed, "decide": cfg.decide.seed, "canaries": cfg.canaries.seed}}
    return p.loc[names, "score"].to_numpy(np.float64), extra


def run_naive(gen: list[Path], test: list[Path]) -> np.ndarray:
    g, t = read(gen, 32), read(test, 32)
    g -= g.mean(1, keepdims=True)  # centred per image (Pearson): reproduces bench-dev's 0.927 on dev-strong
    t -= t.mean(1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    return (t @ g.T).max(1)


def run_hashes(sc: Path) -> dict[str, dict[str, np.ndarray]] | str:
    """Per method: test name -> score. imagededup encodes whole folders (its own resizing and hashing)."""
    try:
        import logging

        from imagededup import methods
        logging.getLogger("imagededup.methods.hashing").setLevel(logging.WARNING)  # it logs each folder at INFO
    except ImportError:
        return "imagededup not installed: .venv/bin/pip install imagededup"
    out = {}
    for name in HASHES:
        h = getattr(methods, name)(verbose=False)
        enc_g = h.encode_images(image_dir=str(sc / "generated"), num_enc_workers=1)
        enc_t = h.encode_images(image_dir=str(sc / "test"), num_enc_workers=1)
        gv = np.array([int(v, 16) for v in enc_g.values()], dtype=np.uint64)
        names = list(enc_t)
        tv = np.array([int(enc_t[n], 16) for n in names], dtype=np.uint64)
        ham = np.bitwise_count(tv[:, None] ^ gv[None, :]).min(1)
        out[name] = dict(zip(names, -ham.astype(np.float64)))
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_oracle(sc: Path, gen: list[Path], test: list[Path], y: np.ndarray, size: int = 48) -> tuple[np.ndarray, str]:
    meta = json.loads((sc / "scenario.json").read_text()) if (sc / "scenario.json").exists() else {}
    root = Path(meta.get("pool_root", ""))
    if meta.get("training_set") and root.is_dir():
        tpaths, source = [root / f for f in meta["training_set"]], "scenario.json training_set (complete)"
    else:
        tpaths = pngs(sc / "train" / "used") + [p for p, lab in zip(test, y) if lab == 1]
        source = "train/used + test images labelled used (incomplete: no extra-patient images)"
    tkeys = {sha(p): i for i, p in enumerate(tpaths)}
    member = np.array([tkeys.get(sha(p), -1) for p in test])
    G, T, R = read(gen, size), read(tpaths, size), read(test, size)

    def dist(a, b):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.sqrt(np.maximum(d2, 0))

    dT, dR = dist(G, T), dist(G, R)
    order = np.argsort(dT, 1)[:, :2]
    d1 = np.take_along_axis(dT, order[:, :1], 1)[:, 0]
    d2 = np.take_along_axis(dT, order[:, 1:2], 1)[:, 0]
    denom = np.where(order[:, :1] == member[None, :], d2[:, None], d1[:, None])  # excluding t itself from T
    ratio = dR / np.maximum(denom, 1e-12)
    return -ratio.min(0), f"{source}; {len(tpaths)} images, {int((member >= 0).sum())} of them in test/"


def scenario(sc: Path, skip_fpindex: bool) -> dict:
    labels = {r["image"]: int(r["label"]) for r in csv.DictReader(open(sc / "test_labels.csv"))}
    test = pngs(sc / "test")
    names = [p.name for p in test]
    y = np.array([labels[n] for n in names])
    gen = pngs(sc / "generated")
    rows, info = [], {"scenario": sc.name, "path": str(sc), "test": len(test), "used": int(y.sum()),
                      "generated": len(gen)}
    print(f"== {sc.name}: {len(gen)} generated, {len(test)} test ({int(y.sum())} used)", flush=True)

    def add(method, score, wall, **kw):
        rows.append({"method": method, **metrics(y, score), "wall_s": round(wall, 1), **kw})
        print(f"  {method:28s} AUC {rows[-1]['auc']:.3f}  TPR@1% {rows[-1]['tpr_at_1fpr']:.3f}  "
              f"TPR@5% {rows[-1]['tpr_at_5fpr']:.3f}  ({wall:.0f} s)", flush=True)

    if not skip_fpindex:
        t = time.perf_counter()
        s, extra = run_fpindex(sc, names)
        add("fpindex default", s, time.perf_counter() - t, verdict=extra["verdict"], flag_rate=extra["flag_rate"])
        info["fpindex"] = extra
    t = time.perf_counter()
    add("naive 32-px pixel cosine", run_naive(gen, test), time.perf_counter() - t)
    t = time.perf_counter()
    hashes = run_hashes(sc)
    if isinstance(hashes, str):
        info["imagededup"] = hashes
        print("  " + hashes, flush=True)
    else:
        wall = (time.perf_counter() - t) / len(hashes)
        for name, d in hashes.items():
            add(f"imagededup {name}", np.array([d[n] for n in names]), wall)
    t = time.perf_counter()
    s, how = run_oracle(sc, gen, test, y)
    add("oracle (white-box, knows T)", s, time.perf_counter() - t, training_set=how)
    mem = json.loads((sc / "scenario.json").read_text()).get("memorisation") if (sc / "scenario.json").exists() else None
    if mem:
        info["memorisation"] = {k: mem[k] for k in ("generated_near_copies", "generated", "members_with_near_copy",
                                                   "members", "by_role") if k in mem}
    info["rows"] = rows
    return info


def markdown(rec: dict) -> str:
    lines = ["# fpindex and its peers", "", "Written by `benchmarks/peers.py`; see its docstring for each method.",
             "AUC, TPR at 1 % FPR, TPR at 5 % FPR on test/ (test_labels.csv).", ""]
    for name, sc in sorted(rec["scenarios"].items()):
        lines += [f"## {name}", "", f"`{sc['command']}` on {sc['date']} ({sc['machine']['cpu']}, "
                  f"{sc['machine']['cores']} cores, shared with other jobs: wall times are not comparable), fpindex "
                  f"{sc['machine'].get('fpindex_commit', '?')}; {sc['generated']} generated, {sc['test']} test, "
                  f"{sc['used']} used.", ""]
        if "memorisation" in sc:
            m = sc["memorisation"]
            roles = ", ".join(f"{k} {v['with_near_copy']}/{v['images']}" for k, v in m["by_role"].items())
            lines += [f"Memorisation (scenario.json): {m['generated_near_copies']}/{m['generated']} generated images "
                      f"are near-copies; {m['members_with_near_copy']}/{m['members']} members have one "
                      f"({roles}).", ""]
        lines += ["| method | AUC | TPR@1% | TPR@5% | s |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['auc']:.3f} | {r['tpr_at_1fpr']:.3f} | {r['tpr_at_5fpr']:.3f} | {r['wall_s']:g} |"
                  for r in sc["rows"]]
        if "fpindex" in sc:
            f = sc["fpindex"]
            lines += ["", f"fpindex verdict: {f['verdict']} (flagged {f['flag_rate']:.0%}; seeds {f['seeds']}).", "",
                      f"Canaries ({f['canary_criterion']}):", "", "| kind | strength | found / planted |", "|---|---|---|"]
            lines += [f"| {c['kind']} | {c['strength']:g} | {c['found']}/{c['planted']} |" for c in f["canaries"]]
        if "imagededup" in sc:
            lines += ["", sc["imagededup"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="+", type=Path)
    ap.add_argument("--skip-fpindex", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "peers")
    a = ap.parse_args(argv)
    path = a.out.with_suffix(".json")
    rec = json.loads(path.read_text()) if path.exists() else {"scenarios": {}}
    cmd = " ".join(["python", "benchmarks/peers.py"] + (argv if argv is not None else sys.argv[1:]))
    mach = machine()
    try:  # fpindex changes under the benchmark: say which code gave the numbers
        import subprocess

        git = lambda *c: subprocess.run(["git", *c], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()
        mach["fpindex_commit"] = git("rev-parse", "--short", "HEAD") + (" + uncommitted fpindex/ edits"
                                                                          if git("status", "--porcelain", "fpindex") else "")
    except OSError:
        pass
    for sc in a.scenarios:
        info = scenario(sc.resolve(), a.skip_fpindex)
        info.update(command=cmd, date=datetime.date.today().isoformat(), machine=mach)
        rec["scenarios"][info["scenario"]] = info
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1) + "\n")
        a.out.with_suffix(".md").write_text(markdown(rec))
    print(f"wrote {path} and {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
