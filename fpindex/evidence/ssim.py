"""SSIM between a real image and each neighbour on the canonical pixels: structure the embedding may blur."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Feature, PairBatch, feature
from .similarity import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, ssim_indexed


def ssim_identity(size: int) -> dict[str, Any]:
    # "engine": values from other engines differed in the last digits; only the OpenCV one remains.
    return {"size": size, "window": SSIM_WINDOW, "sigma": SSIM_SIGMA, "K": [SSIM_K1, SSIM_K2], "engine": "cv"}


@feature
class SSIM(Feature):
    name = "ssim"
    help = "best SSIM over the k neighbours (11 × 11 Gaussian window, on the canonical pixels)"
    needs = frozenset({"pixels"})
    threshold = 0.50

    def cache_identity(self, size: int) -> dict[str, Any]:
        return ssim_identity(size)

    def pairs(self, batch: PairBatch) -> np.ndarray:
        return ssim_indexed(batch.real_pixels, batch.gen_pixels, batch.real_idx, batch.gen_idx)
