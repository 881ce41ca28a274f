"""Stage 4 — the index layer: a FAISS index with the metadata that makes it safe to reuse (store), the
choice of index for the data and the memory (factory), search parameters and their tuning (tuning), GPU
placement (gpu), checksums and stored-path checks (integrity), builds in one piece (build) or in shards
(shards), embeddings files (vectors) and `fpindex bench` (bench). Each module imports only ones before it in
this order: base, factory, gpu, tuning, integrity, store, vectors, build, shards, bench — so there is no
import circle.

The names below are what the rest of fpindex uses; import anything else from its module.
"""

from ..lazy import lazy_attributes

# name → the module that defines it, imported on first use (most of them import FAISS or pyarrow).
_LAZY = {
    'faiss_device': '..devices',
    'faiss_gpus': '..devices',
    'run_bench': '.bench',
    'create_store': '.build',
    'finish_build': '.build',
    'finish_in_memory': '.build',
    'index_embeddings': '.build',
    'shard_add': '.shards',
    'shard_merge': '.shards',
    'shard_train': '.shards',
    'INDEX_FILE': '.store',
    'ITEM_SCHEMA': '.store',
    'ITEMS_FILE': '.store',
    'LISTS_FILE': '.store',
    'MANIFEST_FILE': '.store',
    'IndexStore': '.store',
    'as_queries': '.store',
    'is_index_dir': '.store',
    'search_overrides': '.tuning',
    'format_bytes': '.units',
    'parse_bytes': '.units',
    'read_embeddings': '.vectors',
    'write_embeddings': '.vectors',
}

__all__ = ["IndexStore", "INDEX_FILE", "ITEMS_FILE", "MANIFEST_FILE", "LISTS_FILE", "ITEM_SCHEMA", "as_queries",
           "create_store", "finish_build", "finish_in_memory", "index_embeddings", "shard_train", "shard_add",
           "shard_merge", "parse_bytes", "format_bytes", "search_overrides", "faiss_device", "faiss_gpus",
           "write_embeddings", "read_embeddings", "run_bench", "is_index_dir"]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())
