"""Typed options for every stage, passed around as one object instead of long keyword lists."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class EmbedConfig:
    """What turns an image file into a vector; stored in the index manifest and checked at query time."""

    model: str = "cnn"
    weights: str | None = None       # None: the model's default; 'random' (seeded), 'imagenet', or a checkpoint path
    enhance: tuple[str, ...] = ("none",)
    image_size: int | None = None    # None: the model's own default input size
    seed: int = 0
    batch_size: int | None = None    # None: 256 on a GPU, 64 on a CPU
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "fp32"          # fp32 | bf16 | fp16 (autocast; changes vectors slightly, so part of identity)
    workers: int | None = None       # decoding/enhancement processes; None: chosen from cores and set size
    train_steps: int | None = None   # weights 'selfsup': training steps at build time; None: selfsup.py's rule
    cache: bool = True               # reuse embeddings by content hash (see fpindex/cache.py)
    cache_dir: str | None = None     # None: $FPINDEX_CACHE or ~/.cache/fpindex

    def identity(self) -> dict:
        """The fields that change the vectors (batch size, device, workers and caching do not)."""
        return {"model": self.model, "weights": self.weights, "enhance": list(self.enhance),
                "image_size": self.image_size, "seed": self.seed, "precision": self.precision}


@dataclass(frozen=True)
class IndexConfig:
    """How the index is chosen, built, tuned and placed (see fpindex/index/factory.py)."""

    factory: str = "auto"            # 'auto' or any FAISS index_factory string; vectors are L2-normalised, metric IP
    max_memory: int | None = None    # bytes for the index and its build; None: half the machine's RAM
    nprobe: int | None = None        # IVF lists visited per query; None: tuned at build time
    ef_search: int | None = None     # HNSW search breadth; None: tuned at build time
    target_recall: float = 0.95      # recall@10 vs exact search that tuning aims for
    device: str = "auto"             # auto | cpu | cuda — where FAISS builds and searches
    seed: int = 0                    # training and tuning samples


@dataclass(frozen=True)
class DecideConfig:
    method: str = "auto"             # auto | fixed | calibrated | reference
    score: str = "cosine"            # the similarity that `fixed` and `reference` threshold
    threshold: float | None = None   # `fixed` only; None: the score's documented default
    alpha: float = 0.05              # `reference`: false-positive rate allowed under the null
    cv_folds: int = 5
    permutations: int = 199          # label permutations for the calibrated verdict's p-value
    seed: int = 0


@dataclass(frozen=True)
class QueryConfig:
    k: int = 10
    decide: DecideConfig = field(default_factory=DecideConfig)


@dataclass(frozen=True)
class RunConfig:
    quiet: bool = False
    verbose: bool = False


def to_dict(cfg) -> dict:
    return asdict(cfg)


__all__ = ["EmbedConfig", "IndexConfig", "DecideConfig", "QueryConfig", "RunConfig", "to_dict", "replace"]
