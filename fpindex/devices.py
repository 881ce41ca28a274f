"""One reading of `--device auto|cpu|cuda` for FAISS, below the index layer so anything may import it.

FAISS is imported only when a GPU count is needed.
"""

from __future__ import annotations

from .errors import FpindexError

DEVICES = ("auto", "cpu", "cuda")


def _checked(requested: str) -> str:
    if requested not in DEVICES:
        raise FpindexError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    return requested


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
    without one is refused."""
    requested = _checked((requested or "auto").lower())
    if requested == "cpu":
        return "cpu"
    gpus = faiss_gpus()
    if requested == "cuda" and gpus == 0:
        raise FpindexError("--device cuda: this FAISS has no GPU support or sees no GPU; install the GPU extra "
                           "(pip install 'fpindex[gpu]') on a machine with CUDA, or use --device cpu")
    return "cuda" if gpus else "cpu"
