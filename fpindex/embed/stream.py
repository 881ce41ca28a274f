"""Streaming embedding: read → hash → decode → enhance in DataLoader workers, overlapped with the forward pass.

Workers return, per file, its content hash and (only when needed) its canonical pixels and enhanced stack;
the main process runs the model on the images whose vectors are not cached. Order is the file order whatever
the number of workers, and each image is processed by the same code, so results do not depend on `workers`.
Worker busy time is reported back per image and summed into the `load` and `enhance` timings.

Speed settings, each measured (benchmarks/README.md, "Throughput"):
- channels_last weights: ≈ 2× faster convolutions on CPU (oneDNN) and on GPU tensor cores; outputs agree
  with the default layout to ~1e-7, so it is always on.
- precision bf16/fp16: autocast around the forward pass; faster on CPUs with AMX/AVX-512-BF16 and on GPUs,
  but vectors move (cosines to the fp32 vectors ≈ 0.999+), so it is an option, recorded in the index.
- GPU: pinned host memory and non-blocking copies; default batch 256 (64 on CPU).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..enhance import enhance_batch
from ..errors import FpindexError
from ..load import ReadOptions, Reader, decode, fit_size
from ..utils import opencv_threads

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise FpindexError(f"unknown precision {precision!r}; choose from: {', '.join(PRECISIONS)}")
    return precision


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def default_workers(n_files: int, batch_size: int) -> int:
    """One process per spare core on machines with cores to spare; none on 1-2 cores, where the model's own
    threads already use every core (measured: a worker there only competes with them), nor for small sets
    (starting a worker costs seconds)."""
    spare = (os.cpu_count() or 1) - 1
    if spare < 2 or n_files < 4 * batch_size:
        return 0
    return min(spare, 8)


def _context():
    """Workers come from a fork server, never forked from this process: a process that has already run
    OpenCV's or OpenMP's thread pools cannot be forked safely (its children deadlock in the pools' locks)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])     # this module, by its own name: it cannot go stale
    return ctx


def optimise(module_owner: object) -> None:
    """Put every conv network of an embedder in channels_last (a layout change only)."""
    for value in vars(module_owner).values():
        if isinstance(value, nn.Module):
            value.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@dataclass
class Item:
    """What a worker found out about one file."""

    pos: int
    sha256: str = ""
    nbytes: int = 0
    error: str | None = None
    skipped: bool = False          # already in the index (--add)
    cached: bool = False           # vector known: no forward pass
    img: np.ndarray | None = None  # canonical pixels, when decoded
    t_load: float = 0.0
    t_enhance: float = 0.0


@dataclass
class Batch:
    items: list[Item]
    x: torch.Tensor | None         # B × C × S × S for the items that need the model, in item order

    def pin_memory(self) -> "Batch":   # called by DataLoader(pin_memory=True)
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


class FileStream(Dataset):
    def __init__(self, files: Sequence[Path], size: int, enhance: Sequence[str], known: frozenset[str],
                 skip: frozenset[str], preloaded: Mapping[int, np.ndarray], read: ReadOptions = ReadOptions()) -> None:
        self.files, self.size, self.enhance = list(files), size, tuple(enhance)
        self.known, self.skip, self.preloaded = known, skip, preloaded
        self.reader = Reader(read)     # per process: the images of one multi-image file share one read

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        t0 = time.perf_counter()
        item = Item(pos=i)
        try:
            item.sha256, item.nbytes, data = self.reader.content(self.files[i])
        except ValueError as e:
            item.error = str(e)
            item.t_load = time.perf_counter() - t0
            return item
        item.skipped = item.sha256 in self.skip
        item.cached = item.sha256 in self.known
        if not item.skipped and not item.cached and i in self.preloaded:
            item.img = self.preloaded[i]          # decoded earlier in this run (pixels.py)
        elif not item.skipped and not item.cached:
            try:
                item.img = fit_size(self.reader.image(self.files[i], data, decode), self.size)
            except ValueError as e:
                item.error = str(e)
        t1 = time.perf_counter()
        item.t_load = t1 - t0
        return item


class Collate:
    """Runs in the worker: enhancement and stacking, so the main process only feeds the model."""

    def __init__(self, enhance: Sequence[str]) -> None:
        self.enhance = tuple(enhance)

    def __call__(self, items: list[Item]) -> Batch:
        todo = [it for it in items if it.img is not None and not it.cached and not it.skipped and it.error is None]
        if not todo:
            return Batch(items, None)
        imgs = np.stack([it.img for it in todo])
        t = time.perf_counter()
        x = enhance_batch(imgs, self.enhance)       # the whole batch at once: fewer, larger OpenCV calls
        share = (time.perf_counter() - t) / len(todo)
        for it in todo:
            it.t_enhance = share                    # the batch's time, split evenly over its images
        return Batch(items, torch.from_numpy(x))


def _init_worker(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def batches(files: Sequence[Path], size: int, enhance: Sequence[str], batch_size: int, workers: int,
            known: frozenset[str] = frozenset(), skip: frozenset[str] = frozenset(),
            preloaded: Mapping[int, np.ndarray] | None = None,
            pin: bool = False, read: ReadOptions = ReadOptions()) -> Iterator[Batch]:
    ds = FileStream(files, size, enhance, known, skip, preloaded or {}, read)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=Collate(enhance), pin_memory=pin, worker_init_fn=_init_worker if workers else None,
                        prefetch_factor=2 if workers else None, persistent_workers=False,
                        multiprocessing_context=_context() if workers else None)
    if workers:
        yield from loader
        return
    # Decoding and enhancement run here, between forward passes: OpenCV's own thread pool would only contend
    # with the model's threads (workers turn it off too, in _init_worker).
    with opencv_threads(1):
        yield from loader


__all__ = ["batches", "Batch", "Collate", "FileStream", "Item", "optimise", "autocast", "check_precision", "default_batch_size",
           "default_workers", "PRECISIONS"]
