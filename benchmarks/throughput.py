"""Throughput: is the audit as fast as its model? Everything side by side, in one run, on one machine.

1. forward  — the bare model on pre-made tensors (same embedder object, shape, batch, threads, precision).
2. stage    — `fpindex build`'s embedding stage (read, hash, decode, enhance, forward) on real image files,
              no cache; then once per enhancement filter, to show what each filter adds.
3. ssim     — re-ranking of the audit's own (real, neighbour) pairs: batched `ssim_indexed` vs a per-pair
              `skimage.metrics.structural_similarity` loop, same pairs, max |difference|.
4. audit    — the whole `fpindex audit` on a bench-dev scenario with an empty cache (total vs embedding time),
              then the same audit again (cache warm), in-process and as a fresh CLI process.
Repeats are interleaved (A B A B …) and medians reported, so load from other processes hits both sides.
Writes benchmarks/results/throughput[-LABEL].json and the "## Throughput" table in benchmarks/README.md.

    python benchmarks/throughput.py [--scenario ../shared/bench-dev/dev-strong] [--model cnn] [--precision fp32]
                                    [--images 4096] [--pairs 2000] [--repeats 3] [--parts forward,stage,enhance,ssim,audit]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]  # this checkout first

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import machine  # noqa: E402

from fpindex import audit  # noqa: E402
from fpindex.config import AuditConfig, DecideConfig, EmbedConfig, EvidenceConfig, RunConfig  # noqa: E402
from fpindex.enhance import ENHANCERS  # noqa: E402
from fpindex.load import list_images, load_image  # noqa: E402
from fpindex.embed import embed_folder, make_embedder  # noqa: E402
from fpindex.pipeline import progress_bar  # noqa: E402
from fpindex.evidence.similarity import ssim_indexed  # noqa: E402
from fpindex.embed.stream import PRECISIONS, autocast, default_batch_size, default_workers  # noqa: E402
from fpindex.utils import Timings, write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
QUIET = RunConfig(quiet=True)
BARS = progress_bar(quiet=True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run A B C A B C … so drifting load affects all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def embedding(args, files: list[Path], root: Path) -> dict:
    """Parts 1 and 2 (and the per-filter overheads)."""
    cfg = EmbedConfig(model=args.model, weights=args.weights, image_size=args.image_size, device=args.device,
                      precision=args.precision, batch_size=args.batch_size, workers=args.workers, cache=False)
    embedder = make_embedder(cfg)
    device, size = embedder.spec.device, embedder.spec.size
    bs = cfg.batch_size or default_batch_size(device)
    n = len(files)
    gen = torch.Generator().manual_seed(0)
    premade = [torch.rand(min(bs, n - s), 1, size, size, generator=gen).to(device) for s in range(0, n, bs)]

    def forward():
        with autocast(device, cfg.precision):
            for x in premade:
                embedder(x)

    # One filter gives one input channel, so the same embedder (same weights) serves every filter; building a
    # model inside the timed call would bill its construction to the filter.
    def stage(enhance=("none",)):
        c = EmbedConfig(**{**cfg.__dict__, "enhance": enhance})
        embed_folder(root, files, embedder, c, Timings(), BARS, "bench")

    fns = {"forward": forward, "stage": stage}
    if "enhance" in args.parts:
        for name in ENHANCERS.names():
            if name != "none":
                fns[f"stage+{name}"] = (lambda nm: (lambda: stage((nm,))))(name)
    t = interleaved(fns, args.repeats)
    out = {"images": n, "batch_size": bs, "image_size": size, "device": str(device), "precision": cfg.precision,
           "workers": default_workers(n, bs) if cfg.workers is None else cfg.workers,
           "torch_threads": torch.get_num_threads(),
           "forward_img_s": n / t["forward"], "stage_img_s": n / t["stage"],
           "stage_vs_forward": t["forward"] / t["stage"]}
    out["enhance_overhead"] = {k.split("+", 1)[1]: t[k] / t["stage"] - 1 for k in t if k.startswith("stage+")}
    return out


def precision_drift(args, files: list[Path], root: Path) -> dict:
    """How far bf16/fp16 vectors move from fp32 ones (cosine), on the same files."""
    res = {}
    base_cfg = EmbedConfig(model=args.model, weights=args.weights, image_size=args.image_size, device=args.device,
                           batch_size=args.batch_size, workers=0, cache=False)
    embedders = {p: make_embedder(EmbedConfig(**{**base_cfg.__dict__, "precision": p})) for p in PRECISIONS}
    x = torch.rand(base_cfg.batch_size or 64, 1, embedders["fp32"].spec.size, embedders["fp32"].spec.size,
                   generator=torch.Generator().manual_seed(0)).to(embedders["fp32"].spec.device)

    def fwd(p):
        def go():
            with autocast(embedders[p].spec.device, p):
                for _ in range(4):
                    embedders[p](x)
        return go

    t = interleaved({p: fwd(p) for p in PRECISIONS}, max(1, args.repeats - 1))
    ref = embed_folder(root, files, embedders["fp32"], base_cfg, Timings(), BARS, "fp32").vectors
    for p in ("bf16", "fp16"):
        c = EmbedConfig(**{**base_cfg.__dict__, "precision": p})
        try:
            v = embed_folder(root, files, embedders[p], c, Timings(), BARS, p).vectors
        except Exception as e:  # e.g. fp16 kernels missing on this CPU
            res[p] = {"error": f"{type(e).__name__}: {e}"[:200]}
            continue
        cos = (v * ref).sum(1)
        nn_same = float(np.mean(np.argmax(v @ ref.T, 1) == np.arange(len(ref))))
        res[p] = {"min_cosine_to_fp32": float(cos.min()), "median_cosine_to_fp32": float(np.median(cos)),
                  "top1_self_match": nn_same, "forward_speed_vs_fp32": t["fp32"] / t[p]}
    return res


def ssim_part(args, audit_out: Path, scenario: Path) -> dict:
    import pyarrow.parquet as pq
    from skimage.metrics import structural_similarity

    rows = pq.read_table(audit_out / "neighbours.parquet").to_pylist()
    rows = rows[:args.pairs]
    size = args.image_size or make_embedder(EmbedConfig(model=args.model, weights=args.weights,
                                                        device="cpu", cache=False)).spec.size
    real_names = sorted({r["image"] for r in rows})
    gen_paths = sorted({r["generated"] for r in rows})
    real = np.stack([load_image(scenario / "test" / nm, size)[0] for nm in real_names])
    gen = np.stack([load_image(p, size)[0] for p in gen_paths])
    ri = {nm: i for i, nm in enumerate(real_names)}
    gi = {p: i for i, p in enumerate(gen_paths)}
    a_idx = np.array([ri[r["image"]] for r in rows])
    b_idx = np.array([gi[r["generated"]] for r in rows])

    def skimage_loop():
        return np.array([structural_similarity(real[i].astype(np.float64), gen[j].astype(np.float64),
                                               gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                               data_range=1.0) for i, j in zip(a_idx, b_idx)])

    ref = skimage_loop()
    got = ssim_indexed(real, gen, a_idx, b_idx)
    t = interleaved({"skimage": skimage_loop, "batched": lambda: ssim_indexed(real, gen, a_idx, b_idx)},
                    max(1, args.repeats - 1))
    # CPU time on one core (less sensitive to other jobs than wall time; skimage's loop uses one core).
    cpu = {}
    for name, fn in {"skimage": skimage_loop, "batched": lambda: ssim_indexed(real, gen, a_idx, b_idx, threads=1)}.items():
        c = time.process_time()
        fn()
        cpu[name] = time.process_time() - c
    return {"cpu_speedup_one_core": cpu["skimage"] / cpu["batched"],
            "cpu_ms_per_pair": {k: 1e3 * v / len(rows) for k, v in cpu.items()},
            "pairs": len(rows), "real_images": len(real_names), "distinct_neighbours": len(gen_paths),
            "skimage_ms_per_pair": 1e3 * t["skimage"] / len(rows), "batched_ms_per_pair": 1e3 * t["batched"] / len(rows),
            "speedup": t["skimage"] / t["batched"], "max_abs_diff": float(np.abs(got - ref).max())}


def audit_part(args, scenario: Path, work: Path) -> tuple[dict, Path]:
    cache = work / "cache"
    cfg = EmbedConfig(model=args.model, weights=args.weights, image_size=args.image_size, device=args.device,
                      precision=args.precision, batch_size=args.batch_size, workers=args.workers,
                      cache_dir=str(cache))
    config = AuditConfig(embed=cfg, evidence=EvidenceConfig(k=args.k), decide=DecideConfig(seed=0), run=QUIET)
    folders = dict(used=scenario / "train" / "used", not_used=scenario / "train" / "not_used")

    def run(out):
        t = time.perf_counter()
        s = audit(scenario / "generated", scenario / "test", config=config, out=out, **folders).summary
        return time.perf_counter() - t, s

    cold_s, cold = run(work / "cold")
    warm_s, warm = run(work / "warm")
    cmd = [sys.executable, "-m", "fpindex.cli", "audit", "--generated", str(scenario / "generated"), "--real",
           str(scenario / "test"), "--out", str(work / "cli"), "--used", str(folders["used"]), "--not-used",
           str(folders["not_used"]), "--model", args.model, "--precision", args.precision, "--k", str(args.k),
           "--cache-dir", str(cache), "--device", args.device, "-q"]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=HERE.parent, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    cli_warm_s = time.perf_counter() - t
    tm = cold["timings"]
    same = (work / "cold" / "predictions.csv").read_text() == (work / "warm" / "predictions.csv").read_text()
    return {"scenario": scenario.name, "images": cold["counts"]["generated_indexed"] + sum(
                c["embedded"] for k, c in cold["counts"].items() if isinstance(c, dict)),
            "k": args.k, "cold_s": cold_s, "timings": tm, "total_vs_embed": tm["total"] / tm["embed"],
            "total_vs_load_enhance_embed": tm["total"] / (tm["load"] + tm["enhance"] + tm["embed"]),
            "warm_s": warm_s, "warm_timings": warm["timings"], "rerun_speedup": cold_s / warm_s,
            "cli_warm_s": cli_warm_s, "rerun_speedup_cli": cold_s / cli_warm_s, "warm_identical": same}, work / "cold"


def markdown(res: dict, command: str) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, GPU: {m['gpu'] or 'none'}. "
             f"Model `{res['args']['model']}`, precision {res['args']['precision']}. Load average (1 min) at start / "
             f"end: {res['load_average_start'][0]:.1f} / {res['load_average_end'][0]:.1f} (other jobs shared the "
             "CPU: ratios are side by side, absolute speeds are not the machine's best). Command:", "",
             f"    {command}", "", "| measure | value | target |", "|---|---:|---|"]
    e = res.get("embedding")
    if e:
        lines += [f"| bare forward ({e['images']} imgs, batch {e['batch_size']}, {e['image_size']} px) | "
                  f"{e['forward_img_s']:.0f} img/s | |",
                  f"| build embedding stage (files, workers {e['workers']}) | {e['stage_img_s']:.0f} img/s | |",
                  f"| stage ÷ forward throughput | {e['stage_vs_forward']:.2f} | ≥ 0.90 |"]
        for k, v in e.get("enhance_overhead", {}).items():
            lines.append(f"| enhancement `{k}` adds to the stage | {v:+.0%} | ≤ +10% |")
    p = res.get("precision")
    if p:
        for k, v in p.items():
            if "error" in v:
                lines.append(f"| {k} vs fp32 vectors | {v['error']} | |")
            else:
                lines.append(f"| {k}: forward speed ÷ fp32; 1 − cosine to fp32 vectors (max / median); own fp32 "
                             f"vector is top-1 | {v['forward_speed_vs_fp32']:.2f}×; {1 - v['min_cosine_to_fp32']:.1e} / "
                             f"{1 - v['median_cosine_to_fp32']:.1e}; {v['top1_self_match']:.1%} | option, not default |")
    s = res.get("ssim")
    if s:
        lines += [f"| SSIM, audit's pairs ({s['pairs']} pairs, {s['real_images']} real, {s['distinct_neighbours']} "
                  f"neighbours): skimage loop / batched | {s['skimage_ms_per_pair']:.3f} / {s['batched_ms_per_pair']:.3f} "
                  f"ms/pair | |",
                  f"| SSIM speed-up, wall time (threads over {res['machine']['cores']} cores vs skimage's one) | "
                  f"{s['speedup']:.1f}× | ≥ 20× |",
                  f"| SSIM speed-up, CPU time on one core ({s['cpu_ms_per_pair']['skimage']:.3f} vs "
                  f"{s['cpu_ms_per_pair']['batched']:.3f} ms/pair) | {s['cpu_speedup_one_core']:.1f}× | |",
                  f"| SSIM max \\|batched − skimage\\| | {s['max_abs_diff']:.1e} | ≤ 1e-3 |"]
    a = res.get("audit")
    if a:
        t = a["timings"]
        lines += [f"| audit `{a['scenario']}` ({a['images']} images, k {a['k']}), empty cache: total | {a['cold_s']:.1f} s | |",
                  "| its timings (s) | " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()) + " | |",
                  f"| audit total ÷ embed | {a['total_vs_embed']:.2f} | ≤ 1.2 |",
                  f"| audit total ÷ (load + enhance + embed) | {a['total_vs_load_enhance_embed']:.2f} | |",
                  f"| re-run, warm cache, in-process | {a['warm_s']:.2f} s ({a['rerun_speedup']:.1f}× faster) | ≥ 10× |",
                  f"| re-run, warm cache, fresh CLI process | {a['cli_warm_s']:.2f} s ({a['rerun_speedup_cli']:.1f}× faster) | |",
                  f"| re-run predictions identical | {a['warm_identical']} | |"]
    return "\n".join(lines) + "\n"


def update_readme(path: Path, section: str) -> None:
    """Replace only the generated table between the throughput markers (prose around it is kept); append a
    '## Throughput' section holding it when the markers are absent."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    generated = "<!-- throughput:begin -->\n" + section + "<!-- throughput:end -->\n"
    if "<!-- throughput:begin -->" in text:
        head, rest = text.split("<!-- throughput:begin -->", 1)
        tail = rest.split("<!-- throughput:end -->\n", 1)[1] if "<!-- throughput:end -->" in rest else ""
        text = head + generated + tail
    else:
        text = text.rstrip("\n") + "\n\n## Throughput\n\n" + generated
    write_text_atomic(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", type=Path, default=HERE.parent.parent / "shared" / "bench-dev" / "dev-strong")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--images", type=int, default=4096,
                    help="generated files for parts 1-2 (cycled if fewer); at 1024 a filter's measured overhead "
                         "moved by ±7 %% between runs")
    ap.add_argument("--pairs", type=int, default=2000, help="audit pairs for part 3")
    ap.add_argument("--k", type=int, default=EvidenceConfig().k)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="forward,stage,enhance,precision,ssim,audit")
    ap.add_argument("--label", default="", help="suffix of the JSON file name")
    ap.add_argument("--readme", default=str(HERE / "README.md"), help="'' to leave it alone")
    args = ap.parse_args()
    args.parts = set(args.parts.split(","))
    if not (args.scenario / "generated").is_dir():
        sys.exit(f"throughput.py: scenario {args.scenario} not found (pass --scenario)")
    res: dict = {"machine": machine(), "load_average_start": os.getloadavg(), "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path)
                                                    else v) for k, v in vars(args).items()}}
    gen_root = args.scenario / "generated"
    files = list_images(gen_root)
    files = (files * -(-args.images // len(files)))[:args.images]   # cycled when more are asked for than exist
    if {"forward", "stage"} & args.parts:
        res["embedding"] = embedding(args, files, gen_root)
        print("embedding:", res["embedding"], flush=True)
    if "precision" in args.parts:
        res["precision"] = precision_drift(args, files[:256], gen_root)
        print("precision:", res["precision"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "audit" in args.parts or "ssim" in args.parts:
            res["audit"], cold = audit_part(args, args.scenario, Path(tmp))
            print("audit:", res["audit"], flush=True)
            if "ssim" in args.parts:
                res["ssim"] = ssim_part(args, cold, args.scenario)
                print("ssim:", res["ssim"], flush=True)
            if "audit" not in args.parts:
                del res["audit"]
    res["load_average_end"] = os.getloadavg()
    out = HERE / "results" / f"throughput{'-' + args.label if args.label else ''}.json"
    write_json_atomic(out, res)
    command = "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])
    md = markdown(res, command)
    print(md)
    if args.readme:
        update_readme(Path(args.readme), md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
