"""Stage 6 — re-rank the k retrieved neighbours with two more views of similarity.

- SSIM between a real image and each neighbour, on the canonical grayscale pixels both were embedded from
  (data range 1). Window and constants are those of `skimage.metrics.structural_similarity` with
  `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11 × 11 Gaussian window (σ = 1.5,
  scipy's truncate 3.5 → radius 5), K1 = 0.01, K2 = 0.03, mean over the region 5 px in from every edge
  (skimage's crop, which is exactly where the filter never touches the border, so no padding is needed).
- Jaccard similarity of binarised embeddings: a feature is "on" when it exceeds the median of its own
  vector, so every code has half its bits set and the score does not depend on the vector's scale.
Only the k candidates per real image are compared, never all pairs.

Why SSIM is hand-written here rather than taken from `pytorch_msssim` (or kornia/torchmetrics): those compute
all five Gaussian filterings (μx, μy, E[x²], E[y²], E[xy]) for every pair with a grouped convolution, which on
a CPU is slower than skimage's own per-pair loop (measured: ≈2 ms/pair vs 1.5 ms at 128 px). Re-ranking
compares each real image with k neighbours, and four of the five filterings depend on one image only: here
they are computed once per distinct image, and only E[xy] is filtered per pair.
- CPU: OpenCV's separable filter and arithmetic on each pair, threads over the cores (≈ 14-20× less CPU time
  than skimage per pair on an audit's pairs). Measured and rejected: batched torch ops on the CPU (memory-bound
  on large intermediates, hurt by thread contention) and a numba kernel (no faster than OpenCV, and seconds of
  JIT compilation per process).
- GPU (or `engine="torch"`): the same terms batched on tensors, the separable Gaussian as two batched matrix
  products with banded matrices (Gᵀ X G), which suits BLAS/cuBLAS far better than an 11-tap convolution.
Images are centred on their own mean before filtering so float32 variance terms keep their digits; values
agree with skimage's float64 result to ~1e-6, and an image against itself gives exactly 1.
"""

from __future__ import annotations

import os
from functools import lru_cache

import cv2
import numpy as np
import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5          # skimage's choice with gaussian_weights=True
SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate·σ + 0.5), normalised to sum 1 (float64)."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


