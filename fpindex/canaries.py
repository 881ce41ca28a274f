"""Canaries: what this audit would have caught, measured on this data in every audit with known-unused images.

N known-unused real images are canary sources. Each gets transformed copies (plants.py: exact, rigid,
elastic, noise, blur, intensity, crop, patch, blend, at a few strengths), embedded like the generated
images. They are kept as marked rows beside the index, never in it: no other image ever sees them among its
neighbours, so every other output is what it would be without canaries. The what-if pass re-scores each
source with one planted copy at a time: its neighbours are its own k neighbours in the index merged with
that copy (top k by cosine), pooled like any neighbours, then scored by the decision already fitted (the
calibration still uses the sources' evidence without canaries). A canary is found when its p-value against
the known-unused images is ≤ α (fixed thresholds, which have no null: when its label would be 1); the
set-level verdict does not gate it, since the verdict is what canaries qualify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .config import AuditConfig
from .decide import Decision
from .embed import Embedded, Embedder
from .embed.stream import autocast, default_batch_size
from .enhance import enhance_batch
from .evidence import FEATURES, Evidence, ImageBatch, Query, Run, compute_evidence
from .evidence.compute import pool
from .pixels import PixelStore
from .plants import PLANTS, grid
from .search import Neighbours
from .utils import Timings, sha256_bytes


@dataclass
class Folder:
    """The known-unused images the canaries come from, as the audit scored them (without canaries)."""

    name: str                       # "not_used" or "reference"
    emb: Embedded
    nb: Neighbours
    pair: dict[str, np.ndarray]     # per-neighbour values, n × k
    evidence: Evidence
    real_cosine: np.ndarray | None = None   # n × k: nearest other real images (features needing them)


def source_folder(method: str, available: set[str]) -> str | None:
    """The folder whose images model the decision's null (and so can be canaries); None: none to use. Without
    known-unused images (`copies`) the real images are their own null, and so the canaries' sources."""
    if method == "copies":
        return "real"
    order = ("reference", "not_used") if method in ("reference", "pu") else ("not_used", "reference")
    return next((n for n in order if n in available), None)


class _Planted:
    """The evidence runner's view of canary rows: 'real' = the sources, 'generated' = their planted copies."""

    def __init__(self, real: np.ndarray, planted: np.ndarray) -> None:
        self._real, self._planted = real, planted
        self.size = real.shape[-1]

    def real(self, rows: np.ndarray) -> np.ndarray:
        return self._real[rows]

    def generated(self, ids: np.ndarray) -> np.ndarray:
        return self._planted[ids]

    def check_generated(self, ids: np.ndarray) -> None:
        pass


def _embed(embedder: Embedder, cfg: AuditConfig, pixels: np.ndarray) -> np.ndarray:
    bs = cfg.embed.batch_size or default_batch_size(embedder.spec.device)
    out = [np.empty((0, embedder.dim), np.float32)]
    for s in range(0, len(pixels), bs):
        with autocast(embedder.spec.device, cfg.embed.precision):
            out.append(embedder(enhance_batch(pixels[s:s + bs], cfg.embed.enhance)))
    return np.concatenate(out)


