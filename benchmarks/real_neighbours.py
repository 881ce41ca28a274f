"""The real images' own neighbours (search.search_real, search.sibling_groups): exhaustive search against the
index used above `search.REAL_EXACT_BELOW` images, side by side in one process on the same vectors.

Vectors: fpindex's seeded synthetic embeddings (index/bench.py: clustered, low intrinsic dimension, unit
length), 512-d like the default embedder's. Per size: CPU seconds of the process (all FAISS threads; on a
shared machine wall time says more about the other jobs) (warm-up, then the median of `--repeats`), and
how close the indexed answers are to the exhaustive ones: recall@k of search_real's cosines (a value counts
when the exhaustive list holds it, to 1e-6) and the adjusted Rand index of the sibling groups.

    python benchmarks/real_neighbours.py --sizes 20000,50000

Writes benchmarks/results/real_neighbours[-LABEL].json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402

from common import machine  # noqa: E402

from fpindex.index.bench import Synthetic  # noqa: E402
from fpindex.search import REAL_EXACT_BELOW, REAL_NPROBE, real_factory, search_real, sibling_groups  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent


def median_time(fn, repeats: int):
    runs, out = [], None
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        runs.append(time.process_time() - t0)
    return statistics.median(runs), out


def recall(got: np.ndarray, want: np.ndarray) -> float:
    hit = total = 0
    for g, w in zip(got, want):
        w = w[np.isfinite(w)]
        total += len(w)
        hit += int(np.sum(np.min(np.abs(g[np.isfinite(g)][:, None] - w[None, :]), axis=0, initial=np.inf) < 1e-6))
    return hit / max(total, 1)


def _index_label(r: dict) -> str:
    return r["factory"] if r["factory"] == "Flat" else f"{r['factory']}, nprobe {r['nprobe']}"


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import adjusted_rand_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,50000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10, help="search_real depth (density_ratio's real_k)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    rows = []
    w = Synthetic(args.dim, seed=1).take(25_000, 0)       # warm-up: FAISS's threads, BLAS, the IVF code paths
    search_real([(w, [str(i) for i in range(len(w))])], args.k)
    sibling_groups([w], exact_below=1)
    for n in (int(s) for s in args.sizes.split(",")):
        v = Synthetic(args.dim).take(n, 0)
        groups = [(v, [str(i) for i in range(n)])]
        factory = real_factory(n)
        t_exact, exact = median_time(lambda: search_real(groups, args.k, exact_below=n + 1), args.repeats)
        t_index, indexed = median_time(lambda: search_real(groups, args.k), args.repeats)
        s_exact, sib_exact = median_time(lambda: sibling_groups([v], exact_below=n + 1), args.repeats)
        s_index, sib_index = median_time(lambda: sibling_groups([v]), args.repeats)
        row = {"n": n, "dim": args.dim, "k": args.k, "factory": factory, "nprobe": REAL_NPROBE,
               "search_real_exact_s": t_exact, "search_real_s": t_index, "search_real_speedup": t_exact / t_index,
               "recall_at_k": recall(indexed[0], exact[0]),
               "sibling_exact_s": s_exact, "sibling_s": s_index, "sibling_speedup": s_exact / s_index,
               "sibling_ari": float(adjusted_rand_score(sib_exact[0], sib_index[0])),
               "load_avg": open("/proc/loadavg").read().split()[:3]}
        rows.append(row)
        print(row, flush=True)
    info = machine()
    stem = HERE / "results" / f"real_neighbours{'-' + args.label if args.label else ''}"
    write_json_atomic(stem.with_suffix(".json"), {"rows": rows, "machine": info})
    lines = [f"Real images' own neighbours, exhaustive vs indexed ({info['cpu']}, {info['cores']} cores; "
             f"synthetic {args.dim}-d embeddings, k = {args.k}, median of {args.repeats} after a warm-up at 25,000).", "",
             "| real images | index | search_real exact (CPU s) | indexed (CPU s) | × | recall@k | sibling_groups exact "
             "(CPU s) | indexed (CPU s) | × | ARI | load |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['n']:,} | {_index_label(r)} | {r['search_real_exact_s']:.1f} | "
              f"{r['search_real_s']:.1f} | {r['search_real_speedup']:.1f} | {r['recall_at_k']:.4f} | "
              f"{r['sibling_exact_s']:.1f} | {r['sibling_s']:.1f} | {r['sibling_speedup']:.1f} | "
              f"{r['sibling_ari']:.4f} | {' / '.join(r['load_avg'])} |" for r in rows]
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
