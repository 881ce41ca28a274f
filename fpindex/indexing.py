"""Building an index from vectors: choose or check the factory against the memory budget, train on a
sample, add, tune the search parameters, record all of it in the manifest — in one piece, from an
embeddings file, or in shards merged on disk.

Sharded build (each step a separate process, possibly on separate machines sharing a folder):
1. `shard_train`  trains one empty IVF index on a seeded sample of the embeddings → WORK/trained.faiss;
2. `shard_add`    adds rows [lo, hi) of the embeddings to a copy of it → WORK/shard-P-of-N.faiss (+ items);
3. `shard_merge`  merges the shards' inverted lists into WORK/lists.ivfdata with faiss.contrib.ondisk and
                  writes a normal index directory whose lists are memory-mapped, not loaded.
Shards hold contiguous row ranges with explicit ids, so FAISS id i is still row i of the embeddings file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import IndexConfig
from .errors import FpindexError
from .index import INDEX_FILE, ITEM_SCHEMA, IndexStore
from .scale import (LISTS_FILE, TUNE_QUERIES, add_shard, drop_self, exact_knn, merge_shards, resolve_device,
                    search_overrides, select, shard_bounds, train_size, tunable, tune)
from .utils import write_json_atomic
from .vectors import embeddings_info, iter_embeddings

TRAINED_FILE = "trained.faiss"
PLAN_FILE = "plan.json"


def create_store(cfg: IndexConfig, n: int, dim: int, identity: dict[str, Any], resident: int = 0) -> IndexStore:
    """An empty store whose factory fits the budget (auto-chosen or checked); refuses before any work."""
    sel = select(cfg.factory, n, dim, cfg.max_memory, resident=resident)
    store = IndexStore.create(sel.factory, dim, identity, device=resolve_device(cfg.device), seed=cfg.seed)
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
    return np.sort(np.random.default_rng(seed).choice(n, size=min(m, n), replace=False))


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


def _train_from_file(index: faiss.Index, path: Path, n: int, seed: int) -> None:
    m = train_size(index, n)
    if m:
        try:
            index.train(_rows_at(path, np.sort(np.random.default_rng(seed).choice(n, m, replace=False))))
        except RuntimeError as e:
            from .index import faiss_reason

            raise FpindexError(f"FAISS could not train on {m} vectors ({faiss_reason(e)}); use a smaller "
                               "index or 'Flat'") from None


def _tune_from_file(store: IndexStore, cfg: IndexConfig, path: Path) -> None:
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
    _train_from_file(store.index, path, n, cfg.seed)
    for _, x, rows in iter_embeddings(path):
        store.add(x, rows)
    _tune_from_file(store, cfg, path)
    store.manifest["source"] = {"embeddings": str(path.resolve()), "rows": n}
    store.save(index_dir)
    return store


# ---- in shards ---------------------------------------------------------------------------------

def _shard_name(part: int, parts: int) -> str:
    return f"shard-{part:04d}-of-{parts:04d}"


def shard_train(path: str | Path, work: str | Path, cfg: IndexConfig) -> dict[str, Any]:
    """Step 1: choose (or check) an IVF factory for the whole file, train it on a sample, save it empty."""
    path, work = Path(path), Path(work)
    n, dim, meta = embeddings_info(path)
    sel = select(cfg.factory, n, dim, cfg.max_memory)
    index = IndexStore.create(sel.factory, dim, meta["embedder"]).index
    if faiss.try_extract_index_ivf(index) is None:
        raise FpindexError(f"sharded builds need an IVF index, not {sel.factory!r}; use --index-type auto "
                           "(above 100k vectors) or e.g. IVF4096,SQ8")
    _train_from_file(index, path, n, cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(work / TRAINED_FILE))
    plan = {"embeddings": str(path.resolve()), "n": n, "dim": dim, "embedder": meta["embedder"],
            "selection": sel.as_dict(), "factory": sel.factory, "config": cfg.__dict__}
    write_json_atomic(work / PLAN_FILE, plan)
    return plan


def _plan(work: Path) -> dict[str, Any]:
    if not (work / PLAN_FILE).is_file() or not (work / TRAINED_FILE).is_file():
        raise FpindexError(f"shard folder {work}: no {PLAN_FILE}/{TRAINED_FILE}; run `fpindex shard train` first")
    return json.loads((work / PLAN_FILE).read_text(encoding="utf-8"))


def shard_add(work: str | Path, part: int, parts: int, path: str | Path | None = None) -> Path:
    """Step 2: add rows [lo, hi) of shard `part` of `parts` to a copy of the trained index."""
    work = Path(work)
    plan = _plan(work)
    path = Path(path or plan["embeddings"])
    n, dim, _ = embeddings_info(path)
    if (n, dim) != (plan["n"], plan["dim"]):
        raise FpindexError(f"{path}: {n} × {dim}, but the shard plan is for {plan['n']} × {plan['dim']}")
    lo, hi = shard_bounds(n, part, parts)
    trained = faiss.read_index(str(work / TRAINED_FILE))
    items = []

    def chunks():
        for s, x, rows in iter_embeddings(path, lo, hi):
            items.append(rows)
            yield s, x

    index = add_shard(trained, chunks())
    name = _shard_name(part, parts)
    faiss.write_index(index, str(work / f"{name}.faiss"))
    table = pa.concat_tables(items) if items else ITEM_SCHEMA.empty_table()
    pq.write_table(table.replace_schema_metadata({b"rows": json.dumps([lo, hi]).encode()}),
                   work / f"{name}.items.parquet")
    return work / f"{name}.faiss"


def shard_merge(work: str | Path, index_dir: str | Path, parts: int, cfg: IndexConfig | None = None,
                overwrite: bool = False) -> IndexStore:
    """Step 3: merge every shard into an index directory with on-disk inverted lists; tune it when the
    embeddings file is readable here."""
    work, index_dir = Path(work), Path(index_dir)
    plan = _plan(work)
    if index_dir.exists() and not overwrite:
        raise FpindexError(f"index {index_dir} already exists; pass --overwrite to replace it")
    names = [_shard_name(p, parts) for p in range(parts)]
    missing = [m for m in names if not (work / f"{m}.faiss").is_file()]
    if missing:
        raise FpindexError(f"shard folder {work}: missing {', '.join(missing)}; run `fpindex shard add` for them")
    trained = faiss.read_index(str(work / TRAINED_FILE))
    index = merge_shards(trained, [work / f"{m}.faiss" for m in names], work / LISTS_FILE)
    items = pa.concat_tables([pq.read_table(work / f"{m}.items.parquet") for m in names])
    if index.ntotal != plan["n"] or len(items) != plan["n"]:
        raise FpindexError(f"shards hold {index.ntotal} vectors and {len(items)} items, the plan {plan['n']}")
    store = IndexStore.create(plan["factory"], plan["dim"], plan["embedder"])
    store.index, store.items = index, items.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
    store.manifest.update(ntotal=index.ntotal, selection=plan["selection"],
                          source={"embeddings": plan["embeddings"], "rows": plan["n"], "shards": parts})
    cfg = cfg or IndexConfig(**{k: v for k, v in plan["config"].items() if k in IndexConfig.__dataclass_fields__})
    if Path(plan["embeddings"]).is_file() or cfg.nprobe:
        _tune_from_file(store, cfg, Path(plan["embeddings"]))
    else:
        store.manifest["tuning"] = {"note": f"not tuned: {plan['embeddings']} is not readable here"}
    store.save(index_dir)
    # The index directory now holds (a link to) the lists; drop the work copy so a later merge into the same
    # folder writes a new file instead of rewriting the one the saved index uses.
    (work / LISTS_FILE).unlink(missing_ok=True)
    return IndexStore.load(index_dir)


__all__ = ["create_store", "finish_build", "finish_in_memory", "index_embeddings", "shard_train", "shard_add",
           "shard_merge", "INDEX_FILE"]
