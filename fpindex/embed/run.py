"""Embedding a folder: stream files through decode → enhance → the model, reuse cached vectors, keep the
decoded pixels for the stages after this one (pixels.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..cache import ContentCache, cache_root
from ..config import EmbedConfig
from ..enhance import REVISION as ENHANCE_REVISION
from ..errors import FpindexError
from ..load import BadFile, ReadOptions, bad_file
from ..pixels import PixelStore
from ..utils import Timings
from .base import Embedder, build_embedder
from .train import trainable, trains
from .stream import autocast, batches, check_precision, default_batch_size, default_workers, optimise

# Vectors go to the cache in shards of this many rows, each a view of the embedded set where its rows are
# contiguous: a cold run of 1M images then holds one copy of its vectors (2 GB at 512-d), not three.
CACHE_BLOCK = 1 << 17


@dataclass
class Embedded:
    """The images of one folder that decoded, in file order, with their vectors."""

    root: Path
    paths: list[str] = field(default_factory=list)       # relative to root, POSIX style
    sha256: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    bad: list[BadFile] = field(default_factory=list)
    cached: int = 0                                       # rows whose vector came from the cache

    def files(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    def rows(self) -> pa.Table:
        return pa.table({"root": [str(self.root.resolve())] * len(self.paths), "path": self.paths,
                         "sha256": self.sha256, "bytes": self.nbytes})


def make_embedder(cfg: EmbedConfig) -> Embedder:
    check_precision(cfg.precision)
    if cfg.workers is not None and cfg.workers < 0:
        raise FpindexError("--workers must be 0 or more")
    embedder = build_embedder(cfg.model, channels=len(cfg.enhance), size=cfg.image_size, weights=cfg.weights,
                              seed=cfg.seed, device=cfg.device)
    if trains(cfg, embedder.spec.weights):
        trainable(embedder)                # a model that cannot be trained is refused before any image is read
    optimise(embedder)
    return embedder


def embed_identity(cfg: EmbedConfig, embedder: Embedder) -> dict[str, Any]:
    """What made the vectors, as stored in the index manifest and checked at query time."""
    return {"model": cfg.model, "weights": embedder.spec.weights, "weights_id": embedder.weights_id,
            "enhance": list(cfg.enhance), "image_size": embedder.spec.size, "seed": cfg.seed, "dim": embedder.dim,
            "precision": cfg.precision} | ReadOptions.of(cfg).identity()


def resolved(cfg: EmbedConfig, embedder: Embedder) -> EmbedConfig:
    """The config with the model's defaults filled in, so a query rebuilt from it embeds the same way."""
    from dataclasses import replace

    return replace(cfg, weights=embedder.spec.weights, image_size=embedder.spec.size)


def vector_cache(cfg: EmbedConfig, embedder: Embedder) -> ContentCache | None:
    if not cfg.cache:
        return None
    import torch

    from .._version import __version__

    # `weights` is how the weights were asked for (a path can differ between runs); `weights_id` is what they are.
    identity = {k: v for k, v in embed_identity(cfg, embedder).items() if k != "weights"}
    identity |= {"fpindex": __version__, "torch": torch.__version__, "enhance_revision": ENHANCE_REVISION,
                 # GPU convolutions in "fp32" run as TF32 by default (vectors ≈ 1e-3 from the CPU's): never mixed
                 "device": embedder.spec.device.type}
    return ContentCache(cache_root(cfg), "embedding", identity, width=embedder.dim)


def embed_folder(root: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                 progress: Callable[[int, str], Any], desc: str, pixels: PixelStore | None = None,
                 skip_sha: set[str] | None = None, cache: ContentCache | None = None) -> Embedded:
    """Embed `files` (below `root`) in file order; unreadable files become `bad`, `skip_sha` ones are left out.

    Images already in `pixels` are not decoded again; those decoded here are put there. A preloaded image is
    let go once its batch is done, so the ones the (bounded) store drops meanwhile are freed, not held here."""
    device = embedder.spec.device
    bs = cfg.batch_size or default_batch_size(device)
    workers = default_workers(len(files), bs) if cfg.workers is None else cfg.workers
    known = frozenset(cache.keys()) if cache is not None else frozenset()
    preloaded = {}
    if pixels is not None:
        preloaded = {i: img for i, f in enumerate(files) if (img := pixels.known(f)) is not None}
    out = Embedded(root=root)
    new_vecs: list[np.ndarray] = []
    new_rows: list[int] = []
    stream = batches(files, embedder.spec.size, cfg.enhance, bs, workers, known=known,
                     skip=frozenset(skip_sha or ()), preloaded=preloaded, pin=device.type == "cuda",
                     read=ReadOptions.of(cfg))
    with progress(len(files), desc) as bar:
        for batch in stream:
            embed_rows = []
            for it in batch.items:
                was_preloaded = preloaded.pop(it.pos, None) is not None
                timings.add("load", it.t_load)
                timings.add("enhance", it.t_enhance)
                if it.error is not None:
                    bad_file(files[it.pos], it.error, out.bad)
                    continue
                if it.skipped:
                    continue
                row = len(out.paths)
                out.paths.append(files[it.pos].relative_to(root).as_posix())
                out.sha256.append(it.sha256)
                out.nbytes.append(it.nbytes)
                if not it.cached:
                    embed_rows.append(row)
                if pixels is not None and it.img is not None and not was_preloaded:
                    pixels.put(files[it.pos], it.img)
            if batch.x is not None:
                with timings.stage("embed"), autocast(device, cfg.precision):
                    new_vecs.append(embedder(batch.x))
                new_rows += embed_rows
            bar.update(len(batch.items))
    out.vectors = np.empty((len(out.paths), embedder.dim), np.float32)
    rows = np.asarray(new_rows, np.int64)
    at = 0
    for i, v in enumerate(new_vecs):      # each batch let go once placed: one copy of the set, not three
        out.vectors[rows[at:at + len(v)]] = v
        at += len(v)
        new_vecs[i] = None
    old_rows = np.setdiff1d(np.arange(len(out.paths)), rows)
    out.cached = len(old_rows)
    if cache is not None:
        with timings.stage("embed"):
            if len(old_rows):
                out.vectors[old_rows] = cache.get([out.sha256[r] for r in old_rows.tolist()])
            for s in range(0, len(rows), CACHE_BLOCK):
                block = rows[s:s + CACHE_BLOCK]
                contiguous = block[-1] - block[0] == len(block) - 1
                cache.put([out.sha256[r] for r in block.tolist()],
                          out.vectors[block[0]:block[-1] + 1] if contiguous else out.vectors[block])
    return out
