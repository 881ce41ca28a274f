"""Stage 4 and 5 — the on-disk index (FAISS + items + manifest) and batched search."""

from __future__ import annotations

import json
import re
import os

import numpy as np
import pyarrow as pa
import pytest

from fpindex.errors import FpindexError
from fpindex.index import INDEX_FILE, ITEMS_FILE, MANIFEST_FILE, IndexStore, as_queries
from fpindex.search import Neighbours, search

DIM = 16
IDENTITY = {"model": "cnn", "weights": "random", "weights_id": "random:seed=0", "enhance": ["none"],
            "image_size": 64, "seed": 0, "dim": DIM}


def unit_vectors(n, dim=DIM, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(n, start=0):
    return pa.table({"root": ["/data/gen"] * n, "path": [f"img_{i:04d}.png" for i in range(start, start + n)],
                     "sha256": [f"{i:064x}" for i in range(start, start + n)], "bytes": list(range(start, start + n))})


def store_with(n=40, factory="Flat", seed=0, batches=1):
    s = IndexStore.create(factory, DIM, dict(IDENTITY))
    v = unit_vectors(n, seed=seed)
    edges = np.linspace(0, n, batches + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        s.add(v[a:b], rows(b - a, start=a))
    return s, v


def test_create_add_search_and_manifest():
    s, v = store_with(30, batches=3)
    assert s.ntotal == 30 and s.dim == DIM and len(s.items) == 30
    assert s.manifest["ntotal"] == 30 and s.manifest["dim"] == DIM
    assert s.manifest["embedder"] == IDENTITY and s.manifest["metric"] == "inner_product"
    assert "fpindex" in s.manifest["versions"]
    sims, ids = s.search(v, 5)
    assert sims.shape == ids.shape == (30, 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(30))   # every vector finds itself first
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()                 # best first
    np.testing.assert_allclose(sims, np.take_along_axis(v @ v.T, ids, axis=1), atol=1e-5)  # cosine


def test_items_row_i_describes_id_i():
    s, v = store_with(25, batches=4)
    _, ids = s.search(v, 1)
    paths = s.paths(ids[:, 0])
    assert paths == [f"/data/gen/img_{i:04d}.png" for i in range(25)]
    assert s.items.column("path").to_pylist()[7] == "img_0007.png"
    assert s.paths(np.array([-1, 3])) == ["", "/data/gen/img_0003.png"]
    assert s.hashes() == {f"{i:064x}" for i in range(25)}


def test_k_larger_than_ntotal_is_clipped():
    s, v = store_with(4)
    sims, ids = s.search(v[:2], 10)
    assert ids.shape == (2, 4)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]


def test_save_load_round_trip_identical(tmp_path):
    s, v = store_with(50, batches=2)
    q = unit_vectors(7, seed=9)
    before = s.search(q, 6)
    d = s.save(tmp_path / "idx")
    assert {p.name for p in d.iterdir()} == {INDEX_FILE, ITEMS_FILE, MANIFEST_FILE}
    t = IndexStore.load(d)
    after = t.search(q, 6)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert t.items.equals(s.items)
    assert t.manifest == json.loads(json.dumps(s.manifest))
    np.testing.assert_array_equal(t.reconstruct(np.arange(50)), v)


def test_save_replaces_existing_directory_without_leftovers(tmp_path):
    a, _ = store_with(10)
    b, _ = store_with(20, seed=1)
    a.save(tmp_path / "idx")
    b.save(tmp_path / "idx")
    assert IndexStore.load(tmp_path / "idx").ntotal == 20
    assert os.listdir(tmp_path) == ["idx"]   # no temporary or old directories left behind


def test_add_validates_inputs():
    s = IndexStore.create("Flat", DIM, dict(IDENTITY))
    with pytest.raises(FpindexError, match="dimension"):
        s.add(unit_vectors(3, dim=8), rows(3))
    with pytest.raises(ValueError, match="^one metadata row per vector$"):
        s.add(unit_vectors(3), rows(2))
    s.add(np.empty((0, DIM), np.float32), rows(0))
    assert s.ntotal == 0 and len(s.items) == 0
    with pytest.raises(FpindexError, match="dimension"):
        as_queries(np.zeros(5), DIM)
    q = as_queries(np.zeros(DIM, np.float64), DIM)
    assert q.shape == (1, DIM) and q.dtype == np.float32 and q.flags.c_contiguous


# ---- compatibility -------------------------------------------------------------------------------

def test_check_compatible_accepts_same_identity():
    s, _ = store_with(3)
    s.check_compatible(dict(IDENTITY), DIM)
    s.check_compatible({"model": "cnn"}, DIM)    # only keys present are compared


@pytest.mark.parametrize("key,value", [("model", "pixels"), ("weights_id", "random:seed=1"),
                                       ("enhance", ["gaussian"]), ("enhance", ["none", "dog"]),
                                       ("image_size", 128)])
def test_check_compatible_refuses_mismatch(key, value):
    s, _ = store_with(3)
    with pytest.raises(FpindexError, match=key):
        s.check_compatible(dict(IDENTITY, **{key: value}), DIM)


def test_check_compatible_refuses_dimension():
    s, _ = store_with(3)
    with pytest.raises(FpindexError, match="16-d"):
        s.check_compatible(dict(IDENTITY), 32)


# ---- broken or missing index directories -----------------------------------------------------------

def test_load_missing_directory(tmp_path):
    with pytest.raises(FpindexError, match="does not exist"):
        IndexStore.load(tmp_path / "nope")


@pytest.mark.parametrize("missing", [INDEX_FILE, ITEMS_FILE, MANIFEST_FILE])
def test_load_incomplete_directory(tmp_path, missing):
    s, _ = store_with(5)
    d = s.save(tmp_path / "idx")
    (d / missing).unlink()
    with pytest.raises(FpindexError, match=f"incomplete: {missing}"):
        IndexStore.load(d)


@pytest.mark.parametrize("damage,message", [
    ("manifest_json", r"manifest\.json: unreadable manifest \("),
    ("format_version", r": format version 99, this fpindex reads 1, 2, 3; upgrade fpindex \(or rebuild"),
    # Checksums (integrity.py) refuse damaged or swapped files before FAISS or Parquet parse them.
    ("faiss_bytes", r"index\.faiss: 17 bytes, the manifest recorded \d+; the file changed after"),
    ("items_bytes", r"items\.parquet: 11 bytes, the manifest recorded \d+; the file changed after"),
    ("items_mismatch", r"items\.parquet: \d+ bytes, the manifest recorded \d+; the file changed after"),
    ("ntotal_mismatch", r"manifest\.json: the manifest was changed after the index was written")])
def test_load_refuses_damaged_index(tmp_path, damage, message):
    s, _ = store_with(5)
    d = s.save(tmp_path / "idx")
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    if damage == "manifest_json":
        (d / MANIFEST_FILE).write_text("{not json")
    elif damage == "format_version":
        (d / MANIFEST_FILE).write_text(json.dumps(dict(manifest, format_version=99)))
    elif damage == "faiss_bytes":
        (d / INDEX_FILE).write_bytes(b"not a faiss index")
    elif damage == "items_bytes":
        (d / ITEMS_FILE).write_bytes(b"not parquet")
    elif damage == "items_mismatch":      # items of another, larger index
        other, _ = store_with(6)
        other.save(tmp_path / "other")
        (d / ITEMS_FILE).write_bytes((tmp_path / "other" / ITEMS_FILE).read_bytes())
    else:
        (d / MANIFEST_FILE).write_text(json.dumps(dict(manifest, ntotal=4)))
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(d))}\S*{message}"):
        IndexStore.load(d)


