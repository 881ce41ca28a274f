"""The real images' own background: each real image's copy-level evidence against its nearest *other* real
images (never itself, a byte-identical copy or a sibling). Without known-unused images this is what "no copy"
scores on this data (decide/copies.py): a real image was not trained on its neighbours, whatever the generator
did, so no leak can inflate it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..pixels import FolderFiles, PixelStore, QueryImages
from ..search import Neighbours, real_neighbours
from .base import FEATURES, Evidence
from .compute import Query, Run


def copy_feature_names(names: list[str]) -> list[str]:
    return [f for f in names if FEATURES.get(f).copy]


def real_background(emb, groups: np.ndarray | None, k: int, pixels: PixelStore, names: list[str], run: Run,
                    evidence: Callable[[Query, Run, list[str]], tuple[dict, Evidence]],
                    stage: Callable[[str], object]) -> tuple[Neighbours, Evidence]:
    """emb: the folder's `Embedded`; `evidence`: how to run the features (the engine's, local or Ray)."""
    with stage("search"):
        nb = real_neighbours(emb.vectors, emb.sha256, groups, k)
    files = FolderFiles(emb.root, emb.paths, emb.sha256, emb.nbytes)
    q = Query(sha256=emb.sha256, vectors=emb.vectors, nb=nb, gen_sha256=files.sha256,
              gen_vectors=lambda ids: emb.vectors[np.asarray(ids)], images=QueryImages(pixels, emb.files(), files),
              attachments={}, where="the real images' own neighbours")
    _, ev = evidence(q, run, copy_feature_names(names))
    return nb, ev
