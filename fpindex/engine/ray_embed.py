"""Embedding a folder as a Ray Data pipeline: file list → read, hash, decode, enhance (CPU tasks) → the model
(an actor per GPU, or on CPUs the same tasks) → Parquet shards of (path, sha256, vector), plus the rows back to
the driver.

Each step is the local code: `FileStream` items and `Collate` enhancement from embed/stream.py, the driver's
own embedder (trained or loaded there, then broadcast through the object store), so the vectors are the local
ones. Shards live in the cache root under a name keyed by the embedding identity; each is written whole
(temporary name, then renamed), so a killed or re-run job finds only complete shards and embeds only the
content hashes none of them holds. Ray retries the batch of a killed task, and restarts a killed actor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import ContentCache, identity_key
from ..config import EmbedConfig
from ..embed import Embedded, Embedder
from ..embed.stream import FileStream, Collate, autocast, default_batch_size
from ..errors import FpindexError
from ..load import BadFile, ReadOptions, bad_file
from ..utils import Timings, opencv_threads
from .faults import crash_once_for_tests

KIND = "ray-embedding"
NEW, CACHED, SKIPPED, BAD = "new", "cached", "skipped", "bad"


# ---- the shards -------------------------------------------------------------------------------------

def shard_dir(cache: ContentCache | None, device: str) -> Path | None:
    """`<cache root>/ray-embedding-<key>`: the vector cache's identity with the workers' device (GPU vectors
    differ from CPU ones by ~1e-3, so they are never mixed); None without a cache."""
    if cache is None:
        return None
    identity = {**cache.identity, "kind": KIND, "device": device}
    return cache.dir.parent / f"{KIND}-{identity_key(identity)}"


def _shards(directory: Path | None) -> list[Path]:
    return sorted(directory.glob("part-*.parquet")) if directory is not None and directory.is_dir() else []


def _read(shard: Path, columns: list[str] | None = None) -> pa.Table | None:
    try:
        return pq.read_table(shard, columns=columns)
    except Exception:                  # damaged: ignored, its rows are embedded again
        return None


def known_hashes(directory: Path | None) -> set[str]:
    out: set[str] = set()
    for shard in _shards(directory):
        t = _read(shard, ["sha256"])
        if t is not None:
            out.update(t.column("sha256").to_pylist())
    return out


def read_vectors(directory: Path | None, wanted: set[str], dim: int) -> dict[str, np.ndarray]:
    """The stored vectors of the `wanted` hashes."""
    out: dict[str, np.ndarray] = {}
    for shard in _shards(directory):
        if len(out) == len(wanted):
            break
        t = _read(shard, ["sha256", "vector"])
        if t is None:
            continue
        v = np.asarray(t.column("vector").combine_chunks().flatten(), np.float32).reshape(-1, dim)
        for sha, row in zip(t.column("sha256").to_pylist(), v):
            if sha in wanted:
                out[sha] = row
    return out


def write_shard(directory: Path, paths: list[str], sha: list[str], vectors: np.ndarray) -> None:
    """One shard, named by its content, written under a temporary name and renamed."""
    name = hashlib.sha256("".join(sha).encode()).hexdigest()[:24]
    target = directory / f"part-{name}.parquet"
    if target.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel())
    table = pa.table({"path": paths, "sha256": sha,
                      "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
    tmp = directory / f".tmp-{uuid.uuid4().hex}.parquet"
    pq.write_table(table, tmp)
    os.replace(tmp, target)


# ---- the two Ray Data steps -----------------------------------------------------------------------

_MEMO: dict[str, Any] = {}     # per worker process: the job's broadcast objects, fetched once per job


def _fetch(ref: list[Any]) -> Any:
    import ray

    key = ref[0].hex()
    if key not in _MEMO:
        if len(_MEMO) > 8:
            _MEMO.clear()
        _MEMO[key] = ray.get(ref[0])
    return _MEMO[key]


def decode_batch(batch: dict[str, np.ndarray], size: int, enhance: tuple[str, ...], read: ReadOptions,
                 known: list[Any], skip: list[Any]) -> dict[str, np.ndarray]:
    """Read, hash, decode and enhance one batch with the local stream's own code (FileStream, Collate)."""
    files = [Path(p) for p in batch["path"].tolist()]
    stream = FileStream(files, size, enhance, _fetch(known), _fetch(skip), {}, read)
    with opencv_threads(1):
        items = [stream[i] for i in range(len(files))]
        x = Collate(enhance)(items).x
    shape = (len(enhance), size, size)
    status, pixels, j = [], [], 0
    for it in items:
        s = BAD if it.error is not None else SKIPPED if it.skipped else CACHED if it.cached else NEW
        status.append(s)
        if s == NEW:
            pixels.append(x[j].numpy().tobytes())
            j += 1
        else:
            pixels.append(b"")
    return {"pos": batch["pos"], "path": batch["path"], "sha256": np.array([it.sha256 for it in items], object),
            "nbytes": np.array([it.nbytes for it in items], np.int64),
            "error": np.array([it.error or "" for it in items], object), "status": np.array(status, object),
            "x": np.array(pixels, object), "shape": np.array([shape] * len(items), np.int64)}


