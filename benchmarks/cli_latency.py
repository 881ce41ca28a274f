"""How long the command line takes to answer when it does no work: `fpindex --help`, `--version`, a command's
`--help`, and a one-line usage error. Each is a fresh interpreter (what a user waits for), timed from start to
exit: warm-up runs, then repeats, median. With --baseline DIR the same commands run on another checkout (e.g.
the commit before the imports were made lazy) in the same process, interleaved, for a ratio measured side by
side. Results: results/cli_latency.json and .md.

    nice python benchmarks/cli_latency.py --baseline /tmp/base --repeats 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES = {"fpindex --help": ["--help"], "fpindex --version": ["--version"], "fpindex audit --help": ["audit", "--help"],
         "usage error (build --model vgg)": ["build", "x", "--model", "vgg"],
         "usage error (audit, no --out)": ["audit", "-g", "x", "-r", "y"]}


def once(checkout: Path, args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system). On a shared, loaded machine the CPU time is the
    steadier number; the wall time is what a user waits for."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fpindex", *args], env=env, cwd=checkout, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time the same way")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    checkouts = {"this checkout": HERE.parent} | ({"baseline": args.baseline} if args.baseline else {})
    load = os.getloadavg()
    rows = []
    for case, argv in CASES.items():
        times: dict[str, list[float]] = {name: [] for name in checkouts}
        cpu: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.warmup):
            for path in checkouts.values():
                once(path, argv)
        for _ in range(args.repeats):               # interleaved: both see the same load
            for name, path in checkouts.items():
                wall, used = once(path, argv)
                times[name].append(wall)
                cpu[name].append(used)
        row = {"case": case, **{f"{n}_median_s": round(statistics.median(t), 3) for n, t in times.items()},
               **{f"{n}_cpu_median_s": round(statistics.median(t), 3) for n, t in cpu.items()},
               **{f"{n}_all_s": [round(x, 3) for x in t] for n, t in times.items()}}
        if args.baseline:
            row["speedup"] = round(row["baseline_median_s"] / row["this checkout_median_s"], 2)
            row["cpu_speedup"] = round(row["baseline_cpu_median_s"] / row["this checkout_cpu_median_s"], 2)
        rows.append(row)
        print(row, flush=True)
    meta = {"python": sys.version.split()[0], "cores": os.cpu_count(), "load_at_start": load,
            "load_at_end": os.getloadavg(), "warmup": args.warmup, "repeats": args.repeats,
            "baseline": str(args.baseline) if args.baseline else None}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "cli_latency.json", {"machine": meta, "rows": rows})
    head = "| command | wall (s) | CPU (s) |" + (" baseline wall (s) | baseline CPU (s) | CPU ratio |"
                                                if args.baseline else "")
    lines = [head, "|---|---:|---:|" + ("---:|---:|---:|" if args.baseline else "")]
    for r in rows:
        lines.append(f"| {r['case']} | {r['this checkout_median_s']:.3f} | {r['this checkout_cpu_median_s']:.3f} |" + (
            f" {r['baseline_median_s']:.3f} | {r['baseline_cpu_median_s']:.3f} | {r['cpu_speedup']:.1f}× |"
            if args.baseline else ""))
    lines.append(f"\nmedian of {args.repeats} fresh interpreters after {args.warmup} warm-up runs; {os.cpu_count()} "
                 f"cores, load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    write_text_atomic(args.out / "cli_latency.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
