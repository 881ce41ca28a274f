"""Moving FAISS indexes to and from the GPU. Which device to use is decided in fpindex.devices; this module
only carries out the move, and keeps on the CPU what FAISS cannot run on a GPU."""

from __future__ import annotations

from typing import Any

import faiss

from ..devices import faiss_gpus
from .base import has_ondisk_lists

_GPU_RESOURCES: list[Any] = []


def _gpu_resources() -> Any:
    """One StandardGpuResources per process (it owns scratch memory and must outlive the indexes)."""
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return _GPU_RESOURCES[0]


def is_gpu(index: faiss.Index) -> bool:
    """Also true for a PCA/OPQ/IDMap wrapper around a GPU index: index_cpu_to_gpu keeps those wrappers on the
    CPU, and they must still go through index_gpu_to_cpu before saving and GpuParameterSpace for parameters."""
    if index is None:
        return False
    index = faiss.downcast_index(index)
    if "Gpu" in type(index).__name__:
        return True
    if isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap)):
        return is_gpu(index.index)
    return False


def to_device(index: faiss.Index, device: str) -> tuple[faiss.Index, str]:
    """Move an index to `device`; returns the index and where it really is. Types FAISS cannot run on a GPU
    (HNSW, on-disk lists) stay on the CPU."""
    if device != "cuda" or is_gpu(index):
        return index, "cuda" if is_gpu(index) else "cpu"
    if has_ondisk_lists(index):      # the GPU copy would read every memory-mapped list into GPU memory
        return index, "cpu"
    try:
        co = faiss.GpuClonerOptions()
        co.useFloat16 = False
        return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index, co), "cuda"
    except (RuntimeError, AttributeError):
        return index, "cpu"


def to_cpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if is_gpu(index) else index


def gpu_clustering(index: faiss.Index) -> None:
    """Let k-means run on the GPU: IVF training spends its time assigning points to centroids."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and faiss_gpus():
        ivf.clustering_index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, faiss.IndexFlatL2(ivf.d))
