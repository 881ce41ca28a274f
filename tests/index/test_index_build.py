"""Builds: save/load of every index type (and of format 1), embeddings files, an index built from a file
equal to one built in memory, and shard-and-merge equal to one piece."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_support import DIM, IDENTITY, built, rows

from fpindex.config import IndexConfig
from fpindex.errors import FpindexError, FpindexWarning
from fpindex.index import (LISTS_FILE, MANIFEST_FILE, IndexStore, index_embeddings, read_embeddings, shard_add,
                           shard_merge, shard_train, write_embeddings)
from fpindex.index.base import has_ondisk_lists
from fpindex.index.vectors import embeddings_info, iter_embeddings


# ---- save / load of every index type ------------------------------------------------------------------

FACTORIES = ["Flat", "IVF64,Flat", "IVF64_HNSW32,Flat", "IVF64,SQ8", "IVF64,SQfp16", "IVF64,PQ8x4", "HNSW16",
             "SQ8", "PCAR16,IVF64,SQ8"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_save_load_every_index_type(tmp_path, data, factory):
    x, q = data
    store = built(factory, x)
    before = store.search(q, 5)
    loaded = IndexStore.load(store.save(tmp_path / "idx"))
    after = loaded.search(q, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-5)
    assert loaded.manifest["search_params"] == store.manifest["search_params"]
    assert loaded.manifest["selection"]["factory"] == factory
    # Jaccard re-ranking reads stored vectors back: exact for Flat codes, decoded (approximate) otherwise.
    ids = np.array([0, 1234, 5999])
    rec = loaded.reconstruct(ids)
    cos = (rec * x[ids]).sum(1) / np.linalg.norm(rec, axis=1)
    assert (cos > (0.9999 if factory in ("Flat", "IVF64,Flat", "IVF64_HNSW32,Flat", "HNSW16") else 0.8)).all()


@pytest.mark.slow
def test_opq_rotation_round_trip(tmp_path, data):
    x, q = data
    store = built("OPQ4_32,IVF16,PQ4x4", x[:1200])
    loaded = IndexStore.load(store.save(tmp_path / "idx"))
    np.testing.assert_array_equal(store.search(q, 5)[1], loaded.search(q, 5)[1])
    assert loaded.reconstruct(np.array([7])).shape == (1, DIM)


def test_format_1_index_still_loads(tmp_path, data):
    x, q = data
    store = IndexStore.create("Flat", DIM, dict(IDENTITY))
    store.add(x[:100], rows(100))
    d = store.save(tmp_path / "old")
    m = json.loads((d / MANIFEST_FILE).read_text())
    m["format_version"] = 1
    del m["search_params"], m["files"], m["digest"]      # format 1 had neither search parameters nor checksums
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.warns(FpindexWarning, match="format version 1 records no checksums"):
        loaded = IndexStore.load(d)
    assert loaded.ntotal == 100 and loaded.manifest["search_params"] == {}



# ---- embeddings files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_embeddings_round_trip_and_slices(tmp_path, data, suffix):
    x, _ = data
    p = write_embeddings(tmp_path / f"e{suffix}", x[:1000], rows(1000), dict(IDENTITY))
    n, dim, meta = embeddings_info(p)
    assert (n, dim) == (1000, DIM)
    y, items, _ = read_embeddings(p)
    np.testing.assert_array_equal(y, x[:1000])
    parts = list(iter_embeddings(p, 130, 777, batch=100))
    assert parts[0][0] == 130 and sum(len(v) for _, v, _ in parts) == 647
    np.testing.assert_array_equal(np.concatenate([v for _, v, _ in parts]), x[130:777])
    if suffix == ".parquet":
        assert meta["embedder"] == IDENTITY and items.column("path").to_pylist()[5] == "5.png"
    else:
        assert meta["embedder"]["model"] == "external" and items.column("path").to_pylist()[5] == "5"
    with pytest.raises(FpindexError, match=".parquet or .npy"):
        write_embeddings(tmp_path / "e.csv", x[:3])


def test_index_embeddings_equals_in_memory_build(tmp_path, data):
    x, q = data
    p = write_embeddings(tmp_path / "e.parquet", x, rows(len(x)), dict(IDENTITY))
    cfg = IndexConfig(factory="IVF64,Flat", device="cpu")
    a = index_embeddings(p, tmp_path / "idx", cfg)
    b = built("IVF64,Flat", x, cfg)
    assert a.manifest["embedder"] == IDENTITY and a.items.equals(b.items)
    assert a.manifest["search_params"] == b.manifest["search_params"]
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])



# ---- shards -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,SQ8"])
def test_merged_shards_equal_one_piece(tmp_path, data, factory):
    x, q = data
    p = write_embeddings(tmp_path / "e.parquet", x, rows(len(x)), dict(IDENTITY))
    cfg = IndexConfig(factory=factory, device="cpu", nprobe=8)
    work = tmp_path / "work"
    shard_train(p, work, cfg)
    for part in (2, 0, 1):                                  # any order, as separate machines would
        shard_add(work, part, 3)
    merged = shard_merge(work, tmp_path / "merged", 3)
    one = index_embeddings(p, tmp_path / "one", cfg)
    assert merged.ntotal == one.ntotal == len(x) and merged.items.equals(one.items)
    assert has_ondisk_lists(merged.index) and (tmp_path / "merged" / LISTS_FILE).is_file()
    d1, i1 = merged.search(q, 10)
    d2, i2 = one.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_allclose(merged.reconstruct(np.arange(0, 6000, 997)), one.reconstruct(np.arange(0, 6000, 997)))
    # FAISS id i is row i: a stored vector finds itself.
    assert (merged.search(x[:50], 1)[1][:, 0] == np.arange(50)).mean() >= 0.95
    with pytest.raises(FpindexError, match="missing shard-0000-of-0004"):
        shard_merge(work, tmp_path / "m2", 4)


def test_shards_need_ivf(tmp_path, data):
    x, _ = data
    p = write_embeddings(tmp_path / "e.npy", x[:500])
    with pytest.raises(FpindexError, match="need an IVF index"):
        shard_train(p, tmp_path / "w", IndexConfig(factory="HNSW16"))

