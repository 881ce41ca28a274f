"""Scale: the whole default audit at growing numbers of generated images, with a fixed real set.

The set is made once from `../shared/data/lidc-ct128` (seeded augmentations) and kept in `--work` (the pool
of generated images once per seed, shared by every real-set size, made on all cores):
patients are split five ways — labelled members (`train/used`), labelled non-members (`train/not_used`),
test members and test non-members (`test/`), and patients only the "generator" saw. Real images are the
originals of the first four groups plus seeded mild augmentations of them, up to `--real` images
(1/4 used, 1/4 not used, 1/2 test). Generated image i is, by its own seeded draw, a replay of a member image
(half of them: something for the audit to find) or an augmentation of a generator-only patient's image, so
the first N images of the pool are the same mix at every N; each size's folder is hard links to them.

Each size runs `fpindex audit` (the default, calibrated on train/used + train/not_used) in a fresh process
with an empty FPINDEX_CACHE, so peak RSS (`os.wait4`'s ru_maxrss: the audit process, and the largest of any
process it waited for) and the per-stage seconds (summary.json's timings) belong to that size alone. Before
the first size, a small audit warms the page cache and Python's bytecode; `--repeats` runs each size more
than once and keeps the median wall time (and that run's stages and RSS). Rows are saved after every size.

    nice -n 5 python benchmarks/scale.py                                   # 10k, 30k, 100k generated; 10k real
    python benchmarks/scale.py --sizes 1000,3000 --real 400 --label dev
    python benchmarks/scale.py --sizes 10000 --real 400 --label dev --append      # add a size to those rows

Writes benchmarks/results/scale[-LABEL].json (a list of rows, one per size) and scale[-LABEL].md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]  # this checkout first

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import machine  # noqa: E402

from fpindex.utils import STAGES, write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GROUPS = ("used", "not_used", "test_member", "test_non_member", "generator_only")
REPLAY_SHARE = 0.5


def augment(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """uint8 image → a seeded small rotation, rescale, shift, gamma, gain and noise of it (uint8)."""
    size = img.shape[0]
    m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-6, 6) * strength,
                                1 + rng.uniform(-0.05, 0.05) * strength)
    m[:, 2] += rng.uniform(-3, 3, size=2) * strength
    x = cv2.warpAffine(img.astype(np.float32) / 255, m, (size, size), borderMode=cv2.BORDER_REFLECT)
    x = np.clip(x, 0, 1) ** (1 + rng.uniform(-0.1, 0.1) * strength) * (1 + rng.uniform(-0.08, 0.08) * strength)
    x = x + 0.02 * strength * rng.standard_normal(x.shape)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    """Whole or not at all: a run stopped mid-write leaves no truncated image behind."""
    tmp = path.with_name(path.stem + ".part.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, path)


def split_patients(data: Path, seed: int) -> dict[str, list[Path]]:
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(patients))
    group_of = {patients[p]: GROUPS[i * len(GROUPS) // len(patients)] for i, p in enumerate(order.tolist())}
    out: dict[str, list[Path]] = {g: [] for g in GROUPS}
    for r in sorted(rows, key=lambda r: r["file"]):
        out[group_of[r["patient_id"]]].append(data / r["file"])
    return out


def make_real(folder: Path, groups: dict[str, list[Path]], n_real: int, seed: int) -> dict[str, int]:
    """train/used, train/not_used and test/ (members and non-members): originals first, then augmentations."""
    plan = {"train/used": (groups["used"], n_real // 4), "train/not_used": (groups["not_used"], n_real // 4)}
    half = (n_real - 2 * (n_real // 4)) // 2
    plan["test/m"] = (groups["test_member"], half)
    plan["test/n"] = (groups["test_non_member"], n_real - 2 * (n_real // 4) - half)
    counts = {}
    for j, (name, (sources, n)) in enumerate(plan.items()):
        sub, prefix = (name.split("/") + [""])[:2] if name.startswith("test/") else (name, "")
        out = folder / sub
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 2, j])
        for i in range(n):
            src = cv2.imread(str(sources[i % len(sources)]), cv2.IMREAD_GRAYSCALE)
            img = src if i < len(sources) else augment(src, rng, 0.5)
            _write(out / f"{prefix}{i:06d}.png", img)     # test/: m… members, n… non-members (labels unused)
        counts[name] = n
    return counts


def _pool_images(pool: Path, members: list[Path], fresh: list[Path], indices: list[int], seed: int) -> None:
    for i in indices:
        rng = np.random.default_rng([seed, 1, i])
        sources = members if rng.random() < REPLAY_SHARE else fresh
        src = cv2.imread(str(sources[int(rng.integers(len(sources)))]), cv2.IMREAD_GRAYSCALE)
        _write(pool / f"g{i:06d}.png", augment(src, rng, 1.0))


def extend_pool(pool: Path, groups: dict[str, list[Path]], n: int, seed: int) -> None:
    """Generated images 0 … n-1; image i depends only on (seed, i), so a pool grows without changing and its
    images can be made by several processes at once (one per core, blocks of 10,000)."""
    from concurrent.futures import ProcessPoolExecutor
    from itertools import repeat

    pool.mkdir(parents=True, exist_ok=True)
    members = groups["used"] + groups["test_member"]
    fresh = groups["generator_only"]
    missing = [i for i in range(n) if not (pool / f"g{i:06d}.png").is_file()]
    t = time.perf_counter()
    blocks = [missing[s:s + 10000] for s in range(0, len(missing), 10000)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as ex:
        done = n - len(missing)
        for block, _ in zip(blocks, ex.map(_pool_images, repeat(pool), repeat(members), repeat(fresh), blocks,
                                           repeat(seed))):
            done += len(block)
            print(f"  pool: {done}/{n} generated images ({time.perf_counter() - t:.0f} s)", flush=True)


def make_set(work: Path, data: Path, sizes: list[int], n_real: int, seed: int) -> Path:
    """The set for these sizes in work/ (made once; a larger size only adds generated images)."""
    root = work / f"set-real{n_real}-seed{seed}"
    groups = split_patients(data, seed)
    done = root / "real.json"
    if not done.is_file():
        shutil.rmtree(root / "real", ignore_errors=True)
        print(f"making {n_real} real images in {root / 'real'}", flush=True)
        counts = make_real(root / "real", groups, n_real, seed)
        write_json_atomic(done, {"counts": counts, "groups": {g: len(v) for g, v in groups.items()}})
    pool = work / f"pool-seed{seed}"              # shared by every real-set size: its images do not depend on it
    if not pool.is_dir() and (root / "pool").is_dir():
        (root / "pool").rename(pool)              # the layout before the pool was shared
    extend_pool(pool, groups, max(sizes), seed)
    for n in sizes:
        folder = root / f"gen-{n}"
        if folder.is_dir() and len(list(folder.iterdir())) == n:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for i in range(n):
            os.link(pool / f"g{i:06d}.png", folder / f"g{i:06d}.png")
    return root


def _read_all(folder: Path) -> None:
    for f in folder.rglob("*.png"):
        f.read_bytes()


def run_audit(real: Path, generated: Path, out: Path, extra: list[str], code: Path = ROOT) -> dict:
    """One `fpindex audit` in a fresh process with an empty cache: wall seconds, peak RSS, summary.json."""
    with tempfile.TemporaryDirectory(prefix="fpindex-scale-cache-") as cache:
        env = {**os.environ, "FPINDEX_CACHE": cache, "PYTHONPATH": str(code)}
        cmd = [sys.executable, "-m", "fpindex.cli", "audit", "-g", str(generated), "-r", str(real / "test"),
               "--used", str(real / "train" / "used"), "--not-used", str(real / "train" / "not_used"),
               "-o", str(out), "-q", *extra]
        t, load = time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        err = proc.stderr.read() if proc.stderr else ""
        rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"audit of {generated} failed (exit {rc}):\n{err[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2 ** 20, "summary": summary,
            "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def _commit(code: Path) -> str:
    """The checkout's commit (or, for an exported copy, what its COMMIT file says)."""
    r = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.strip()
    return (code / "COMMIT").read_text().strip() if (code / "COMMIT").is_file() else "unknown"


