"""What every module of the index layer needs to know about a FAISS index: how one is made from a factory
string, how a FAISS error reads for a user, and how to see through the wrappers FAISS puts around the part
that matters (PCA/OPQ pre-transforms, GPU copies, on-disk inverted lists). Depends on nothing else here, so
the other modules can all import it without a circle."""

from __future__ import annotations

from typing import Any

import faiss

from ..errors import FpindexError


def faiss_reason(e: Exception) -> str:
    """FAISS errors start with the C++ location; keep the part a user can act on."""
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return msg.rsplit("Error: ", 1)[-1].rsplit(": ", 1)[-1][:160] if "Error in " in msg else msg[:160]


def make_faiss_index(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise FpindexError(f"invalid FAISS factory string {factory!r} for dimension {dim}: {faiss_reason(e)}") from None


def unwrap(index: faiss.Index) -> tuple[faiss.Index, int]:
    """Strip pre-transforms (PCA, OPQ, …); return the inner index and the bytes of the transforms."""
    index = faiss.downcast_index(index)
    fixed = 0
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = index.chain.at(i)
            fixed += 4 * vt.d_in * (vt.d_out + 1)
        index = faiss.downcast_index(index.index)
    return index, fixed


def ivf_layer(index: faiss.Index) -> Any:
    """The IVF layer of an index on the CPU (IndexIVF) or moved to a GPU (GpuIndexIVF, which FAISS's
    extract_index_ivf does not know), else None."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and hasattr(faiss, "GpuIndexIVF"):
        inner, _ = unwrap(index)
        if isinstance(inner, faiss.GpuIndexIVF):
            return inner
    return ivf


def has_ondisk_lists(index: faiss.Index) -> bool:
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
