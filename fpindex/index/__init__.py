"""Stage 4 — the index layer: a FAISS index with the metadata that makes it safe to reuse (store), the
choice of index for the data and the memory (factory), search parameters and their tuning (tuning), GPU
placement (gpu), checksums and stored-path checks (integrity), builds in one piece (build) or in shards
(shards), embeddings files (vectors) and `fpindex bench` (bench). Each module imports only ones before it in
this order: base, factory, gpu, tuning, integrity, store, vectors, build, shards, bench — so there is no
import circle.

The names below are what the rest of fpindex uses; import anything else from its module.
"""

from ..devices import faiss_device, faiss_gpus
from .bench import run_bench
from .build import create_store, finish_build, finish_in_memory, index_embeddings
from .factory import format_bytes, parse_bytes
from .shards import shard_add, shard_merge, shard_train
from .store import INDEX_FILE, ITEM_SCHEMA, ITEMS_FILE, LISTS_FILE, MANIFEST_FILE, IndexStore, as_queries, is_index_dir
from .tuning import search_overrides
from .vectors import read_embeddings, write_embeddings

__all__ = ["IndexStore", "INDEX_FILE", "ITEMS_FILE", "MANIFEST_FILE", "LISTS_FILE", "ITEM_SCHEMA", "as_queries",
           "create_store", "finish_build", "finish_in_memory", "index_embeddings", "shard_train", "shard_add",
           "shard_merge", "parse_bytes", "format_bytes", "search_overrides", "faiss_device", "faiss_gpus",
           "write_embeddings", "read_embeddings", "run_bench", "is_index_dir"]
