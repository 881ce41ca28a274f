"""Stage 3 — embed: images → L2-normalised vectors.

`base` holds the embedder contract and the registry `EMBEDDERS` (no torch), `weights` the shared weight loader
and channel adapter, `models`, `timm_models` and `graphs` the embedders, `stream` the batched decode → enhance →
forward loop, `selfsup` and `train` the self-supervised training on the generated set, `run` a whole folder
with caching. Everything but `base` is imported on first use (torch takes seconds to import).
"""

from __future__ import annotations

from ..lazy import lazy_attributes

from .base import (EMBEDDERS, RANDOM, SELFSUP, SELFSUP_FILE, Embedder, Spec, build_embedder, default_size,
                   default_weights, model_choices, split_model)

_LAZY = {"CNNEmbedder": "models", "CompactCNN": "models", "Embedded": "run", "embed_folder": "run",
         "embed_identity": "run", "make_embedder": "run", "resolved": "run", "vector_cache": "run",
         "train_on_generated": "train"}

__all__ = ["EMBEDDERS", "Embedder", "Spec", "build_embedder", "default_size", "default_weights", "model_choices",
           "split_model", "RANDOM", "SELFSUP", "SELFSUP_FILE", *_LAZY]


__getattr__ = lazy_attributes(__name__, {name: f".{m}" for name, m in _LAZY.items()}, globals())
