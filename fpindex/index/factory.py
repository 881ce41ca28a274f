"""Which FAISS index for how many vectors, and how much memory it needs — decided before any work, so a
build that cannot fit is refused with the estimate and a smaller choice.

Selection follows FAISS's own guidelines ("Guidelines to choose an index" in the FAISS wiki):
- fewer than EXACT_BELOW vectors: `Flat`, exact search is fast enough and needs no training;
- more: an inverted file with about 4·√N lists (a power of two, at most MAX_NLIST so k-means stays cheap on
  a CPU), whose coarse quantizer is an HNSW graph from HNSW_QUANTIZER_FROM vectors on (assigning millions of
  vectors to thousands of centroids by brute force is the slow part of a build);
- the codes are the most accurate that fit the memory budget: full vectors (`Flat`), then 8-bit scalar
  quantisation (`SQ8`, 4× smaller), then product quantisation (`PQ`, 32× smaller), then PCA to half the
  dimension before PQ.
IVF and PQ are trained on a seeded sample, never on everything; its size is part of the memory estimate.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from ..errors import FpindexError
from ..utils import seeded_sample
from .base import make_faiss_index, unwrap
from .units import format_bytes, parse_bytes  # noqa: F401  (their old home)

EXACT_BELOW = 100_000            # below this, exact search (Flat) is the default
HNSW_QUANTIZER_FROM = 1_000_000  # from this many vectors the coarse quantizer is an HNSW graph
MAX_NLIST = 4096                 # k-means on more lists takes tens of minutes on a small CPU
TRAIN_PER_LIST = 40              # k-means training points per list (FAISS warns below 39)
TRAIN_MIN = 65_536               # PQ/SQ codebooks want a few ten thousand points whatever the list count



# ---- memory ---------------------------------------------------------------------------------------

def default_budget() -> int:
    """Half the machine's physical memory: the rest is for the embeddings, the OS and other programs."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _layout(index: faiss.Index) -> tuple[float, int]:
    """(bytes per stored vector, fixed bytes) of an empty index, read from FAISS's own objects."""
    index, fixed = unwrap(index)
    if isinstance(index, faiss.IndexRefine):
        a, fa = _layout(index.base_index)
        b, fb = _layout(index.refine_index)
        return a + b, fixed + fa + fb
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        q = faiss.downcast_index(ivf.quantizer)
        per_centroid = 4 * ivf.d + (2 * q.hnsw.nb_neighbors(0) * 4 if isinstance(q, faiss.IndexHNSW) else 0)
        pq = getattr(faiss.downcast_index(index), "pq", None)
        fixed += ivf.nlist * (per_centroid + 32) + (4 * ivf.d * pq.ksub if pq is not None else 0)
        return ivf.code_size + 8 + 8, fixed        # code + id + direct-map entry (for reconstruct)
    if isinstance(index, faiss.IndexHNSW):
        storage, fs = _layout(index.storage)
        return storage + 4 * index.hnsw.nb_neighbors(0) * 1.1 + 8, fixed + fs   # links at level 0 (+ upper levels)
    pq = getattr(index, "pq", None)
    return float(getattr(index, "code_size", 4 * index.d)), fixed + (4 * index.d * pq.ksub if pq is not None else 0)


@dataclass(frozen=True)
class Estimate:
    factory: str
    n: int
    dim: int
    index_bytes: int     # the finished index in memory
    build_bytes: int     # extra while building: training sample, add buffers, storage growth while adding

    @property
    def total(self) -> int:
        return self.index_bytes + self.build_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "n": self.n, "dim": self.dim, "index_bytes": self.index_bytes,
                "build_bytes": self.build_bytes, "total_bytes": self.total}


def train_size(index: faiss.Index, n: int) -> int:
    """How many vectors to train on: 40 per inverted list, at least TRAIN_MIN, at most n."""
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    want = max(TRAIN_MIN, TRAIN_PER_LIST * ivf.nlist) if ivf is not None else TRAIN_MIN
    return min(n, want)


# FAISS stores codes and ids in std::vectors that grow by doubling as batches are added, so while adding, memory
# runs above the finished index (spare capacity, and old and new buffers side by side during a reallocation).
# Measured peak RSS, 1M × 32-d added in batches of 65,536, against the estimate without this allowance: +3 %
# (HNSW16), +8 % (IVF256,PQ8), +15 % (IVF64,Flat), +17 % (Flat). 30 % of the stored vectors covers them all.
ADD_GROWTH = 0.3


