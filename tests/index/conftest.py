"""Fixtures of the index-layer tests: one FAISS thread, and small seeded structured vectors."""

from __future__ import annotations

import faiss
import pytest
from index_support import DIM

from fpindex.index.bench import Synthetic


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

