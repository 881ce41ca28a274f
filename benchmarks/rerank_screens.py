"""Can re-ranking skip pairs, or align them more cheaply, without moving the evidence? Two families measured on
an audit's stored pairs (issue 24's "spend the time where it can change an answer").

1. Screens (a cheap first pass that picks, per real image, the m neighbours worth the full `bandpass`): cosine
   and SSIM (already computed), the aligned SSIM (computed for the copy channel anyway), the band-passed
   correlation without alignment (`unaligned`, 0.05 ms) and after ssim_aligned's rigid alignment (`rigid`,
   0.4 ms). For each screen and m: the share of real images whose pooled `bandpass` (the best over all k) is
   unchanged when only the top m by the screen get it, and the feature's AUC on the scenario's test labels.
2. An inverse-compositional ECC (the real image's Jacobian and Hessian computed once and shared by its k
   neighbours, one warp per step; numpy, batched per real image) in place of OpenCV's forward-additive one,
   at full resolution and with its first stage on every second pixel: CPU per pair against the package's
   `bandpass_correlation` on the same pairs, and how far the values move.

    python benchmarks/rerank_screens.py --audit OUT --scenario ../shared/bench-dev/dev-blend [--images 200]

OUT is an audit of the scenario's generated images with its test/ folder as the real images (OUT/neighbours.parquet).
Writes benchmarks/results/rerank_screens-<scenario>.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from common import machine  # noqa: E402

from fpindex.evidence.align import ALIGN_EPS, ALIGN_ITERATIONS, align_to  # noqa: E402
from fpindex.evidence.bandpass import SIGMAS, REFERENCE_SIDE, _ncc, bandpass, bandpass_correlation  # noqa: E402
from fpindex.load import load_image  # noqa: E402
from fpindex.utils import write_json_atomic, write_text_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
PAD = 8
_DX = np.array([[-0.5, 0.0, 0.5]], np.float32)


# ---- candidate 2: inverse-compositional ECC, batched over one real image's neighbours -----------------------
class Template:
    """The fixed (real) image's share of every ECC step, on every `stride`-th pixel: zero-mean values, the
    zero-mean Jacobian of an affine warp about the centre, (JᵀJ)⁻¹ and the illumination term's constant part."""

    def __init__(self, img: np.ndarray, stride: int = 1) -> None:
        t = np.ascontiguousarray(img, np.float32)
        h, w = t.shape
        gx = cv2.filter2D(t, -1, _DX)[::stride, ::stride].ravel().astype(np.float64)
        gy = cv2.filter2D(t, -1, _DX.T)[::stride, ::stride].ravel().astype(np.float64)
        yy, xx = np.mgrid[0:h:stride, 0:w:stride].astype(np.float64)
        self.centre = np.array([(w - 1) / 2, (h - 1) / 2])
        xc, yc = xx.ravel() - self.centre[0], yy.ravel() - self.centre[1]
        jac = np.stack([gx * xc, gx * yc, gy * xc, gy * yc, gx, gy], 1)
        jac -= jac.mean(0)
        zm = t[::stride, ::stride].ravel().astype(np.float64)
        zm -= zm.mean()
        self.norm = float(np.sqrt(zm @ zm))
        self.hinv = np.linalg.inv(jac.T @ jac)
        self.tproj = jac.T @ zm
        self.hinv_tproj = self.hinv @ self.tproj
        self.lam_n = self.norm ** 2 - self.tproj @ self.hinv_tproj
        self.J = np.hstack([jac, zm[:, None]]).astype(np.float32)
        self.grid = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        self.gshape, self.shape = xx.shape, (h, w)

    def step_inverse(self, dp: np.ndarray) -> np.ndarray:
        a = np.empty((len(dp), 2, 2))
        a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = 1 + dp[:, 0], dp[:, 1], dp[:, 2], 1 + dp[:, 3]
        b = self.centre + dp[:, 4:6] - np.einsum("nij,j->ni", a, self.centre)
        ai = np.linalg.inv(a)
        d = np.zeros((len(dp), 3, 3))
        d[:, :2, :2], d[:, :2, 2], d[:, 2, 2] = ai, -np.einsum("nij,nj->ni", ai, b), 1
        return d


