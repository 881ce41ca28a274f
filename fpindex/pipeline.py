"""The stages wired together: `build` an index of generated images, `query` it with real images, `audit` both.

Each function takes typed configs, reports progress, fills `Timings`, and returns the summary it wrote.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from .config import DecideConfig, EmbedConfig, IndexConfig, QueryConfig, RunConfig
from .decide import FEATURES, Evidence, Labelled, choose_method, decide
from .embed import Embedder, build_embedder
from .enhance import enhance_stack, parse_enhance
from .errors import FpindexError
from .index import IndexStore
from .indexing import create_store, finish_in_memory
from .load import BadFile, list_images, load_image
from .report import write_outputs, write_summary
from .rerank import binarize, jaccard, ssim_pairs
from .search import Neighbours, search
from .utils import Timings, sha256_bytes, versions


def _progress(run: RunConfig, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="img", disable=run.quiet, file=sys.stderr, dynamic_ncols=True,
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
    pixels: np.ndarray | None = None                      # n × S × S canonical images, when kept
    bad: list[BadFile] = field(default_factory=list)

    def rows(self) -> pa.Table:
        return pa.table({"root": [str(self.root.resolve())] * len(self.paths), "path": self.paths,
                         "sha256": self.sha256, "bytes": self.nbytes})


def make_embedder(cfg: EmbedConfig) -> Embedder:
    return build_embedder(cfg.model, channels=len(cfg.enhance), size=cfg.image_size, weights=cfg.weights,
                          seed=cfg.seed, device=cfg.device)


def embed_folder(root: Path, files: list[Path], embedder: Embedder, cfg: EmbedConfig, timings: Timings,
                 run: RunConfig, desc: str, keep_pixels: bool = False, skip_sha: set[str] | None = None) -> Embedded:
    size = embedder.spec.size
    out = Embedded(root=root)
    vecs: list[np.ndarray] = []
    pix: list[np.ndarray] = []
    with _progress(run, len(files), desc) as bar:
        for s in range(0, len(files), cfg.batch_size):
            imgs, stacks = [], []
            with timings.stage("load"):
                for f in files[s:s + cfg.batch_size]:
                    rel = f.relative_to(root).as_posix()
                    try:
                        img, data = load_image(f, size)
                    except ValueError as e:
                        out.bad.append(BadFile(str(f), str(e)))
                        continue
                    digest = sha256_bytes(data)
                    if skip_sha is not None and digest in skip_sha:
                        continue
                    out.paths.append(rel)
                    out.sha256.append(digest)
                    out.nbytes.append(len(data))
                    imgs.append(img)
            with timings.stage("enhance"):
                stacks = [enhance_stack(img, cfg.enhance) for img in imgs]
            if stacks:
                with timings.stage("embed"):
                    vecs.append(embedder(np.stack(stacks)))
                if keep_pixels:
                    pix.append(np.stack(imgs))
            bar.update(min(cfg.batch_size, len(files) - s))
    out.vectors = np.concatenate(vecs) if vecs else np.empty((0, embedder.dim), np.float32)
    if keep_pixels:
        out.pixels = np.concatenate(pix) if pix else np.empty((0, size, size), np.float32)
    return out


# ---- build --------------------------------------------------------------------------------------

def embed_identity(cfg: EmbedConfig, embedder: Embedder) -> dict[str, Any]:
    return {"model": cfg.model, "weights": embedder.spec.weights, "weights_id": embedder.weights_id,
            "enhance": list(cfg.enhance), "image_size": embedder.spec.size, "seed": cfg.seed, "dim": embedder.dim}


def build(generated: str | Path, index_dir: str | Path, embed_cfg: EmbedConfig, index_cfg: IndexConfig,
          run: RunConfig, mode: str = "new", timings: Timings | None = None,
          keep_pixels: bool = False) -> tuple[IndexStore, Embedded, dict[str, Any]]:
    """mode: 'new' (refuse an existing index), 'overwrite', or 'add' (append images not yet in it)."""
    timings = timings or Timings()
    generated, index_dir = Path(generated), Path(index_dir)
    files = list_images(generated, "generated-image folder")
    exists = index_dir.exists()
    if exists and mode == "new":
        raise FpindexError(f"index {index_dir} already exists; pass --add to append to it or --overwrite to replace it")
    store: IndexStore | None = None
    if exists and mode == "add":
        store = IndexStore.load(index_dir)
        embed_cfg = embed_config_from_manifest(store.manifest, embed_cfg)
    embedder = make_embedder(embed_cfg)
    identity = embed_identity(embed_cfg, embedder)
    if store is None:   # choose/check the index against the memory budget before embedding anything
        store = create_store(index_cfg, len(files), embedder.dim, identity, resident=4 * len(files) * embedder.dim)
    else:
        store.check_compatible(identity, embedder.dim)
    known = store.hashes() if mode == "add" else None
    emb = embed_folder(generated, files, embedder, embed_cfg, timings, run, "embed generated",
                       keep_pixels=keep_pixels, skip_sha=known)
    if store.ntotal == 0 and len(emb.paths) == 0:
        raise FpindexError(f"generated-image folder {generated}: none of its {len(files)} images could be read")
    with timings.stage("index"):
        tuned = store.ntotal == 0
        store.add(emb.vectors, emb.rows())
        if tuned:
            finish_in_memory(store, index_cfg, emb.vectors)
        store.manifest["last_build"] = {"folder": str(generated.resolve()), "files": len(files),
                                        "added": len(emb.paths), "bad_files": [b.__dict__ for b in emb.bad]}
        store.save(index_dir)
    summary = {"index": str(index_dir), "ntotal": store.ntotal, "added": len(emb.paths),
               "skipped_known": len(files) - len(emb.paths) - len(emb.bad) if mode == "add" else 0,
               "bad_files": [b.__dict__ for b in emb.bad], "manifest": store.manifest}
    return store, emb, summary


def embed_config_from_manifest(manifest: dict[str, Any], given: EmbedConfig | None = None) -> EmbedConfig:
    """The embedding settings an index was built with (batch size and device stay the caller's)."""
    e = manifest["embedder"]
    base = given or EmbedConfig()
    return EmbedConfig(model=e["model"], weights=e["weights"], enhance=tuple(e["enhance"]),
                       image_size=e["image_size"], seed=e["seed"], batch_size=base.batch_size, device=base.device)


# ---- query ---------------------------------------------------------------------------------------

class GeneratedPixels:
    """Canonical pixels of generated images by FAISS id: from memory when the build kept them, else from disk."""

    def __init__(self, store: IndexStore, size: int, preloaded: np.ndarray | None = None) -> None:
        self.store, self.size, self.preloaded = store, size, preloaded
        self._cache: dict[int, np.ndarray] = {}

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


def evidence_for(emb: Embedded, store: IndexStore, gen_pixels: GeneratedPixels, k: int,
                 timings: Timings, run: RunConfig, desc: str) -> tuple[Neighbours, np.ndarray, np.ndarray, Evidence]:
    """Search then re-rank: returns neighbours, their SSIM and Jaccard (n × k), and per-image evidence."""
    with timings.stage("search"):
        nb = search(store, emb.vectors, k)
    n, kk = nb.ids.shape
    ssim = np.zeros((n, kk), np.float32)
    jac = np.zeros((n, kk), np.float32)
    with timings.stage("rerank"):
        valid = nb.ids >= 0
        if n and valid.any():
            flat = nb.ids[valid]
            real_idx = np.repeat(np.arange(n), kk).reshape(n, kk)[valid]
            chunk = 4096
            vals = np.empty(len(flat), np.float32)
            with _progress(run, len(flat), desc) as bar:
                for s in range(0, len(flat), chunk):
                    a = emb.pixels[real_idx[s:s + chunk]]
                    b = gen_pixels.get(flat[s:s + chunk])
                    vals[s:s + chunk] = ssim_pairs(a, b)
                    bar.update(len(a))
            ssim[valid] = vals
            gen_bits = binarize(store.reconstruct(flat))
            jac[valid] = jaccard(binarize(emb.vectors)[real_idx], gen_bits)
    ev = Evidence({"cosine": np.where(valid[:, 0], nb.cosine[:, 0], -1.0) if n else np.zeros(0),
                   "ssim": np.where(valid, ssim, -1.0).max(axis=1) if n else np.zeros(0),
                   "jaccard": np.where(valid, jac, 0.0).max(axis=1) if n else np.zeros(0)})
    return nb, ssim, jac, ev


def query(index: str | Path | IndexStore, real: str | Path, out: str | Path, query_cfg: QueryConfig,
          run: RunConfig, embed_override: EmbedConfig | None = None, used: str | Path | None = None,
          not_used: str | Path | None = None, reference: str | Path | None = None,
          timings: Timings | None = None, gen_pixels: np.ndarray | None = None,
          build_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    timings = timings or Timings()
    store = index if isinstance(index, IndexStore) else IndexStore.load(index)
    embed_cfg = embed_config_from_manifest(store.manifest, embed_override)
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

    results: dict[str, tuple[Embedded, Neighbours, np.ndarray, np.ndarray, Evidence]] = {}
    for name, (root, files) in listed.items():
        emb = embed_folder(root, files, embedder, embed_cfg, timings, run, f"embed {name}", keep_pixels=True)
        if name == "real" and not emb.paths:
            raise FpindexError(f"real-image folder {root}: none of its {len(files)} images could be read")
        nb, ssim, jac, ev = evidence_for(emb, store, pixels, query_cfg.k, timings, run, f"re-rank {name}")
        results[name] = (emb, nb, ssim, jac, ev)

    with timings.stage("decide"):
        labelled = Labelled(**{n: results[n][4] for n in ("used", "not_used", "reference") if n in results})
        decision = decide(query_cfg.decide, results["real"][4], labelled)
    assert decision.method == method

    emb, nb, ssim, jac, ev = results["real"]
    summary = {
        "counts": {name: {"files": len(listed[name][1]), "embedded": len(r[0].paths), "bad": len(r[0].bad)}
                   for name, r in results.items()} | {"generated_indexed": store.ntotal,
                                                      "predicted_used": int(decision.label.sum())},
        "decision": {"method": decision.method, **decision.details},
        "settings": {"k": query_cfg.k, "decide": _asdict(query_cfg.decide), "embedder": store.manifest["embedder"],
                     "index": {"factory": store.manifest["factory"], "metric": store.manifest["metric"],
                               "ntotal": store.ntotal},
                     "folders": {n: str(p) for n, p in folders.items() if p is not None}},
        "bad_files": {name: [b.__dict__ for b in r[0].bad] for name, r in results.items() if r[0].bad},
        "versions": versions(),
    }
    if build_summary is not None:
        summary["build"] = {k: v for k, v in build_summary.items() if k != "manifest"}
    with timings.stage("write"):
        write_outputs(Path(out), emb.paths, decision, nb, ssim, jac, store)
    write_summary(Path(out), summary, timings)
    return summary


def _placeholder(path) -> Evidence | None:
    return None if path is None else Evidence({f: np.zeros(0) for f in FEATURES})


def _asdict(cfg: DecideConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


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
                                      timings=timings, keep_pixels=True)
    return query(store, real, out, query_cfg, run, used=used, not_used=not_used, reference=reference,
                 timings=timings, gen_pixels=emb.pixels, build_summary=build_summary)


__all__ = ["build", "query", "audit", "embed_folder", "make_embedder", "parse_enhance", "DecideConfig"]
