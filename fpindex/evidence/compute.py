"""Running the evidence features over one folder's neighbours: what each needs is loaded once, cached values
are reused, and per-pair values are pooled into one number per real image."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..cache import ContentCache, pair_keys
from ..search import Neighbours
from .base import FEATURES, Evidence, Feature, ImageBatch, PairBatch

PAIR_CHUNK = 8192
IMAGE_CHUNK = 1024


class Images(Protocol):
    """Where the runner gets pixels and vectors (the pipeline's memoised pixel store and the index)."""

    size: int

    def real(self, rows: np.ndarray) -> np.ndarray: ...
    def generated(self, ids: np.ndarray) -> np.ndarray: ...
    def check_generated(self, ids: np.ndarray) -> None: ...


@dataclass
class Query:
    """One folder of real images against the index."""

    sha256: list[str]                 # per real image
    vectors: np.ndarray               # n × d, the real images' embeddings
    nb: Neighbours
    gen_sha256: Callable[[np.ndarray], list[str]]   # generated ids → content hashes
    gen_vectors: Callable[[np.ndarray], np.ndarray]  # generated ids → stored vectors
    images: Images
    attachments: dict[str, bytes]     # the index's stored files (fitted feature states)
    where: str                        # the index, for messages
    real_cosine: np.ndarray | None = None  # n × k: nearest other real images of the audit (search.search_real)


@dataclass
class Run:
    """How to run: which features to compute, caching, timing and progress (all optional)."""

    wanted: frozenset[str]
    cache_dir: str | None = None
    stage: Callable[[str], Any] = lambda name: nullcontext()
    progress: Callable[[int, str], Any] = lambda total, desc: _NoBar()
    desc: str = "re-rank"
    screen: int | None = None         # EvidenceConfig.screen


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def compute_evidence(q: Query, run: Run,
                     features: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], Evidence]:
    """Per-neighbour values (n × k, for pair-level features; NaN where not computed) and per-image evidence
    for every registered feature. A feature that is `on_demand` and not in `run.wanted` is not computed: 0 for
    every image. Generated files whose values all came from the cache are not read, but must still exist."""
    names = list(features) if features is not None else FEATURES.names()
    n, k = q.nb.ids.shape
    valid = q.nb.ids >= 0
    flat = q.nb.ids[valid]
    cosine = q.nb.cosine[valid]              # per pair, in `flat` order
    real_idx = np.repeat(np.arange(n), k).reshape(n, k)[valid]
    shas: dict[str, list[str]] = {}
    pair: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    read: set[int] = set()
    for name in names:
        f = FEATURES.get(name)
        active = not f.on_demand or name in run.wanted
        if f.level == "pair":
            values = np.zeros((n, k), np.float32)
            if not active:
                values[:] = np.nan
            elif len(flat):
                chosen = screened(f, pair, valid, run.screen)
                values[valid & ~chosen] = np.nan           # screened out: not computed
                values[valid & chosen] = _pairs(f, q, run, flat, real_idx, cosine, chosen[valid], shas, read)
            pair[name] = values
            scores[name] = _pool(f, values, valid)
        else:
            # A stored state is read even when not needed: a damaged index is refused, not half used.
            state = f.prepare(q.attachments.get(f.attachment), q.where) if f.attachment else None
            if active and (state is not None or not f.attachment):
                scores[name] = _images(f, q, run, state, f.state_id(q.attachments.get(f.attachment)))
            else:
                scores[name] = np.zeros(n, np.float32)
    if len(flat):
        with run.stage("load"):
            q.images.check_generated(np.setdiff1d(np.unique(flat), np.fromiter(read, np.int64, len(read))))
    return pair, Evidence(scores)


def screened(f: Feature, pair: dict[str, np.ndarray], valid: np.ndarray, keep: int | None) -> np.ndarray:
    """n × k: the pairs `f` is computed for. All valid ones, or (a feature with a screen, `keep` given) the
    `keep` best of each row on the screening feature, ties to the nearer neighbour; all of them when that
    feature was not computed. Why: a copy that the costly feature tells from a look-alike is one the cheaper
    screening feature already ranks near the top (benchmarks/README.md, re-ranking cost)."""
    if f.screen is None or keep is None or f.screen not in pair or np.isnan(pair[f.screen][valid]).any():
        return valid.copy()
    order = np.argsort(-np.where(valid, pair[f.screen], -np.inf), axis=1, kind="stable")[:, :keep]
    chosen = np.zeros_like(valid)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen & valid