# ---- FAISS factories -------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", ["NotAnIndex", "IVF", "Flat,Flat,Flat", "PQ7"])
def test_invalid_factory(factory):
    with pytest.raises(FpindexError, match="invalid FAISS factory"):
        IndexStore.create(factory, DIM, dict(IDENTITY))


def test_ivf_with_too_few_training_vectors():
    s = IndexStore.create("IVF8,Flat", DIM, dict(IDENTITY))
    with pytest.raises(FpindexError, match="could not train"):
        s.add(unit_vectors(3), rows(3))


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16"])
def test_non_flat_factories(tmp_path, factory):
    s, v = store_with(300, factory=factory)
    assert s.ntotal == 300 and s.index.is_trained
    sims, ids = s.search(v, 3)
    # A stored vector is its own nearest neighbour even with approximate search.
    assert (ids[:, 0] == np.arange(300)).mean() >= 0.99
    t = IndexStore.load(s.save(tmp_path / "idx"))
    sims2, ids2 = t.search(v, 3)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_allclose(sims, sims2, atol=1e-6)
    # Jaccard re-ranking needs stored vectors back, also after a reload (IVF needs a direct map then).
    np.testing.assert_allclose(t.reconstruct(np.array([0, 150, 299])), v[[0, 150, 299]], atol=1e-5)
    assert t.manifest["factory"] == factory


# ---- search (stage 5) -------------------------------------------------------------------------------

def test_search_batches_agree_with_one_pass():
    s, _ = store_with(60)
    q = unit_vectors(23, seed=4)
    whole = search(s, q, 5)
    parts = search(s, q, 5, batch=4)
    assert isinstance(whole, Neighbours) and whole.k == 5
    assert whole.ids.dtype == np.int64 and whole.cosine.dtype == np.float32
    np.testing.assert_array_equal(whole.ids, parts.ids)
    np.testing.assert_allclose(whole.cosine, parts.cosine, atol=1e-6)
    brute = np.argsort(-(q @ unit_vectors(60).T), axis=1)[:, :5]
    np.testing.assert_array_equal(whole.ids, brute)


def test_search_no_queries():
    s, _ = store_with(3)
    nb = search(s, np.empty((0, DIM), np.float32), 10)
    assert nb.ids.shape == (0, 3) and nb.cosine.shape == (0, 3) and nb.k == 3