def embed_batch(batch: dict[str, np.ndarray], embedder: list[Any] | Embedder, device: str, precision: str,
                out: str | None, root: str) -> dict[str, np.ndarray]:
    """Embed the batch's new images with the broadcast embedder and write them as one shard."""
    import torch

    crash_once_for_tests()
    model: Embedder = embedder if not isinstance(embedder, list) else _to_device(_fetch(embedder), device)
    new = np.flatnonzero(batch["status"] == NEW)
    vectors = np.zeros((len(batch["pos"]), model.dim), np.float32)
    if len(new):
        shape = tuple(batch["shape"][new[0]])
        x = np.stack([np.frombuffer(batch["x"][i], np.float32).reshape(shape) for i in new])
        with autocast(torch.device(device), precision):
            vectors[new] = model(x)
        if out is not None:
            paths = [Path(p).relative_to(root).as_posix() for p in batch["path"][new].tolist()]
            write_shard(Path(out), paths, batch["sha256"][new].tolist(), vectors[new])
    return {k: batch[k] for k in ("pos", "sha256", "nbytes", "error", "status")} | {"vector": vectors}


class EmbedActor:
    """A GPU worker: holds the broadcast embedder on its device for the whole job."""

    def __init__(self, embedder: list[Any], device: str, precision: str, out: str | None, root: str) -> None:
        import ray

        self.model = _to_device(ray.get(embedder[0]), device)
        self.args = (device, precision, out, root)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return embed_batch(batch, self.model, *self.args)


def _to_device(embedder: Embedder, device: str) -> Embedder:
    """The driver's embedder on this worker's device: its networks and tensors moved, its spec updated."""
    import dataclasses

    import torch
    from torch import nn

    dev = torch.device(device)
    if embedder.spec.device == dev:
        return embedder
    for name, value in vars(embedder).items():
        if isinstance(value, (nn.Module, torch.Tensor)):
            setattr(embedder, name, value.to(dev))
    embedder.spec = dataclasses.replace(embedder.spec, device=dev)
    return embedder


# ---- the driver ----------------------------------------------------------------------------------

