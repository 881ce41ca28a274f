"""Stage 6 — evidence: per real image, numbers saying how closely the generated set echoes it.

Each feature is one module here (`Feature` in base.py, registered in `FEATURES`); importing this package
registers the built-in ones, in the order their scores appear everywhere (decision, outputs, docs):
cosine, ssim, jaccard, subspace, ssim_aligned, bandpass, density_ratio. `compute_evidence` runs them over one folder's neighbours.
"""

from . import cosine, ssim, jaccard, subspace, ssim_aligned, bandpass, density_ratio  # noqa: F401  (registration, in this order)
from ..lazy import lazy_attributes
from .base import FEATURES, Evidence, Feature, FitInput, ImageBatch, PairBatch, feature, thresholds

_LAZY = ("Query", "Run", "compute_evidence")      # compute.py reaches the index (FAISS): imported on first use

__all__ = ["FEATURES", "Feature", "FitInput", "ImageBatch", "PairBatch", "feature", "thresholds", "Evidence",
           "Query", "Run", "compute_evidence"]


__getattr__ = lazy_attributes(__name__, dict.fromkeys(_LAZY, ".compute"), globals())