def estimate(factory: str, n: int, dim: int, add_batch: int = 65_536) -> Estimate:
    """Memory of `factory` holding n × dim vectors, computed from the empty FAISS index (no allocation)."""
    index = make_faiss_index(factory, dim)
    per, fixed = _layout(index)
    build = 4 * dim * (train_size(index, n) + min(n, add_batch)) + ADD_GROWTH * per * n
    return Estimate(factory, n, dim, int(per * n + fixed), int(build))


# ---- selection ------------------------------------------------------------------------------------

def nlist_for(n: int) -> int:
    """The power of two nearest 4·√n, between 16 and MAX_NLIST, with ≥ 39 vectors per list."""
    k = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n, 1)))))
    while k > 16 and n < 39 * k:
        k //= 2
    return int(min(MAX_NLIST, max(16, k)))


def _pq_m(dim: int, bytes_per_vector: int) -> int:
    """Largest PQ sub-quantiser count ≤ bytes_per_vector that divides dim."""
    return max(m for m in range(1, min(dim, bytes_per_vector) + 1) if dim % m == 0)


def candidates(n: int, dim: int) -> list[str]:
    """Factories for n × dim vectors, most accurate (and largest) first."""
    out = ["Flat"] if n < EXACT_BELOW else []
    ivf = f"IVF{nlist_for(n)}" + ("_HNSW32" if n >= HNSW_QUANTIZER_FROM else "")
    out += [f"{ivf},Flat", f"{ivf},SQ8", f"{ivf},PQ{_pq_m(dim, max(1, dim // 8))}"]
    half = max(2, dim // 2)
    out.append(f"PCAR{half},{ivf},PQ{_pq_m(half, max(1, half // 8))}")
    return out


@dataclass(frozen=True)
class Selection:
    factory: str
    requested: str
    budget: int
    estimate: Estimate

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "factory": self.factory, "budget_bytes": self.budget,
                "estimate": self.estimate.as_dict()}


def select(requested: str, n: int, dim: int, budget: int | None = None, resident: int = 0) -> Selection:
    """Resolve 'auto' to a factory, or check a given one, against the memory budget (bytes).

    `resident` is memory the caller already holds for the build (e.g. the embeddings themselves).
    Refuses, with the estimate and a smaller choice, rather than start a build that cannot fit.
    """
    budget = default_budget() if budget is None else int(budget)
    requested = (requested or "auto").strip()
    if requested.lower() == "auto":
        options = candidates(n, dim)
        ests = [estimate(f, n, dim) for f in options]
        for e in ests:
            if e.total + resident <= budget:
                return Selection(e.factory, "auto", budget, e)
        e = ests[-1]
        raise FpindexError(f"no index for {n:,} × {dim}-d vectors fits in {format_bytes(budget)}: the smallest, "
                           f"{e.factory!r}, needs about {format_bytes(e.total + resident)}; raise --max-memory or "
                           "build in shards (`fpindex shard`)")
    e = estimate(requested, n, dim)
    if e.total + resident > budget:
        smaller = [x for x in (estimate(f, n, dim) for f in candidates(n, dim)) if x.total + resident <= budget]
        hint = (f"try --index-type {smaller[0].factory!r} (about {format_bytes(smaller[0].total + resident)}) "
                "or --index-type auto" if smaller else "build in shards (`fpindex shard`)")
        raise FpindexError(f"index {requested!r} for {n:,} × {dim}-d vectors needs about "
                           f"{format_bytes(e.total + resident)} (index {format_bytes(e.index_bytes)}, build "
                           f"{format_bytes(e.build_bytes + resident)}), more than --max-memory "
                           f"{format_bytes(budget)}; {hint}, or raise --max-memory")
    return Selection(requested, requested, budget, e)


# ---- training -------------------------------------------------------------------------------------

def train_sample(x: np.ndarray, index: faiss.Index, seed: int = 0) -> np.ndarray:
    """A seeded subset of x, as large as train_size() asks (all of x when it is small)."""
    m = train_size(index, len(x))
    if m >= len(x):
        return x
    pick = seeded_sample(len(x), m, seed)
    return np.ascontiguousarray(x[pick])
