"""The Ray engine: joins (or starts) a cluster once, then runs the stages' own functions on it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import FpindexError
from ..index import IndexStore

CONNECT_TIMEOUT = float(os.environ.get("FPINDEX_RAY_TIMEOUT", "5"))   # seconds to reach HOST:PORT


def probe(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers on is refused in `timeout` seconds: Ray itself
    retries such an address for minutes. 'auto' and None (found or started by Ray) are not probed."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (getattr(e, "strerror", None) or str(e))
        raise FpindexError(f"cannot reach the Ray cluster at {address} within {timeout:g} s: {reason} "
                           "(FPINDEX_RAY_TIMEOUT sets the wait)") from None


def connect(address: str | None, quiet: bool = False) -> None:
    """Join the cluster at `address` ('auto', HOST:PORT; None: $RAY_ADDRESS or a new local one); a session
    already joined in this process (e.g. by the caller's own ray.init) is reused. `quiet`: Ray's warnings
    too are silenced (its errors still reach stderr)."""
    import ray

    if ray.is_initialized():
        return
    probe(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(address=address, include_dashboard=False, logging_level="error" if quiet else "warning",
                 log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FpindexError(f"cannot join the Ray cluster at {where}: {reason}") from None


class RayEngine:
    """The same three calls as LocalEngine, with the work spread over the cluster's workers."""

    name = "ray"

    @classmethod
    def connect(cls, address: str | None, quiet: bool = False) -> type["RayEngine"]:
        connect(address, quiet)
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
