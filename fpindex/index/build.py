"""Building an index from vectors: choose or check the factory against the memory budget, train on a
sample, add, tune the search parameters, record all of it in the manifest — in one piece, from vectors in
memory or streamed from an embeddings file. Sharded builds (shards.py) reuse the file steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np

from ..config import IndexConfig
from ..devices import faiss_device
from ..errors import FpindexError
from ..utils import seeded_sample
from .base import faiss_reason
from .factory import select, train_size
from .store import IndexStore
from .tuning import TUNE_QUERIES, drop_self, exact_knn, search_overrides, tunable, tune
from .vectors import embeddings_info, iter_embeddings


def create_store(cfg: IndexConfig, n: int, dim: int, identity: dict[str, Any], resident: int = 0) -> IndexStore:
    """An empty store whose factory fits the budget (auto-chosen or checked); refuses before any work."""
    sel = select(cfg.factory, n, dim, cfg.max_memory, resident=resident)
    store = IndexStore.create(sel.factory, dim, identity, device=faiss_device(cfg.device), seed=cfg.seed)
    store.manifest["selection"] = sel.as_dict()
    return store


def finish_build(store: IndexStore, cfg: IndexConfig, queries: np.ndarray, query_ids: np.ndarray,
                 chunks: Callable[[], Iterable[np.ndarray]], k: int = 10) -> None:
    """Set the given nprobe / efSearch, or tune them: the smallest reaching cfg.target_recall at recall@k
    against exact search, with sampled stored vectors as queries each excluded from its own answers."""
    given = search_overrides(store.index, cfg.nprobe, cfg.ef_search)
    if given:
        store.set_search_params(given)
        store.manifest["tuning"] = {"given": given}
        return
    if tunable(store.index) is None or store.ntotal < 2:
        return
    kk = min(k, store.ntotal - 1)
    _, ids = exact_knn(queries, chunks(), kk + 1)
    params, report = tune(store.index, queries, drop_self(ids, query_ids, kk), kk, cfg.target_recall,
                          self_ids=query_ids)
    store.set_search_params(params)
    store.manifest["tuning"] = report


def tune_sample(n: int, seed: int, m: int = TUNE_QUERIES) -> np.ndarray:
    return seeded_sample(n, m, seed)


def finish_in_memory(store: IndexStore, cfg: IndexConfig, vectors: np.ndarray) -> None:
    """finish_build for vectors already in memory (the ordinary `fpindex build`)."""
    if len(vectors) == 0:
        return
    pick = tune_sample(len(vectors), cfg.seed)
    step = 262_144
    finish_build(store, cfg, np.ascontiguousarray(vectors[pick], np.float32), pick,
                 lambda: (vectors[s:s + step] for s in range(0, len(vectors), step)))


# ---- from an embeddings file ----------------------------------------------------------------------

def _rows_at(path: Path, pick: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """The vectors at sorted row numbers `pick`, read batch by batch."""
    out = []
    for s, x, _ in iter_embeddings(path, lo, hi):
        sel = pick[(pick >= s) & (pick < s + len(x))] - s
        out.append(x[sel])
    return np.ascontiguousarray(np.concatenate(out)) if out else np.empty((0, 0), np.float32)


def train_from_file(index: faiss.Index, path: Path, n: int, seed: int) -> None:
    m = train_size(index, n)
    if m:
        try:
            index.train(_rows_at(path, seeded_sample(n, m, seed)))
        except RuntimeError as e:
            raise FpindexError(f"FAISS could not train on {m} vectors ({faiss_reason(e)}); use a smaller "
                               "index or 'Flat'") from None


def tune_from_file(store: IndexStore, cfg: IndexConfig, path: Path) -> None:
    pick = tune_sample(store.ntotal, cfg.seed)
    finish_build(store, cfg, _rows_at(path, pick), pick, lambda: (x for _, x, _ in iter_embeddings(path)))


def index_embeddings(path: str | Path, index_dir: str | Path, cfg: IndexConfig, overwrite: bool = False) -> IndexStore:
    """Index a .parquet/.npy embeddings file, streaming it (never all vectors in memory at once)."""
    path, index_dir = Path(path), Path(index_dir)
    if index_dir.exists() and not overwrite:
        raise FpindexError(f"index {index_dir} already exists; pass --overwrite to replace it")
    n, dim, meta = embeddings_info(path)
    if n == 0:
        raise FpindexError(f"embeddings file {path} holds no vectors")
    store = create_store(cfg, n, dim, meta["embedder"])
    train_from_file(store.index, path, n, cfg.seed)
    for _, x, rows in iter_embeddings(path):
        store.add(x, rows)
    tune_from_file(store, cfg, path)
    store.manifest["source"] = {"embeddings": str(path.resolve()), "rows": n}
    store.save(index_dir)
    return store

