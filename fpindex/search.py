"""Stage 5 — every real image asks the index for its k nearest generated images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import IndexStore


@dataclass(frozen=True)
class Neighbours:
    """Row i: the k nearest generated images of real image i, best first (id -1 = no neighbour)."""

    ids: np.ndarray      # int64, n × k
    cosine: np.ndarray   # float32, n × k

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def search(store: IndexStore, vectors: np.ndarray, k: int, batch: int = 4096) -> Neighbours:
    """Batched so memory stays flat however many real images there are."""
    if len(vectors) == 0:
        kk = max(1, min(k, store.ntotal))
        return Neighbours(np.empty((0, kk), np.int64), np.empty((0, kk), np.float32))
    sims, ids = [], []
    for s in range(0, len(vectors), batch):
        d, i = store.search(vectors[s:s + batch], k)
        sims.append(d)
        ids.append(i)
    return Neighbours(ids=np.concatenate(ids), cosine=np.concatenate(sims).astype(np.float32))
