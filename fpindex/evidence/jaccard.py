"""Jaccard similarity of binarised embeddings (the ZOQ 2025 method's third view).

A feature is "on" when it exceeds the median of its own vector, so every code has half its bits set and the
score does not depend on the vector's scale."""

from __future__ import annotations

import numpy as np

from .base import Feature, PairBatch, feature


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Bits on where a feature exceeds its vector's median."""
    v = np.asarray(vectors, dtype=np.float32)
    return v > np.median(v, axis=-1, keepdims=True)


def jaccard(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """Jaccard similarity along the last axis (broadcasting); 0 where both codes are empty."""
    inter = np.logical_and(a_bits, b_bits).sum(-1)
    union = np.logical_or(a_bits, b_bits).sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


@feature
class Jaccard(Feature):
    name = "jaccard"
    help = "best Jaccard similarity of median-binarised embeddings over the k neighbours"
    needs = frozenset({"vectors"})
    missing = 0.0
    threshold = 0.60

    def pairs(self, batch: PairBatch) -> np.ndarray:
        return jaccard(binarize(batch.real_vectors)[batch.real_idx], binarize(batch.gen_vectors)[batch.gen_idx])
