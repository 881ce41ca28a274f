"""Stage 6 — re-rank the k retrieved neighbours with two more views of similarity.

- SSIM between a real image and each neighbour, on the canonical grayscale pixels both were embedded from
  (data range 1). Window and constants are those of `skimage.metrics.structural_similarity` with
  `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11 × 11 Gaussian window (σ = 1.5),
  K1 = 0.01, K2 = 0.03, mean over the valid region. Computed batched on tensors by `pytorch_msssim`.
- Jaccard similarity of binarised embeddings: a feature is "on" when it exceeds the median of its own
  vector, so every code has half its bits set and the score does not depend on the vector's scale.
Only the k candidates per real image are compared, never all pairs.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ssim as _ssim

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


@torch.inference_mode()
def ssim_pairs(a: np.ndarray, b: np.ndarray, batch: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """SSIM of a[i] with b[i] for pairs of H × W images in [0, 1]; returns float32 (n,)."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected two n × H × W stacks of equal shape, got {a.shape} and {b.shape}")
    if min(a.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW} px for SSIM")
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), batch):
        x = torch.from_numpy(np.ascontiguousarray(a[s:s + batch], dtype=np.float32))[:, None].to(device)
        y = torch.from_numpy(np.ascontiguousarray(b[s:s + batch], dtype=np.float32))[:, None].to(device)
        v = _ssim(x, y, data_range=1.0, size_average=False, win_size=SSIM_WINDOW,
                  win_sigma=SSIM_SIGMA, K=(0.01, 0.03))
        out[s:s + batch] = v.cpu().numpy()
    return out


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Bits on where a feature exceeds its vector's median."""
    v = np.asarray(vectors, dtype=np.float32)
    return v > np.median(v, axis=-1, keepdims=True)


def jaccard(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """Jaccard similarity along the last axis (broadcasting); 0 where both codes are empty."""
    inter = np.logical_and(a_bits, b_bits).sum(-1)
    union = np.logical_or(a_bits, b_bits).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)
