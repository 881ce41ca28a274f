"""Retrieval at scale: index selection and memory refusal, tuning, save/load of every index type, embeddings
files, shard-and-merge, CPU/GPU device choice, and the bench contract. Small seeded data only."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from fpindex import devices
from fpindex.cli import app
from fpindex.config import IndexConfig
from fpindex.devices import faiss_device
from fpindex.errors import FpindexError
from fpindex.index import (LISTS_FILE, MANIFEST_FILE, IndexStore, create_store, finish_in_memory, format_bytes,
                           index_embeddings, parse_bytes, read_embeddings, run_bench, shard_add, shard_merge,
                           shard_train, write_embeddings)
from fpindex.index.base import has_ondisk_lists
from fpindex.index.bench import Synthetic
from fpindex.index.factory import MAX_NLIST, candidates, estimate, nlist_for, select
from fpindex.index.tuning import exact_knn, recall_at
from fpindex.index.vectors import embeddings_info, iter_embeddings

DIM = 32
IDENTITY = {"model": "cnn", "weights": "random", "weights_id": "random:seed=0", "enhance": ["none"],
            "image_size": 64, "seed": 0, "dim": DIM}
G = 1 << 30


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """FAISS's OpenMP threads spin-wait; on a shared 2-core machine one thread keeps these small tests fast."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    """Structured unit vectors (clusters in a low-dimensional subspace) and held-out queries."""
    s = Synthetic(DIM, seed=3, clusters=64, groups=8)
    return s.take(6000, 0), s.take(200, 2)


def rows(n, start=0):
    return pa.table({"root": ["/gen"] * n, "path": [f"{i}.png" for i in range(start, start + n)],
                     "sha256": [f"{i:064x}" for i in range(start, start + n)], "bytes": [1] * n})


def built(factory, x, cfg=None):
    cfg = cfg or IndexConfig(factory=factory, device="cpu")
    store = create_store(cfg, len(x), x.shape[1], dict(IDENTITY))
    store.add(x, rows(len(x)))
    finish_in_memory(store, cfg, x)
    return store


# ---- sizes and selection ---------------------------------------------------------------------------

def test_parse_and_format_bytes():
    assert parse_bytes("8G") == 8 * G and parse_bytes("512M") == 512 << 20 and parse_bytes("1.5GiB") == int(1.5 * G)
    assert parse_bytes(None) is None and parse_bytes(1234) == 1234
    with pytest.raises(FpindexError, match="memory size"):
        parse_bytes("lots")
    assert format_bytes(8 * G) == "8.0 GiB" and format_bytes(10) == "10 B"


def test_nlist_follows_sqrt_n():
    assert nlist_for(100_000) == 1024 and nlist_for(1_000_000) == 4096
    assert nlist_for(10_000_000) == MAX_NLIST        # capped: k-means cost on a CPU
    assert nlist_for(2_000) >= 16 and 2_000 >= 39 * nlist_for(2_000) or nlist_for(2_000) == 16


def test_auto_selection_by_size_dimension_and_budget():
    assert select("auto", 50_000, 512, 8 * G).factory == "Flat"                 # exact below 100k
    assert select("auto", 1_000_000, 256, 8 * G).factory == "IVF4096_HNSW32,Flat"
    assert select("auto", 300_000, 256, 8 * G).factory == "IVF2048,Flat"
    # 10M × 256 float32 is 10 GB: with an 8G budget the vectors are compressed, SQ8 first.
    s = select("auto", 10_000_000, 256, 8 * G)
    assert s.factory == "IVF4096_HNSW32,SQ8" and s.estimate.total <= 8 * G and s.requested == "auto"
    assert select("auto", 10_000_000, 256, 2 * G).factory == "IVF4096_HNSW32,PQ32"
    assert select("auto", 10_000_000, 256, 700 << 20).factory.startswith("PCAR128,")
    assert candidates(10_000_000, 2048)[-2].endswith(",PQ256")


