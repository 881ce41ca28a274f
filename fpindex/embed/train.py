"""Self-supervised fine-tuning of the embedder on the generated images at build time (see selfsup.py for why).

Trained weights are cached by the content of the training sample and every setting that shapes the training,
so re-running an unchanged audit reads them back instead of training again. The sample's decoded pixels go
into the run's pixel store, so the embedding pass that follows does not decode them again."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._version import __version__
from ..cache import blob_meta, blob_path, cache_root, read_blob, write_blob
from ..config import EmbedConfig
from ..enhance import REVISION as ENHANCE_REVISION, enhance_batch
from ..errors import FpindexError, FpindexWarning
from ..load import ReadOptions, Reader, decode, fit_size
from ..pixels import PixelStore
from ..utils import Timings, seeded_sample, sha256_bytes
from . import selfsup
from .base import SELFSUP, SELFSUP_FILE, UNTRAINED, Embedder, file_weights_id  # noqa: F401  (the constants' old home)
from .selfsup import SelfSupConfig


def trains(cfg: EmbedConfig, weights: str) -> bool:
    """Whether a new index trains its embedder on the generated set: weights selfsup, or --finetune."""
    return weights == SELFSUP or bool(cfg.finetune)


def trainable(embedder: Embedder) -> Any:
    net = embedder.trainable()
    if net is None:
        raise FpindexError(f"model {embedder.spec.model or type(embedder).__name__} cannot be trained; drop "
                           f"--finetune / --weights {SELFSUP}")
    return net


def check_training_memory(n: int, size: int, channels: int, free: int | None = None, parameters: int = 0) -> None:
    """Training holds its whole sample at once (pixels, then the enhanced stacks, float32), and for each of the
    network's parameters its value, gradient and two AdamW moments: refused before decoding when the machine
    cannot hold it, naming what to lower, rather than swapping or being killed."""
    from ..utils import available_memory

    need, free = 4 * n * size * size * (1 + 2 * channels) + 16 * parameters, free or available_memory()
    if free is not None and need > free:
        raise FpindexError(f"training on {n:,} generated images at --image-size {size} needs about "
                           f"{need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB of memory is available; lower "
                           "--image-size or train on fewer images (or pass --weights random)")


def train_on_generated(generated: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                       progress: Callable[[int, str, str], Any],
                       pixels: PixelStore | None = None) -> tuple[dict[str, Any], bytes]:
    import torch

    net = trainable(embedder)
    start = embedder.weights_id          # what training starts from: seeded random, or a weights file
    sscfg = SelfSupConfig(seed=cfg.seed, steps=cfg.finetune or cfg.train_steps)
    sample = [files[i] for i in seeded_sample(len(files), sscfg.max_images, cfg.seed).tolist()]
    reader = Reader(ReadOptions.of(cfg))
    with timings.stage("load"):
        raw = []                   # (path, content id, the bytes of a single-image file)
        for f in sample:
            try:
                sha, _, data = reader.content(f)
            except ValueError:
                continue  # reported by the embedding pass that follows
            raw.append((f, sha, data))
    cached = None
    if cfg.cache:
        cached = blob_path(cache_root(cfg), SELFSUP, {
            SELFSUP: sscfg.as_dict(), "model": cfg.model, "enhance": list(cfg.enhance),
            "enhance_revision": ENHANCE_REVISION, "size": embedder.spec.size, "seed": cfg.seed,
            "versions": {"fpindex": __version__, "torch": torch.__version__},
            "sample": sha256_bytes("".join(sha for _, sha, _ in raw).encode())} | reader.read.identity()
            | ({"start": start} if start != UNTRAINED else {}), ".pt")
        data = read_blob(cached)
        meta = blob_meta(cached) if data is not None else None
        if data is not None and meta is not None:
            before = {k: v.clone() for k, v in net.state_dict().items()}
            try:               # a hash-valid blob that is not this network's state dict: train again, rewrite
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as e:
                net.load_state_dict(before)      # a failed load may have copied some tensors
                warnings.warn(f"cached trained weights {cached} do not load ({type(e).__name__}); training "
                              "again and rewriting them", FpindexWarning, stacklevel=2)
            else:
                net.to(embedder.spec.device)
                embedder.weights_id = file_weights_id(sha256_bytes(data))
                return {**meta, "from_cache": True, "start": start}, data
    check_training_memory(len(raw), embedder.spec.size, len(cfg.enhance),
                          parameters=sum(p.numel() for p in net.parameters()))
    with timings.stage("load"):
        decoded = []
        for f, _, d in raw:
            try:
                img = fit_size(reader.image(f, d, decode), embedder.spec.size)
            except ValueError:
                continue
            decoded.append(img)
            if pixels is not None:
                pixels.put(f, img)
        if len(decoded) < 2:
            raise FpindexError(f"generated-image folder {generated}: too few readable images to train on")
        imgs = np.stack(decoded)
    del decoded                                   # before the channels are made: less memory at once
    with timings.stage("enhance"):
        stacks = enhance_batch(imgs, cfg.enhance)  # all at once: filters with a batch version run on chunks
    del imgs
    with timings.stage("embed"), progress(sscfg.steps_for(len(stacks)), "train on generated", "step") as bar:
        report = selfsup.train(net, embedder.dim, stacks, sscfg, bar.update, forward=embedder.features)
    data, embedder.weights_id = selfsup.state_bytes(net)
    report["start"] = start
    if cached is not None:
        write_blob(cached, data, meta=report)
    return report, data
