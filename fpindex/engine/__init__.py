"""Where the stages run: `local` (this process) or `ray` (a Ray cluster, ray_*.py).

An engine is three calls with the stages' own signatures — `embed_folder` (embed/run.py), `add` (the index's
add) and `evidence` (evidence/compute.py) — so the pipeline is one code path whichever runs it, and the Ray
engine only spreads the same stage functions over workers. Ray is imported only when `--engine ray` is
asked for, so fpindex without the `ray` extra never imports it.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..embed import embed_folder
from ..errors import FpindexError
from ..evidence import compute_evidence
from ..index import IndexStore

ENGINES = ("local", "ray")
_HOST_PORT = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class LocalEngine:
    """The stages as they are, in this process."""

    name = "local"
    embed_folder = staticmethod(embed_folder)
    evidence = staticmethod(compute_evidence)

    @staticmethod
    def add(store: IndexStore, vectors: np.ndarray, rows: pa.Table) -> None:
        store.add(vectors, rows)


def check_address(address: str | None) -> str | None:
    """'auto', HOST:PORT or ray://HOST:PORT (None: $RAY_ADDRESS or a cluster on this machine)."""
    if address is None or address == "auto":
        return address
    m = _HOST_PORT.match(address.strip())
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise FpindexError(f"--address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return address.strip()


def engine_for(run: RunConfig) -> Any:
    """The engine a run asks for; a bad choice or a missing Ray fails here, before any work."""
    if run.engine not in ENGINES:
        raise FpindexError(f"unknown engine {run.engine!r}; choose from: {', '.join(ENGINES)}")
    if run.engine == "local":
        if run.address is not None:
            raise FpindexError("--address is for --engine ray")
        return LocalEngine
    address = check_address(run.address)
    if any(importlib.util.find_spec(m) is None for m in ("ray", "pandas")) or \
            importlib.util.find_spec("ray.data") is None:
        raise FpindexError("Ray is not installed: pip install 'fpindex[ray]'")
    from .ray_engine import RayEngine

    return RayEngine.connect(address, run.quiet)


__all__ = ["ENGINES", "LocalEngine", "check_address", "engine_for"]
