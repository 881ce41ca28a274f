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


def search_real(groups: list[tuple[np.ndarray, list[str]]], k: int, batch: int = 4096) -> list[np.ndarray]:
    """For every real image of every group (vectors, content hashes), the cosines of its k nearest *other* real
    images over all groups, best first, NaN where there are fewer: the background against which a similarity
    to the generated set says more than how typical an image is. An image is never its own neighbour, nor are
    its byte-identical copies (by hash). Exhaustive inner-product search in FAISS, batched (no n × n matrix)."""
    import faiss

    vectors = [np.ascontiguousarray(v, np.float32) for v, _ in groups]
    shas = np.array([s for _, sh in groups for s in sh], dtype=object)
    n = len(shas)
    out = [np.full((len(v), k), np.nan, np.float32) for v in vectors]
    if n < 2 or k < 1:
        return out
    index = faiss.IndexFlatIP(vectors[0].shape[1])
    index.add(np.concatenate(vectors))
    _, counts = np.unique(shas, return_counts=True)
    kk = min(n, k + int(counts.max()))          # room for the image itself and its copies
    start = 0
    for v, o in zip(vectors, out):
        for s in range(0, len(v), batch):
            d, i = index.search(v[s:s + batch], kk)
            own = shas[start + s:start + s + len(d)]
            for r in range(len(d)):
                keep = d[r][(i[r] >= 0) & (shas[np.maximum(i[r], 0)] != own[r])][:k]
                o[s + r, :len(keep)] = keep
        start += len(v)
    return out


SIBLINGS = 2     # mutual nearest neighbours that make two real images siblings (3 merged a 10-image folder into 3 groups)


def sibling_groups(folders: list[np.ndarray], m: int = SIBLINGS) -> list[np.ndarray]:
    """Per folder (its vectors), a group id per image: the connected components of its mutual m-nearest-neighbour graph
    (within the folder), ids distinct across folders. Why: real images come in series (a patient's slices),
    siblings are alike whether or not they were used, so tests that treat every image as an independent draw
    are too confident; the decisions cross-fit and permute whole groups instead. A proxy, since the patients
    are not known: groups that merge two patients only make the tests more cautious."""
    import faiss
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
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(np.ascontiguousarray(v, np.float32))
        _, ids = index.search(np.ascontiguousarray(v, np.float32), kk)
        rows = np.repeat(np.arange(n), kk)
        cols = ids.ravel()
        keep = (cols >= 0) & (cols != rows)
        a = coo_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n)).tocsr()
        mutual = a.multiply(a.T)
        _, labels = connected_components(mutual, directed=False)
        out.append(labels.astype(np.int64) + offset)
        offset += int(labels.max()) + 1
    return out
