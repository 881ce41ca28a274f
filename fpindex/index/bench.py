"""`fpindex bench`: build one index on seeded synthetic vectors (or real fpindex embeddings) and measure it
side by side with exact search: build time, memory, queries per second (batch and single), recall@1/@10,
and the cost of fpindex's search wrapper over a raw FAISS call on the same index.

Protocol, the same for every number: one warm-up run, then `repeats` runs, the median reported. Recall is
measured on evaluation queries that are never indexed and never used for tuning (held out). The database is
produced chunk by chunk, and ground truth is accumulated chunk by chunk, so N × d never sits in memory twice.

Synthetic vectors are not i.i.d. uniform: they come from a two-level mixture (64 coarse groups, 2,048
clusters with Zipf-like sizes), each cluster spreading along a shared 24-dimensional subspace with a decaying
spectrum, plus a little isotropic noise, then L2-normalised — clustered, low intrinsic dimension, uneven
density, like image embeddings.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np

from ..devices import faiss_device
from ..errors import FpindexError
from .base import make_faiss_index
from ..utils import available_memory
from .factory import Selection, format_bytes, select, train_sample, train_size
from .gpu import to_cpu, to_device
from .store import IndexStore
from .tuning import apply_params, param_values, recall_at, tunable, tune
from .vectors import read_embeddings

CHUNK = 65_536
STREAM_DB, STREAM_TUNE, STREAM_EVAL = 0, 1, 2
MAX_DIM = 2**31 - 1               # FAISS's dimension is a C int
FLAT_TIMING_LIMIT = 4 << 30      # keep an exact Flat copy for timing only below this many bytes


@dataclass(frozen=True)
class Synthetic:
    """Seeded, structured unit vectors; any chunk can be regenerated alone, so shards and ground truth agree."""

    dim: int
    seed: int = 0
    clusters: int = 2048
    groups: int = 64
    intrinsic: int = 24

    @cached_property
    def _model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 99])
        coarse = rng.standard_normal((self.groups, self.dim)).astype(np.float32)
        parent = rng.integers(0, self.groups, self.clusters)
        centres = coarse[parent] + 0.8 * rng.standard_normal((self.clusters, self.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        r = min(self.intrinsic, self.dim)
        spectrum = 0.35 / np.sqrt(self.dim * (1.0 + np.arange(r)))                   # decaying
        basis = (rng.standard_normal((r, self.dim)) * spectrum[:, None]).astype(np.float32)
        w = 1.0 / (np.arange(self.clusters) + 20.0)
        return centres.astype(np.float32), basis, (w / w.sum())

    def chunk(self, stream: int, index: int, size: int = CHUNK) -> np.ndarray:
        centres, basis, weights = self._model
        rng = np.random.default_rng([self.seed, stream, index])
        c = rng.choice(len(centres), size=size, p=weights)
        x = centres[c] + rng.standard_normal((size, len(basis)), dtype=np.float32) @ basis
        x += np.float32(0.25 / np.sqrt(self.dim)) * rng.standard_normal((size, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def rows(self, lo: int, hi: int, stream: int = STREAM_DB) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) covering rows [lo, hi) of a stream, in CHUNK-aligned pieces."""
        for c in range(lo // CHUNK, (hi + CHUNK - 1) // CHUNK):
            a, b = max(lo, c * CHUNK), min(hi, (c + 1) * CHUNK)
            if a < b:
                yield a, self.chunk(stream, c)[a - c * CHUNK:b - c * CHUNK]

    def take(self, n: int, stream: int) -> np.ndarray:
        return np.concatenate([x for _, x in self.rows(0, n, stream)]) if n else np.empty((0, self.dim), np.float32)


@dataclass
class Source:
    """Database rows and held-out query sets, whatever made them."""

    n: int
    dim: int
    rows: Callable[[int, int], Iterator[tuple[int, np.ndarray]]]
    tune_q: np.ndarray
    eval_q: np.ndarray
    name: str
    extra: dict[str, Any] = field(default_factory=dict)


def synthetic_source(n: int, dim: int, n_eval: int, n_tune: int, seed: int = 0) -> Source:
    s = Synthetic(dim, seed)
    return Source(n, dim, lambda lo, hi: s.rows(lo, hi), s.take(n_tune, STREAM_TUNE), s.take(n_eval, STREAM_EVAL),
                  "synthetic", {"generator": {"clusters": s.clusters, "groups": s.groups, "intrinsic": s.intrinsic,
                                              "seed": seed}})


def file_source(path: str | Path, n_eval: int, n_tune: int, seed: int = 0, n: int | None = None) -> Source:
    """Real embeddings: a seeded set of rows is held out as queries; the rest (up to n) is the database."""
    x, _, meta = read_embeddings(path)
    if len(x) <= n_eval + n_tune + 10:
        raise FpindexError(f"{path}: {len(x)} vectors are too few for {n_eval} + {n_tune} held-out queries")
    order = np.random.default_rng(seed).permutation(len(x))
    q = x[order[:n_eval + n_tune]]
    db = x[np.sort(order[n_eval + n_tune:])][:n]
    return Source(len(db), x.shape[1], lambda lo, hi: iter([(lo, db[lo:hi])]), q[n_eval:], q[:n_eval],
                  f"embeddings:{Path(path).name}", {"embedder": meta.get("embedder")})


# ---- timing ---------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired(fa: Callable[[], Any], fb: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of two functions, interleaved run by run so drifting machine load hits both alike."""
    fa(), fb()
    ta, tb = [], []
    for i in range(repeats):
        for f, out in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def singles(search: Callable[[np.ndarray, int], Any], q: np.ndarray, k: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(len(q)):
            search(q[i:i + 1], k)
    return run


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident memory of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cur = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
    return cur, peak


def serialized_bytes(index: faiss.Index) -> int:
    with tempfile.TemporaryDirectory() as d:
        faiss.write_index(index, os.path.join(d, "i"))
        return os.path.getsize(os.path.join(d, "i"))


# ---- the benchmark --------------------------------------------------------------------------------

def bench_bytes(sel: Selection, n: int, dim: int, n_queries: int, k: int, synthetic: bool) -> int:
    """What a bench run holds at its peak, beyond the interpreter: the index and its build (the selection's
    estimate), the exact Flat copy kept for timing, the query sets and their result heap, and for synthetic
    vectors the generator's model and one chunk being made (float64 temporaries included)."""
    flat = 4 * n * dim if sel.factory != "Flat" and 4 * n * dim <= FLAT_TIMING_LIMIT else 0
    queries = 4 * n_queries * dim + 12 * n_queries * k
    made = (Synthetic.clusters + Synthetic.groups) * dim * 12 + 3 * 8 * min(n, CHUNK) * dim if synthetic else 0
    return sel.estimate.total + flat + queries + made


def check_memory(sel: Selection, n: int, dim: int, n_queries: int, k: int, synthetic: bool,
                 free: int | None = None) -> None:
    """Refuse, before allocating anything, a run the machine cannot hold now (a typo in --n or --dim would
    otherwise end in the OOM killer or swap). `free`: bytes available (default: what the system says)."""
    need, free = bench_bytes(sel, n, dim, n_queries, k, synthetic), free or available_memory()
    if free is not None and need > free:
        raise FpindexError(f"bench of {n:,} × {dim}-d vectors ({sel.factory}) needs about {format_bytes(need)}, "
                           f"but {format_bytes(free)} of memory is available; lower --n, --dim or --queries")


def run_bench(n: int, dim: int, index_type: str = "auto", k: int = 10, budget: int | None = None,
              n_eval: int = 1000, n_tune: int = 500, seed: int = 0, embeddings: str | Path | None = None,
              repeats: int = 5, n_single: int = 200, device: str = "cpu", nprobe: int | None = None,
              ef_search: int | None = None, target: float = 0.95) -> dict[str, Any]:
    t_all = time.perf_counter()
    rss_start = rss_bytes()[0]          # the interpreter, numpy, FAISS (and torch, through the CLI)
    if not embeddings and not 2 <= dim <= MAX_DIM:
        raise FpindexError(f"--dim must be from 2 to {MAX_DIM:,}, not {dim:,}")
    if embeddings:                      # the file's own size is what it is; its vectors are read first
        src = file_source(embeddings, n_eval, n_tune, seed, n)
        n, dim = src.n, src.dim
    sel: Selection = select(index_type, n, dim, budget)
    check_memory(sel, n, dim, n_eval + n_tune, k, synthetic=not embeddings)
    if not embeddings:
        src = synthetic_source(n, dim, n_eval, n_tune, seed)
    device = faiss_device(device)
    index = make_faiss_index(sel.factory, dim)
    is_flat = sel.factory == "Flat"
    keep_flat = not is_flat and 4 * n * dim <= FLAT_TIMING_LIMIT
    flat = faiss.IndexFlatIP(dim) if keep_flat else None

    # Train on the first rows (the generator's rows are i.i.d., so they are a random sample) — or on a
    # seeded sample of a real file.
    t_train = 0.0
    if not index.is_trained:
        m = train_size(index, n)
        sample = np.concatenate([x for _, x in src.rows(0, m if src.name == "synthetic" else n)])
        if src.name != "synthetic":
            sample = train_sample(sample, index, seed)
        t = time.perf_counter()
        index.train(sample)
        t_train = time.perf_counter() - t
        del sample
    index, where = to_device(index, device)

    queries = np.concatenate([src.tune_q, src.eval_q])
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    t_add = t_exact = 0.0
    for lo, x in src.rows(0, n):
        t = time.perf_counter()
        index.add(x)
        t_add += time.perf_counter() - t
        if flat is not None:
            flat.add(x)
        t = time.perf_counter()
        d, i = faiss.knn(queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        t_exact += time.perf_counter() - t
        if d.shape[1] < k:
            d = np.hstack([d, np.full((len(d), k - d.shape[1]), -np.inf, np.float32)])
            i = np.hstack([i, np.full((len(i), k - i.shape[1]), -1, np.int64)])
        heap.add_result(d, np.where(i >= 0, i + lo, -1))
        del x
    heap.finalize()
    exact_ids = heap.I
    tune_exact, eval_exact = exact_ids[:len(src.tune_q)], exact_ids[len(src.tune_q):]

    # Search parameters: given, else tuned on the tuning queries (never on the evaluation queries).
    name = tunable(index)
    given = nprobe if name == "nprobe" else ef_search if name == "efSearch" else None
    if name and given:
        params, tuning = param_values(index, name, given), {"parameter": name, "given": given}
        apply_params(index, params)
    else:
        params, tuning = tune(index, src.tune_q, tune_exact, k=k, target=target)

    # Speed, side by side: fpindex's IndexStore.search and a raw index.search on the same index.
    q = src.eval_q
    store = IndexStore(index=index, manifest={"factory": sel.factory}, device=where)
    t_store, t_raw = paired(lambda: store.search(q, k), lambda: index.search(q, k), repeats)
    qs = q[:n_single]
    t_store1, t_raw1 = paired(singles(store.search, qs, k), singles(index.search, qs, k), max(3, repeats // 2))
    _, ids = index.search(q, k)

    # Exact search speed: a Flat copy when it fits, else the streamed pass above (a single run, noted).
    if is_flat:
        exact_batch, exact_single, exact_method = t_raw / len(q), t_raw1 / len(qs), "same index"
    elif flat is not None:
        qe, qe1 = q[:200], q[:20]
        exact_batch = timed(lambda: flat.search(qe, k), max(3, repeats // 2)) / len(qe)
        exact_single = timed(singles(flat.search, qe1, k), 3) / len(qe1)
        exact_method = "IndexFlatIP copy"
    else:
        exact_batch, exact_single, exact_method = t_exact / len(queries), None, "streamed chunks (one run)"
    del flat
    cur, peak = rss_bytes()
    import platform

    from ..utils import versions

    out = {
        "factory": sel.factory, "requested": index_type, "n": n, "dim": dim, "k": k, "source": src.name,
        "device": where, "build_s": round(t_train + t_add, 3), "train_s": round(t_train, 3), "add_s": round(t_add, 3),
        "index_bytes": serialized_bytes(to_cpu(index)), "estimate": sel.estimate.as_dict(),
        "budget_bytes": sel.budget, "rss_start_bytes": rss_start, "rss_bytes": cur, "peak_rss_bytes": peak,
        "recall_at_1": round(recall_at(ids, eval_exact, 1), 4), "recall_at_10": round(recall_at(ids, eval_exact,
                                                                                                   min(10, k)), 4),
        "search_params": params, "tuning": tuning,
        "qps": round(len(q) / t_store, 1), "qps_raw": round(len(q) / t_raw, 1),
        "qps_single": round(len(qs) / t_store1, 1), "qps_single_raw": round(len(qs) / t_raw1, 1),
        "wrapper_overhead": round(t_store / t_raw - 1, 4), "wrapper_overhead_single": round(t_store1 / t_raw1 - 1, 4),
        "exact_qps": round(1 / exact_batch, 2), "exact_qps_single": round(1 / exact_single, 2) if exact_single else None,
        "exact_method": exact_method, "speedup_vs_exact": round(len(q) / t_store * exact_batch, 1),
        "queries": {"eval": len(q), "tune": len(src.tune_q), "single": len(qs)}, "repeats": repeats,
        "threads": faiss.omp_get_max_threads(), "cpu": _cpu_model(), "machine": platform.machine(),
        "seed": seed, "total_s": round(time.perf_counter() - t_all, 1), "versions": versions(), **src.extra,
    }
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""
