"""How `--device auto|cpu|cuda` is read, for torch (the embedder) and for FAISS (the index); the GPU is
mocked only where FAISS reports its GPUs."""

from __future__ import annotations

import pytest
import torch

from fpindex.devices import torch_device
from fpindex.errors import FpindexError


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