def run_canaries(cfg: AuditConfig, decision: Decision, folder: Folder, embedder: Embedder, pixels: PixelStore,
                 attachments: dict[str, bytes], wanted: frozenset[str], names: list[str],
                 cache_dir: str | None, timings: Timings | None = None,
                 progress: Callable[[int, str], Any] | None = None) -> dict[str, Any]:
    """Plant, embed and re-score the canaries; what summary.json's "canaries" holds."""
    timings = timings or Timings()
    c = cfg.canaries
    emb, alpha = folder.emb, cfg.decide.alpha
    n = min(c.n, len(emb.paths))
    rng = np.random.default_rng([c.seed, 14])
    order = rng.permutation(len(emb.paths))
    cells = grid(c.kinds)
    need = max(PLANTS.get(k).others(s) for k, s in cells)
    pool_rows = order[:max(n, min(len(order), need + 1))]
    files = emb.files()
    with timings.stage("load"):
        px = pixels.stack([files[r] for r in pool_rows.tolist()],
                          lambda p, e: f"known-unused image {p} changed or vanished during the run ({e})")
    rows: list[dict[str, Any]] = []
    copies: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    with timings.stage("enhance"):      # planting is a pixel transform, like enhancement
        for i in range(n):
            for j, (kind, strength) in enumerate(cells):
                p = PLANTS.get(kind)
                m = p.others(strength)
                if m > len(pool_rows) - 1:
                    skipped[f"{kind} {strength:g}"] = f"needs {m} other known-unused images, has {len(pool_rows) - 1}"
                    continue
                others = [px[(i + 1 + t) % len(pool_rows)] for t in range(m)]
                copies.append(p(px[i], strength, np.random.default_rng([c.seed, i, j]), others))
                rows.append({"source": emb.paths[int(pool_rows[i])], "row": int(pool_rows[i]), "slot": i,
                             "kind": kind, "strength": strength})
    if not rows:
        return {"n_sources": 0, "skipped": skipped, "text": ["no canaries: no known-unused image to plant"]}
    planted = np.stack(copies)
    src = np.array([r["row"] for r in rows])
    slot = np.array([r["slot"] for r in rows])
    cosine, shas, new_pair = _planted_pairs(cfg, emb, src, px[slot], planted, embedder, attachments, wanted, names,
                                            cache_dir, timings, progress, "re-rank canaries")
    evidence = _what_if(folder, src, cosine, new_pair, names, cfg.evidence.screen)
    with timings.stage("decide"):
        score, p_value = decision.rescore(evidence)
    found = decision.rule.found(score, p_value)       # the decision's own rule, without the verdict's gate
    if p_value is not None and decision.rule.alpha is not None:
        criterion = f"p ≤ α = {alpha:g} against the {folder.name.replace('_', '-')} images (fused or copy channel)"
    else:
        criterion = decision.rule.text
    copy_feats = [f for f in new_pair if FEATURES.get(f).copy and np.isfinite(new_pair[f]).any()]
    for i, (r, s, pv, f, cs, sha) in enumerate(zip(rows, score.tolist(), (p_value if p_value is not None else
                                                                          [None] * len(rows)),
                                                   found.tolist(), cosine.tolist(), shas)):
        r.pop("row"), r.pop("slot")
        r.update(score=round(float(s), 6), p_value=None if pv is None else round(float(pv), 6), found=bool(f),
                 cosine=round(float(cs), 6), sha256=sha,
                 # what decide/replication.py reads: the copy features of each planted copy against its source
                 copy={c: round(float(new_pair[c][i, 0]), 6) for c in copy_feats})
    table = _table(rows, n)
    return {"n_sources": n, "requested": c.n, "source_folder": folder.name, "method": decision.method, "criterion": criterion,
            "alpha": alpha, "kinds": {k: {"unit": PLANTS.get(k).unit, "help": PLANTS.help(k)}
                                      for k in dict.fromkeys(k for k, _ in cells)},
            "table": table, "text": [f"would have flagged {t['found']}/{t['planted']} {t['description']}"
                                     for t in table],
            "skipped": skipped, "planted": rows,
            "note": "planted copies are kept beside the index, never in it; no other image's outputs change"}


