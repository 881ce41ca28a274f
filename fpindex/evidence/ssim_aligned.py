"""SSIM after moving each neighbour onto the real image by the best rigid motion (see align.py)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .align import ALIGN_EPS, ALIGN_ITERATIONS, ssim_aligned
from .base import Feature, PairBatch, feature
from .ssim import ssim_identity


@feature
class AlignedSSIM(Feature):
    name = "ssim_aligned"
    help = "best SSIM over the k neighbours after aligning each onto the real image (rigid motion, OpenCV ECC)"
    needs = frozenset({"pixels"})
    threshold = 0.50
    on_demand = True
    copy = True

    def cache_identity(self, size: int) -> dict[str, Any]:
        return ssim_identity(size) | {"align": "ecc-euclidean-half", "iterations": ALIGN_ITERATIONS,
                                      "eps": ALIGN_EPS, "opencv": cv2.__version__}

    def pairs(self, batch: PairBatch) -> np.ndarray:
        return ssim_aligned(batch.real_pixels, batch.gen_pixels, batch.real_idx, batch.gen_idx)
