"""One reading of `--device auto|cpu|cuda`, for the two libraries that run on a GPU.

torch and FAISS are installed apart (faiss-cpu is the default, torch may still see a GPU), so each has its
own answer to 'auto' and its own refusal of 'cuda'; the accepted words and the error for any other are shared.
Neither library is imported at module level: the index layer must not load torch, and embedding must not
load FAISS just to read a device name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import FpindexError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def _checked(requested: str) -> str:
    if requested not in DEVICES:
        raise FpindexError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return requested


def torch_device(requested: str) -> "torch.device":
    """Where the embedder runs: 'auto' → cuda when torch sees a GPU; 'cuda' without one is refused."""
    import torch

    requested = _checked(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise FpindexError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(requested)


def faiss_gpus() -> int:
    """GPUs FAISS itself can use: 0 with a CPU-only FAISS build, whatever torch sees."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except (AttributeError, RuntimeError):
        return 0


def faiss_device(requested: str = "auto") -> str:
    """Where the index runs: 'auto' → 'cuda' when FAISS has GPU support and sees a GPU, else 'cpu'; 'cuda'
    without one is refused. Unlike torch_device it also reads None (as 'auto') and any letter case."""
    requested = _checked((requested or "auto").lower())
    if requested == "cpu":
        return "cpu"
    gpus = faiss_gpus()
    if requested == "cuda" and gpus == 0:
        raise FpindexError("--device cuda: this FAISS has no GPU support or sees no GPU; install the GPU extra "
                           "(pip install 'fpindex[gpu]') on a machine with CUDA, or use --device cpu")
    return "cuda" if gpus else "cpu"
