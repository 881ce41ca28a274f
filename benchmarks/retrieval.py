"""Retrieval at scale: `fpindex bench` over index types, sizes and dimensions, one fresh process per row so
each row's memory is its own. Writes benchmarks/results/retrieval.json and retrieval.md after every row, so a
long run that is stopped keeps what it measured.

    python benchmarks/retrieval.py --plan headline      # 1M × 256: auto vs exact and every index type
    python benchmarks/retrieval.py --plan 10m           # 10M × 256 auto under --max-memory 8G
    python benchmarks/retrieval.py --plan dims          # 10^4–10^5, dimensions 128–2048
    python benchmarks/retrieval.py --plan real --embeddings emb.parquet
    python benchmarks/retrieval.py --row "--n 100000 --dim 256 --index-type HNSW32"

Each row is the command `fpindex bench ROW --json`; its median-of-repeats protocol is described in
fpindex/index/bench.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's fpindex, not an installed one

from common import machine  # noqa: E402

from fpindex.index import format_bytes  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
M1 = "--n 1000000 --dim 256 --queries 1000 --tune-queries 500 --repeats 5 --single 200"
PLANS = {
    "headline": [f"{M1} --index-type auto", f"{M1} --index-type IVF4096,Flat", f"{M1} --index-type IVF4096,SQ8",
                 f"{M1} --index-type IVF4096,PQ32", f"{M1} --index-type HNSW32", f"{M1} --index-type SQ8"],
    "10m": ["--n 10000000 --dim 256 --index-type auto --max-memory 8G --queries 500 --tune-queries 300 "
            "--repeats 3 --single 100"],
    "dims": [f"--n {n} --dim {d} --index-type {f} --queries 500 --tune-queries 300 --repeats 5 --single 100"
             for n, d, f in [(10_000, 256, "auto"), (100_000, 128, "auto"), (100_000, 128, "IVF1024,Flat"),
                             (100_000, 512, "IVF1024,Flat"), (100_000, 2048, "IVF1024,Flat"),
                             (100_000, 2048, "PCAR256,IVF1024,SQ8"), (100_000, 512, "HNSW32")]],
    "real": ["--index-type Flat --queries 500 --tune-queries 300 --n 100000000",
             "--index-type IVF64,Flat --queries 500 --tune-queries 300 --n 100000000",
             "--index-type HNSW32 --queries 500 --tune-queries 300 --n 100000000",
             "--index-type IVF64,SQ8 --queries 500 --tune-queries 300 --n 100000000"],
}


def run_row(row: str, python: str) -> dict:
    cmd = [python, "-m", "fpindex.cli", "bench", *shlex.split(row), "--json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if p.returncode != 0:
        return {"command": "fpindex bench " + row + " --json", "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["command"] = "fpindex bench " + row + " --json"
    r["wall_s"] = round(time.perf_counter() - t, 1)
    return r


def table(rows: list[dict]) -> str:
    head = ("| N | d | index | params | build (s) | index size | peak RSS | recall@1 | recall@10 | q/s batch | "
            "q/s single | exact q/s | speed-up | wrapper overhead (batch / single) |")
    lines = [head, "|" + "|".join(["---"] * 14) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| | | `{r['command']}` | error: {r['error']} |" + " |" * 10)
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["search_params"].items()) or "—"
        lines.append(
            f"| {r['n']:,} | {r['dim']} | `{r['factory']}`{' (auto)' if r['requested'] == 'auto' else ''} | {params} "
            f"| {r['build_s']:.1f} | {format_bytes(r['index_bytes'])} | {format_bytes(r['peak_rss_bytes'])} "
            f"| {r['recall_at_1']:.3f} | {r['recall_at_10']:.3f} | {r['qps']:,.0f} | {r['qps_single']:,.0f} "
            f"| {r['exact_qps']:,.1f} | {r['speedup_vs_exact']}× "
            f"| {r['wrapper_overhead']:+.1%} / {r['wrapper_overhead_single']:+.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=sorted(PLANS), action="append", default=[])
    ap.add_argument("--row", action="append", default=[], help="extra `fpindex bench` arguments (one row)")
    ap.add_argument("--embeddings", type=Path, help="embeddings file for --plan real")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    rows = [r for p in args.plan for r in PLANS[p]] + args.row
    if "real" in args.plan:
        if not args.embeddings:
            sys.exit("retrieval.py: --plan real needs --embeddings FILE")
        rows = [r + f" --embeddings {shlex.quote(str(args.embeddings.resolve()))}" if r in PLANS["real"] else r
                for r in rows]
    if not rows:
        sys.exit("retrieval.py: nothing to run (give --plan or --row)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "retrieval.json"
    done = json.loads(path.read_text())["rows"] if path.is_file() else []
    for row in rows:
        r = run_row(row, args.python)
        done = [d for d in done if d.get("command") != r["command"]] + [r]
        write_json_atomic(path, {"machine": machine(), "rows": done})
        write_text_atomic(args.out / "retrieval.md", table(done))
        print(table([r]).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