def test_estimate_matches_the_built_index(data):
    x, _ = data
    for factory in ("Flat", "IVF32,Flat", "IVF32,SQ8", "HNSW16", "IVF32,PQ8x4"):
        store = IndexStore.create(factory, DIM, dict(IDENTITY))
        store.add(x, rows(len(x)))
        real = len(faiss.serialize_index(store.index))
        est = estimate(factory, len(x), DIM).index_bytes
        assert 0.7 * real <= est <= 1.6 * real + 70_000, (factory, est, real)


def test_memory_refusal_names_estimate_and_smaller_choice():
    with pytest.raises(FpindexError) as e:
        select("IVF4096,Flat", 10_000_000, 256, 8 * G)
    msg = str(e.value)
    assert "needs about 12.8 GiB" in msg and "--max-memory 8.0 GiB" in msg
    assert "IVF4096_HNSW32,SQ8" in msg               # the suggestion fits
    with pytest.raises(FpindexError, match="no index .* fits"):
        select("auto", 10_000_000, 256, 10 << 20)
    # The embeddings a build holds count against the budget too.
    assert select("Flat", 1000, 32, 300_000).factory == "Flat"
    with pytest.raises(FpindexError):
        select("Flat", 1000, 32, 300_000, resident=4 * 1000 * 32)


def test_cli_build_refuses_before_embedding(scenario, tmp_path):
    r = CliRunner().invoke(app, ["build", str(scenario / "generated"), "--index", str(tmp_path / "i"),
                                 "--index-type", "Flat", "--max-memory", "1K", "--quiet"])
    assert isinstance(r.exception, FpindexError) and "more than --max-memory 1.0 KiB" in str(r.exception)
    assert not (tmp_path / "i").exists()


# ---- tuning and search parameters ---------------------------------------------------------------------

def test_tuning_reaches_target_with_smallest_nprobe(data):
    x, q = data
    store = built("IVF64,Flat", x)
    t = store.manifest["tuning"]
    assert t["parameter"] == "nprobe" and t["reached"] and t["leave_one_out"]
    assert store.manifest["search_params"] == t["chosen"] == {"nprobe": t["tried"][-1]["nprobe"]}
    assert all(r["recall"] < 0.95 for r in t["tried"][:-1]) and t["tried"][-1]["recall"] >= 0.95
    assert faiss.extract_index_ivf(store.index).nprobe == t["chosen"]["nprobe"]
    # The tuned value also holds on queries that were never indexed.
    _, exact = exact_knn(q, [x], 10)
    assert recall_at(store.search(q, 10)[1], exact, 10) >= 0.9


def test_given_search_parameters_are_kept(data):
    x, _ = data
    store = built("HNSW16", x, IndexConfig(factory="HNSW16", ef_search=77, device="cpu"))
    assert store.manifest["search_params"] == {"efSearch": 77} and store.manifest["tuning"] == {"given": {"efSearch": 77}}
    assert faiss.downcast_index(store.index).hnsw.efSearch == 77
    with pytest.raises(FpindexError, match="--nprobe does not apply"):
        built("HNSW16", x[:500], IndexConfig(factory="HNSW16", nprobe=4, device="cpu"))


def test_hnsw_quantizer_looks_at_least_nprobe_lists(data):
    x, _ = data
    store = built("IVF64_HNSW32,Flat", x, IndexConfig(factory="IVF64_HNSW32,Flat", nprobe=48, device="cpu"))
    q = faiss.downcast_index(faiss.extract_index_ivf(store.index).quantizer)
    assert faiss.extract_index_ivf(store.index).nprobe == 48 and q.hnsw.efSearch >= 96


# ---- save / load of every index type -----------------------------------------------------------------

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
    del m["search_params"]
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    loaded = IndexStore.load(d)
    assert loaded.ntotal == 100 and loaded.manifest["search_params"] == {}


# ---- embeddings files ---------------------------------------------------------------------------

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


# ---- devices (GPU mocked only where FAISS reports its GPUs) ------------------------------------------

