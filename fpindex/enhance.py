"""Stage 2 — classical enhancement filters (ZOQ, ImageCLEFmed GAN 2025, Table 2).

Each enhancer maps a canonical image (float32, [0, 1], H × W) to another of the same shape and range.
Several enhancers are stacked as channels, in the order given, and the embedder sees one C-channel image:
one forward pass per image whatever the number of filters (concatenating per-filter embeddings would cost a
forward pass per filter).
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import FpindexError
from .registry import Registry

Enhancer = Callable[[np.ndarray], np.ndarray]
ENHANCERS: Registry[Enhancer] = Registry("enhancement")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


@ENHANCERS.register("none", "the canonical grayscale image, unchanged")
def none(img: np.ndarray) -> np.ndarray:
    return img


@ENHANCERS.register("gaussian", "5×5 Gaussian blur, then histogram equalisation")
def gaussian(img: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(_to_u8(img), (5, 5), 0)
    return cv2.equalizeHist(blurred).astype(np.float32) / 255.0


@ENHANCERS.register("laplacian", "|Laplacian| (kernel 3), clipped to [0, 1]")
def laplacian(img: np.ndarray) -> np.ndarray:
    return np.clip(np.abs(cv2.Laplacian(img, cv2.CV_32F, ksize=3)), 0.0, 1.0)


@ENHANCERS.register("hessian", "Hessian edge map: |largest eigenvalue| > 0.01 × its maximum (σ = 1)")
def hessian(img: np.ndarray) -> np.ndarray:
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    h = hessian_matrix(img, sigma=1.0, order="rc", mode="reflect", use_gaussian_derivatives=False)
    mag = np.abs(hessian_matrix_eigvals(h)).max(axis=0)
    peak = float(mag.max())
    if peak <= 0.0:
        return np.zeros_like(img)
    return (mag > 0.01 * peak).astype(np.float32)


@ENHANCERS.register("bilateral", "bilateral filter, d = 9, sigmaColor = 75, sigmaSpace = 75 (8-bit scale)")
def bilateral(img: np.ndarray) -> np.ndarray:
    out = cv2.bilateralFilter(img * 255.0, d=9, sigmaColor=75, sigmaSpace=75)
    return np.clip(out / 255.0, 0.0, 1.0).astype(np.float32)


@ENHANCERS.register("dog", "difference of Gaussians (σ 1 − σ 2), min-max scaled to [0, 1]")
def dog(img: np.ndarray) -> np.ndarray:
    d = cv2.GaussianBlur(img, (0, 0), 1.0) - cv2.GaussianBlur(img, (0, 0), 2.0)
    lo, hi = float(d.min()), float(d.max())
    if hi - lo < 1e-12:
        return np.zeros_like(img)
    return ((d - lo) / (hi - lo)).astype(np.float32)


def parse_enhance(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Accept 'a,b', ['a', 'b'] or ['a,b']; validate against the registry; keep order, drop repeats."""
    if values is None:
        return ("none",)
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for v in values:
        for name in (s.strip() for s in v.split(",")):
            if not name:
                continue
            if name not in ENHANCERS:
                raise FpindexError(f"unknown enhancement {name!r}; choose from: {', '.join(ENHANCERS.names())}")
            if name not in names:
                names.append(name)
    return tuple(names) or ("none",)


def enhance_stack(img: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """One canonical image → C × H × W float32, one channel per enhancer."""
    return np.stack([ENHANCERS.get(n)(img) for n in names]).astype(np.float32, copy=False)
