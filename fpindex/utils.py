"""Small shared helpers: content hashes, version stamps, stage timers; the atomic writes live in safeio.py
(re-exported here, where the stages have always imported them)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Iterator

from .safeio import atomic_dir, json_default, atomic_path, write_json_atomic, write_text_atomic  # noqa: F401


@contextlib.contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's own thread pool set to `n` inside the block, restored after: where we already spread work over
    the cores (or the model's threads use them), OpenCV's pool would only compete."""
    import cv2

    old = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(old)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of everything that can change a result, recorded in every output."""
    from importlib import metadata

    from ._version import __version__

    out = {"fpindex": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("numpy", "torch", "torchvision", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11",
                 "opencv-python-headless", "opencv-python", "scikit-image", "scikit-learn", "pyarrow", "pytorch-msssim"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def seeded_sample(n: int, size: int, seed: int):
    """Sorted row numbers of a seeded sample of at most `size` of n items: every sample in fpindex (training,
    tuning, fitting) is drawn this one way, so the same seed picks the same rows everywhere."""
    import numpy as np

    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


STAGES = ("load", "enhance", "embed", "index", "search", "rerank", "decide", "write")


class Timings:
    """Busy time per pipeline stage, in seconds; `total` is wall time since creation. A stage entered inside
    another pauses the outer one, so no second is counted twice (e.g. loading pixels while fitting the index)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self.seconds: dict[str, float] = {s: 0.0 for s in STAGES}
        self._open: list[list] = []            # [stage, since] of the stages entered and not left, innermost last

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        if self._open:
            outer = self._open[-1]
            self.add(outer[0], t - outer[1])
        self._open.append([name, t])
        try:
            yield
        finally:
            _, since = self._open.pop()
            t = time.perf_counter()
            self.add(name, t - since)
            if self._open:
                self._open[-1][1] = t

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 4) for k, v in self.seconds.items()}
        d["total"] = round(time.perf_counter() - self._t0, 4)
        return d


def available_memory() -> int | None:
    """Bytes the system could give this process now without swapping (Linux's MemAvailable); None where the
    system does not say, and then no check is made."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
