"""Ray engine throughput with 1 and 2 local CPU workers, beside the local engine (docs/scale-out.md's numbers).

For each worker count: a fresh local Ray cluster (`ray.init(num_cpus=N)`), then the embedding stage of the
scenario's generated images (read, hash, decode, enhance, forward; no cache) run `--repeats` times — the first
run includes the workers' start (imports), the rest are warm — the sharded index add, and the re-ranking of
the test images. Peak resident memory per Ray worker process is read from /proc (VmHWM). Prints one JSON
document and writes benchmarks/results/ray_scale.json.

    python benchmarks/ray_scale.py [--scenario ../shared/bench-dev/dev-medium] [--workers 1,2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # this checkout first

from fpindex import build_index  # noqa: E402
from fpindex.config import AuditConfig, EmbedConfig, EvidenceConfig, RunConfig  # noqa: E402
from fpindex.embed import embed_folder, make_embedder  # noqa: E402
from fpindex.load import ReadOptions, list_images  # noqa: E402
from fpindex.pipeline import progress_bar  # noqa: E402
from fpindex.utils import Timings  # noqa: E402


def worker_peak_rss() -> list[int]:
    """Peak RSS (bytes) of every live Ray worker process on this machine."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmd = (status.parent / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.startswith(b"ray::"):
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) * 1024)
    return out


def embed_runs(engine, root: Path, cfg: EmbedConfig, repeats: int) -> list[float]:
    files = list_images(root, "generated", ReadOptions.of(cfg))
    embedder = make_embedder(cfg)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine(root, files, embedder, cfg, Timings(), progress_bar(True), "embed", cache=None)
        times.append(time.perf_counter() - t)
    return [len(files) / s for s in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="../shared/bench-dev/dev-medium")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.scenario)
    cfg = EmbedConfig(weights="random", cache=False, device="cpu", workers=0)
    report = {"scenario": str(root), "images": len(list_images(root / "generated", "g", ReadOptions.of(cfg))),
              "local": {"images_per_s": embed_runs(embed_folder, root / "generated", cfg, args.repeats)}}
    import ray

    from fpindex.engine.ray_embed import embed_folder as ray_embed

    for n in [int(w) for w in args.workers.split(",")]:
        ray.init(num_cpus=n, include_dashboard=False, logging_level="error", log_to_driver=False)
        rates = embed_runs(ray_embed, root / "generated", cfg, args.repeats)
        full = AuditConfig(embed=cfg, evidence=EvidenceConfig(k=10), run=RunConfig(quiet=True, engine="ray"))
        t = time.perf_counter()
        idx = build_index(root / "generated", config=full)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        idx.query(root / "test", used=root / "train" / "used", not_used=root / "train" / "not_used")
        t_query = time.perf_counter() - t
        report[f"ray_{n}"] = {"images_per_s": rates, "warm_median": statistics.median(rates[1:] or rates),
                              "build_s": t_build, "query_s": t_query,
                              "timings": idx.timings.as_dict(),
                              "worker_peak_rss_mb": sorted(r // 2**20 for r in worker_peak_rss())}
        ray.shutdown()
    report["load"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = Path(__file__).resolve().parent / "results" / "ray_scale.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
