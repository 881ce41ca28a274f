"""The Ray engine against the local one on seeded data: the same ids, vectors within float tolerance, the
same labels; a worker killed mid-job is retried by Ray, and re-runs reuse the written shards.

One local Ray cluster (2 CPUs) serves the whole module; skipped where Ray is not installed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fpindex[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'fpindex[ray]')")

from fpindex import build_index  # noqa: E402
from fpindex.engine import faults, ray_index, ray_rerank  # noqa: E402
from fpindex.engine.ray_embed import known_hashes  # noqa: E402
from fpindex.index import IndexStore  # noqa: E402

pytestmark = pytest.mark.slow      # a Ray cluster: minutes, run by make test and CI


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Workers inherit the environment at start: the crash hook's file name is set before ray.init (the file
    itself is made only by the test that wants a worker killed)."""
    import os

    crash = tmp_path_factory.mktemp("crash") / "kill-one-worker"
    os.environ[faults.CRASH_ENV] = str(crash)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    # Both workers import torch and fpindex while the local reference runs (seconds per process, once).
    warm = ray.remote(num_cpus=1)(lambda: __import__("fpindex.engine.ray_embed") and None)
    pending = [warm.remote() for _ in range(2)]
    yield crash
    del pending
    ray.shutdown()
    os.environ.pop(faults.CRASH_ENV, None)


def _cfg(helpers, engine, cache_dir, **embed):
    return helpers.CFG.override(run={"engine": engine}, embed={"cache_dir": str(cache_dir), **embed})


@pytest.fixture(scope="module")
def local(scenario, helpers, tmp_path_factory):
    """The local engine's build and query, self-supervised weights (trained here, broadcast by the Ray run)."""
    cfg = _cfg(helpers, "local", tmp_path_factory.mktemp("cache-local"), weights="selfsup", train_steps=2)
    idx = build_index(scenario / "generated", config=cfg)
    result = idx.query(scenario / "test", used=scenario / "train" / "used", not_used=scenario / "train" / "not_used")
    return idx, result


def test_ray_build_and_query_give_the_local_answers(cluster, local, scenario, helpers, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_rerank, "BATCH", 5)        # several re-ranking tasks
    monkeypatch.setattr(ray_index, "SHARD_ROWS", 7)    # several index shards
    cfg = _cfg(helpers, "ray", tmp_path / "cache", weights="selfsup", train_steps=2)
    idx = build_index(scenario / "generated", config=cfg)
    want_idx, want = local
    assert idx.embedded.paths == want_idx.embedded.paths
    assert idx.embedded.sha256 == want_idx.embedded.sha256
    np.testing.assert_allclose(idx.embedded.vectors, want_idx.embedded.vectors, atol=1e-5)
    assert idx.manifest["embedder"]["weights_id"] == want_idx.manifest["embedder"]["weights_id"]
    got = idx.query(scenario / "test", used=scenario / "train" / "used", not_used=scenario / "train" / "not_used")
    assert got.predictions["image"].tolist() == want.predictions["image"].tolist()
    assert got.predictions["label"].tolist() == want.predictions["label"].tolist()
    np.testing.assert_allclose(got.predictions["score"], want.predictions["score"], atol=1e-5)
    assert got.neighbours["generated_id"].tolist() == want.neighbours["generated_id"].tolist()
    text = ["image", "rank", "generated_id", "generated", "sha256", "generated_sha256"]
    assert got.neighbours[text[4:]].equals(want.neighbours[text[4:]])     # the images' content hashes
    for col in want.neighbours.columns.drop(text):
        np.testing.assert_allclose(got.neighbours[col], want.neighbours[col], atol=1e-5, err_msg=col)
    assert got.summary["verdict"] == want.summary["verdict"]


@pytest.mark.parametrize("factory", ["IVF4,Flat", "Flat"])
def test_sharded_add_is_one_add_also_onto_a_filled_index(cluster, monkeypatch, factory):
    import pyarrow as pa

    monkeypatch.setattr(ray_index, "SHARD_ROWS", 60)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = pa.table({"root": ["r"] * 300, "path": [f"{i}.png" for i in range(300)],
                     "sha256": [f"{i:064x}" for i in range(300)], "bytes": [1] * 300})
    one, sharded, twice, added = (IndexStore.create(factory, 16, {}, seed=0) for _ in range(4))
    one.add(x, rows)
    ray_index.add(sharded, x, rows)
    for store, add in ((twice, IndexStore.add), (added, ray_index.add)):   # `build --add`: rows 100… appended
        store.add(x[:100], rows.slice(0, 100))
        add(store, x[100:], rows.slice(100))
    for store in (one, sharded, twice, added):
        store.set_search_params({"nprobe": 2} if factory.startswith("IVF") else {})
    for want, got in ((one, sharded), (twice, added)):
        for a, b in zip(want.search(x[:50], 5), got.search(x[:50], 5)):
            np.testing.assert_array_equal(a, b)
        assert got.items.equals(want.items) and got.manifest["ntotal"] == 300


def test_killed_worker_is_retried_and_reruns_reuse_the_shards(cluster, scenario, helpers, tmp_path):
    want = build_index(scenario / "generated", config=_cfg(helpers, "local", tmp_path / "local")).embedded
    cache = tmp_path / "cache"
    half = tmp_path / "half"                  # a job that stopped half way: its shards are on disk
    half.mkdir()
    for p in sorted((scenario / "generated").iterdir())[:10]:
        shutil.copy(p, half / p.name)
    cluster.write_text("once")                # the next Ray worker to start a batch dies (os._exit)
    first = build_index(half, config=_cfg(helpers, "ray", cache))
    assert not cluster.exists() and cluster.with_name(cluster.name + ".done").exists()   # a worker died…
    assert first.ntotal == 10 and first.build_summary["cached"] == 0                     # …and was retried
    full = build_index(scenario / "generated", config=_cfg(helpers, "ray", cache))
    assert full.build_summary["cached"] == 10 and full.embedded.paths == want.paths       # nothing redone
    np.testing.assert_allclose(full.embedded.vectors, want.vectors, atol=1e-5)
    shards = sorted(p.name for p in cache.glob("ray-embedding-*/part-*.parquet"))
    again = build_index(scenario / "generated", config=_cfg(helpers, "ray", cache))
    assert again.build_summary["cached"] == len(want.paths)
    assert sorted(p.name for p in cache.glob("ray-embedding-*/part-*.parquet")) == shards  # nothing written
    assert known_hashes(next(cache.glob("ray-embedding-*"))) == set(want.sha256)
    np.testing.assert_array_equal(again.embedded.vectors, full.embedded.vectors)
