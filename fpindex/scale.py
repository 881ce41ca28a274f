"""Retrieval at scale: which FAISS index for how many vectors, how much memory it needs, how to tune it,
where it runs (CPU or GPU) and how to build it in shards when one machine's RAM is not enough.

Selection follows FAISS's own guidelines ("Guidelines to choose an index" in the FAISS wiki):
- fewer than EXACT_BELOW vectors: `Flat`, exact search is fast enough and needs no training;
- more: an inverted file with about 4·√N lists (a power of two, at most MAX_NLIST so k-means stays cheap on
  a CPU), whose coarse quantizer is an HNSW graph from HNSW_QUANTIZER_FROM vectors on (assigning millions of
  vectors to thousands of centroids by brute force is the slow part of a build);
- the codes are the most accurate that fit the memory budget: full vectors (`Flat`), then 8-bit scalar
  quantisation (`SQ8`, 4× smaller), then product quantisation (`PQ`, 32× smaller), then PCA to half the
  dimension before PQ.
IVF and PQ are trained on a seeded sample, never on everything. Search parameters (nprobe, efSearch) are
chosen as the smallest that reach the target recall@10 against exact search on a sample, and stored.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import faiss
import numpy as np

from .errors import FpindexError

EXACT_BELOW = 100_000            # below this, exact search (Flat) is the default
HNSW_QUANTIZER_FROM = 1_000_000  # from this many vectors the coarse quantizer is an HNSW graph
MAX_NLIST = 4096                 # k-means on more lists takes tens of minutes on a small CPU
TRAIN_PER_LIST = 40              # k-means training points per list (FAISS warns below 39)
TRAIN_MIN = 65_536               # PQ/SQ codebooks want a few ten thousand points whatever the list count
TUNE_QUERIES = 500
TARGET_RECALL = 0.95
LISTS_FILE = "lists.ivfdata"     # on-disk inverted lists of a merged sharded index, beside index.faiss

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# ---- memory ---------------------------------------------------------------------------------------

def parse_bytes(text: str | int | None) -> int | None:
    """'8G', '512M', '1.5GiB', 1234 → bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise FpindexError(f"cannot read the memory size {text!r}; write it like 8G, 512M or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def default_budget() -> int:
    """Half the machine's physical memory: the rest is for the embeddings, the OS and other programs."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def make_faiss_index(factory: str, dim: int) -> faiss.Index:
    from .index import make_faiss_index as make

    return make(factory, dim)


def _unwrap(index: faiss.Index) -> tuple[faiss.Index, int]:
    """Strip pre-transforms (PCA, OPQ, …); return the inner index and the bytes of the transforms."""
    index = faiss.downcast_index(index)
    fixed = 0
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = index.chain.at(i)
            fixed += 4 * vt.d_in * (vt.d_out + 1)
        index = faiss.downcast_index(index.index)
    return index, fixed


def _layout(index: faiss.Index) -> tuple[float, int]:
    """(bytes per stored vector, fixed bytes) of an empty index, read from FAISS's own objects."""
    index, fixed = _unwrap(index)
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
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=m, replace=False))
    return np.ascontiguousarray(x[pick])


# ---- search parameters ----------------------------------------------------------------------------

def _ivf(index: faiss.Index) -> Any:
    """The IVF layer of an index on the CPU (IndexIVF) or moved to a GPU (GpuIndexIVF, which FAISS's
    extract_index_ivf does not know), else None."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and hasattr(faiss, "GpuIndexIVF"):
        inner, _ = _unwrap(index)
        if isinstance(inner, faiss.GpuIndexIVF):
            return inner
    return ivf


def tunable(index: faiss.Index) -> str | None:
    """The search parameter that trades speed for recall: 'nprobe' (IVF), 'efSearch' (HNSW), or None."""
    inner, _ = _unwrap(index)
    if isinstance(inner, faiss.IndexRefine):
        inner, _ = _unwrap(inner.base_index)
    if _ivf(inner) is not None:
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def param_values(index: faiss.Index, name: str, value: int) -> dict[str, int]:
    """The FAISS parameters to set for one value of the tunable; an HNSW coarse quantizer must look at least
    as far as nprobe lists."""
    out = {name: int(value)}
    if name == "nprobe":
        q = faiss.downcast_index(_ivf(index).quantizer)
        if isinstance(q, faiss.IndexHNSW):
            out["quantizer_efSearch"] = max(64, 2 * int(value))
    return out


def apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set search parameters through FAISS's ParameterSpace (it reaches through PCA/OPQ/Refine wrappers)."""
    if not params:
        return
    ps = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError as e:
            from .index import faiss_reason

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
        nlist = _ivf(index).nlist
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


