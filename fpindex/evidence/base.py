"""The one interface every evidence feature implements, and the registry that everything else reads.

A feature is one module in this package: a `Feature` subclass registered with `@feature`. The pipeline,
the CLI's choices and help, `summary.json`, the decision and the docs all take the list from `FEATURES`, so
adding a feature touches no other file. Two kinds:
- level 'pair': a value per (real image, retrieved neighbour), pooled over the k neighbours (`pool`);
- level 'image': one value per real image (e.g. from something fitted on the generated set at build time).
`needs` says what the runner must hand over (pixels, vectors; at image level also the cosines of the
k generated neighbours and of the k nearest other real images of the audit); values are cached by content hash when
`cache_identity` says what defines them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from ..registry import Registry

NEEDS = frozenset({"pixels", "vectors", "neighbours", "real_neighbours"})
POOLS = ("max", "top1")


@dataclass(frozen=True)
class Evidence:
    """Per-image scores, each an (n,) float array keyed by feature name; the dict's order is the feature order.
    `groups`: per image, which sibling group it belongs to (images that are probably of one source, e.g. one
    patient's slices; `search.sibling_groups`); None: every image its own group."""

    scores: dict[str, np.ndarray]
    groups: np.ndarray | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.scores)

    def __len__(self) -> int:
        return len(next(iter(self.scores.values()))) if self.scores else 0

    def matrix(self, features: tuple[str, ...] | None = None) -> np.ndarray:
        """Columns in `features` order (default: this Evidence's own), so sets built in other orders line up."""
        return np.column_stack([self.scores[f] for f in (self.features if features is None else features)]
                               ).astype(np.float64)


@dataclass(frozen=True)
class PairBatch:
    """Some (real, neighbour) pairs. Pixels and vectors are of the distinct images involved, indexed per pair
    by `real_idx` / `gen_idx`; only what the feature `needs` is filled in."""

    real_idx: np.ndarray
    gen_idx: np.ndarray
    cosine: np.ndarray                          # per pair, from the search
    real_pixels: np.ndarray | None = None       # u × S × S canonical pixels
    gen_pixels: np.ndarray | None = None
    real_vectors: np.ndarray | None = None      # u × d
    gen_vectors: np.ndarray | None = None       # stored in the index (approximate for compressed indexes)
    state: Any = None                           # what `prepare` returned


@dataclass(frozen=True)
class ImageBatch:
    """Some real images (in their folder's order): what the feature needs of them."""

    pixels: np.ndarray | None = None
    vectors: np.ndarray | None = None
    state: Any = None
    cosine: np.ndarray | None = None            # rows × k: cosines of the generated neighbours (NaN: none)
    real_cosine: np.ndarray | None = None       # rows × k: cosines of the nearest other real images (NaN: none)


@dataclass
class FitInput:
    """What a feature may fit on at build time: the generated images just embedded."""

    sha256: list[str]                           # per generated row, its file's content hash
    pixels: Callable[[np.ndarray], np.ndarray]  # rows → canonical pixels (decoded at most once per run)
    size: int
    seed: int
    cache_dir: str | None                       # None: no caching


class Feature:
    """One evidence score; see the module docstring. Subclasses set the class attributes and implement
    `pairs` (level 'pair') or `images` (level 'image')."""

    name: ClassVar[str]
    help: ClassVar[str]
    level: ClassVar[str] = "pair"
    needs: ClassVar[frozenset[str]] = frozenset()
    pool: ClassVar[str] = "max"         # pair level: best over the neighbours, or the nearest one's ('top1')
    missing: ClassVar[float] = -1.0     # pair level: stands for an absent neighbour (id -1) when pooling
    threshold: ClassVar[float] = 0.5    # default threshold of the `fixed` decision
    on_demand: ClassVar[bool] = False   # costly: computed only when the decision reads it
    attachment: ClassVar[str | None] = None  # file in the index holding what `fit` returned
    real_k: ClassVar[int] = 10          # needs 'real_neighbours': how many of the audit's other real images
    copy: ClassVar[bool] = False        # a copy drives it to its cap of 1: tested on its own (decide/copies.py)
    # pair level, costly: with --screen m, computed only for each real image's m neighbours that score highest
    # on the pair-level feature named here (registered earlier, so computed first); the others are NaN
    screen: ClassVar[str | None] = None

    def cache_identity(self, size: int) -> dict[str, Any] | None:
        """What defines a value (beyond the images' content); None: not cached."""
        return None

    def fit(self, data: FitInput) -> tuple[bytes, dict[str, Any]] | None:
        """Build time: bytes to store as `attachment`, and a description for the index manifest."""
        return None

    def prepare(self, attachment: bytes | None, where: str) -> Any:
        """Query time, once: parse the stored attachment (None: the index has none). `where` names the
        index for messages. The result is handed to every batch as `state`; None turns the feature off
        (its value is 0 for every image)."""
        return None

    def state_id(self, attachment: bytes | None) -> str:
        """Part of an image-level cache key: which fitted state produced the value."""
        return ""

    def pairs(self, batch: PairBatch) -> np.ndarray:
        raise NotImplementedError

    def images(self, batch: ImageBatch) -> np.ndarray:
        raise NotImplementedError


FEATURES: Registry[Feature] = Registry("evidence feature")


def feature(cls: type[Feature]) -> type[Feature]:
    """Class decorator: check the declaration and register one instance under `cls.name`."""
    if cls.level not in ("pair", "image"):
        raise ValueError(f"feature {cls.name}: level must be 'pair' or 'image'")
    if not cls.needs <= NEEDS or cls.pool not in POOLS:
        raise ValueError(f"feature {cls.name}: needs ⊆ {sorted(NEEDS)} and pool in {POOLS}")
    if cls.level == "pair" and cls.needs & {"neighbours", "real_neighbours"}:
        raise ValueError(f"feature {cls.name}: only image-level features read whole neighbour lists")
    if cls.screen is not None and (cls.level != "pair" or cls.screen not in FEATURES
                                   or FEATURES.get(cls.screen).level != "pair"):
        raise ValueError(f"feature {cls.name}: screen must name a pair-level feature registered before it")
    FEATURES.register(cls.name, cls.help)(cls())
    return cls


def thresholds() -> dict[str, float]:
    return {name: FEATURES.get(name).threshold for name in FEATURES}
