"""Stage 3 — embed: images → L2-normalised vectors.

`models` holds the embedders (registry `EMBEDDERS`), `stream` the batched decode → enhance → forward loop,
`selfsup` and `train` the self-supervised training on the generated set, `run` a whole folder with caching.
"""

from .models import EMBEDDERS, CNNEmbedder, CompactCNN, Embedder, build_embedder
from .run import Embedded, embed_folder, embed_identity, make_embedder, resolved, vector_cache
from .train import SELFSUP, SELFSUP_FILE, train_on_generated

__all__ = ["EMBEDDERS", "CNNEmbedder", "CompactCNN", "Embedder", "Embedded", "build_embedder", "embed_folder",
           "embed_identity", "make_embedder", "resolved", "vector_cache", "SELFSUP", "SELFSUP_FILE",
           "train_on_generated"]
