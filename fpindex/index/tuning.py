"""Search parameters: which one an index has (nprobe for IVF, efSearch for HNSW), how to set it, and tuning
it as the smallest value that reaches the target recall@k against exact search on a sample. Exact top-k is
computed over a stream of chunks, so ground truth never needs every vector in memory at once."""

from __future__ import annotations

from typing import Any, Iterable

import faiss
import numpy as np

from ..errors import FpindexError
from .base import faiss_reason, ivf_layer, unwrap
from .gpu import is_gpu

TUNE_QUERIES = 500
TARGET_RECALL = 0.95


def tunable(index: faiss.Index) -> str | None:
    """The search parameter that trades speed for recall: 'nprobe' (IVF), 'efSearch' (HNSW), or None."""
    inner, _ = unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        inner, _ = unwrap(inner.base_index)
    if ivf_layer(inner) is not None:
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def param_values(index: faiss.Index, name: str, value: int) -> dict[str, int]:
    """The FAISS parameters to set for one value of the tunable; an HNSW coarse quantizer must look at least
    as far as nprobe lists."""
    out = {name: int(value)}
    if name == "nprobe":
        q = faiss.downcast_index(ivf_layer(index).quantizer)
        if isinstance(q, faiss.IndexHNSW):
            out["quantizer_efSearch"] = max(64, 2 * int(value))
    return out


def apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set search parameters through FAISS's ParameterSpace (it reaches through PCA/OPQ/Refine wrappers)."""
    if not params:
        return
    ps = faiss.GpuParameterSpace() if is_gpu(index) else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError as e:
            raise FpindexError(f"cannot set {name}={value} on this index: {faiss_reason(e)}") from None


def search_overrides(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    """--nprobe / --ef-search as FAISS parameters; refuse one the index does not have."""
    name = tunable(index)
    for flag, value, wants in (("--nprobe", nprobe, "nprobe"), ("--ef-search", ef_search, "efSearch")):
        if value is not None and name != wants:
            raise FpindexError(f"{flag} does not apply to this index ({'it has ' + name if name else 'exact search'})")
    value = nprobe if name == "nprobe" else ef_search
    return param_values(index, name, value) if name and value is not None else {}


def recall_at(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """|approximate top-k ∩ exact top-k| / k, averaged over queries (k = 1: top-1 agreement)."""
    a, e = approx[:, :k], exact[:, :k]
    hits = sum(len(np.intersect1d(r, t[t >= 0])) for r, t in zip(a, e))
    return float(hits) / float(max(1, (e >= 0).sum()))


def drop_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    """Remove each query's own id from its result row (leave-one-out), keep the first k."""
    if self_ids is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, np.int64)
    for r, (row, s) in enumerate(zip(ids, self_ids)):
        kept = row[row != s][:k]
        out[r, :len(kept)] = kept
    return out


def exact_knn(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product of queries over a stream of database chunks (ids count on across chunks),
    so ground truth never needs all vectors in memory at once."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for x in chunks:
        kk = min(k, len(x))
        d, i = faiss.knn(queries, np.ascontiguousarray(x, np.float32), kk, metric=faiss.METRIC_INNER_PRODUCT)
        if kk < k:
            d = np.hstack([d, np.full((len(d), k - kk), -np.inf, np.float32)])
            i = np.hstack([i, np.full((len(i), k - kk), -1, np.int64)])
        heap.add_result(d, np.where(i >= 0, i + offset, -1))
        offset += len(x)
    heap.finalize()
    return heap.D, heap.I


def tune(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int = 10,
         target: float = TARGET_RECALL, self_ids: np.ndarray | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """Smallest nprobe / efSearch whose recall@k against `exact_ids` reaches `target`.

    Returns the parameters and a report (every value tried and its recall) for the manifest. When the target
    is out of reach (heavy compression) the most accurate value tried is kept and `reached` is False.
    """
    name = tunable(index)
    if name is None:
        return {}, {"parameter": None, "reached": True, "note": "exact or untunable index"}
    if name == "nprobe":
        nlist = ivf_layer(index).nlist
        values = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v <= nlist]
    else:
        values = [16, 32, 64, 128, 256, 512]
    extra = 1 if self_ids is not None else 0
    tried: list[dict[str, Any]] = []
    for v in values:
        apply_params(index, param_values(index, name, v))
        _, ids = index.search(queries, min(k + extra, max(1, index.ntotal)))
        tried.append({name: v, "recall": round(recall_at(drop_self(ids, self_ids, k), exact_ids, k), 4)})
        if tried[-1]["recall"] >= target:
            break
        # Compressed codes cap recall: stop once doubling the search no longer helps.
        if len(tried) >= 3 and tried[-1]["recall"] - tried[-3]["recall"] < 0.002:
            break
    top = max(t["recall"] for t in tried)
    good = [t for t in tried if t["recall"] >= min(target, top - 0.002)]
    chosen = param_values(index, name, good[0][name])
    apply_params(index, chosen)
    report = {"parameter": name, "target": target, "k": k, "queries": len(queries),
              "leave_one_out": self_ids is not None, "tried": tried, "chosen": chosen,
              "recall": good[0]["recall"], "reached": good[0]["recall"] >= target}
    return chosen, report