def _planted_pairs(cfg: AuditConfig, emb: Embedded, src: np.ndarray, source_px: np.ndarray, planted: np.ndarray,
                   embedder: Embedder, attachments: dict[str, bytes], wanted: frozenset[str], names: list[str],
                   cache_dir: str | None, timings: Timings, progress, desc: str
                   ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Embed planted copies and score each against its source only (the pair-level features, m × 1): the
    sources' pairs with their own neighbours are the audit's, already computed."""
    with timings.stage("embed"):
        vec = _embed(embedder, cfg, planted)
    cosine = np.einsum("ij,ij->i", emb.vectors[src], vec).astype(np.float32)
    shas = [sha256_bytes(b"canary:" + x.tobytes()) for x in planted]
    pair_names = [f for f in names if FEATURES.get(f).level == "pair"]
    q = Query(sha256=[emb.sha256[r] for r in src.tolist()], vectors=emb.vectors[src],
              nb=Neighbours(np.arange(len(src), dtype=np.int64)[:, None], cosine[:, None]),
              gen_sha256=lambda ids: [shas[i] for i in ids.tolist()], gen_vectors=lambda ids: vec[ids],
              images=_Planted(source_px, planted), attachments=attachments, where="canaries")
    run = Run(wanted=wanted, cache_dir=cache_dir, stage=timings.stage,
              progress=progress or Run(wanted).progress, desc=desc)
    new_pair, _ = compute_evidence(q, run, pair_names)
    return cosine, shas, new_pair


# What a near copy is (issue 20's grades name the same kinds): the weakest default strength of each kind that
# changes an image without moving anything in it far. Their scores on the audit's own images are the copy level.
NEAR_COPIES = (("rigid", 3.0), ("noise", 0.02), ("blur", 1.0), ("intensity", 0.1))
LEVEL_SOURCES = 20          # real images planted
LEVEL_PERCENTILE = 5.0      # the copy level: this percentile of each kind's near copies' scores, the lowest of them


def copy_levels(cfg: AuditConfig, emb: Embedded, embedder: Embedder, pixels: PixelStore,
                attachments: dict[str, bytes], names: list[str], cache_dir: str | None,
                timings: Timings | None = None) -> dict[str, float]:
    """Per copy-level feature, what a near copy of the audit's own real images scores (leave-one-out planting:
    each image against its own planted copy, nothing else). Without known-unused images this is the one thing
    that says what "a copy" means on this data (decide/copies.py)."""
    timings = timings or Timings()
    feats = [f for f in names if FEATURES.get(f).copy]
    if not feats or not emb.paths:
        return {}
    rows = np.random.default_rng([cfg.canaries.seed, 15]).permutation(len(emb.paths))[:LEVEL_SOURCES]
    files = emb.files()
    with timings.stage("load"):
        px = pixels.stack([files[r] for r in rows.tolist()],
                          lambda p, e: f"real image {p} changed or vanished during the run ({e})")
    planted, src, slot = [], [], []
    with timings.stage("enhance"):
        for i, r in enumerate(rows.tolist()):
            for j, (kind, strength) in enumerate(NEAR_COPIES):
                planted.append(PLANTS.get(kind)(px[i], strength, np.random.default_rng([cfg.canaries.seed, 15, i, j]),
                                                []))
                src.append(r)
                slot.append(i)
    _, _, pair = _planted_pairs(cfg, emb, np.array(src), px[np.array(slot)], np.stack(planted), embedder,
                                attachments, frozenset(feats), feats, cache_dir, timings, None, "copy levels")
    kind = np.tile(np.arange(len(NEAR_COPIES)), len(rows))
    # Each kind moves each feature its own way (noise lowers SSIM most, rotation the cosine): the level is the
    # lowest of the kinds' own percentiles, so that a near copy of any kind reaches it.
    return {f: float(min(np.percentile(pair[f][kind == j, 0], LEVEL_PERCENTILE) for j in range(len(NEAR_COPIES))))
            for f in feats}


def _what_if(folder: Folder, src: np.ndarray, cosine: np.ndarray, new_pair: dict[str, np.ndarray],
             names: list[str], screen: int | None = None) -> Evidence:
    """Each canary row's evidence: its source's neighbours plus the planted copy, top k by cosine, pooled."""
    ids, cos = folder.nb.ids[src], folder.nb.cosine[src].astype(np.float64)
    k = ids.shape[1]
    valid = np.c_[ids >= 0, np.ones(len(src), bool)]
    key = np.where(valid, np.c_[cos, cosine], -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    take = lambda a: np.take_along_axis(a, order, axis=1)   # noqa: E731
    keep = take(valid)
    pairs = {name: take(np.c_[folder.pair[name][src], new_pair[name]]) for name in new_pair}
    scores = {}
    for name in names:
        f = FEATURES.get(name)
        if f.level == "pair":
            scores[name] = pool(name, pairs[name], keep, pairs, screen)
        elif "neighbours" in f.needs and folder.real_cosine is not None:   # reads the merged neighbour list
            merged = np.where(keep, take(key), np.nan).astype(np.float32)
            scores[name] = f.images(ImageBatch(cosine=merged, real_cosine=folder.real_cosine[src]))
        else:                               # fitted on the generated set: one planted image does not move it
            scores[name] = folder.evidence.scores[name][src]
    return Evidence(scores)


def _table(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        t = out.setdefault((r["kind"], r["strength"]), {
            "kind": r["kind"], "strength": r["strength"], "unit": PLANTS.get(r["kind"]).unit,
            "description": PLANTS.get(r["kind"]).describe(r["strength"]), "planted": 0, "found": 0})
        t["planted"] += 1
        t["found"] += int(r["found"])
    for t in out.values():
        t["rate"] = round(t["found"] / t["planted"], 4)
    return list(out.values())