def test_device_selection_without_gpu(monkeypatch, data):
    monkeypatch.setattr(devices, "faiss_gpus", lambda: 0)
    assert faiss_device("auto") == "cpu" and faiss_device("cpu") == "cpu"
    with pytest.raises(FpindexError, match="no GPU support"):
        faiss_device("cuda")
    with pytest.raises(FpindexError, match="no GPU support"):
        create_store(IndexConfig(device="cuda"), 100, DIM, dict(IDENTITY))
    assert create_store(IndexConfig(device="auto"), 100, DIM, dict(IDENTITY)).device == "cpu"


def test_device_selection_with_gpu(monkeypatch):
    monkeypatch.setattr(devices, "faiss_gpus", lambda: 1)
    assert faiss_device("auto") == "cuda" and faiss_device("cuda") == "cuda" and faiss_device("cpu") == "cpu"
    assert create_store(IndexConfig(device="auto"), 100, DIM, dict(IDENTITY)).device == "cuda"
    with pytest.raises(FpindexError, match="unknown device"):
        faiss_device("tpu")


def test_real_detection_matches_this_faiss():
    assert devices.faiss_gpus() == (faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0)


# ---- synthetic data, ground truth and the bench contract ------------------------------------------------

def test_synthetic_chunks_are_reproducible_and_structured():
    s = Synthetic(64, seed=5)
    a = s.take(70_000, 0)
    assert a.dtype == np.float32
    b = np.concatenate([v for _, v in s.rows(65_000, 70_000)])
    np.testing.assert_array_equal(a[65_000:], b)
    np.testing.assert_allclose(np.linalg.norm(a[:100], axis=1), 1, atol=1e-5)
    # Clustered, not uniform: nearest neighbours are far closer than for uniform vectors on the sphere.
    u = np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    nearest = (a[:200] @ a[200:20_000].T).max(1).mean()
    assert nearest > 0.75 and nearest > (u[:200] @ u[200:].T).max(1).mean() + 0.3


def test_exact_knn_streams_like_brute_force(data):
    x, q = data
    d, i = exact_knn(q, (x[s:s + 777] for s in range(0, len(x), 777)), 7)
    np.testing.assert_array_equal(i, np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7])
    assert recall_at(i, i, 7) == 1.0 and recall_at(i[:, ::-1], i, 7) == 1.0 and recall_at(i, i, 1) == 1.0


def test_bench_contract_json():
    r = CliRunner().invoke(app, ["bench", "--n", "3000", "--dim", "16", "--index-type", "IVF16,Flat", "--queries",
                                 "50", "--tune-queries", "30", "--repeats", "1", "--single", "5", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("factory", "n", "dim", "build_s", "index_bytes", "recall_at_1", "recall_at_10", "qps", "exact_qps",
                "qps_single", "peak_rss_bytes", "threads", "cpu", "wrapper_overhead", "search_params"):
        assert key in out, key
    assert out["factory"] == "IVF16,Flat" and out["n"] == 3000 and out["dim"] == 16
    assert 0.9 <= out["recall_at_10"] <= 1.0 and out["index_bytes"] > 3000 * 16 * 4


def test_bench_on_embeddings_file(tmp_path, data):
    x, _ = data
    p = write_embeddings(tmp_path / "e.npy", x)
    r = run_bench(10**9, 0, "Flat", embeddings=p, n_eval=40, n_tune=20, repeats=1, n_single=5)
    assert r["n"] == len(x) - 60 and r["dim"] == DIM and r["recall_at_10"] == 1.0
    assert r["source"] == "embeddings:e.npy"


def test_cpu_indexes_and_their_wrappers_are_not_taken_for_gpu_ones():
    from fpindex.index.gpu import is_gpu

    for factory in ("Flat", "IVF16,Flat", "PCAR16,IVF16,SQ8", "OPQ8,IVF16,PQ8"):
        assert not is_gpu(faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)), factory
    assert not is_gpu(faiss.IndexIDMap(faiss.IndexFlatIP(DIM)))
    assert not is_gpu(None)
