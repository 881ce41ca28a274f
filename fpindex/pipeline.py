"""The stages wired together: `build` an index of generated images, `query` it with real images, `audit` both.

Each function takes typed configs, reports progress, fills `Timings`, and returns the summary it wrote.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from .cache import ContentCache, blob_meta, blob_path, default_cache_dir, pair_keys, read_blob, write_blob
from .config import DecideConfig, EmbedConfig, IndexConfig, QueryConfig, RunConfig, to_dict
from .decide import FEATURES, Evidence, Labelled, choose_method, decide
from .embed import Embedder, build_embedder
from .enhance import REVISION as ENHANCE_REVISION, enhance_batch, parse_enhance
from .errors import FpindexError
from .index import IndexStore, create_store, finish_in_memory
from .load import BadFile, decode, fit_size, list_images, load_image
from .report import write_outputs, write_summary
from .rerank import ALIGN_EPS, ALIGN_ITERATIONS, binarize, jaccard, ssim_aligned, ssim_indexed
from .search import Neighbours, search
from .stream import autocast, batches, check_precision, default_batch_size, default_workers, optimise
from .utils import Timings, sha256_bytes, versions
from . import selfsup, subspace
from .selfsup import SelfSupConfig

SELFSUP = "selfsup"
SELFSUP_FILE = "selfsup.pt"


def _progress(run: RunConfig, total: int, desc: str, unit: str = "img") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=run.quiet, file=sys.stderr, dynamic_ncols=True,
                leave=False)


# ---- load → enhance → embed ------------------------------------------------------------------------

@dataclass
class Embedded:
    """The images of one folder that decoded, in file order, with their vectors."""

    root: Path
    paths: list[str] = field(default_factory=list)       # relative to root, POSIX style
    sha256: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), np.float32))
    pixels: np.ndarray | None = None                      # n × S × S canonical images, when all are kept
    decoded: dict[int, np.ndarray] = field(default_factory=dict)  # row → pixels, keep_pixels="decoded"
    bad: list[BadFile] = field(default_factory=list)
    cached: int = 0                                       # rows whose vector came from the cache

    def rows(self) -> pa.Table:
        return pa.table({"root": [str(self.root.resolve())] * len(self.paths), "path": self.paths,
                         "sha256": self.sha256, "bytes": self.nbytes})


def make_embedder(cfg: EmbedConfig) -> Embedder:
    check_precision(cfg.precision)
    if cfg.workers is not None and cfg.workers < 0:
        raise FpindexError("--workers must be 0 or more")
    embedder = build_embedder(cfg.model, channels=len(cfg.enhance), size=cfg.image_size, weights=cfg.weights,
                              seed=cfg.seed, device=cfg.device)
    optimise(embedder)
    return embedder


def open_cache(cfg: EmbedConfig, embedder: Embedder) -> ContentCache | None:
    if not cfg.cache:
        return None
    import torch

    from . import __version__

    # `weights` is how the weights were asked for (a path can differ between runs); `weights_id` is what they are.
    identity = {k: v for k, v in embed_identity(cfg, embedder).items() if k != "weights"}
    identity |= {"fpindex": __version__, "torch": torch.__version__, "enhance_revision": ENHANCE_REVISION,
                 # GPU convolutions in "fp32" run as TF32 by default (vectors ≈ 1e-3 from the CPU's): never mixed
                 "device": embedder.spec.device.type}
    return ContentCache(cfg.cache_dir or default_cache_dir(), "embedding", identity, embedder.dim)


def open_pair_cache(cfg: EmbedConfig, size: int, kind: str = "ssim") -> ContentCache | None:
    """kind 'ssim' / 'ssim-aligned': SSIM values by (real, generated) hashes, plain or after alignment;
    'subspace': subspace evidence by (real, subspace) hashes."""
    from .rerank import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW

    if not cfg.cache:
        return None
    if kind == "subspace":
        return ContentCache(cfg.cache_dir or default_cache_dir(), kind,
                            {"size": size, "shrink": subspace.SIZE, "evidence": "ssim-of-reconstruction"}, 1)
    # Re-ranking runs on the CPU engine (threads over all cores) whatever the embedding device.
    identity = {"size": size, "window": SSIM_WINDOW, "sigma": SSIM_SIGMA, "K": [SSIM_K1, SSIM_K2], "engine": "cv"}
    if kind == "ssim-aligned":
        identity |= {"align": "ecc-euclidean-half", "iterations": ALIGN_ITERATIONS, "eps": ALIGN_EPS,
                     "opencv": cv2.__version__}
    return ContentCache(cfg.cache_dir or default_cache_dir(), kind, identity, 1)


def embed_folder(root: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                 run: RunConfig, desc: str, keep_pixels: bool | str = False, skip_sha: set[str] | None = None,
                 cache: ContentCache | None = None) -> Embedded:
    """Embed `files` (below `root`) in file order; unreadable files become `bad`, `skip_sha` ones are left out.

    keep_pixels: False, True (every row's pixels in `pixels`: cached rows are decoded too, but not embedded),
    or "decoded" (only rows decoded anyway, in `decoded`; the rest can be read lazily).
    """
    device = embedder.spec.device
    bs = cfg.batch_size or default_batch_size(device)
    workers = default_workers(len(files), bs) if cfg.workers is None else cfg.workers
    known = frozenset(cache.keys()) if cache is not None else frozenset()
    out = Embedded(root=root)
    new_vecs: list[np.ndarray] = []
    new_rows: list[int] = []
    pix: list[np.ndarray] = []
    stream = batches(files, embedder.spec.size, cfg.enhance, bs, workers, known=known,
                     skip=frozenset(skip_sha or ()), decode_known=keep_pixels is True, pin=device.type == "cuda")
    with _progress(run, len(files), desc) as bar:
        for batch in stream:
            embed_rows = []
            for it in batch.items:
                timings.add("load", it.t_load)
                timings.add("enhance", it.t_enhance)
                if it.error is not None:
                    out.bad.append(BadFile(str(files[it.pos]), it.error))
                    continue
                if it.skipped:
                    continue
                row = len(out.paths)
                out.paths.append(files[it.pos].relative_to(root).as_posix())
                out.sha256.append(it.sha256)
                out.nbytes.append(it.nbytes)
                if not it.cached:
                    embed_rows.append(row)
                if keep_pixels is True:
                    pix.append(it.img)
                elif keep_pixels == "decoded" and it.img is not None:
                    out.decoded[row] = it.img
            if batch.x is not None:
                with timings.stage("embed"), autocast(device, cfg.precision):
                    new_vecs.append(embedder(batch.x))
                new_rows += embed_rows
            bar.update(len(batch.items))
    dim = embedder.dim
    out.vectors = np.empty((len(out.paths), dim), np.float32)
    fresh = np.concatenate(new_vecs) if new_vecs else np.empty((0, dim), np.float32)
    out.vectors[new_rows] = fresh
    old_rows = sorted(set(range(len(out.paths))) - set(new_rows))
    out.cached = len(old_rows)
    if cache is not None:
        with timings.stage("embed"):
            if old_rows:
                out.vectors[old_rows] = cache.get(out.sha256[r] for r in old_rows)
            cache.put([out.sha256[r] for r in new_rows], fresh)
    if keep_pixels is True:
        out.pixels = np.stack(pix) if pix else np.empty((0, embedder.spec.size, embedder.spec.size), np.float32)
    return out


# ---- build --------------------------------------------------------------------------------------

def embed_identity(cfg: EmbedConfig, embedder: Embedder) -> dict[str, Any]:
    return {"model": cfg.model, "weights": embedder.spec.weights, "weights_id": embedder.weights_id,
            "enhance": list(cfg.enhance), "image_size": embedder.spec.size, "seed": cfg.seed, "dim": embedder.dim,
            "precision": cfg.precision}


def build(generated: str | Path, index_dir: str | Path, embed_cfg: EmbedConfig, index_cfg: IndexConfig,
          run: RunConfig, mode: str = "new", timings: Timings | None = None,
          keep_pixels: bool | str = False) -> tuple[IndexStore, Embedded, dict[str, Any]]:
    """mode: 'new' (refuse an existing index), 'overwrite', or 'add' (append images not yet in it)."""
    timings = timings or Timings()
    generated, index_dir = Path(generated), Path(index_dir)
    files = list_images(generated, "generated-image folder")
    exists = index_dir.exists()
    if exists and mode == "new":
        raise FpindexError(f"index {index_dir} already exists; pass --add to append to it or --overwrite to replace it")
    store: IndexStore | None = None
    if exists and mode == "add":
        from .devices import faiss_device

        store = IndexStore.load(index_dir, device=faiss_device(index_cfg.device))
        embed_cfg = embed_config_from_manifest(store, embed_cfg)
    embedder = make_embedder(embed_cfg)
    identity = embed_identity(embed_cfg, embedder)
    if store is None:   # choose/check the index against the memory budget before training or embedding anything
        store = create_store(index_cfg, len(files), embedder.dim, identity, resident=4 * len(files) * embedder.dim)
    else:
        store.check_compatible(identity, embedder.dim)
    if embedder.spec.weights == SELFSUP:   # only for a new index: --add reuses the weights stored in the index
        training, weights = train_on_generated(generated, files, embedder, embed_cfg, timings, run)
        store.manifest["embedder"] = embed_identity(embed_cfg, embedder) | {"training": training}
        store.attachments[SELFSUP_FILE] = weights
    known = store.hashes() if mode == "add" else None
    emb = embed_folder(generated, files, embedder, embed_cfg, timings, run, "embed generated",
                       keep_pixels=keep_pixels, skip_sha=known, cache=open_cache(embed_cfg, embedder))
    if store.ntotal == 0 and len(emb.paths) == 0:
        raise FpindexError(f"generated-image folder {generated}: none of its {len(files)} images could be read")
    if store.ntotal == 0 and emb.paths:
        fitted = fit_subspace(emb, embedder.spec.size, embed_cfg, timings)
        store.attachments[subspace.FILE] = fitted.to_bytes()
        store.manifest["subspace"] = fitted.describe()
    with timings.stage("index"):
        tuned = store.ntotal == 0
        store.add(emb.vectors, emb.rows())
        if tuned:
            finish_in_memory(store, index_cfg, emb.vectors)
        store.manifest["last_build"] = {"folder": str(generated.resolve()), "files": len(files),
                                        "added": len(emb.paths), "bad_files": [b.__dict__ for b in emb.bad]}
        store.save(index_dir)
    summary = {"index": str(index_dir), "ntotal": store.ntotal, "added": len(emb.paths), "cached": emb.cached,
               "skipped_known": len(files) - len(emb.paths) - len(emb.bad) if mode == "add" else 0,
               "bad_files": [b.__dict__ for b in emb.bad], "manifest": store.manifest}
    return store, emb, summary


def train_on_generated(generated: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                       run: RunConfig) -> tuple[dict[str, Any], bytes]:
    """Self-supervised fine-tuning on (a seeded sample of) the generated images; see selfsup.py for why.

    Trained weights are cached by the content of the training sample and every setting that shapes the
    training, so re-running an unchanged audit reads them back instead of training again."""
    import io

    import torch

    sscfg = SelfSupConfig(seed=cfg.seed, steps=cfg.train_steps)
    rng = np.random.default_rng(cfg.seed)
    sample = [files[i] for i in sorted(rng.choice(len(files), size=min(len(files), sscfg.max_images), replace=False))]
    with timings.stage("load"):
        raw = []
        for f in sample:
            try:
                raw.append(f.read_bytes())
            except OSError:
                continue  # reported by the embedding pass that follows
    ident = {"selfsup": sscfg.as_dict(), "model": cfg.model, "enhance": list(cfg.enhance),
             "enhance_revision": ENHANCE_REVISION,
             "size": embedder.spec.size, "seed": cfg.seed, "versions": {k: v for k, v in versions().items()
                                                                       if k in ("fpindex", "torch")},
             "sample": sha256_bytes("".join(sha256_bytes(d) for d in raw).encode())}
    cached = blob_path(cfg.cache_dir or default_cache_dir(), "selfsup", ident, ".pt") if cfg.cache else None
    data = read_blob(cached) if cached is not None else None
    if data is not None and (meta := blob_meta(cached)) is not None:
        embedder.trainable().load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        embedder.trainable().to(embedder.spec.device)
        report = {**meta, "from_cache": True}
        embedder.weights_id = f"file:sha256={sha256_bytes(data)[:16]}"
        return report, data
    with timings.stage("load"):
        decoded = []
        for d in raw:
            try:
                decoded.append(fit_size(decode(d), embedder.spec.size))
            except ValueError:
                continue
        if len(decoded) < 2:
            raise FpindexError(f"generated-image folder {generated}: too few readable images to train on")
        imgs = np.stack(decoded)
    del decoded                                   # before the channels are made: less memory at once
    with timings.stage("enhance"):
        stacks = enhance_batch(imgs, cfg.enhance)  # all at once: filters with a batch version run on chunks
    del imgs
    with timings.stage("embed"), _progress(run, sscfg.steps_for(len(stacks)), "train on generated", "step") as bar:
        report = selfsup.train(embedder.trainable(), embedder.dim, stacks, sscfg, bar.update)
    data, embedder.weights_id = selfsup.state_bytes(embedder.trainable())
    if cached is not None:
        write_blob(cached, data, report)
    return report, data


def fit_subspace(emb: Embedded, size: int, cfg: EmbedConfig, timings: Timings) -> subspace.Subspace:
    """The generated set's principal subspace (see subspace.py), from a seeded sample of the embedded images.

    Pixels decoded by the embedding pass are reused; the rest of the sample is read now. Cached by the sample's
    content hashes, so an unchanged re-run decodes nothing."""
    rng = np.random.default_rng(cfg.seed)
    n = len(emb.paths)
    rows = np.sort(rng.choice(n, size=min(n, subspace.MAX_IMAGES), replace=False))
    ident = {"subspace": [subspace.SIZE, subspace.VARIANCE], "size": size,
             "sample": sha256_bytes("".join(emb.sha256[r] for r in rows.tolist()).encode()),
             "versions": {k: v for k, v in versions().items() if k in ("fpindex", "numpy")}}
    cached = blob_path(cfg.cache_dir or default_cache_dir(), "subspace", ident, ".npz") if cfg.cache else None
    data = read_blob(cached) if cached is not None else None
    if data is not None:
        try:
            return subspace.Subspace.from_bytes(data)
        except ValueError:
            pass   # damaged: fit again
    shrunk = []
    for s in range(0, len(rows), 1024):        # shrink as we go: 10,000 images at 224 px would take 2 GB
        with timings.stage("load"):
            pixels = _real_pixels(emb, rows[s:s + 1024], size)
        with timings.stage("index"):
            shrunk.append(subspace.shrink(pixels))
    with timings.stage("index"):
        fitted = subspace.fit_shrunk(np.concatenate(shrunk))
    if cached is not None:
        write_blob(cached, fitted.to_bytes())
    return fitted


def embed_config_from_manifest(store: IndexStore, given: EmbedConfig | None = None) -> EmbedConfig:
    """The embedding settings an index was built with (batch size, device, workers and cache stay the caller's).

    Weights trained at build time live in the index directory and are read from there."""
    e = store.manifest["embedder"]
    base = given or EmbedConfig()
    weights = e["weights"]
    if weights == SELFSUP:
        if store.directory is None:
            raise FpindexError("this index's embedder was trained at build time; save the index before querying it")
        weights = str(store.directory / SELFSUP_FILE)
    return EmbedConfig(model=e["model"], weights=weights, enhance=tuple(e["enhance"]),
                       image_size=e["image_size"], seed=e["seed"], batch_size=base.batch_size, device=base.device,
                       precision=e.get("precision", "fp32"), workers=base.workers, cache=base.cache,
                       cache_dir=base.cache_dir)


# ---- query ---------------------------------------------------------------------------------------

class GeneratedPixels:
    """Canonical pixels of generated images by FAISS id: from memory when the build kept them, else from disk."""

    def __init__(self, store: IndexStore, size: int,
                 preloaded: np.ndarray | dict[int, np.ndarray] | None = None) -> None:
        """preloaded: all pixels by FAISS id (array), or some of them (dict id → pixels); the rest load lazily."""
        self.store, self.size = store, size
        self.preloaded = preloaded if isinstance(preloaded, np.ndarray) else None
        self._cache: dict[int, np.ndarray] = dict(preloaded) if isinstance(preloaded, dict) else {}

    def get(self, ids: np.ndarray) -> np.ndarray:
        if self.preloaded is not None and len(self.preloaded) == self.store.ntotal:
            return self.preloaded[ids]
        missing = [int(i) for i in np.unique(ids) if int(i) not in self._cache]
        for i, path in zip(missing, self.store.paths(np.array(missing, dtype=np.int64))):
            try:
                self._cache[i] = load_image(path, self.size)[0]
            except ValueError as e:
                raise FpindexError(f"generated image {path} (index id {i}) is needed for SSIM re-ranking "
                                   f"but {e}; restore the file or rebuild the index") from None
        return np.stack([self._cache[int(i)] for i in ids])

    def check_present(self, ids: np.ndarray) -> None:
        """Neighbours whose SSIM came from the cache are not read, but must still exist (they are reported)."""
        ids = np.array([i for i in np.unique(ids).tolist() if i not in self._cache], dtype=np.int64)
        for i, path in zip(ids.tolist(), self.store.paths(ids)):
            if not Path(path).is_file():
                raise FpindexError(f"generated image {path} (index id {i}) is needed for SSIM re-ranking "
                                   f"but is missing; restore the file or rebuild the index")


def _real_pixels(emb: Embedded, rows: np.ndarray, size: int) -> np.ndarray:
    """Canonical pixels of some rows of `emb`: kept ones from memory, the others decoded now."""
    out = np.empty((len(rows), size, size), np.float32)
    for i, r in enumerate(rows.tolist()):
        if emb.pixels is not None:
            out[i] = emb.pixels[r]
        elif r in emb.decoded:
            out[i] = emb.decoded[r]
        else:
            try:
                out[i] = load_image(emb.root / emb.paths[r], size)[0]
            except ValueError as e:
                raise FpindexError(f"image {emb.root / emb.paths[r]} changed or vanished during the run ({e})") from None
    return out


@dataclass
class IndexSubspace:
    """An index's generated subspace, its content id, and the cache of its evidence by real-image hash."""

    space: subspace.Subspace
    id: str
    cache: ContentCache | None

    @classmethod
    def of(cls, store: IndexStore, cfg: EmbedConfig, size: int) -> "IndexSubspace | None":
        data = store.attachments.get(subspace.FILE)
        if data is None:
            return None
        try:
            space = subspace.Subspace.from_bytes(data)
        except ValueError as e:
            raise FpindexError(f"index {store.directory}: {subspace.FILE} is damaged ({e}); rebuild the index") from None
        return cls(space, sha256_bytes(data), open_pair_cache(cfg, size, kind="subspace"))


def subspace_evidence(emb: Embedded, sub: IndexSubspace, size: int, timings: Timings) -> np.ndarray:
    """Per real image, how well the generated subspace reconstructs it; cached values are reused undecoded."""
    n = len(emb.paths)
    other = [sub.id] * n
    out = sub.cache.get(pair_keys(emb.sha256, other)) if sub.cache else np.full(n, np.nan, np.float32)
    todo = np.flatnonzero(np.isnan(out))
    for s in range(0, len(todo), 1024):
        rows = todo[s:s + 1024]
        with timings.stage("load"):
            pix = _real_pixels(emb, rows, size)
        with timings.stage("rerank"):
            out[rows] = sub.space.evidence(pix)
    if sub.cache is not None and len(todo):
        sub.cache.put(pair_keys([emb.sha256[i] for i in todo.tolist()], other[:len(todo)]), out[todo])
    return out


def evidence_for(emb: Embedded, store: IndexStore, gen_pixels: GeneratedPixels, k: int,
                 timings: Timings, run: RunConfig, desc: str, pair_cache: ContentCache | None = None,
                 space: IndexSubspace | None = None, aligned_cache: ContentCache | None = None,
                 features: frozenset[str] = frozenset(FEATURES)) -> tuple[Neighbours, dict[str, np.ndarray], Evidence]:
    """Search then re-rank: returns neighbours, per-neighbour scores (n × k: ssim, ssim_aligned, jaccard) and
    per-image evidence. The costlier evidence (aligned SSIM, subspace) is computed only when in `features`,
    the ones the decision reads; otherwise it is NaN per neighbour and 0 per image.

    SSIM values (plain and aligned) already in the caches (by content hashes) are reused; only the pixels of the
    images in the other pairs are read. `space`: the index's generated subspace (None for indexes made before it
    existed: that evidence is then 0 for every image and carries no weight)."""
    with timings.stage("search"):
        nb = search(store, emb.vectors, k)
    n, kk = nb.ids.shape
    pair = {name: np.zeros((n, kk), np.float32) for name in ("ssim", "ssim_aligned", "jaccard")}
    align = "ssim_aligned" in features
    if not align:
        pair["ssim_aligned"][:] = np.nan
    valid = nb.ids >= 0
    if n and valid.any():
        flat = nb.ids[valid]
        real_idx = np.repeat(np.arange(n), kk).reshape(n, kk)[valid]
        # Per-image SSIM terms once per distinct image, the cross term per pair (rerank.ssim_indexed).
        with timings.stage("rerank"):
            cached = pair_cache is not None and aligned_cache is not None
            gen_sha = store.items.column("sha256").take(pa.array(flat)).to_pylist() if cached else []
            keys = pair_keys([emb.sha256[i] for i in real_idx.tolist()], gen_sha) if cached else []
            vals = pair_cache.get(keys) if cached else np.full(len(flat), np.nan, np.float32)
            avals = aligned_cache.get(keys) if cached and align else np.full(len(flat), np.nan, np.float32)
            todo = np.flatnonzero(np.isnan(vals) | (np.isnan(avals) if align else False))
        if len(todo) < len(flat):
            with timings.stage("load"):
                gen_pixels.check_present(flat[~np.isin(np.arange(len(flat)), todo)])
        chunk = 8192
        size = gen_pixels.size
        with _progress(run, len(todo), desc) as bar:
            for s in range(0, len(todo), chunk):
                part = todo[s:s + chunk]
                ug, ig = np.unique(flat[part], return_inverse=True)
                ur, ir = np.unique(real_idx[part], return_inverse=True)
                with timings.stage("load"):          # pixels not kept from embedding are read here
                    gen, real = gen_pixels.get(ug), _real_pixels(emb, ur, size)
                with timings.stage("rerank"):
                    vals[part] = ssim_indexed(real, gen, ir.ravel(), ig.ravel())
                    if align:
                        avals[part] = ssim_aligned(real, gen, ir.ravel(), ig.ravel())
                bar.update(len(part))
        with timings.stage("rerank"):
            if cached and len(todo):
                done = [keys[i] for i in todo.tolist()]
                pair_cache.put(done, vals[todo])
                if align:
                    aligned_cache.put(done, avals[todo])
            pair["ssim"][valid], pair["ssim_aligned"][valid] = vals, avals
            gen_bits = binarize(store.reconstruct(flat))
            pair["jaccard"][valid] = jaccard(binarize(emb.vectors)[real_idx], gen_bits)
    recon = np.zeros(n, np.float32) if space is None or "subspace" not in features \
        else subspace_evidence(emb, space, gen_pixels.size, timings)

    def best(name: str, missing: float) -> np.ndarray:
        if not n or np.isnan(pair[name]).all():
            return np.zeros(n)
        return np.where(valid, pair[name], missing).max(axis=1)

    ev = Evidence({"cosine": np.where(valid[:, 0], nb.cosine[:, 0], -1.0) if n else np.zeros(0),
                   "ssim": best("ssim", -1.0), "jaccard": best("jaccard", 0.0), "subspace": recon,
                   "ssim_aligned": best("ssim_aligned", -1.0)})
    return nb, pair, ev


def query(index: str | Path | IndexStore, real: str | Path, out: str | Path, query_cfg: QueryConfig,
          run: RunConfig, embed_override: EmbedConfig | None = None, used: str | Path | None = None,
          not_used: str | Path | None = None, reference: str | Path | None = None,
          timings: Timings | None = None, gen_pixels: np.ndarray | dict[int, np.ndarray] | None = None,
          build_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    timings = timings or Timings()
    store = index if isinstance(index, IndexStore) else IndexStore.load(index)
    embed_cfg = embed_config_from_manifest(store, embed_override)
    if embed_override is not None:
        _check_override(store, embed_override)
    if query_cfg.k < 1:
        raise FpindexError("--k must be at least 1")
    real = Path(real)
    folders = {"real": real, "used": used, "not_used": not_used, "reference": reference}
    listed = {name: (Path(p), list_images(p, f"{name.replace('_', '-')} folder"))
              for name, p in folders.items() if p is not None}
    method = choose_method(query_cfg.decide, Labelled(
        used=_placeholder(used), not_used=_placeholder(not_used), reference=_placeholder(reference)))
    embedder = make_embedder(embed_cfg)
    store.check_compatible(embed_identity(embed_cfg, embedder), embedder.dim)
    pixels = GeneratedPixels(store, embedder.spec.size, gen_pixels)
    cache = open_cache(embed_cfg, embedder)
    pair_cache = open_pair_cache(embed_cfg, embedder.spec.size)
    space = IndexSubspace.of(store, embed_cfg, embedder.spec.size)

    aligned_cache = open_pair_cache(embed_cfg, embedder.spec.size, kind="ssim-aligned")
    # Calibrated decisions fuse every feature; fixed and reference ones read one score only.
    features = frozenset(FEATURES) if method == "calibrated" else frozenset({query_cfg.decide.score})
    results: dict[str, tuple[Embedded, Neighbours, dict[str, np.ndarray], Evidence]] = {}
    for name, (root, files) in listed.items():
        emb = embed_folder(root, files, embedder, embed_cfg, timings, run, f"embed {name}",
                           keep_pixels="decoded", cache=cache)
        if name == "real" and not emb.paths:
            raise FpindexError(f"real-image folder {root}: none of its {len(files)} images could be read")
        nb, pair, ev = evidence_for(emb, store, pixels, query_cfg.k, timings, run, f"re-rank {name}",
                                    pair_cache=pair_cache, space=space, aligned_cache=aligned_cache,
                                    features=features)
        results[name] = (emb, nb, pair, ev)

    with timings.stage("decide"):
        labelled = Labelled(**{n: results[n][3] for n in ("used", "not_used", "reference") if n in results})
        decision = decide(query_cfg.decide, results["real"][3], labelled)
    assert decision.method == method

    emb, nb, pair, ev = results["real"]
    summary = {
        "counts": {name: {"files": len(listed[name][1]), "embedded": len(r[0].paths), "bad": len(r[0].bad)}
                   for name, r in results.items()} | {"generated_indexed": store.ntotal,
                                                      "predicted_used": int(decision.label.sum())},
        "verdict": decision.verdict.as_dict(),
        "decision": {"method": decision.method, **decision.details},
        "settings": {"k": query_cfg.k, "decide": to_dict(query_cfg.decide), "embedder": store.manifest["embedder"],
                     "index": {"factory": store.manifest["factory"], "metric": store.manifest["metric"],
                               "ntotal": store.ntotal},
                     "folders": {n: str(p) for n, p in folders.items() if p is not None}},
        "bad_files": {name: [b.__dict__ for b in r[0].bad] for name, r in results.items() if r[0].bad},
        "versions": versions(),
    }
    if build_summary is not None:
        summary["build"] = {k: v for k, v in build_summary.items() if k != "manifest"}
    with timings.stage("write"):
        write_outputs(Path(out), emb.paths, decision, nb, pair, store)
    write_summary(Path(out), summary, timings)
    return summary


def _placeholder(path) -> Evidence | None:
    return None if path is None else Evidence({f: np.zeros(0) for f in FEATURES})


def _check_override(store: IndexStore, given: EmbedConfig) -> None:
    """Options passed explicitly to `query` must agree with the index; refuse rather than silently ignore."""
    own = store.manifest["embedder"]
    checks = {"model": given.model, "enhance": list(given.enhance) if given.enhance else None,
              "weights": given.weights, "image_size": given.image_size}
    for key, value in checks.items():
        if value is not None and value != own.get(key):
            raise FpindexError(f"the index was built with {key}={own.get(key)!r} but the query asks for "
                               f"{key}={value!r}; drop the option or rebuild the index")


def audit(generated: str | Path, real: str | Path, out: str | Path, embed_cfg: EmbedConfig,
          index_cfg: IndexConfig, query_cfg: QueryConfig, run: RunConfig, index_dir: str | Path | None = None,
          used=None, not_used=None, reference=None) -> dict[str, Any]:
    timings = Timings()
    out = Path(out)
    index_dir = Path(index_dir) if index_dir is not None else out / "index"
    # Check every input folder before the expensive build, so a typo fails in a second, not after it.
    for name, p in {"real-image": real, "used": used, "not-used": not_used, "reference": reference}.items():
        if p is not None:
            list_images(p, f"{name} folder")
    store, emb, build_summary = build(generated, index_dir, embed_cfg, index_cfg, run, mode="overwrite",
                                      timings=timings, keep_pixels="decoded")
    # The audit's own settings (device, batch size, workers, cache) also drive the query half.
    return query(store, real, out, query_cfg, run, embed_override=embed_cfg, used=used, not_used=not_used,
                 reference=reference, timings=timings, gen_pixels=emb.decoded, build_summary=build_summary)


__all__ = ["build", "query", "audit", "embed_folder", "make_embedder", "parse_enhance", "DecideConfig"]