@lru_cache(maxsize=16)
def _band(n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """n × (n − 2r) matrix whose column j holds the taps at rows j … j + 2r: X @ band = 'valid' filtering."""
    g = gaussian_taps()
    m = np.zeros((n, n - len(g) + 1), dtype=np.float64)
    for j in range(m.shape[1]):
        m[j:j + len(g), j] = g
    return torch.from_numpy(m).to(device=device, dtype=dtype)


# Both engines evaluate SSIM = (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)) as
#   4 t1 t2 / ((qa + qb)(va + vb)),  t1 = μa μb + C1/2,  t2 = σab + C2/2,  q = μ² + C1/2,  v = σ² + C2/2,
# with q and v per image, so an image compared with itself gives exactly 1 (t1 = q, t2 = v bit for bit).
# σ terms come from images centred on their own mean (covariances do not change), keeping float32 exact enough.


class _TorchTerms:
    """Batched tensor engine (GPU, or CPU on request)."""

    max_images = 1024

    def __init__(self, device: torch.device, batch: int) -> None:
        self.device, self.batch = device, batch

    def filt(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        dev = str(x.device)
        return torch.matmul(_band(h, dev, x.dtype).T, torch.matmul(x, _band(w, dev, x.dtype)))

    def image_terms(self, src: np.ndarray, idx: np.ndarray, side: str):
        imgs = src[idx]
        x = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.float32)).to(self.device)
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        c = torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.float32)).to(self.device).mean(dim=(-2, -1),
                                                                                               keepdim=True)
        m = torch.cat([self.filt(x[s:s + self.batch]) for s in range(0, len(x), self.batch)])
        e2 = torch.cat([self.filt(x[s:s + self.batch] * x[s:s + self.batch]) for s in range(0, len(x), self.batch)])
        u = m + c
        return x, m, u, u * u + C1 / 2, (e2 - m * m) + C2 / 2

    def pairs(self, ta, tb, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        (xa, ma, ua, qa, va), (xb, mb, ub, qb, vb) = ta, tb
        out = np.empty(len(ia), np.float32)
        for s in range(0, len(ia), self.batch):
            a = torch.from_numpy(ia[s:s + self.batch]).to(self.device)
            b = torch.from_numpy(ib[s:s + self.batch]).to(self.device)
            t2 = (self.filt(xa[a] * xb[b]) - ma[a] * mb[b]) + C2 / 2
            t1 = ua[a] * ub[b] + C1 / 2
            ssim = (t1 * t2 * 4) / ((qa[a] + qb[b]) * (va[a] + vb[b]))
            out[s:s + self.batch] = ssim.mean(dim=(-2, -1), dtype=torch.float64).cpu().numpy()
        return out


class _CvEngine:
    """Per-pair OpenCV engine for the CPU: SIMD filters and arithmetic on 2-D arrays.

    Terms of up to `max_a` distinct `a` images are held at once; the pairs are then visited in `b` order, so
    each distinct `b` image's terms are computed once (just before use, while they are in cache) however many
    real images share it as a neighbour. Measured on an audit's pairs: ≈ 30% less time than visiting them in
    `a` order with a small cache of `b` terms, and 2-3× less than precomputing big stacks of terms for both
    sides (which fall out of cache and cost page faults).
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.taps = gaussian_taps().astype(np.float32)
        self.r = r = len(self.taps) // 2
        self.shape = shape
        self.inner = (shape[0] - 2 * r, shape[1] - 2 * r)

    def slot(self) -> tuple[np.ndarray, ...]:
        return (np.empty(self.shape, np.float32), *(np.empty(self.inner, np.float32) for _ in range(4)))

    def filt(self, x: np.ndarray) -> np.ndarray:
        r = self.r
        return cv2.sepFilter2D(x, cv2.CV_32F, self.taps, self.taps)[r:-r, r:-r]

    def terms(self, img: np.ndarray, slot: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        x, m, u, q, v = slot
        img = np.ascontiguousarray(img, dtype=np.float32)
        c = cv2.mean(img)[0]
        cv2.subtract(img, c, dst=x)
        m[...] = self.filt(x)
        cv2.add(m, c, dst=u)
        cv2.addWeighted(cv2.multiply(u, u), 1.0, u, 0.0, C1 / 2, dst=q)
        cv2.addWeighted(self.filt(cv2.multiply(x, x)), 1.0, cv2.multiply(m, m), -1.0, C2 / 2, dst=v)
        return slot

    def pair(self, ta: tuple[np.ndarray, ...], tb: tuple[np.ndarray, ...]) -> float:
        # The same operations on the same values as in `terms`, so a pair of equal images gives exactly 1.
        (xa, ma, ua, qa, va), (xb, mb, ub, qb, vb) = ta, tb
        t2 = cv2.addWeighted(self.filt(cv2.multiply(xa, xb)), 1.0, cv2.multiply(ma, mb), -1.0, C2 / 2)
        t1 = cv2.addWeighted(cv2.multiply(ua, ub), 1.0, ua, 0.0, C1 / 2)
        den = cv2.multiply(cv2.add(qa, qb), cv2.add(va, vb))
        return cv2.sumElems(cv2.divide(cv2.multiply(t1, t2), den, scale=4.0))[0] / ma.size

    def run(self, b: np.ndarray, a_terms: dict[int, tuple[np.ndarray, ...]], a_idx: np.ndarray,
            b_idx: np.ndarray, order: list[int], out: np.ndarray) -> None:
        """SSIM of the pairs at positions `order` (sorted by b) into `out`."""
        b_slot, cur = self.slot(), -1
        for p in order:
            bi = int(b_idx[p])
            if bi != cur:
                self.terms(b[bi], b_slot)
                cur = bi
            out[p] = self.pair(a_terms[int(a_idx[p])], b_slot)


def _split(order: np.ndarray, key: np.ndarray, parts: int) -> list[list[int]]:
    """`order` cut into about `parts` equal runs, never inside a run of equal keys."""
    parts = max(1, min(parts, len(order) // 64))
    cuts = [0]
    for t in range(1, parts):
        i = max(len(order) * t // parts, cuts[-1])
        while 0 < i < len(order) and key[order[i]] == key[order[i - 1]]:
            i += 1
        cuts.append(i)
    cuts.append(len(order))
    return [order[s:e].tolist() for s, e in zip(cuts, cuts[1:]) if e > s]


def _cv_ssim(a: np.ndarray, b: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray, threads: int,
             max_a: int = 512) -> np.ndarray:
    """OpenCV releases the GIL, so `threads` threads share the work (the skimage loop it replaces uses one
    core). At most `max_a` images' terms (≈ 290 KB each at 128 px) are held at once."""
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty(len(a_idx), np.float32)
    eng = _CvEngine(a.shape[1:])
    all_a = np.unique(a_idx)
    with ThreadPoolExecutor(max(1, threads)) as ex:
        for s in range(0, len(all_a), max_a):
            ua = all_a[s:s + max_a].tolist()
            a_terms = {i: eng.slot() for i in ua}
            list(ex.map(lambda run: [eng.terms(a[i], a_terms[i]) for i in run], _split(np.array(ua), np.array(ua),
                                                                                      threads)))
            sel = np.flatnonzero(np.isin(a_idx, ua))
            order = sel[np.argsort(b_idx[sel], kind="stable")]
            list(ex.map(lambda run: eng.run(b, a_terms, a_idx, b_idx, run, out), _split(order, b_idx, threads)))
    return out


C1, C2 = SSIM_K1 ** 2, SSIM_K2 ** 2


def ssim_indexed(a: np.ndarray, b: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray,
                 device: str | torch.device = "cpu", engine: str = "auto", max_images: int | None = None,
                 batch: int = 64, threads: int | None = None) -> np.ndarray:
    """SSIM of a[a_idx[i]] with b[b_idx[i]] for every i; a and b are stacks of H × W images in [0, 1].

    Means and second moments are filtered once per distinct image (at most `max_images` images' terms are
    held at once, ≈ 290 KB each at 128 px; default 512 `a` images on CPU, 1024 images on GPU), the cross
    moment once per pair. engine: 'auto' (OpenCV
    on CPU, tensors on GPU), 'cv' or 'torch' (`batch` pairs per tensor op). Returns float32 (len(a_idx),).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"expected two n × H × W stacks of equal image shape, got {a.shape} and {b.shape}")
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} px for SSIM")
    a_idx, b_idx = np.asarray(a_idx, dtype=np.int64), np.asarray(b_idx, dtype=np.int64)
    if a_idx.shape != b_idx.shape or a_idx.ndim != 1:
        raise ValueError("a_idx and b_idx must be 1-D and of equal length")
    device = torch.device(device)
    if engine == "auto":
        engine = "cv" if device.type == "cpu" else "torch"
    if engine not in ("cv", "torch"):
        raise ValueError(f"unknown SSIM engine {engine!r}")
    if engine == "cv":
        return _cv_ssim(a, b, a_idx, b_idx, threads if threads is not None else (os.cpu_count() or 1),
                        max_a=max_images or 512)
    eng = _TorchTerms(device, batch=batch)
    out = np.empty(len(a_idx), dtype=np.float32)
    max_images = max_images or eng.max_images
    a_step = max(1, max_images // 4)
    all_a = np.unique(a_idx)
    with torch.inference_mode():
        for s in range(0, len(all_a), a_step):
            ua = all_a[s:s + a_step]
            sel = np.flatnonzero(np.isin(a_idx, ua))
            ta = eng.image_terms(a, ua, "a")
            all_b = np.unique(b_idx[sel])
            b_step = max(1, max_images - len(ua))
            for t in range(0, len(all_b), b_step):
                ub = all_b[t:t + b_step]
                sub = sel[np.isin(b_idx[sel], ub)]
                out[sub] = eng.pairs(ta, eng.image_terms(b, ub, "b"), np.searchsorted(ua, a_idx[sub]),
                                     np.searchsorted(ub, b_idx[sub]))
    return out


def ssim_pairs(a: np.ndarray, b: np.ndarray, batch: int = 64, device: str | torch.device = "cpu",
               engine: str = "auto") -> np.ndarray:
    """SSIM of a[i] with b[i] for pairs of H × W images in [0, 1]; returns float32 (n,)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected two n × H × W stacks of equal shape, got {a.shape} and {b.shape}")
    idx = np.arange(len(a))
    return ssim_indexed(a, b, idx, idx, device=device, engine=engine, batch=batch)


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Bits on where a feature exceeds its vector's median."""
    v = np.asarray(vectors, dtype=np.float32)
    return v > np.median(v, axis=-1, keepdims=True)


def jaccard(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """Jaccard similarity along the last axis (broadcasting); 0 where both codes are empty."""
    inter = np.logical_and(a_bits, b_bits).sum(-1)
    union = np.logical_or(a_bits, b_bits).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


__all__ = ["ssim_pairs", "ssim_indexed", "binarize", "jaccard", "gaussian_taps", "SSIM_WINDOW", "SSIM_SIGMA"]
