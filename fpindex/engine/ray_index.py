"""The index build on the cluster: train once here, add per shard of rows as Ray tasks, merge in row order.

Shards hold contiguous rows (index/shards.py's `shard_bounds` and `add_shard`), and merging them in order
leaves FAISS's lists exactly as one add would, so searches answer the same. Flat and IVF indexes merge;
any other kind (HNSW, a PCA pre-transform) and GPU indexes are added here, as the local engine does.
"""

from __future__ import annotations

from datetime import datetime, timezone

import faiss
import numpy as np
import pyarrow as pa

from ..index import ITEM_SCHEMA, IndexStore, as_queries
from ..index.shards import add_shard, shard_bounds

SHARD_ROWS = 250_000      # rows per add task: ~125 MB of 128-d float32 in, the shard's codes out


def _mergeable(index: faiss.Index) -> str | None:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return None


def _add_task(empty: bytes, first_id: int, x: np.ndarray, kind: str) -> np.ndarray:
    from .faults import crash_once_for_tests

    crash_once_for_tests()
    index = faiss.deserialize_index(np.frombuffer(empty, np.uint8))
    if kind == "ivf":
        index = add_shard(index, iter([(first_id, x)]))
    else:
        index.add(np.ascontiguousarray(x, np.float32))
    return faiss.serialize_index(index)


def add(store: IndexStore, vectors: np.ndarray, rows: pa.Table) -> None:
    """IndexStore.add with the adding spread over Ray tasks."""
    import ray

    x = as_queries(vectors, store.dim)
    kind = _mergeable(store.index)
    if len(x) == 0 or kind is None or store.device != "cpu" or len(rows) != len(x):
        store.add(vectors, rows)
        return
    if not store.index.is_trained:
        store.train(x)                       # once, on the same seeded sample as a local build
    empty = faiss.clone_index(store.index)
    empty.reset()
    empty_ref = ray.put(faiss.serialize_index(empty).tobytes())
    task = ray.remote(num_cpus=1, max_retries=3)(_add_task)
    parts = max(1, -(-len(x) // SHARD_ROWS))
    base = store.ntotal
    refs = []
    for p in range(parts):
        lo, hi = shard_bounds(len(x), p, parts)
        refs.append(task.remote(empty_ref, base + lo, ray.put(x[lo:hi]), kind))
    # Merged into a copy read back like the shards (FAISS merges only indexes of one C++ type, and reading
    # turns e.g. a factory's IndexFlat with inner product into an IndexFlatIP), in row order: ids stay rows.
    merged = faiss.deserialize_index(faiss.serialize_index(store.index))
    for blob in ray.get(refs):
        merged.merge_from(faiss.deserialize_index(blob), 0)
    store.index = merged
    store.items = pa.concat_tables([store.items, rows.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)])
    store.manifest["ntotal"] = store.ntotal
    store.manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["SHARD_ROWS", "add"]
