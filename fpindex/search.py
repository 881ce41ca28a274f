"""Stage 5 — every real image asks the index for its k nearest generated images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import IndexStore


@dataclass(frozen=True)
class Neighbours:
    """Row i: the k nearest generated images of real image i, best first (id -1 = no neighbour)."""

    ids: np.ndarray      # int64, n × k
    cosine: np.ndarray   # float32, n × k

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def search(store: IndexStore, vectors: np.ndarray, k: int, batch: int = 4096) -> Neighbours:
    """Batched so memory stays flat however many real images there are."""
    if len(vectors) == 0:
        kk = max(1, min(k, store.ntotal))
        return Neighbours(np.empty((0, kk), np.int64), np.empty((0, kk), np.float32))
    sims, ids = [], []
    for s in range(0, len(vectors), batch):
        d, i = store.search(vectors[s:s + batch], k)
        sims.append(d)
        ids.append(i)
    return Neighbours(ids=np.concatenate(ids), cosine=np.concatenate(sims).astype(np.float32))


# Real images against each other: exact (Flat) below this many, an inverted file (IVF, `index.factory.nlist_for`
# lists, full vectors so every cosine returned is exact) from there on. Exhaustive search costs n² inner products:
# seconds at 10k real images (512-d) on two cores, minutes at 100k.
REAL_EXACT_BELOW = 20_000
REAL_NPROBE = 16             # lists visited per query (of 1,024 at 100k real images: 1.6 %)


def real_factory(n: int, exact_below: int = REAL_EXACT_BELOW) -> str:
    """The index the real images' own neighbours are searched with, for n real images (recorded in summary.json)."""
    from .index.factory import nlist_for

    return "Flat" if n < exact_below else f"IVF{nlist_for(n)},Flat"


def real_index(vectors: np.ndarray, exact_below: int = REAL_EXACT_BELOW, nprobe: int = REAL_NPROBE,
               seed: int = 0):
    """A FAISS inner-product index over the real images: `Flat` (exact) below `exact_below` vectors, else
    `IVF{nlist},Flat` trained on a seeded sample and searched with `nprobe` lists (exact when nprobe ≥ nlist).
    Which of the two: `real_factory`."""
    import faiss

    from .index.base import make_faiss_index
    from .index.factory import train_sample

    x = np.ascontiguousarray(vectors, np.float32)
    factory = real_factory(len(x), exact_below)
    index = make_faiss_index(factory, x.shape[1])
    if not index.is_trained:
        index.train(train_sample(x, index, seed))
    index.add(x)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    return index


def search_real(groups: list[tuple[np.ndarray, list[str]]], k: int, batch: int = 4096,
                exact_below: int = REAL_EXACT_BELOW, nprobe: int = REAL_NPROBE) -> list[np.ndarray]:
    """For every real image of every group (vectors, content hashes), the cosines of its k nearest *other* real
    images over all groups, best first, NaN where there are fewer: the background against which a similarity
    to the generated set says more than how typical an image is. An image is never its own neighbour, nor are
    its byte-identical copies (by hash). Through `real_index` (exact below `exact_below` images), batched: no
    n × n matrix."""
    vectors = [np.ascontiguousarray(v, np.float32) for v, _ in groups]
    shas = np.array([s for _, sh in groups for s in sh], dtype=object)
    n = len(shas)
    out = [np.full((len(v), k), np.nan, np.float32) for v in vectors]
    if n < 2 or k < 1:
        return out
    index = real_index(np.concatenate(vectors), exact_below, nprobe)
    _, counts = np.unique(shas, return_counts=True)
    kk = min(n, k + int(counts.max()))          # room for the image itself and its copies
    start = 0
    for v, o in zip(vectors, out):
        for s in range(0, len(v), batch):
            d, i = index.search(v[s:s + batch], kk)
            own = shas[start + s:start + s + len(d)]
            keep = (i >= 0) & (shas[np.maximum(i, 0)] != own[:, None])
            first = np.argsort(~keep, axis=1, kind="stable")[:, :k]     # kept neighbours, in their order
            o[s:s + len(d), :first.shape[1]] = np.where(np.take_along_axis(keep, first, 1),
                                                        np.take_along_axis(d, first, 1), np.nan)
        start += len(v)
    return out


SIBLINGS = 2     # mutual nearest neighbours that make two real images siblings (3 merged a 10-image folder into 3 groups)


def sibling_groups(folders: list[np.ndarray], m: int = SIBLINGS, exact_below: int = REAL_EXACT_BELOW,
                   nprobe: int = REAL_NPROBE) -> list[np.ndarray]:
    """Per folder (its vectors), a group id per image: the connected components of its mutual m-nearest-neighbour graph
    (within the folder), ids distinct across folders. Why: real images come in series (a patient's slices),
    siblings are alike whether or not they were used, so tests that treat every image as an independent draw
    are too confident; the decisions cross-fit and permute whole groups instead. A proxy, since the patients
    are not known: groups that merge two patients only make the tests more cautious. Neighbours through
    `real_index` (exact below `exact_below` images); the graph is sparse."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    out, offset = [], 0
    for v in folders:
        n = len(v)
        if n <= 1:
            out.append(np.arange(offset, offset + n))
            offset += n
            continue
        kk = min(n, m + 1)
        x = np.ascontiguousarray(v, np.float32)
        index = real_index(x, exact_below, nprobe)
        _, ids = index.search(x, kk)
        rows = np.repeat(np.arange(n), kk)
        cols = ids.ravel()
        keep = (cols >= 0) & (cols != rows)
        a = coo_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n)).tocsr()
        mutual = a.multiply(a.T)
        _, labels = connected_components(mutual, directed=False)
        out.append(labels.astype(np.int64) + offset)
        offset += int(labels.max()) + 1
    return out
