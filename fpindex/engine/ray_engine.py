"""The Ray engine: joins (or starts) a cluster once, then runs the stages' own functions on it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import FpindexError
from ..index import IndexStore

def connect(address: str | None) -> None:
    """Join the cluster at `address` ('auto', HOST:PORT; None: $RAY_ADDRESS or a new local one); a session
    already joined in this process (e.g. by the caller's own ray.init) is reused."""
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FpindexError(f"cannot join the Ray cluster at {where}: {reason}") from None


class RayEngine:
    """The same three calls as LocalEngine, with the work spread over the cluster's workers."""

    name = "ray"

    @classmethod
    def connect(cls, address: str | None) -> type["RayEngine"]:
        connect(address)
        return cls

    @staticmethod
    def embed_folder(*args: Any, **kwargs: Any):
        from .ray_embed import embed_folder

        return embed_folder(*args, **kwargs)

    @staticmethod
    def add(store: IndexStore, vectors: np.ndarray, rows: pa.Table) -> None:
        from .ray_index import add

        add(store, vectors, rows)

    @staticmethod
    def evidence(*args: Any, **kwargs: Any):
        from .ray_rerank import compute_evidence

        return compute_evidence(*args, **kwargs)


__all__ = ["RayEngine", "connect"]
