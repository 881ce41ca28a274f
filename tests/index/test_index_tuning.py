"""Search parameters: tuned to the smallest reaching the target recall, given ones kept, and the exact
ground truth the tuning is measured against."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from index_support import built

from fpindex.config import IndexConfig
from fpindex.errors import FpindexError
from fpindex.index.tuning import exact_knn, recall_at


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


def test_exact_knn_streams_like_brute_force(data):
    x, q = data
    d, i = exact_knn(q, (x[s:s + 777] for s in range(0, len(x), 777)), 7)
    np.testing.assert_array_equal(i, np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7])
    assert recall_at(i, i, 7) == 1.0 and recall_at(i[:, ::-1], i, 7) == 1.0 and recall_at(i, i, 1) == 1.0

