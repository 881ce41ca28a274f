"""Choosing an index for the data and the memory: sizes, auto selection, the memory estimate against the
built index, and refusal (with the estimate and a smaller choice) before any work."""

from __future__ import annotations

import faiss
import pytest
from index_support import DIM, G, IDENTITY, rows
from typer.testing import CliRunner

from fpindex.cli import app
from fpindex.errors import FpindexError
from fpindex.index import IndexStore, format_bytes, parse_bytes
from fpindex.index.factory import MAX_NLIST, candidates, estimate, nlist_for, select


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
    with pytest.raises(FpindexError, match="needs about") as e:
        select("IVF4096,Flat", 10_000_000, 256, 8 * G)
    msg = str(e.value)
    assert "needs about 12.8 GiB" in msg and "--max-memory 8.0 GiB" in msg
    assert "IVF4096_HNSW32,SQ8" in msg               # the suggestion fits
    with pytest.raises(FpindexError, match="no index .* fits"):
        select("auto", 10_000_000, 256, 10 << 20)
    # The embeddings a build holds count against the budget too.
    assert select("Flat", 1000, 32, 300_000).factory == "Flat"
    with pytest.raises(FpindexError, match="more than --max-memory"):
        select("Flat", 1000, 32, 300_000, resident=4 * 1000 * 32)


def test_cli_build_refuses_before_embedding(scenario, tmp_path):
    r = CliRunner().invoke(app, ["build", str(scenario / "generated"), "--index", str(tmp_path / "i"),
                                 "--index-type", "Flat", "--max-memory", "1K", "--quiet"])
    assert isinstance(r.exception, FpindexError) and "more than --max-memory 1.0 KiB" in str(r.exception)
    assert not (tmp_path / "i").exists()

