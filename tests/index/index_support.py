"""Shared by the index-layer tests: dimension, embedder identity, item rows and a built store."""

from __future__ import annotations

import pyarrow as pa

from fpindex.config import IndexConfig
from fpindex.index import create_store, finish_in_memory

DIM = 32
IDENTITY = {"model": "cnn", "weights": "random", "weights_id": "random:seed=0", "enhance": ["none"],
            "image_size": 64, "seed": 0, "dim": DIM}
G = 1 << 30


def rows(n, start=0):
    return pa.table({"root": ["/gen"] * n, "path": [f"{i}.png" for i in range(start, start + n)],
                     "sha256": [f"{i:064x}" for i in range(start, start + n)], "bytes": [1] * n})


def built(factory, x, cfg=None):
    cfg = cfg or IndexConfig(factory=factory, device="cpu")
    store = create_store(cfg, len(x), x.shape[1], dict(IDENTITY))
    store.add(x, rows(len(x)))
    finish_in_memory(store, cfg, x)
    return store

