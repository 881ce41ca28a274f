"""Re-ranking cost per pair: where the time goes (per feature and per step), and what cheaper alignments would
change, measured side by side in one process.

Input: an audit's `neighbours.parquet` (the real test images' k neighbours, with the values the audit stored)
and the folder of those real images. A seeded sample of the pairs is re-scored on one thread (per-pair CPU
cost: the process's CPU time, which another job on the shared cores inflates far less than wall time) with
the package's own functions: first checked against the values
the audit stored (the same computation), then timed — warm-up, `--repeats` runs, median. Per step: the ECC
calls and the filtering that each aligned feature makes. Candidates (side by side with the reference):
  - shared: one rigid alignment per pair (ssim_aligned's), which bandpass refines on the band-passed images
    instead of its own smooth-5 affine stage (the "alignment once per pair" idea);
  - c2f: bandpass's smooth-5 affine stage at half size (coarse to fine), then its band stage at full size.
For each: cost ratio and how far its values move (per pair, pooled per image, and on pairs at copy level).

    python benchmarks/rerank_cost.py --neighbours OUT/neighbours.parquet --real ../shared/bench-dev/dev-strong/test

Writes benchmarks/results/rerank_cost[-LABEL].json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import machine  # noqa: E402

from fpindex.evidence.align import ALIGN_EPS, ALIGN_ITERATIONS, align_to, ssim_aligned  # noqa: E402
from fpindex.evidence.bandpass import SIGMAS, REFERENCE_SIDE, _ncc, bandpass, bandpass_correlation  # noqa: E402
from fpindex.evidence.similarity import ssim_indexed  # noqa: E402
from fpindex.load import load_image  # noqa: E402
from fpindex.utils import opencv_threads, write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
CRIT = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ALIGN_ITERATIONS, ALIGN_EPS)
COPY_LEVEL = 0.9            # pairs at or above this (reference value) count as copy-level


def _ecc(ref, mov, warp, motion, smooth):
    try:
        return cv2.findTransformECC(ref, mov, warp.copy(), motion, CRIT, None, smooth)[1], True
    except cv2.error:
        return warp, False


def _half(x):
    h, w = x.shape
    return cv2.resize(x, (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def _warp(mov, warp):
    h, w = mov.shape
    return cv2.warpAffine(mov, warp, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _inner(side):
    b = int(np.ceil(2 * SIGMAS[1] * side / REFERENCE_SIDE))
    return slice(b, side - b), slice(b, side - b)


# --- the steps of the reference computation, one at a time (each repeats what the feature does) -------------
def step_rigid(a, b):                       # ssim_aligned's ECC (Euclidean, half size)
    w, _ = _ecc(_half(a), _half(b), np.eye(2, 3, dtype=np.float32), cv2.MOTION_EUCLIDEAN, 1)
    return w


def step_band_smooth5(a, b):                # bandpass's first ECC stage
    return _ecc(a, b, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, 5)[0]


def step_band_refine(a, b):                 # bandpass's second ECC stage (from the identity here: same work)
    return _ecc(bandpass(a), bandpass(b), np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, 1)[0]


def step_band_score(a, b):                  # warp, band-pass and NCC of one pair
    inner = _inner(a.shape[0])
    return _ncc(bandpass(a)[inner], bandpass(_warp(b, np.eye(2, 3, dtype=np.float32)))[inner])


# --- candidates ---------------------------------------------------------------------------------------------
def cand_shared(a, b):
    """bandpass from ssim_aligned's rigid warp, refined on the band-passed images (one alignment shared)."""
    w = step_rigid(a, b)
    w[:, 2] *= 2
    ra = bandpass(a)
    w, _ = _ecc(ra, bandpass(b), w, cv2.MOTION_AFFINE, 1)
    inner = _inner(a.shape[0])
    return _ncc(ra[inner], bandpass(_warp(b, w))[inner])


