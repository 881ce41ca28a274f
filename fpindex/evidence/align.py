"""Rigid alignment of a neighbour onto a real image before SSIM, so a shifted or rotated echo still matches."""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..utils import opencv_threads
from .similarity import ssim_indexed

# ECC steps and convergence threshold: measured on bench-dev, 15 steps / 1e-3 give the same evidence as
# 30 / 1e-4 in 55 % of the time.
ALIGN_ITERATIONS, ALIGN_EPS = 15, 1e-3


def align_to(ref: np.ndarray, mov: np.ndarray, iterations: int = ALIGN_ITERATIONS) -> np.ndarray:
    """`mov` moved onto `ref` by the rigid motion (rotation + shift) that maximises their correlation.

    Why: generators shift and rotate what they echo, and plain SSIM scores a copy moved by two pixels about as
    low as another image; after alignment the copy scores near 1 again, while an unrelated image gains little.
    OpenCV's ECC (enhanced correlation coefficient, Evangelidis & Psarakis 2008), Euclidean motion, started at
    the identity, at most `iterations` steps. Images of 64 px or more are registered at half size (area
    averaging; the shift is then doubled), which on bench-dev gave the same evidence as full size in 60 % of
    the time; images below 64 px at full size with 3-px Gaussian pre-smoothing. The motion is applied to the
    full-size `mov` with reflected borders. When ECC finds no motion (flat images, no convergence) `mov` is
    returned unchanged, i.e. the pair gets its plain SSIM."""
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, ALIGN_EPS)
    h, w = ref.shape
    half = min(h, w) >= 64
    if half:
        size = (w // 2, h // 2)
        r, m = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (ref, mov))
    else:
        r, m = ref, mov
    try:
        _, warp = cv2.findTransformECC(r, m, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 1 if half else 3)
    except cv2.error:
        return mov
    if half:
        warp[:, 2] *= 2
    return cv2.warpAffine(mov, warp, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def ssim_aligned(a: np.ndarray, b: np.ndarray, a_idx: np.ndarray, b_idx: np.ndarray, threads: int | None = None,
                 chunk: int = 512) -> np.ndarray:
    """SSIM of a[a_idx[i]] with b[b_idx[i]] moved onto it by `align_to`; float32 (len(a_idx),).

    Pairs are aligned `chunk` at a time on `threads` threads (OpenCV releases the GIL; its own threads are off
    meanwhile), then scored by `ssim_indexed`. About 0.3 ms of CPU per 64-px pair."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    a_idx, b_idx = np.asarray(a_idx, dtype=np.int64), np.asarray(b_idx, dtype=np.int64)
    out = np.empty(len(a_idx), np.float32)
    threads = max(1, threads if threads is not None else (os.cpu_count() or 1))
    with opencv_threads(1), ThreadPoolExecutor(threads) as ex:
        for s in range(0, len(a_idx), chunk):
            ia, ib = a_idx[s:s + chunk], b_idx[s:s + chunk]
            moved = np.stack(list(ex.map(lambda p: align_to(a[p[0]], b[p[1]]), zip(ia.tolist(), ib.tolist()))))
            out[s:s + chunk] = ssim_indexed(a, moved, ia, np.arange(len(ia)), threads=threads)
    return out