def row_of(n: int, runs: list[dict]) -> dict:
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]       # the median run
    s = best["summary"]
    counts = s["counts"]
    real = sum(counts[k]["embedded"] for k in ("real", "used", "not_used") if k in counts)
    t = s["timings"]
    return {"generated": n, "real": real, "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "stages_s": {k: round(t.get(k, 0.0), 2) for k in STAGES}, "audit_total_s": round(t["total"], 2),
            "peak_rss_gib": round(best["peak_rss_gib"], 3),
            "ms_per_generated": round(1e3 * statistics.median(r["wall_s"] for r in runs) / n, 3),
            "load_avg_1min_start_end": best["load_avg_1min"], "repeats": len(runs), "all_wall_s": [round(r["wall_s"], 2) for r in runs],
            "index": s["settings"]["index"]["factory"], "leakage": s["verdict"].get("leakage"), "auc": s["verdict"].get("auc"),
            "predicted_used": counts["predicted_used"]}


def markdown(rows: list[dict], info: dict) -> str:
    first = rows[0]
    lines = [f"Machine: {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads), "
             f"GPU: {info['gpu'] or 'none'}. Default audit, calibrated; {first['real']} real images.", "",
             "| generated | wall (s) | " + " | ".join(STAGES) + " | peak RSS (GiB) | ms / generated | "
             "× per-image cost vs first | index | load avg |",
             "|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['generated']:,} | {r['wall_s']:.1f} | "
                     + " | ".join(f"{r['stages_s'][k]:.1f}" for k in STAGES)
                     + f" | {r['peak_rss_gib']:.2f} | {r['ms_per_generated']:.2f} | "
                     f"{r['ms_per_generated'] / first['ms_per_generated']:.2f} | {r['index']} | "
                     + " / ".join(f"{x:.1f}" for x in r.get("load_avg_1min_start_end", [])) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lidc-ct128"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fpindex-scale"),
                    help="where the set is made once and reused")
    ap.add_argument("--sizes", default="10000,30000,100000", help="generated images, comma-separated")
    ap.add_argument("--real", type=int, default=10000, help="real images in all (used + not used + test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--code", default=str(ROOT), help="the fpindex checkout whose audit runs (default: this one), "
                                                      "to compare commits on the same set")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the results file for other sizes (same --real, seed, audit args)")
    ap.add_argument("--make-only", action="store_true", help="make the set (real images, pool, size folders) "
                    "and stop: the long part of a large size, run ahead of the audits")
    ap.add_argument("--audit-args", default="", help="extra `fpindex audit` options, e.g. '--preset zoq-cnn-cosine'")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(args.work)
    root = make_set(work, Path(args.data), sizes, args.real, args.seed)
    if args.make_only:
        print(f"set ready in {root}", flush=True)
        return
    extra = args.audit_args.split()
    stem = f"scale{'-' + args.label if args.label else ''}"
    info = machine()
    print("warm-up: page cache and a small audit", flush=True)
    _read_all(root / "real")
    _read_all(root / f"gen-{max(sizes)}")     # hard links: every size's images
    warm = work / "warm"                 # 200 generated, 40 real images in each folder
    shutil.rmtree(warm, ignore_errors=True)
    for src, dst in [(root / f"gen-{max(sizes)}", warm / "gen")] + [(root / "real" / s, warm / "real" / s)
                                                       for s in ("test", "train/used", "train/not_used")]:
        dst.mkdir(parents=True)
        for f in sorted(src.glob("*.png"))[:200 if dst.name == "gen" else 40]:
            os.link(f, dst / f.name)
    with tempfile.TemporaryDirectory(prefix="fpindex-scale-out-") as out:
        run_audit(warm / "real", warm / "gen", Path(out) / "warm", extra, Path(args.code))
    rows: list[dict] = []
    results = HERE / "results" / f"{stem}.json"
    if args.append and results.is_file():
        rows = [r for r in json.loads(results.read_text()) if r["generated"] not in sizes and r["real"] == args.real
                and r["seed"] == args.seed and r["audit_args"] == extra]
    for n in sizes:
        runs = []
        for rep in range(args.repeats):
            print(f"audit: {n:,} generated × {args.real:,} real (run {rep + 1}/{args.repeats})", flush=True)
            with tempfile.TemporaryDirectory(prefix="fpindex-scale-out-") as out:
                runs.append(run_audit(root / "real", root / f"gen-{n}", Path(out) / "out", extra, Path(args.code)))
            print(f"  {runs[-1]['wall_s']:.1f} s, peak RSS {runs[-1]['peak_rss_gib']:.2f} GiB", flush=True)
        rows.append(row_of(n, runs) | {"machine": info, "audit_args": extra, "seed": args.seed,
                              "code": _commit(Path(args.code))})
        rows.sort(key=lambda r: r["generated"])
        write_json_atomic(results, rows)      # after every size: nothing lost on a crash
        write_text_atomic(HERE / "results" / f"{stem}.md", markdown(rows, info))
    print(markdown(rows, info))


if __name__ == "__main__":
    main()