def _placement(cfg: EmbedConfig) -> tuple[str, int]:
    """(device, GPU actors): one model actor per GPU when the cluster has GPUs (and --device is not cpu), with
    decoding in CPU tasks beside them. On CPUs the model runs in tasks, which Ray Data fuses with decoding
    (same resources): each CPU reads, enhances and embeds its own batches with no pixels in transit, in
    worker processes Ray keeps between jobs (the embedder memoised in each), whereas an actor pool costs a
    fresh process per worker per folder (seconds of imports each)."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if gpus and cfg.device != "cpu":
        return "cuda", gpus
    if cfg.device == "cuda":
        raise FpindexError("--device cuda: the Ray cluster has no GPUs")
    return "cpu", 0


def embed_folder(root: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                 progress: Callable[[int, str], Any], desc: str, pixels: Any = None,
                 skip_sha: set[str] | None = None, cache: ContentCache | None = None) -> Embedded:
    """embed/run.py's embed_folder on the cluster (same arguments, same result); `pixels` is not filled,
    later stages decode what they need again."""
    import ray
    import torch

    device, actors = _placement(cfg)
    out = shard_dir(cache, device)
    bs = cfg.batch_size or default_batch_size(torch.device(device))
    result = Embedded(root=root)
    if not files:
        result.vectors = np.empty((0, embedder.dim), np.float32)
        return result
    actors = min(actors, -(-len(files) // bs))        # no more actors than batches: each costs a process
    args = {"device": device, "precision": cfg.precision, "out": str(out) if out else None, "root": str(root)}
    with timings.stage("embed"):
        known = known_hashes(out)
        refs = {"known": [ray.put(frozenset(known))], "skip": [ray.put(frozenset(skip_sha or ()))],
                "embedder": [ray.put(embedder)]}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False                      # fpindex's own bar counts the images
    logging.getLogger("ray.data").setLevel(logging.WARNING)   # not a line per folder on stderr
    ds = ray.data.from_items([{"pos": i, "path": str(f)} for i, f in enumerate(files)],
                             override_num_blocks=max(1, -(-len(files) // bs)))
    ds = ds.map_batches(decode_batch, batch_size=bs, batch_format="numpy", num_cpus=1,
                        fn_kwargs={"size": embedder.spec.size, "enhance": tuple(cfg.enhance),
                                   "read": ReadOptions.of(cfg), "known": refs["known"], "skip": refs["skip"]})
    if device == "cuda":
        ds = ds.map_batches(EmbedActor, batch_size=bs, batch_format="numpy", num_gpus=1, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"embedder": refs["embedder"], **args})
    else:
        ds = ds.map_batches(embed_batch, batch_size=bs, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"embedder": refs["embedder"], **args})
    parts = []
    with timings.stage("embed"), progress(len(files), desc) as bar:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            parts.append(b)
            bar.update(len(b["pos"]))
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "vector"}
    order = np.argsort(rows["pos"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}
    keep = np.flatnonzero(np.isin(rows["status"], [NEW, CACHED]))
    # Vectors go straight from each part to their row of the result, the part let go once placed: one copy of
    # the set in memory, not four (concatenated, reordered, kept).
    dest = np.full(len(order), -1, np.int64)
    dest[order[keep]] = np.arange(len(keep))
    result.vectors = np.empty((len(keep), embedder.dim), np.float32)
    at = 0
    for i, part in enumerate(parts):
        d = dest[at:at + len(part["pos"])]
        at += len(d)
        kept = d >= 0
        result.vectors[d[kept]] = np.asarray(part["vector"], np.float32).reshape(len(d), embedder.dim)[kept]
        parts[i] = None
    for i in np.flatnonzero(rows["status"] == BAD).tolist():
        bad_file(files[int(rows["pos"][i])], str(rows["error"][i]), result.bad)
    result.paths = [files[int(p)].relative_to(root).as_posix() for p in rows["pos"][keep].tolist()]
    result.sha256 = rows["sha256"][keep].tolist()
    result.nbytes = [int(n) for n in rows["nbytes"][keep].tolist()]
    cached = np.flatnonzero(rows["status"][keep] == CACHED)
    result.cached = len(cached)
    if len(cached):
        with timings.stage("embed"):
            stored = read_vectors(out, {result.sha256[i] for i in cached.tolist()}, embedder.dim)
            for i in cached.tolist():
                if result.sha256[i] not in stored:
                    raise FpindexError(f"embedding shards in {out} changed during the run; run again")
                result.vectors[i] = stored[result.sha256[i]]
    return result


__all__ = ["embed_folder", "known_hashes", "read_vectors", "shard_dir", "write_shard"]
