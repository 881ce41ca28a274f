"""The public Python API: what the command line itself calls.

    import fpindex
    result = fpindex.audit("gen/", "real/", used="train/used", not_used="train/not_used")
    result.predictions.head(); result.verdict.text
    result.save("results/")                       # the same files as `fpindex audit --out results/`

Nothing is written unless `out` (audit, query) or `index_dir` (build_index) is given; vectors and re-ranking
values are still cached by content under ~/.cache/fpindex unless `EmbedConfig(cache=False)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline
from .config import AuditConfig
from .devices import faiss_device
from .errors import FpindexError
from .index import IndexStore, search_overrides
from .locks import writing
from .report import AuditResult
from .report.outputs import check_folder as check_output_folder
from .search import Neighbours, search as search_vectors

PathLike = str | Path


class Index:
    """An index of generated images, built in this process or opened from a directory."""

    def __init__(self, store: IndexStore, built: pipeline.Built | None = None,
                 config: AuditConfig | None = None) -> None:
        self.store, self._built, self.config = store, built, AuditConfig.of(config)

    @property
    def ntotal(self) -> int:
        return self.store.ntotal

    @property
    def manifest(self) -> dict[str, Any]:
        return self.store.manifest

    @property
    def directory(self) -> Path | None:
        return self.store.directory

    @property
    def build_summary(self) -> dict[str, Any]:
        """What the build in this process did (empty for an opened index)."""
        return self._built.summary if self._built is not None else {}

    @property
    def embedded(self):
        """The generated images embedded by the build in this process (paths, hashes, vectors)."""
        return self._built.embedded if self._built is not None else None

    @property
    def timings(self):
        return self._built.timings if self._built is not None else None

    def query(self, real: PathLike, *, k: int | None = None, used: PathLike | None = None,
              not_used: PathLike | None = None, reference: PathLike | None = None,
              config: AuditConfig | None = None, out: PathLike | None = None) -> AuditResult:
        """Score the real images against this index (see `audit` for the labelled folders); `k` neighbours
        per image (default: the config's, 10)."""
        cfg = AuditConfig.of(config) if config is not None else self.config
        with writing(out, what="output folder"):
            if out is not None:
                check_output_folder(out)              # before the work, not after it
            if k is not None:
                cfg = cfg.override(evidence={"k": k})
            target = self._built if self._built is not None else self.store
            result = pipeline.query(target, real, cfg, used=used, not_used=not_used, reference=reference,
                                    pixels=self._built.pixels if self._built is not None else None)
            if out is not None:
                result.save(out)
        return result

    def search(self, queries: np.ndarray | PathLike, k: int = 10) -> Neighbours:
        """The k nearest generated images (ids = rows of `self.store.items`) of L2-normalised vectors, or of
        the images in a folder (embedded with the index's own settings)."""
        if not isinstance(queries, np.ndarray):
            from .embed import embed_folder, make_embedder
            from .load import ReadOptions, list_images
            from .utils import Timings

            cfg = pipeline.embed_config_of(self.store, self.config.embed, in_memory=self._built is not None)
            embedder = self._built.embedder if self._built is not None else make_embedder(cfg)
            root = Path(queries)
            emb = embed_folder(root, list_images(root, "query folder", ReadOptions.of(cfg)), embedder, cfg,
                               Timings(), pipeline.progress_bar(self.config.run.quiet), "embed queries")
            queries = emb.vectors
        return search_vectors(self.store, queries, k)

    def save(self, index_dir: PathLike) -> Path:
        return self.store.save(index_dir)


def build_index(generated: PathLike, index_dir: PathLike | None = None, config: AuditConfig | None = None, *,
                add: bool = False, overwrite: bool = False, expect: dict[str, Any] | None = None) -> Index:
    """Embed a folder of generated images into an index; saved to `index_dir` when given. `expect`: embedding
    settings the caller asserts (e.g. {"model": "cnn"}); with `add`, one the index was not built with is
    refused, since appending always embeds like the index did."""
    if add and overwrite:
        raise FpindexError("--add and --overwrite exclude each other")
    cfg = AuditConfig.of(config)
    with writing(index_dir, what="index"):
        built = pipeline.build(generated, cfg, index_dir, mode="add" if add else "overwrite" if overwrite else "new",
                               expect=expect)
    return Index(built.store, built, cfg)


def open_index(index_dir: PathLike, config: AuditConfig | None = None, *, nprobe: int | None = None,
               ef_search: int | None = None, expect: dict[str, Any] | None = None,
               verify: bool | None = None) -> Index:
    """Open a saved index; `config` says how to run (device, batch size, cache), the index says how to embed.
    `expect`: embedding settings the caller asserts (e.g. {"model": "cnn"}); a mismatch is refused rather than
    silently ignored. nprobe / ef_search override the stored search parameters for this session. Files whose
    size or mtime changed since the build are hashed against the manifest's checksums; `verify` (default
    `config.run.verify`) hashes every file."""
    cfg = AuditConfig.of(config)
    verify = cfg.run.verify if verify is None else verify
    store = IndexStore.load(index_dir, device=faiss_device(cfg.index.device), verify=verify)
    own = store.manifest["embedder"]
    for key, value in (expect or {}).items():
        if value is not None and value != own.get(key):
            raise FpindexError(f"the index was built with {key}={own.get(key)!r} but the query asks for "
                               f"{key}={value!r}; drop the option or rebuild the index")
    store.set_search_params(search_overrides(store.index, nprobe, ef_search), save=False)
    return Index(store, None, cfg)


def audit(generated: PathLike, real: PathLike, *, used: PathLike | None = None, not_used: PathLike | None = None,
          reference: PathLike | None = None, config: AuditConfig | None = None, out: PathLike | None = None,
          index_dir: PathLike | None = None, overwrite: bool = False) -> AuditResult:
    """Index the generated images, score the real ones, decide. With `used` and `not_used` (labelled real
    images) the decision is calibrated on them; with only `reference` (or `not_used`), tested against them;
    else the fixed thresholds. `out`: also write the output files there (the index goes to `index_dir`, by
    default `out/index`; an existing index is replaced only with `overwrite`)."""
    cfg = AuditConfig.of(config)
    if out is not None:
        check_output_folder(out)                  # before the build, which may write OUT/index
        if index_dir is not None and Path(out).absolute().is_relative_to(Path(index_dir).absolute()):
            raise FpindexError(f"index_dir {index_dir} is (or holds) the output folder {out}: the outputs would "
                               "be written into the index; leave index_dir out (OUT/index) or give another folder")
    if index_dir is None and out is not None:
        index_dir, overwrite = Path(out) / "index", True     # the output folder's own index is fpindex's to replace
    inside = out is not None and Path(index_dir).absolute().is_relative_to(Path(out).absolute())
    with writing(out, None if inside else index_dir, what="output folder or index"):
        if out is not None:
            check_output_folder(out)              # again under the lock: another run may have just written it
        result = pipeline.audit(generated, real, cfg, index_dir=index_dir, overwrite=overwrite, used=used,
                                not_used=not_used, reference=reference)
        if out is not None:
            result.save(out)
    return result


def simulate(real: PathLike, out: PathLike, generated: PathLike | None = None, *, members: int | None = None,
             kinds=None, strengths=None, rate: float = 1.0, seed: int = 0, manifest: PathLike | None = None,
             size: int = 128, fresh: int | None = None):
    """Write a simulated leak scenario (ImageCLEF layout plus planted.json) from real images; see
    fpindex/simulator.py. Returns a `Simulated` (root, planted, record)."""
    from .simulator import simulate as run

    return run(real, out, generated, members=members, kinds=kinds, strengths=strengths, rate=rate, seed=seed,
               manifest=manifest, size=size, fresh=fresh)


def sensitivity(real: PathLike, out: PathLike, generated: PathLike | None = None, *, kinds=None, strengths=None,
                members: int | None = None, rate: float = 1.0, seed: int = 0, manifest: PathLike | None = None,
                size: int = 128, fresh: int | None = None, fpr: float = 0.05,
                config: AuditConfig | None = None) -> dict[str, Any]:
    """Simulate and audit a grid of plant kinds and strengths; recall at `fpr` per cell, written to
    OUT/sensitivity.{json,csv,png} (fpindex/sweep.py). Returns the table with its parameters."""
    from .sweep import sensitivity as run

    return run(real, out, generated, kinds=kinds, strengths=strengths, members=members, rate=rate, seed=seed,
               manifest=manifest, size=size, fresh=fresh, fpr=fpr,
               config=AuditConfig.of(config) if config is not None else None)
