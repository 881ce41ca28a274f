"""`fpindex bench`: its synthetic data and the contract of its output."""

from __future__ import annotations

import json

import numpy as np
from index_support import DIM
from typer.testing import CliRunner

from fpindex.cli import app
from fpindex.index import run_bench, write_embeddings
from fpindex.index.bench import Synthetic


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

