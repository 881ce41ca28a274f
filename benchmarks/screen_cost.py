"""What `--screen` saves: the re-ranking stage of one audit with and without it, side by side.

The embedding and the trained weights come from the cache (a copy of `--cache` with every evidence cache left
out), so each run recomputes its re-ranking and nothing else costly; runs alternate (screen, default, screen,
…) so both see the same machine. Reports the median re-ranking seconds, the ratio, and the re-ranked pairs.

    python benchmarks/screen_cost.py --scenario ../shared/bench-dev/dev-medium --screen 2 --repeats 3

Writes benchmarks/results/screen_cost.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from common import machine  # noqa: E402

from fpindex import audit  # noqa: E402
from fpindex.cache import default_cache_dir  # noqa: E402
from fpindex.config import AuditConfig, EmbedConfig, EvidenceConfig, RunConfig  # noqa: E402
from fpindex.evidence import FEATURES  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent


def one(scenario: Path, screen: int | None, cache: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fpindex-screen-") as tmp:
        run_cache = Path(tmp) / "cache"
        evidence = {f"{name}-" for name in FEATURES}
        shutil.copytree(cache, run_cache, copy_function=os.link,      # hard links: the cache is only read
                        ignore=lambda d, names: [n for n in names if d == str(cache) and any(n.startswith(e) for e in evidence)])
        cfg = AuditConfig(embed=EmbedConfig(seed=seed, cache_dir=str(run_cache)), evidence=EvidenceConfig(screen=screen),
                          run=RunConfig(quiet=True))
        t = time.perf_counter()
        r = audit(scenario / "generated", scenario / "test", used=scenario / "train" / "used",
                  not_used=scenario / "train" / "not_used", config=cfg, out=Path(tmp) / "out")
        wall = time.perf_counter() - t
        band = r.neighbours["bandpass"].notna().sum()
    s = r.summary
    return {"screen": screen, "wall_s": wall, "rerank_s": s.timings["rerank"], "load_s": s.timings["load"],
            "bandpass_pairs": int(band), "pairs": int(len(r.neighbours)), "auc": s["verdict"].get("auc"),
            "load_avg": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", type=Path, default=HERE.parent.parent / "shared" / "bench-dev" / "dev-medium")
    ap.add_argument("--screen", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=default_cache_dir(), help="a cache holding the scenario's vectors "
                    "and trained weights (run the audit once first)")
    args = ap.parse_args(argv)
    one(args.scenario, args.screen, args.cache, args.seed)            # warm-up (imports, page cache)
    runs = []
    for rep in range(args.repeats):
        for screen in (args.screen, None):
            runs.append(one(args.scenario, screen, args.cache, args.seed))
            r = runs[-1]
            print(f"run {rep + 1} screen {screen}: rerank {r['rerank_s']:.1f} s of {r['wall_s']:.1f} s, "
                  f"bandpass on {r['bandpass_pairs']}/{r['pairs']} pairs", flush=True)
    med = {s: statistics.median(r["rerank_s"] for r in runs if r["screen"] == s) for s in (args.screen, None)}
    out = {"scenario": str(args.scenario), "screen": args.screen, "repeats": args.repeats, "runs": runs,
           "median_rerank_s": {str(k): v for k, v in med.items()}, "speed_up": med[None] / med[args.screen],
           "machine": machine()}
    write_json_atomic(HERE / "results" / "screen_cost.json", out)
    text = (f"{args.scenario.name}, re-ranking stage (test/ and both train/ folders, k 20), median of {args.repeats} "
            f"alternating runs, evidence caches empty: **{med[None]:.1f} s by default, {med[args.screen]:.1f} s with "
            f"`--screen {args.screen}` ({out['speed_up']:.2f}× less)**; bandpass on "
            f"{runs[0]['bandpass_pairs']:,} of {runs[0]['pairs']:,} test pairs. Machine: {out['machine']['cpu']}, "
            f"load {min(r['load_avg'] for r in runs):.1f}–{max(r['load_avg'] for r in runs):.1f}.\n")
    write_text_atomic(HERE / "results" / "screen_cost.md", text)
    print(text)


if __name__ == "__main__":
    main()