def pool(name: str, values: np.ndarray, valid: np.ndarray, pair: dict[str, np.ndarray] | None = None,
         screen: int | None = None) -> np.ndarray:
    """A pair-level feature's per-image value from its n × k values, as `compute_evidence` pools them (for
    neighbour lists merged after the fact, e.g. the canaries' what-if pass, whose `pair` values of the other
    features re-apply the screen: a pair pushed out of the `screen` best no longer counts)."""
    f = FEATURES.get(name)
    if pair is not None:
        values = np.where(screened(f, pair, valid, screen), values, np.nan)
    return _pool(f, values, valid)


def _pool(f: Feature, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n = len(values)
    if not n or np.isnan(values).all():
        return np.zeros(n)
    if f.pool == "top1":
        return np.where(valid[:, 0], values[:, 0], f.missing)
    # NaN: screened out (not computed), so no evidence either way: the best of the pairs computed
    return np.fmax.reduce(np.where(valid, values, f.missing), axis=1, initial=f.missing)


def _cache(f: Feature, q: Query, run: Run) -> ContentCache | None:
    identity = f.cache_identity(q.images.size)
    if run.cache_dir is None or identity is None:
        return None
    return ContentCache(run.cache_dir, f.name, identity, width=1)


def _pairs(f: Feature, q: Query, run: Run, flat: np.ndarray, real_idx: np.ndarray, cosine: np.ndarray,
           sel: np.ndarray, shas: dict[str, list[str]], read: set[int]) -> np.ndarray:
    """`f`'s values of the pairs `sel` picks out of every valid pair (`flat`, `real_idx`, `cosine`)."""
    cache = _cache(f, q, run)
    if cache is not None:
        with run.stage("rerank"):
            if "gen" not in shas:          # of every valid pair, once for all features
                shas["gen"] = q.gen_sha256(flat)
                shas["real"] = [q.sha256[i] for i in real_idx.tolist()]
            keys = pair_keys(*([h for h, t in zip(shas[side], sel) if t] for side in ("real", "gen")))
            vals = cache.get(keys)
    else:
        vals = np.full(int(sel.sum()), np.nan, np.float32)
    flat, real_idx, cosine = flat[sel], real_idx[sel], cosine[sel]
    todo = np.flatnonzero(np.isnan(vals))
    with (run.progress(len(todo), f"{run.desc}: {f.name}") if "pixels" in f.needs else _NoBar()) as bar:
        for s in range(0, len(todo), PAIR_CHUNK):
            part = todo[s:s + PAIR_CHUNK]
            ug, ig = np.unique(flat[part], return_inverse=True)
            ur, ir = np.unique(real_idx[part], return_inverse=True)
            extra: dict[str, Any] = {}
            with run.stage("load"):        # pixels not kept from embedding are read here
                if "pixels" in f.needs:
                    extra = {"real_pixels": q.images.real(ur), "gen_pixels": q.images.generated(ug)}
                    read.update(ug.tolist())
            with run.stage("rerank"):
                if "vectors" in f.needs:
                    extra |= {"real_vectors": q.vectors[ur], "gen_vectors": q.gen_vectors(ug)}
                vals[part] = f.pairs(PairBatch(real_idx=ir.ravel(), gen_idx=ig.ravel(), cosine=cosine[part],
                                               **extra))
            bar.update(len(part))
    if cache is not None and len(todo):
        with run.stage("rerank"):
            cache.put([keys[i] for i in todo.tolist()], vals[todo])
    return vals


def _cosines(q: Query, rows: np.ndarray) -> np.ndarray:
    return np.where(q.nb.ids[rows] >= 0, q.nb.cosine[rows], np.nan).astype(np.float32)


def _real_cosines(f: Feature, q: Query, rows: np.ndarray) -> np.ndarray | None:
    if "real_neighbours" not in f.needs:
        return None
    if q.real_cosine is None:
        raise ValueError(f"feature {f.name} needs the real images' own neighbours, which this query lacks")
    return q.real_cosine[rows]


def _images(f: Feature, q: Query, run: Run, state: Any, state_id: str) -> np.ndarray:
    n = len(q.sha256)
    cache = _cache(f, q, run)
    keys = pair_keys(q.sha256, [state_id] * n) if cache is not None else []
    out = cache.get(keys) if cache is not None else np.full(n, np.nan, np.float32)
    todo = np.flatnonzero(np.isnan(out))
    for s in range(0, len(todo), IMAGE_CHUNK):
        rows = todo[s:s + IMAGE_CHUNK]
        with run.stage("load"):
            pix = q.images.real(rows) if "pixels" in f.needs else None
        with run.stage("rerank"):
            out[rows] = f.images(ImageBatch(pixels=pix, vectors=q.vectors[rows] if "vectors" in f.needs else None,
                                            state=state, cosine=_cosines(q, rows) if "neighbours" in f.needs else None,
                                            real_cosine=_real_cosines(f, q, rows)))
    if cache is not None and len(todo):
        cache.put([keys[i] for i in todo.tolist()], out[todo])
    return out
