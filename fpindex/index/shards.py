"""Building one IVF index in shards, when one machine's RAM is not enough. Each step is a separate process,
possibly on separate machines sharing a folder:
1. `shard_train`  trains one empty IVF index on a seeded sample of the embeddings → WORK/trained.faiss;
2. `shard_add`    adds rows [lo, hi) of the embeddings to a copy of it → WORK/shard-P-of-N.faiss (+ items);
3. `shard_merge`  merges the shards' inverted lists into WORK/lists.ivfdata with faiss.contrib.ondisk and
                  writes a normal index directory whose lists are memory-mapped, not loaded.
Shards hold contiguous row ranges with explicit ids, so FAISS id i is still row i of the embeddings file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import IndexConfig
from ..errors import FpindexError
from ..utils import write_json_atomic
from .build import train_from_file, tune_from_file
from .factory import select
from .store import ITEM_SCHEMA, LISTS_FILE, IndexStore
from .vectors import embeddings_info, iter_embeddings

TRAINED_FILE = "trained.faiss"
PLAN_FILE = "plan.json"


# ---- FAISS steps --------------------------------------------------------------------------------

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


# ---- the three commands ---------------------------------------------------------------------

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
    train_from_file(index, path, n, cfg.seed)
    work.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(work / TRAINED_FILE))
    plan = {"embeddings": str(path.resolve()), "n": n, "dim": dim, "embedder": meta["embedder"],
            "selection": sel.as_dict(), "factory": sel.factory, "config": cfg.__dict__}
    write_json_atomic(work / PLAN_FILE, plan)
    return plan


PLAN_SHAPE = {"embeddings": str, "n": int, "dim": int, "embedder": dict, "selection": dict, "factory": str,
              "config": dict}


def _plan(work: Path) -> dict[str, Any]:
    """The plan `shard train` wrote; damaged or of the wrong shape, it is refused in one line."""
    if not (work / PLAN_FILE).is_file() or not (work / TRAINED_FILE).is_file():
        raise FpindexError(f"shard folder {work}: no {PLAN_FILE}/{TRAINED_FILE}; run `fpindex shard train` first")
    again = "run `fpindex shard train` again"
    try:
        plan = json.loads((work / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FpindexError(f"shard folder {work}: {PLAN_FILE} is unreadable ({e}); {again}") from None
    for key, t in PLAN_SHAPE.items():
        value = plan.get(key) if isinstance(plan, dict) else None
        if not isinstance(value, t) or isinstance(value, bool):
            raise FpindexError(f"shard folder {work}: {PLAN_FILE} has no valid {key!r}; {again}")
    return plan


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
        tune_from_file(store, cfg, Path(plan["embeddings"]))
    else:
        store.manifest["tuning"] = {"note": f"not tuned: {plan['embeddings']} is not readable here"}
    store.save(index_dir)
    # The index directory now holds (a link to) the lists; drop the work copy so a later merge into the same
    # folder writes a new file instead of rewriting the one the saved index uses.
    (work / LISTS_FILE).unlink(missing_ok=True)
    return IndexStore.load(index_dir)
