"""Cosine similarity of the learned embeddings: what the index already ranked by, read off the search."""

from __future__ import annotations

import numpy as np

from .base import Feature, PairBatch, feature


@feature
class Cosine(Feature):
    name = "cosine"
    help = "cosine similarity of the embeddings to the nearest generated image"
    pool = "top1"
    threshold = 0.90

    def pairs(self, batch: PairBatch) -> np.ndarray:
        return batch.cosine
