"""Re-ranking on the cluster: the real images in batches, each batch a Ray task running evidence/compute.py's
`compute_evidence` on its own rows (with the stored hashes, vectors and paths of just their neighbours), the
results joined in row order. Every feature is per pair or per image (the one that reads the whole audit's real
images gets its rows' share of that search, done on the driver), so the batches add up to the whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..evidence import Evidence, Query, Run, compute_evidence as compute_local
from ..load import ReadOptions
from ..pixels import PixelStore, QueryImages
from ..search import Neighbours

BATCH = 512           # real images per task


@dataclass
class _Part:
    """What one task needs: its real images and the generated images they were matched with."""

    sha256: list[str]
    vectors: np.ndarray
    nb: Neighbours
    real_paths: list[str]
    gen_ids: np.ndarray               # sorted distinct neighbour ids
    gen_sha256: list[str]
    gen_vectors: np.ndarray
    gen_paths: list[str]              # checked to stay inside their root on the driver
    gen_sizes: list[int]
    real_cosine: np.ndarray | None = None   # rows × k: the rows' nearest other real images (whole audit's)


class _PartFiles:
    """pixels.IndexedFiles over one task's neighbours, so re-ranking checks their hashes as it does locally."""

    def __init__(self, part: _Part) -> None:
        self.part = part

    def _at(self, ids: np.ndarray) -> list[int]:
        return np.searchsorted(self.part.gen_ids, np.asarray(ids).ravel()).tolist()

    def files(self, ids: np.ndarray) -> list[str]:
        return [self.part.gen_paths[i] for i in self._at(ids)]

    def sha256(self, ids: np.ndarray) -> list[str]:
        return [self.part.gen_sha256[i] for i in self._at(ids)]

    def sizes(self, ids: np.ndarray) -> list[int]:
        return [self.part.gen_sizes[i] for i in self._at(ids)]


def _task(part: _Part, attachments: dict[str, bytes], where: str, size: int, read: ReadOptions,
          wanted: frozenset[str], cache_dir: str | None, names: list[str], screen: int | None = None
          ) -> tuple[dict, dict]:
    from .faults import crash_once_for_tests

    crash_once_for_tests()

    files = _PartFiles(part)
    images = QueryImages(PixelStore(size, read=read), part.real_paths, files)
    q = Query(sha256=part.sha256, vectors=part.vectors, nb=part.nb, gen_sha256=files.sha256,
              gen_vectors=lambda ids: part.gen_vectors[files._at(ids)], images=images, attachments=attachments,
              where=where, real_cosine=part.real_cosine)
    pair, ev = compute_local(q, Run(wanted=wanted, cache_dir=cache_dir, screen=screen), names)
    return pair, ev.scores


def compute_evidence(q: Query, run: Run, features: Sequence[str] | None = None
                     ) -> tuple[dict[str, np.ndarray], Evidence]:
    """evidence/compute.py's compute_evidence, one Ray task per BATCH real images."""
    import ray

    from ..evidence import FEATURES

    names = list(features) if features is not None else FEATURES.names()
    n = len(q.sha256)
    if n == 0:
        return compute_local(q, run, names)
    images: Any = q.images
    shared = [ray.put(q.attachments)]
    task = ray.remote(num_cpus=1, max_retries=3)(_task)
    refs = []
    with run.stage("rerank"):
        for lo in range(0, n, BATCH):
            rows = np.arange(lo, min(n, lo + BATCH))
            ids, cos = q.nb.ids[rows], q.nb.cosine[rows]
            u = np.unique(ids[ids >= 0])
            part = _Part(sha256=[q.sha256[r] for r in rows.tolist()], vectors=q.vectors[rows],
                         nb=Neighbours(ids, cos), real_paths=[str(images.real_paths[r]) for r in rows.tolist()],
                         gen_ids=u, gen_sha256=q.gen_sha256(u), gen_vectors=q.gen_vectors(u),
                         gen_paths=images.index.files(u), gen_sizes=images.index.sizes(u),
                         real_cosine=None if q.real_cosine is None else q.real_cosine[rows])
            refs.append(task.remote(part, shared[0], q.where, images.size, images.store.reader.read,
                                    run.wanted, run.cache_dir, names, run.screen))
        done = []
        with run.progress(n, run.desc) as bar:
            for lo, ref in zip(range(0, n, BATCH), refs):
                done.append(ray.get(ref))
                bar.update(min(BATCH, n - lo))
    pair = {name: np.concatenate([d[0][name] for d in done]) for name in done[0][0]}
    scores = {name: np.concatenate([d[1][name] for d in done]) for name in done[0][1]}
    return pair, Evidence(scores)


__all__ = ["BATCH", "compute_evidence"]