# ---- devices ------------------------------------------------------------------------------------

def faiss_gpus() -> int:
    """GPUs FAISS itself can use: 0 with a CPU-only FAISS build, whatever torch sees."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except (AttributeError, RuntimeError):
        return 0


def resolve_device(requested: str = "auto") -> str:
    """'auto' → 'cuda' when FAISS has GPU support and sees a GPU, else 'cpu'; 'cuda' without one is refused."""
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise FpindexError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    gpus = faiss_gpus()
    if requested == "cuda" and gpus == 0:
        raise FpindexError("--device cuda: this FAISS has no GPU support or sees no GPU; install the GPU extra "
                           "(pip install 'fpindex[gpu]') on a machine with CUDA, or use --device cpu")
    return "cuda" if gpus else "cpu"


_GPU_RESOURCES: list[Any] = []


def _gpu_resources() -> Any:
    """One StandardGpuResources per process (it owns scratch memory and must outlive the indexes)."""
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return _GPU_RESOURCES[0]


def _is_gpu(index: faiss.Index) -> bool:
    """Also true for a PCA/OPQ/IDMap wrapper around a GPU index: index_cpu_to_gpu keeps those wrappers on the
    CPU, and they must still go through index_gpu_to_cpu before saving and GpuParameterSpace for parameters."""
    if index is None:
        return False
    index = faiss.downcast_index(index)
    if "Gpu" in type(index).__name__:
        return True
    if isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap)):
        return _is_gpu(index.index)
    return False


def to_device(index: faiss.Index, device: str) -> tuple[faiss.Index, str]:
    """Move an index to `device`; returns the index and where it really is. Types FAISS cannot run on a GPU
    (HNSW, on-disk lists) stay on the CPU."""
    if device != "cuda" or _is_gpu(index):
        return index, "cuda" if _is_gpu(index) else "cpu"
    if has_ondisk_lists(index):      # the GPU copy would read every memory-mapped list into GPU memory
        return index, "cpu"
    try:
        co = faiss.GpuClonerOptions()
        co.useFloat16 = False
        return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index, co), "cuda"
    except (RuntimeError, AttributeError):
        return index, "cpu"


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index


def gpu_clustering(index: faiss.Index) -> None:
    """Let k-means run on the GPU: IVF training spends its time assigning points to centroids."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and faiss_gpus():
        ivf.clustering_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatL2(ivf.d))


# ---- shards ---------------------------------------------------------------------------------------

def shard_bounds(n: int, part: int, parts: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard `part` (0-based) of `parts`: contiguous, so FAISS ids stay row numbers."""
    if parts < 1 or not 0 <= part < parts:
        raise FpindexError(f"shard {part} of {parts}: need 0 ≤ part < parts")
    return n * part // parts, n * (part + 1) // parts


def add_shard(trained: faiss.Index, chunks: Iterator[tuple[int, np.ndarray]]) -> faiss.Index:
    """Add (first id, vectors) chunks to a copy of a trained, empty IVF index with explicit ids."""
    index = faiss.clone_index(trained)
    if faiss.try_extract_index_ivf(index) is None:
        raise FpindexError("sharded builds need an IVF index (e.g. IVF4096,Flat or IVF4096,SQ8)")
    for lo, x in chunks:
        index.add_with_ids(np.ascontiguousarray(x, np.float32), np.arange(lo, lo + len(x), dtype=np.int64))
    return index


def merge_shards(trained: faiss.Index, shard_files: list[str | Path], lists_file: str | Path) -> faiss.Index:
    """Merge shard indexes into `trained` with FAISS's on-disk inverted lists (faiss.contrib.ondisk); the
    lists live in `lists_file` and are memory-mapped, so the merged index may exceed RAM."""
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.clone_index(trained)
    if index.ntotal:
        raise FpindexError("the trained index for merging must be empty")
    merge_ondisk(index, [str(f) for f in shard_files], str(lists_file))
    return index


def has_ondisk_lists(index: faiss.Index) -> bool:
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def copy_lists(src: Path, dst: Path) -> None:
    """Hard-link when possible (same file system, instant), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
