"""How `--device auto|cpu|cuda` is read, for torch (the embedder) and for FAISS (the index); the GPU is
mocked only where FAISS reports its GPUs."""

from __future__ import annotations

import faiss
import pytest
import torch

from fpindex import devices
from fpindex.config import IndexConfig
from fpindex.devices import faiss_device, torch_device
from fpindex.errors import FpindexError
from fpindex.index import create_store
from fpindex.index.gpu import is_gpu

DIM = 32
IDENTITY = {"model": "cnn", "weights": "random", "weights_id": "random:seed=0", "enhance": ["none"],
            "image_size": 64, "seed": 0, "dim": DIM}


# ---- torch --------------------------------------------------------------------------------------------

def test_torch_device():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FpindexError, match="unknown device"):
        torch_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_torch_device_cuda_without_gpu():
    with pytest.raises(FpindexError, match="no CUDA GPU"):
        torch_device("cuda")


# ---- FAISS ---------------------------------------------------------------------------------------------

def test_faiss_device_without_gpu(monkeypatch):
    monkeypatch.setattr(devices, "faiss_gpus", lambda: 0)
    assert faiss_device("auto") == "cpu" and faiss_device("cpu") == "cpu"
    with pytest.raises(FpindexError, match="no GPU support"):
        faiss_device("cuda")
    with pytest.raises(FpindexError, match="no GPU support"):
        create_store(IndexConfig(device="cuda"), 100, DIM, dict(IDENTITY))
    assert create_store(IndexConfig(device="auto"), 100, DIM, dict(IDENTITY)).device == "cpu"


def test_faiss_device_with_gpu(monkeypatch):
    monkeypatch.setattr(devices, "faiss_gpus", lambda: 1)
    assert faiss_device("auto") == "cuda" and faiss_device("cuda") == "cuda" and faiss_device("cpu") == "cpu"
    assert create_store(IndexConfig(device="auto"), 100, DIM, dict(IDENTITY)).device == "cuda"
    with pytest.raises(FpindexError, match="unknown device"):
        faiss_device("tpu")


def test_cpu_indexes_and_their_wrappers_are_not_taken_for_gpu_ones():
    for factory in ("Flat", "IVF16,Flat", "PCAR16,IVF16,SQ8", "OPQ8,IVF16,PQ8"):
        assert not is_gpu(faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)), factory
    assert not is_gpu(faiss.IndexIDMap(faiss.IndexFlatIP(DIM)))
    assert not is_gpu(None)