def ic_align(tpl: Template, movs: list[np.ndarray], m: np.ndarray, iterations: int, eps: float):
    """All of one real image's neighbours at once: their tiles side by side, one remap per step."""
    n = len(movs)
    h, w = tpl.shape
    gh, gw = tpl.gshape
    atlas = np.concatenate([cv2.copyMakeBorder(x, PAD, PAD, PAD, PAD, cv2.BORDER_REFLECT) for x in movs], axis=1)
    m, m0 = m.copy(), m.copy()
    rho, last = np.full(n, -1.0), np.full(n, -eps)
    active, ok = np.ones(n, bool), np.ones(n, bool)
    off = (np.arange(n) * (w + 2 * PAD) + PAD).astype(np.float32)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        a = len(idx)
        c = (m[idx, :2, :] @ tpl.grid).astype(np.float32)
        xs = np.clip(c[:, 0], -PAD, w - 1 + PAD) + off[idx, None]
        ys = np.clip(c[:, 1], -PAD, h - 1 + PAD) + PAD
        mx = np.ascontiguousarray(xs.reshape(a, gh, gw).transpose(1, 0, 2).reshape(gh, a * gw))
        my = np.ascontiguousarray(ys.reshape(a, gh, gw).transpose(1, 0, 2).reshape(gh, a * gw))
        out = cv2.remap(atlas, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        v = out.reshape(gh, a, gw).transpose(1, 0, 2).reshape(a, gh * gw)
        mean = v.mean(axis=1, dtype=np.float64)
        sq = np.einsum("ij,ij->i", v, v, dtype=np.float64) - v.shape[1] * mean ** 2
        proj = (v @ tpl.J).astype(np.float64)
        corr, iproj = proj[:, -1], proj[:, :-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            new = corr / (np.sqrt(np.maximum(sq, 0)) * tpl.norm)
        last[idx], rho[idx] = rho[idx], new
        lam_d = corr - iproj @ tpl.hinv_tproj
        bad = ~np.isfinite(new) | (lam_d <= 0)
        ok[idx[bad]] = active[idx[bad]] = False
        good = idx[~bad]
        if len(good):
            dp = ((tpl.lam_n / lam_d[~bad])[:, None] * iproj[~bad] - tpl.tproj) @ tpl.hinv.T
            m[good] = m[good] @ tpl.step_inverse(dp)
        active[idx] &= np.abs(rho[idx] - last[idx]) >= eps
    m[~ok] = m0[~ok]
    return m, ok


def ic_bandpass(ref: np.ndarray, movs: list[np.ndarray], stride: int) -> np.ndarray:
    """bandpass's two stages (smooth-5, then band-passed) with the IC alignment; the same score after."""
    b = int(np.ceil(2 * SIGMAS[1] * ref.shape[0] / REFERENCE_SIDE))
    inner = (slice(b, ref.shape[0] - b), slice(b, ref.shape[1] - b))
    rb = bandpass(ref)
    m = np.tile(np.eye(3), (len(movs), 1, 1))
    m, ok = ic_align(Template(cv2.GaussianBlur(ref, (5, 5), 0), stride), [cv2.GaussianBlur(x, (5, 5), 0) for x in movs],
                     m, ALIGN_ITERATIONS, ALIGN_EPS)
    sel = np.flatnonzero(ok)
    if len(sel):
        m[sel], _ = ic_align(Template(rb), [bandpass(movs[j]) for j in sel], m[sel], ALIGN_ITERATIONS, ALIGN_EPS)
    h, w = ref.shape
    return np.array([_ncc(rb[inner], bandpass(cv2.warpAffine(x, m[j, :2].astype(np.float32), (w, h),
                                                             flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                                                             borderMode=cv2.BORDER_REFLECT))[inner])
                     for j, x in enumerate(movs)], np.float32)


def main(argv: list[str] | None = None) -> None:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", required=True, type=Path, help="the audit's output folder")
    ap.add_argument("--scenario", required=True, type=Path, help="the bench-dev scenario audited (test/ as real)")
    ap.add_argument("--images", type=int, default=200, help="real images for the IC timing (the first N)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    d = pd.read_parquet(args.audit / "neighbours.parquet")
    d = d[d["generated_id"] >= 0].reset_index(drop=True)
    k = int(d.groupby("image").size().max())
    d = d[d.groupby("image")["image"].transform("size") == k].reset_index(drop=True)   # full lists only
    reals = d["image"].unique().tolist()
    n = len(reals)
    labels = pd.read_csv(args.scenario / "test_labels.csv").set_index("image")["label"]
    y = labels.loc[reals].to_numpy() == 1
    gen = {g: load_image(g if Path(g).is_absolute() else args.scenario / "generated" / g, 64)[0].astype(np.float32)
           for g in d["generated"].unique()}
    real = {r: load_image(args.scenario / "test" / r, 64)[0].astype(np.float32) for r in reals}
    b = int(np.ceil(2 * SIGMAS[1]))
    inner = (slice(b, 64 - b), slice(b, 64 - b))
    band = {r: bandpass(v)[inner] for r, v in real.items()}
    d["unaligned"] = [_ncc(band[r], bandpass(gen[g])[inner]) for r, g in zip(d["image"], d["generated"])]
    d["rigid"] = [_ncc(band[r], bandpass(align_to(real[r], gen[g]))[inner]) for r, g in zip(d["image"], d["generated"])]
    full = d["bandpass"].to_numpy().reshape(n, k)
    best = full.max(1)
    out = {"scenario": args.scenario.name, "images": n, "k": k, "auc_bandpass": roc_auc_score(y, best),
           "screens": [], "machine": machine()}
    for screen in ("cosine", "ssim", "ssim_aligned", "unaligned", "rigid"):
        order = np.argsort(-d[screen].to_numpy().reshape(n, k), axis=1, kind="stable")
        for m in (1, 2, 4, 6, 8):
            got = np.take_along_axis(full, order[:, :m], 1).max(1)
            out["screens"].append({"screen": screen, "m": m, "unchanged": float(np.mean(got == best)),
                                   "auc": float(roc_auc_score(y, got))})
    sub = reals[:args.images]
    rows = d[d["image"].isin(sub)]
    A = np.stack([real[r] for r in sub])
    names = sorted(gen)
    B = np.stack([gen[g] for g in names])
    at = {g: i for i, g in enumerate(names)}
    t = time.process_time()
    ref = bandpass_correlation(A, B, np.repeat(np.arange(len(sub)), k), np.array([at[g] for g in rows["generated"]]),
                               threads=1)
    t_ref = time.process_time() - t
    assert np.allclose(ref, rows["bandpass"].to_numpy(), atol=1e-6), "not the values the audit stored"
    out["ic"] = []
    for stride in (1, 2):
        t = time.process_time()
        ic = np.concatenate([ic_bandpass(real[r], [gen[g] for g in rows["generated"][rows["image"] == r]], stride)
                             for r in sub])
        t_ic = time.process_time() - t
        hi = ref >= 0.7
        diff = np.abs(ic - ref)
        pooled = np.abs(ic.reshape(-1, k).max(1) - ref.reshape(-1, k).max(1))
        ys = labels.loc[sub].to_numpy() == 1
        out["ic"].append({"stride": stride, "ms_per_pair": 1e3 * t_ic / len(ref), "ref_ms_per_pair": 1e3 * t_ref / len(ref),
                          "speed_up": t_ref / t_ic, "pair_abs_diff_mean": float(diff.mean()),
                          "copy_level_pairs": int(hi.sum()), "copy_level_max_abs_diff": float(diff[hi].max()) if hi.any() else 0.0,
                          "pooled_abs_diff_max": float(pooled.max()),
                          "auc_ref": float(roc_auc_score(ys, ref.reshape(-1, k).max(1))),
                          "auc_ic": float(roc_auc_score(ys, ic.reshape(-1, k).max(1)))})
    stem = f"rerank_screens-{args.scenario.name}"
    write_json_atomic(HERE / "results" / f"{stem}.json", out)
    lines = [f"{args.scenario.name}: {n} test images, k {k}; `bandpass` alone AUC {out['auc_bandpass']:.3f}.", "",
             "| screen | m | images whose pooled bandpass is unchanged | AUC |", "|---|---:|---:|---:|"]
    lines += [f"| {s['screen']} | {s['m']} | {s['unchanged']:.3f} | {s['auc']:.3f} |" for s in out["screens"]]
    lines += ["", f"Inverse-compositional ECC on the first {len(sub)} images' pairs (one thread, CPU time):", "",
              "| first stage on | ms / pair (IC) | ms / pair (OpenCV) | speed-up | mean pair |Δ| | copy-level pairs (≥ 0.7): max |Δ| | AUC OpenCV → IC |",
              "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {'every pixel' if r['stride'] == 1 else 'every 2nd pixel'} | {r['ms_per_pair']:.3f} | {r['ref_ms_per_pair']:.3f} | "
              f"{r['speed_up']:.2f}× | {r['pair_abs_diff_mean']:.3f} | {r['copy_level_pairs']}: {r['copy_level_max_abs_diff']:.3f} | "
              f"{r['auc_ref']:.3f} → {r['auc_ic']:.3f} |" for r in out["ic"]]
    write_text_atomic(HERE / "results" / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
