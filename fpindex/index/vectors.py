"""Embeddings on disk, so the embedding stage (GPU-bound, per image) and the indexing stage (memory-bound,
per collection) can run apart, on different machines, or be sharded.

- Parquet (`.parquet`): one row per vector — the item columns of items.parquet (root, path, sha256, bytes)
  and `vector` (fixed-size list of float32); the embedder identity is kept in the file's metadata, so an
  index built from the file carries it and queries are checked against it as usual.
- NumPy (`.npy`): a plain n × d float32 array, for vectors made elsewhere; items are then named by row number
  and the embedder is recorded as 'external'.
Row i of the file becomes FAISS id i.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FpindexError
from ..utils import atomic_path, versions
from .store import ITEM_SCHEMA

META_KEY = b"fpindex"
EXTERNAL = {"model": "external", "weights": None, "weights_id": "external", "enhance": ["none"],
            "image_size": None, "seed": 0}


def embeddings_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".npy"):
        raise FpindexError(f"embeddings file {path}: use a .parquet or .npy name")
    return suffix[1:]


def write_embeddings(path: str | Path, vectors: np.ndarray, rows: pa.Table | None = None,
                     identity: dict[str, Any] | None = None) -> Path:
    """Write vectors (and, for Parquet, their item rows and embedder identity) atomically."""
    path = Path(path)
    x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    if embeddings_kind(path) == "npy":
        with atomic_path(path, owned=_is_npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, x)
        return path
    rows = rows if rows is not None else _row_names(0, len(x))
    if len(rows) != len(x):
        raise ValueError("one item row per vector")
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = rows.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA).append_column("vector", col)
    meta = {"embedder": identity or dict(EXTERNAL, dim=x.shape[1]), "dim": x.shape[1], "versions": versions()}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(path, owned=_is_embeddings_parquet) as tmp:
        pq.write_table(table, tmp, row_group_size=65_536)
    return path


def _is_npy(path: Path) -> bool:
    """An existing .npy is replaced only if it is one (a file of another kind under that name is kept)."""
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def _is_embeddings_parquet(path: Path) -> bool:
    """An existing .parquet is replaced only if fpindex wrote it (its schema carries fpindex's metadata)."""
    try:
        return META_KEY in (pq.read_schema(path).metadata or {})
    except Exception:          # not Parquet at all
        return False


def _row_names(lo: int, hi: int) -> pa.Table:
    return pa.table({"root": [""] * (hi - lo), "path": [str(i) for i in range(lo, hi)],
                     "sha256": [""] * (hi - lo), "bytes": [0] * (hi - lo)}).cast(ITEM_SCHEMA)


def embeddings_info(path: str | Path) -> tuple[int, int, dict[str, Any]]:
    """(rows, dimension, metadata) without reading the vectors."""
    path = Path(path)
    if not path.is_file():
        raise FpindexError(f"embeddings file {path} does not exist")
    try:
        if embeddings_kind(path) == "npy":
            x = np.load(path, mmap_mode="r")
            if x.ndim != 2:
                raise FpindexError(f"embeddings file {path}: expected a 2-D array, got shape {x.shape}")
            return int(x.shape[0]), int(x.shape[1]), {"embedder": dict(EXTERNAL, dim=int(x.shape[1]))}
        f = pq.ParquetFile(path)
        meta = json.loads((f.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
        if "vector" not in f.schema_arrow.names or "dim" not in meta:
            raise FpindexError(f"embeddings file {path}: not written by fpindex (no vector column or metadata)")
        return int(f.metadata.num_rows), int(meta["dim"]), meta
    except (OSError, ValueError, pa.ArrowException) as e:
        raise FpindexError(f"embeddings file {path}: unreadable ({type(e).__name__})") from None


def iter_embeddings(path: str | Path, lo: int = 0, hi: int | None = None,
                    batch: int = 65_536) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
    """(first row, vectors, item rows) for rows [lo, hi), a batch at a time, never the whole file at once."""
    path = Path(path)
    n, dim, _ = embeddings_info(path)
    hi = n if hi is None else min(hi, n)
    if embeddings_kind(path) == "npy":
        x = np.load(path, mmap_mode="r")
        for s in range(lo, hi, batch):
            e = min(hi, s + batch)
            yield s, np.ascontiguousarray(x[s:e], dtype=np.float32), _row_names(s, e)
        return
    start = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch):
        end = start + rb.num_rows
        a, b = max(lo, start), min(hi, end)
        if a < b:
            t = pa.Table.from_batches([rb]).slice(a - start, b - a)
            vec = t.column("vector").combine_chunks()
            x = vec.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
            yield a, x, t.select(ITEM_SCHEMA.names)
        if end >= hi:
            break
        start = end


def read_embeddings(path: str | Path) -> tuple[np.ndarray, pa.Table, dict[str, Any]]:
    """All vectors, item rows and metadata of a file."""
    n, dim, meta = embeddings_info(path)
    parts = list(iter_embeddings(path))
    if not parts:
        return np.empty((0, dim), np.float32), ITEM_SCHEMA.empty_table(), meta
    return (np.concatenate([p[1] for p in parts]), pa.concat_tables([p[2] for p in parts]), meta)
