"""Bring-your-own embedders on bench-dev: timm and TorchScript models from local files beside the default cnn.

Every weights file is made here, seeded, with random weights (nothing is downloaded): a timm ViT and a timm
ResNet-18 as .safetensors, and the same ResNet-18 traced to a TorchScript .pt. Each runs the whole audit of
benchmarks/detection.py (calibrated on train/, evaluated on test/), with and without self-supervised
fine-tuning on the generated set (--finetune, the training the cnn gets); then the embedding throughput of each
(forward passes on a fixed batch: warm-up, repeats, median). Results: results/embedders.json and .md.

    FPINDEX_CACHE=$(mktemp -d) nice python benchmarks/embedders.py --scenarios dev-strong,dev-gan
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fpindex, not an installed one

import numpy as np  # noqa: E402

from common import machine  # noqa: E402
from detection import canary_cells, run_scenario  # noqa: E402, F401

from fpindex.config import DecideConfig, EmbedConfig  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
VIT, RESNET = "vit_tiny_patch16_224", "resnet18"


def weight_files(d: Path, size: int) -> dict[str, str]:
    import torch

    from fpindex.embed.timm_models import create, save_random

    files = {"vit": str(save_random(VIT, d / "vit_tiny-random.safetensors", 224, 0)),    # at 224: resampled
             "resnet": str(save_random(RESNET, d / "resnet18-random.safetensors", size, 0))}
    net = create(RESNET, size, 0).eval()
    traced = torch.jit.trace(net, torch.zeros(2, 3, size, size))
    files["torchscript"] = str(d / "resnet18-random.pt")
    traced.save(files["torchscript"])
    return files


def configs(files: dict[str, str], size: int, finetune: int) -> list[tuple[str, EmbedConfig]]:
    e = lambda **kw: EmbedConfig(image_size=size, **kw)  # noqa: E731
    return [("cnn (default: selfsup)", EmbedConfig()),
            (f"timm:{VIT} random", e(model=f"timm:{VIT}", weights=files["vit"])),
            (f"timm:{VIT} random + finetune {finetune}", e(model=f"timm:{VIT}", weights=files["vit"], finetune=finetune)),
            ("torchscript (traced resnet18, random)", e(model="torchscript", weights=files["torchscript"])),
            (f"timm:{RESNET} random", e(model=f"timm:{RESNET}", weights=files["resnet"])),
            (f"timm:{RESNET} random + finetune {finetune}", e(model=f"timm:{RESNET}", weights=files["resnet"],
                                                              finetune=finetune))]


def throughput(cfg: EmbedConfig, images: np.ndarray, repeats: int) -> float:
    from fpindex.embed import make_embedder

    embedder = make_embedder(EmbedConfig(**{**cfg.__dict__, "weights": "random" if cfg.weights == "selfsup"
                                            else cfg.weights, "finetune": None, "device": "cpu"}))
    x = images[:, None] if images.ndim == 3 else images
    x = np.ascontiguousarray(np.stack([_resize(i[0], embedder.spec.size) for i in x])[:, None])
    embedder(x[:8])                                              # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        embedder(x)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def throughput_table(args: argparse.Namespace) -> None:
    import cv2

    from fpindex.embed import make_embedder

    load = os.getloadavg()
    gen = sorted((args.root / args.scenarios.split(",")[0] / "generated").iterdir())[: args.throughput_images]
    with tempfile.TemporaryDirectory() as tmp:
        files = weight_files(Path(tmp), args.image_size)
        models = {label: cfg for label, cfg in configs(files, args.image_size, args.finetune) if "finetune" not in label}
        embedders = {label: make_embedder(EmbedConfig(**{**cfg.__dict__, "finetune": None, "device": "cpu",
                                                         "weights": "random" if cfg.weights == "selfsup"
                                                         else cfg.weights}))
                     for label, cfg in models.items()}
        x = {label: np.ascontiguousarray(np.stack([_resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) / 255.0,
                                                           e.spec.size) for p in gen])[:, None])
             for label, e in embedders.items()}
        times: dict[str, list[float]] = {label: [] for label in embedders}
        for label, e in embedders.items():
            e(x[label][:8])                                       # warm-up
        for _ in range(args.repeats):                             # round-robin: the same load for every model
            for label, e in embedders.items():
                t = time.perf_counter()
                e(x[label])
                times[label].append(time.perf_counter() - t)
    rows = [{"embedder": label, "dim": embedders[label].dim, "images": len(gen), "size": embedders[label].spec.size,
             "images_per_s": round(len(gen) / statistics.median(t), 1), "seconds": [round(v, 3) for v in t]}
            for label, t in times.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "embedders_throughput.json", {"machine": machine(), "load_at_start": load,
                                                               "load_at_end": os.getloadavg(), "rows": rows})
    lines = ["| embedder | dim | input | images/s (median) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['embedder']} | {r['dim']} | {r['size']} px | {r['images_per_s']} |" for r in rows]
    lines.append(f"\n{len(gen)} images, batch {len(gen)}, 1 warm-up, {args.repeats} round-robin repeats, CPU "
                 f"({os.cpu_count()} cores); load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    write_text_atomic(args.out / "embedders_throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=HERE.parent.parent / "shared" / "bench-dev")
    ap.add_argument("--scenarios", default="dev-strong,dev-gan")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--finetune", type=int, default=100, help="steps (the cnn trains 250 on 2,000 images)")
    ap.add_argument("--only", default=None, help="comma-separated row numbers (0-based) to run")
    ap.add_argument("--throughput-images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--throughput-only", action="store_true", help="only the embedding throughput, every model "
                    "measured round-robin in the same minutes (a shared machine's load hits all alike)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    import cv2

    if args.throughput_only:
        return throughput_table(args)

    scenarios = [args.root / s for s in args.scenarios.split(",")]
    load = os.getloadavg()
    rows, speed = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        files = weight_files(Path(tmp), args.image_size)
        todo = configs(files, args.image_size, args.finetune)
        if args.only:
            todo = [todo[int(i)] for i in args.only.split(",")]
        gen = sorted((scenarios[0] / "generated").iterdir())[: args.throughput_images]
        images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in gen]).astype(np.float32) / 255
        for label, cfg in todo:
            key = (cfg.model, cfg.weights)          # fine-tuning changes the weights, not the speed
            speed[key] = speed.get(key) or round(throughput(cfg, images, args.repeats), 1)
            speed[label] = speed[key]
            print(f"{label:45s} embeds {speed[label]:.1f} images/s", flush=True)
            for sc in scenarios:
                r = {"config": label, "load_before": round(os.getloadavg()[0], 2),
                     **run_scenario(sc, cfg, DecideConfig(), 20, Path(tmp))}
                r["throughput_images_per_s"] = speed[label]
                rows.append(r)
                save(args, load, rows)
                print(f"{label:45s} {sc.name:11s} AUC {r['auc']:.3f} kappa {r['kappa']:.3f} wall {r['wall_s']:.1f}s "
                      f"canaries {r['canaries']} | {r['verdict'][:60]}", flush=True)
    save(args, load, rows, echo=True)


def save(args: argparse.Namespace, load: tuple, rows: list[dict], echo: bool = False) -> None:
    """After every cell, so that a run stopped part-way keeps what it measured."""
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "embedders.json", {"machine": machine(), "load_at_start": load,
                                                   "image_size": args.image_size, "finetune": args.finetune,
                                                   "rows": rows})
    lines = ["| embedder | scenario | AUC | kappa | verdict | canaries exact / rigid 3 / noise 0.02 / blur 1 | "
             "wall (s) | load (1 min) | embed (img/s) |", "|---|---|---:|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['scenario']} | {r['auc']:.3f} | {r['kappa']:.3f} | "
              f"{r['verdict'].split(':')[0]} | {' / '.join(r['canaries'].values())} | {r['wall_s']:.1f} | "
              f"{r['load_before']} | {r['throughput_images_per_s']} |" for r in rows]
    write_text_atomic(args.out / "embedders.md", "\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
