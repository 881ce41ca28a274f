"""The stages composed in order: load → enhance → embed → index → search → evidence → decide → report.

`build` makes an index of generated images, `query` scores real images against one, `audit` does both.
Each returns its results in memory; nothing is written unless an index directory (build) is given, and the
output files are written by `AuditResult.save` (report.py). Stage work lives in the stages' own modules.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .cache import cache_root
from .canaries import LEVEL_SOURCES, Folder, copy_levels, run_canaries, source_folder
from .config import AuditConfig, EmbedConfig
from .decide import COPY_CHECKED, FUSING, Inputs, Labelled, audit_warnings, choose_method, decide, emit, null_of
from .decide.grouping import Folder as GroupFolder, group_folders
from .decide.patients import patient_level
from .devices import faiss_device
from .embed import (SELFSUP_FILE, Embedded, Embedder, embed_identity, make_embedder, resolved,
                    train_on_generated, vector_cache)
from .embed.train import trains
from .engine import engine_for
from .errors import FpindexError
from .evidence import FEATURES, Evidence, FitInput, Query, Run
from .index import MANIFEST_FILE, IndexStore, create_store, finish_in_memory, is_index_dir
from .load import ReadOptions, check_distinct, list_folder, list_images
from .load.groups import check_listed, read_groups
from .pixels import PixelStore, QueryImages
from .decide.replication import assess, counts, withheld
from .report import AuditResult, submission_ids
from .safeio import recover_dir, refuse_special, shown
from .search import REAL_NPROBE, Neighbours, real_factory, search, search_real
from .report.schema import Counts, DecisionRecord, FolderCounts, GeneratedSummary, Settings, Summary
from .utils import Timings, versions


_EMPTY = Evidence({})   # stands for a labelled folder not embedded yet: the decision method depends only on which exist


def progress_bar(quiet: bool):
    """A tqdm factory (total, desc[, unit]) on stderr, or silent bars; a stage with nothing to do (all of it
    cached) draws no bar."""
    def bar(total: int, desc: str, unit: str = "img") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=quiet or not total, file=sys.stderr,
                    dynamic_ncols=True, leave=False)
    return bar


@dataclass
class Built:
    """An index with the embedder that made it (which can query it before it is saved)."""

    store: IndexStore
    embedder: Embedder
    embedded: Embedded
    pixels: PixelStore
    timings: Timings
    summary: dict[str, Any] = field(default_factory=dict)


# ---- build --------------------------------------------------------------------------------------

def check_target(index_dir: Path, mode: str) -> None:
    """Only an fpindex index is ever replaced, and only when asked; a swap a kill cut short is finished first."""
    recover_dir(index_dir)
    if not index_dir.exists() and not index_dir.is_symlink():
        return
    refuse_special(index_dir, "folder")
    if mode == "new":
        raise FpindexError(f"index {shown(index_dir)} already exists; pass --add to append to it or --overwrite "
                           "to replace it")
    if not is_index_dir(index_dir):
        why = "no" if not (index_dir / MANIFEST_FILE).exists() else "no valid fpindex"
        raise FpindexError(f"{shown(index_dir)} exists and is not an fpindex index ({why} {MANIFEST_FILE}); "
                           "refusing to replace it: choose another --index")


def embed_config_of(store: IndexStore, given: EmbedConfig | None = None, in_memory: bool = False) -> EmbedConfig:
    """The embedding settings an index was built with; how to run (device, batch, workers, cache) stays the
    caller's. Weights trained at build time are read from the index directory (`in_memory`: the embedder that
    trained them is still at hand)."""
    if "config" in store.manifest:
        stored = AuditConfig.from_dict({"embed": store.manifest["config"]["embed"]}).embed
    else:                           # indexes from before the config was recorded whole
        e = store.manifest["embedder"]
        stored = EmbedConfig(model=e["model"], weights=e["weights"], enhance=tuple(e["enhance"]),
                             image_size=e["image_size"], seed=e["seed"], precision=e.get("precision", "fp32"))
    base = given or EmbedConfig()
    cfg = replace(stored, **{k: getattr(base, k) for k in EmbedConfig.RUNTIME})
    if trains(cfg, cfg.weights) and not in_memory:
        if store.directory is None:
            raise FpindexError("this index's embedder was trained at build time; save the index before querying it")
        cfg = replace(cfg, weights=str(store.directory / SELFSUP_FILE), finetune=None)
    return cfg


def build(generated: str | Path, config: AuditConfig, index_dir: str | Path | None = None, mode: str = "new",
          timings: Timings | None = None, pixels: PixelStore | None = None,
          expect: dict[str, Any] | None = None) -> Built:
    """mode: 'new' (refuse an existing index), 'overwrite' (replace an fpindex index), or 'add' (append the
    images not yet in it, then refit what was fitted on the generated set and retune the search).
    `expect`: embedding settings the caller asked for; with 'add' one that differs from the index's is refused
    (the index's own are used, so a --model given with --add would otherwise be silently ignored)."""
    timings = timings or Timings()
    engine = engine_for(config.run)          # stages run here or on a Ray cluster (fpindex/engine/)
    generated = Path(generated)
    index_dir = Path(index_dir) if index_dir is not None else None
    bar = progress_bar(config.run.quiet)
    read = ReadOptions.of(config.embed)
    files, skipped = list_folder(generated, "generated-image folder", read)
    store: IndexStore | None = None
    embed_cfg = config.embed
    if index_dir is not None:
        check_target(index_dir, mode)
    if mode == "add" and (index_dir is None or not index_dir.exists()):
        mode = "new"                        # adding to an index that is not there yet makes it
    if mode == "add":
        store = IndexStore.load(index_dir, device=faiss_device(config.index.device), verify=config.run.verify)
        check_expected(store, index_dir, expect or {})
        embed_cfg = embed_config_of(store, config.embed)
        if ReadOptions.of(embed_cfg) != read:      # --add reads like the index did
            read = ReadOptions.of(embed_cfg)
            files, skipped = list_folder(generated, "generated-image folder", read)
    embedder = make_embedder(embed_cfg)
    identity = embed_identity(embed_cfg, embedder)
    if store is None:   # choose/check the index against the memory budget before training or embedding anything
        store = create_store(config.index, len(files), embedder.dim, identity, resident=4 * len(files) * embedder.dim)
        store.manifest["config"] = replace(config, embed=resolved(embed_cfg, embedder)).to_dict()
    else:
        store.check_compatible(identity, embedder.dim)
    pixels = pixels or PixelStore(embedder.spec.size, read=read)
    if trains(embed_cfg, embedder.spec.weights):   # only for a new index: --add reuses the index's weights
        training, weights = train_on_generated(generated, files, embedder, embed_cfg, timings, bar, pixels)
        store.manifest["embedder"] = embed_identity(embed_cfg, embedder) | {"training": training}
        store.attachments[SELFSUP_FILE] = weights
    fresh = store.ntotal == 0
    emb = engine.embed_folder(generated, files, embedder, embed_cfg, timings, bar, "embed generated",
                              pixels=pixels, skip_sha=None if fresh else store.hashes(),
                              cache=vector_cache(embed_cfg, embedder))
    emb.bad[:0] = skipped                       # files that are not images count as bad files too
    if fresh and not emb.paths:
        raise FpindexError(f"generated-image folder {generated}: none of its {len(files)} images could be read")
    with timings.stage("index"):
        engine.add(store, emb.vectors, emb.rows())
        store.files(np.arange(store.ntotal - len(emb.paths), store.ntotal))   # a link out of the folder: refused now
    if emb.paths:
        fit_features(store, pixels, embed_cfg, timings)
        with timings.stage("index"):
            if fresh:
                finish_in_memory(store, config.index, emb.vectors)
            elif not store.manifest.get("tuning", {}).get("given"):   # retune on everything now stored
                finish_in_memory(store, config.index, store.reconstruct(np.arange(store.ntotal)))
    store.manifest["last_build"] = {"folder": str(generated.resolve()), "files": len(files) + len(skipped),
                                    "added": len(emb.paths), "bad_files": [b.__dict__ for b in emb.bad]}
    if index_dir is not None:
        with timings.stage("index"):
            store.save(index_dir)
    summary = {"index": str(index_dir) if index_dir else None, "ntotal": store.ntotal, "added": len(emb.paths),
               "cached": emb.cached,
               "skipped_known": 0 if fresh else len(files) + len(skipped) - len(emb.paths) - len(emb.bad),
               "bad_files": [b.__dict__ for b in emb.bad], "manifest": store.manifest}
    return Built(store, embedder, emb, pixels, timings, summary)


def check_expected(store: IndexStore, index_dir: Path | None, expect: dict[str, Any]) -> None:
    stored = embed_config_of(store, in_memory=True)
    for key, value in expect.items():
        if value is not None and value != getattr(stored, key):
            option = "--" + key.replace("_", "-")
            raise FpindexError(f"index {index_dir} was built with {key}={getattr(stored, key)!r}; --add embeds "
                               f"with the index's own settings, so {option} {value!r} is refused: drop it or "
                               "build a new index")


def fit_features(store: IndexStore, pixels: PixelStore, cfg: EmbedConfig, timings: Timings) -> None:
    """Features fitted on the generated set (e.g. its principal subspace) are (re)fitted on every image in the
    index and stored with it."""
    sha = store.items.column("sha256").to_pylist()

    def rows_pixels(rows: np.ndarray) -> np.ndarray:
        with timings.stage("load"):
            return pixels.stack(store.files(rows), lambda p, e: f"generated image {p} is needed to fit the "
                                                               f"index's evidence but {e}; restore the file",
                                store.sha256(rows))

    data = FitInput(sha256=sha, pixels=rows_pixels, size=pixels.size, seed=cfg.seed,
                    cache_dir=cache_root(cfg))
    for name in FEATURES:
        f = FEATURES.get(name)
        if f.attachment is None:
            continue
        with timings.stage("index"):
            fitted = f.fit(data)
        if fitted is not None:
            store.attachments[f.attachment], store.manifest[name] = fitted


# ---- query ---------------------------------------------------------------------------------------

def query(index: IndexStore | Built, real: str | Path, config: AuditConfig, used: str | Path | None = None,
          not_used: str | Path | None = None, reference: str | Path | None = None,
          timings: Timings | None = None, pixels: PixelStore | None = None,
          build_summary: dict[str, Any] | None = None) -> AuditResult:
    """Score the real images against the index; labelled folders calibrate the decision (decide/)."""
    timings = timings or Timings()
    engine = engine_for(config.run)
    built = index if isinstance(index, Built) else None
    store = built.store if built else index
    if config.evidence.k < 1:
        raise FpindexError("--k must be at least 1")
    folders = {"real": Path(real), "used": used, "not_used": not_used, "reference": reference}
    embed_cfg = embed_config_of(store, config.embed, in_memory=built is not None)
    read = ReadOptions.of(embed_cfg)                   # the index's: queries are read like the generated images
    check_distinct(folders)
    found = {name: (Path(p), *list_folder(p, f"{name.replace('_', '-')} folder", read))
             for name, p in folders.items() if p is not None}
    listed = {name: (root, files) for name, (root, files, _) in found.items()}
    submission_ids([f.relative_to(listed["real"][0]).as_posix() for f in listed["real"][1]])
    groups_table = read_groups(config.decide.groups) if config.decide.groups is not None else None
    if groups_table is not None:        # a table written for other names fails now, not after embedding
        check_listed(groups_table, [f.name for f in listed["real"][1]], "real")
    method = choose_method(config.decide, Labelled(**{n: _EMPTY for n, p in folders.items() if n != "real" and p}))
    embedder = built.embedder if built is not None else make_embedder(embed_cfg)
    store.check_compatible(embed_identity(embed_cfg, embedder), embedder.dim)
    pixels = pixels or PixelStore(embedder.spec.size, read=read)
    cache = vector_cache(embed_cfg, embedder)
    names = list(config.evidence.features) if config.evidence.features is not None else FEATURES.names()
    # Fusing decisions read every feature; fixed and reference ones read one score only; every method tested
    # against a null also reads the copy-level features (decide/copies.py).
    wanted = frozenset(names) if method in FUSING else frozenset({config.decide.score})
    if method in COPY_CHECKED:
        wanted |= {f for f in names if FEATURES.get(f).copy}
    bar = progress_bar(config.run.quiet)
    searched: dict[str, tuple[Embedded, Neighbours]] = {}
    for name, (root, files) in listed.items():
        emb = engine.embed_folder(root, files, embedder, embed_cfg, timings, bar, f"embed {name}", pixels=pixels,
                                  cache=cache)
        emb.bad[:0] = found[name][2]            # files that are not images count as bad files too
        if name == "real" and not emb.paths:
            raise FpindexError(f"real-image folder {root}: none of its {len(files)} images could be read")
        with timings.stage("search"):
            searched[name] = (emb, search(store, emb.vectors, config.evidence.k))
    # Every real image of the audit is the background of every other (evidence/density_ratio.py): only searched
    # when a feature that will be computed reads it.
    background = [None] * len(searched)
    depth = max([FEATURES.get(f).real_k for f in names if "real_neighbours" in FEATURES.get(f).needs
                 and (not FEATURES.get(f).on_demand or f in wanted)], default=0)
    real_neighbours = None      # how the real images' own neighbours were searched (summary.json settings.index)
    if depth:
        with timings.stage("search"):
            background = search_real([(e.vectors, e.sha256) for e, _ in searched.values()], depth)
        n_real = sum(len(e.paths) for e, _ in searched.values())
        factory = real_factory(n_real)
        real_neighbours = {"images": n_real, "k": depth, "factory": factory,
                           "nprobe": REAL_NPROBE if factory.startswith("IVF") else None}
    with timings.stage("search"):   # folds and permutations move whole patients, or sibling groups (FUSING)
        grouping = group_folders({n: GroupFolder(e.root, e.paths, e.vectors) for n, (e, _) in searched.items()},
                                 groups_table, proxy=method in FUSING)
    real_cosines = dict(zip(searched, background))
    results: dict[str, tuple[Embedded, Any, dict[str, np.ndarray], Evidence]] = {}
    for name, (emb, nb) in searched.items():
        groups = grouping[name].ids if grouping is not None else None
        real_cosine = real_cosines[name]
        q = Query(sha256=emb.sha256, vectors=emb.vectors, nb=nb,
                  gen_sha256=lambda ids: store.items.column("sha256").take(ids).to_pylist(),
                  gen_vectors=store.reconstruct, images=QueryImages(pixels, emb.files(), store),
                  attachments=store.attachments, where=str(store.directory or "in memory"), real_cosine=real_cosine)
        run = Run(wanted=wanted, cache_dir=cache_root(embed_cfg), stage=timings.stage, progress=bar,
                  desc=f"re-rank {name}", screen=config.evidence.screen)
        pair, ev = engine.evidence(q, run, names)
        results[name] = (emb, nb, pair, replace(ev, groups=groups))

    levels = None
    if method == "copies":      # nothing known to be unused: what a near copy of these very images scores
        levels = copy_levels(config, searched["real"][0], embedder, pixels, store.attachments, names,
                             cache_root(embed_cfg), timings)
    with timings.stage("decide"):
        labelled = Labelled(**{n: results[n][3] for n in ("used", "not_used", "reference") if n in results},
                            copy_levels=levels)
        decision = decide(config.decide, results["real"][3], labelled, method=method)

    emb, nb, pair, ev = results["real"]
    patients = patient_level(decision, emb.paths, grouping, config.decide.alpha)
    null = null_of(method, labelled)
    warned = audit_warnings(decision, Inputs(
        n_real=len(emb.paths), n_generated=store.ntotal, n_null=0 if null is None else len(null),
        real_in_generated=store.count_known(emb.sha256))) + patients.warnings(config.decide.groups)
    emit(warned)
    summary = Summary(
        counts=Counts({name: FolderCounts(files=len(listed[name][1]) + len(found[name][2]),
                                          embedded=len(r[0].paths), bad=len(r[0].bad))
                       for name, r in results.items()},
                      generated_indexed=store.ntotal, predicted_used=int(decision.label.sum())),
        verdict=decision.verdict,
        decision=DecisionRecord(decision.method, decision.rule, dict(decision.details)),
        settings=Settings(k=config.evidence.k, decide=config.to_dict()["decide"],
                          embedder=store.manifest["embedder"],
                          index={"factory": store.manifest["factory"], "metric": store.manifest["metric"],
                                 "ntotal": store.ntotal, "real_neighbours": real_neighbours},
                          folders={n: str(Path(p).absolute()) for n, p in folders.items() if p is not None}),
        config=config.to_dict(),
        evidence={name: {"level": FEATURES.get(name).level, "help": FEATURES.help(name),
                         "computed": not FEATURES.get(name).on_demand or name in wanted}
                  | ({"screen": {"by": FEATURES.get(name).screen, "keep": config.evidence.screen}}
                     if FEATURES.get(name).screen and config.evidence.screen else {})
                  for name in names},
        bad_files={name: [b.__dict__ for b in r[0].bad] for name, r in results.items() if r[0].bad},
        warnings=warned, versions=versions(), patients=patients.to_dict())
    canary_from = source_folder(method, set(results)) if config.canaries.n > 0 else None
    if canary_from is not None:        # beside the index, never in it: nothing above changes (canaries.py)
        folder = Folder(canary_from, *results[canary_from], real_cosine=real_cosines[canary_from])
        summary.canaries = run_canaries(config, decision, folder, embedder, pixels, store.attachments, wanted,
                                        names, cache_root(embed_cfg), timings, bar)
    generated = None
    if method in COPY_CHECKED:     # which generated images copy a real image, graded (decide/replication.py)
        null_folder = source_folder(method, set(results)) or "real"

        def plant() -> dict[str, Any]:      # the canaries' planting, when the audit's own did not cover every kind
            cfg = config.override(canaries={"n": config.canaries.n or LEVEL_SOURCES, "kinds": None})
            return run_canaries(cfg, decision, Folder(null_folder, *results[null_folder],
                                                      real_cosine=real_cosines[null_folder]), embedder, pixels,
                                store.attachments, wanted, names, cache_root(embed_cfg), timings, bar)
        graded = assess(results, null_folder, summary.canaries, plant, store)     # plant() times its own stages
        if graded is not None:
            generated, grading = graded
            summary.generated = GeneratedSummary(graded=len(generated), grades=counts(generated),
                                                 withhold=len(withheld(generated)), levels=grading.as_dict())
    if build_summary is not None:
        summary.build = {k: v for k, v in build_summary.items() if k != "manifest"}
    return AuditResult.of(emb.paths, decision, nb, pair, np.array(store.paths(nb.ids), dtype=object), summary,
                          timings, evidence={name: r[3] for name, r in results.items()},
                          sha256=emb.sha256, generated_sha256=store.sha256_of(nb.ids), generated_answer=generated,
                          patients=patients)


def audit(generated: str | Path, real: str | Path, config: AuditConfig, index_dir: str | Path | None = None,
          overwrite: bool = False, used=None, not_used=None, reference=None) -> AuditResult:
    """Build then query in one go; the index is written only when `index_dir` is given (an existing one is
    replaced only with `overwrite`)."""
    timings = Timings()
    # Check every input folder before the expensive build, so a typo fails in a second, not after it.
    check_distinct({"real": real, "used": used, "not_used": not_used, "reference": reference})
    table = read_groups(config.decide.groups) if config.decide.groups is not None else None
    for name, p in {"real-image": real, "used": used, "not-used": not_used, "reference": reference}.items():
        if p is not None:
            files = list_images(p, f"{name} folder", ReadOptions.of(config.embed))
            if table is not None and name == "real-image":
                check_listed(table, [f.name for f in files], "real")
    given = {"used": used, "not_used": not_used, "reference": reference}
    choose_method(config.decide, Labelled(**{n: _EMPTY for n, p in given.items() if p is not None}))
    if index_dir is not None:
        recover_dir(index_dir)
    if index_dir is not None and os.path.lexists(index_dir) and not overwrite:
        raise FpindexError(f"index {index_dir} already exists; pass --overwrite to replace it or choose another "
                           "--index")
    built = build(generated, config, index_dir, mode="overwrite" if overwrite else "new", timings=timings)
    # The generated vectors live on in the index, where the query reads them: the copy embedding made is let go
    # (2 GB of 512-d vectors at 1M images). A new empty array, not a slice: a view would keep the whole alive.
    built.embedded.vectors = np.empty((0, built.embedder.dim), np.float32)
    return query(built, real, config, used=used, not_used=not_used, reference=reference, timings=timings,
                 pixels=built.pixels, build_summary=built.summary)