def cand_c2f(a, b):
    """bandpass with its smooth-5 stage run at half size (3-px smoothing there), then the full-size band stage."""
    w, ok = _ecc(_half(a), _half(b), np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, 3)
    w = w.copy()
    w[:, 2] *= 2
    ra = bandpass(a)
    if ok:
        w, _ = _ecc(ra, bandpass(b), w, cv2.MOTION_AFFINE, 1)
    inner = _inner(a.shape[0])
    return _ncc(ra[inner], bandpass(_warp(b, w))[inner])


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neighbours", required=True, type=Path, help="an audit's neighbours.parquet")
    ap.add_argument("--real", required=True, type=Path, help="the folder of the audited real images")
    ap.add_argument("--size", type=int, default=64, help="canonical side (the default embedder's: 64)")
    ap.add_argument("--pairs", type=int, default=1500, help="pairs sampled (seeded)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)

    t = pq.read_table(args.neighbours).to_pandas()
    t = t[t["generated_id"] >= 0].reset_index(drop=True)
    keep = np.sort(np.random.default_rng(args.seed).permutation(len(t))[:args.pairs])
    t = t.iloc[keep].reset_index(drop=True)
    real_names, ia = np.unique(t["image"].to_numpy(), return_inverse=True)
    gen_names, ib = np.unique(t["generated"].to_numpy(), return_inverse=True)
    A = np.stack([load_image(args.real / n, args.size)[0] for n in real_names]).astype(np.float32)
    B = np.stack([load_image(p, args.size)[0] for p in gen_names]).astype(np.float32)
    n = len(t)
    print(f"{n} pairs ({len(A)} real, {len(B)} generated images), {args.size} px; load {open('/proc/loadavg').read().split()[:3]}",
          flush=True)

    pairs = list(zip(ia.tolist(), ib.tolist()))
    feats = {"ssim": lambda x, y: ssim_indexed(A, B, x, y, threads=1),
             "ssim_aligned": lambda x, y: ssim_aligned(A, B, x, y, threads=1),
             "bandpass": lambda x, y: bandpass_correlation(A, B, x, y, threads=1)}
    steps = {"ssim_aligned: ECC rigid, half size": step_rigid,
             "ssim_aligned: warp": lambda a, b: _warp(b, np.eye(2, 3, dtype=np.float32)),
             "bandpass: ECC affine smooth-5": step_band_smooth5,
             "bandpass: ECC affine band-passed (from the identity)": step_band_refine,
             "bandpass: warp + band-pass + NCC": step_band_score}
    cands = {"candidate: shared rigid alignment": cand_shared, "candidate: c2f smooth-5 stage": cand_c2f}

    def per_pair(fn):
        return lambda x, y: np.array([fn(A[i], B[j]) for i, j in zip(x.tolist(), y.tolist())], np.float32)

    def ecc_iterations(m):                            # a fixed number of ECC iterations, no early stop
        crit = (cv2.TERM_CRITERIA_COUNT, m, 0)

        def one(a, b):
            try:
                cv2.findTransformECC(a, b, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, crit, None, 1)
            except cv2.error:
                pass
        return one

    def torch_warps(x, y):                            # what batching would do per ECC iteration: warp the moving
        import torch                                  # image and its two gradients, all pairs at once

        torch.set_num_threads(1)
        imgs = torch.from_numpy(np.stack([B[y], np.gradient(B[y], axis=2), np.gradient(B[y], axis=1)], 1))
        theta = torch.eye(2, 3).expand(len(y), 2, 3) + 0.01
        for s0 in range(0, len(y), 512):
            grid = torch.nn.functional.affine_grid(theta[s0:s0 + 512], list(imgs[s0:s0 + 512].shape), align_corners=False)
            torch.nn.functional.grid_sample(imgs[s0:s0 + 512], grid, mode="bilinear", align_corners=False)

    steps |= {"ECC affine, 1 iteration (set-up + 1)": ecc_iterations(1),
              "ECC affine, 11 iterations (set-up + 11)": ecc_iterations(11)}
    jobs = feats | {k: per_pair(f) for k, f in (steps | cands).items()}
    jobs["batched torch: the 3 warps of ONE ECC iteration"] = torch_warps
    runs: dict[str, list[float]] = {k: [] for k in jobs}
    out: dict[str, np.ndarray] = {}
    with opencv_threads(1):
        for fn in jobs.values():                       # warm-up: engines, buffers, OpenCV's first calls
            fn(ia[:20], ib[:20])
        for rep in range(args.repeats):                # interleaved, so load changes hit every row alike
            for name, fn in jobs.items():
                t0 = time.process_time()
                v = fn(ia, ib)
                runs[name].append(time.process_time() - t0)
                if name in feats or name in cands:
                    out[name] = np.asarray(v, np.float32)
            print(f"repeat {rep + 1}/{args.repeats} done, load {open('/proc/loadavg').read().split()[0]}", flush=True)
    rows: dict[str, dict] = {}
    for name in jobs:
        med = statistics.median(runs[name])
        rows[name] = {"kind": "feature" if name in feats else "candidate" if name in cands else "step",
                      "ms_per_pair": 1e3 * med / n, "runs_s": runs[name]}
    for name in feats:
        rows[name]["max_abs_diff_vs_audit"] = float(np.nanmax(np.abs(out[name] - t[name].to_numpy(np.float32))))
    one, eleven = (rows[f"ECC affine, {m} iteration{'s' if m > 1 else ''} (set-up + {m})"]["ms_per_pair"] for m in (1, 11))
    rows["ECC affine: one more iteration (from the two above)"] = {"kind": "step", "ms_per_pair": (eleven - one) / 10,
                                                                   "runs_s": []}
    ref = out["bandpass"]
    pooled_ref = _pooled(ref, ia)
    copy = ref >= COPY_LEVEL
    for name in cands:
        d = np.abs(out[name] - ref)
        rows[name] |= {"speed_vs_reference": rows["bandpass"]["ms_per_pair"] / rows[name]["ms_per_pair"],
                       "pair_abs_diff_mean": float(d.mean()), "pair_abs_diff_p99": float(np.quantile(d, .99)),
                       "pooled_abs_diff_max": float(np.abs(_pooled(out[name], ia) - pooled_ref).max()),
                       "copy_level_pairs": int(copy.sum()),
                       "copy_level_abs_diff_max": float(d[copy].max()) if copy.any() else None}
    total = sum(rows[f]["ms_per_pair"] for f in feats)
    result = {"neighbours": str(args.neighbours), "real": str(args.real), "pairs": n, "size": args.size,
              "repeats": args.repeats, "seed": args.seed, "threads": 1, "pixel_features_ms_per_pair": total,
              "load_avg": open("/proc/loadavg").read().split()[:3], "rows": rows, "machine": machine()}
    stem = f"rerank_cost{'-' + args.label if args.label else ''}"
    write_json_atomic(HERE / "results" / f"{stem}.json", result)
    write_text_atomic(HERE / "results" / f"{stem}.md", markdown(result))
    print(markdown(result))


def _pooled(v: np.ndarray, ia: np.ndarray) -> np.ndarray:
    out = np.full(ia.max() + 1, -np.inf, np.float32)
    np.maximum.at(out, ia, v)
    return out


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Re-ranking cost per pair, one thread, CPU time, median of {r['repeats']} (machine: {m['cpu']}, {m['cores']} "
             f"cores, load {' / '.join(r['load_avg'])}); {r['pairs']} pairs sampled from `{r['neighbours']}`, "
             f"{r['size']} px. Pixel features together: **{r['pixel_features_ms_per_pair']:.3f} ms per pair**.", "",
             "| what | ms / pair | share | notes |", "|---|---:|---:|---|"]
    total = r["pixel_features_ms_per_pair"]
    for name, row in r["rows"].items():
        note = ""
        if row["kind"] == "feature":
            note = f"same values as the audit stored (max \\|Δ\\| {row['max_abs_diff_vs_audit']:.2g})"
        elif row["kind"] == "candidate":
            note = (f"{row['speed_vs_reference']:.2f}× bandpass's speed; values move: per pair \\|Δ\\| mean "
                    f"{row['pair_abs_diff_mean']:.3f} (p99 {row['pair_abs_diff_p99']:.3f}), pooled per image max "
                    f"{row['pooled_abs_diff_max']:.3f}; {row['copy_level_pairs']} pairs at copy level (≥ "
                    f"{COPY_LEVEL}): max \\|Δ\\| {row['copy_level_abs_diff_max'] or 0:.2g}")
        share = f"{100 * row['ms_per_pair'] / total:.0f} %" if row["kind"] != "candidate" else ""
        lines.append(f"| {name} | {row['ms_per_pair']:.3f} | {share} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
