"""Typed options, one nested object for a whole audit: `AuditConfig(embed, index, evidence, decide, canaries, run)`.

It is recorded whole in `summary.json` and in the index manifest, and rebuilt from them with `from_dict`
(no hand mapping); presets are named `AuditConfig`s (presets.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, ClassVar

from .errors import FpindexError

MAX_SEED = 2 ** 32 - 1          # numpy, torch and scikit-learn all take seeds in [0, 2^32)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024   # a batch of 64 at 1024² with 3 filters is already 0.8 GB


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, none: bool = False) -> None:
    """Settings arrive from the CLI, a preset, a saved manifest or a Python caller: one check for all of them."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise FpindexError(f"{name} must be a whole number, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            raise FpindexError(f"{name} must be at least {lo}")
        raise FpindexError(f"{name} must be from {lo} to {hi}, not {value}")


def _check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                 none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FpindexError(f"{name} must be a finite number, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FpindexError(f"{name} must be between {lo:g} and {hi:g}, not {value:g}")


@dataclass(frozen=True)
class EmbedConfig:
    """What turns an image file into a vector; stored in the index manifest and checked at query time."""

    model: str = "cnn"
    weights: str | None = None       # None: the model's default; 'random' (seeded), 'selfsup', 'imagenet', a file
    enhance: tuple[str, ...] = ("none",)
    image_size: int | None = None    # None: the model's own default input size
    seed: int = 0
    batch_size: int | None = None    # None: 256 on a GPU, 64 on a CPU
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "fp32"          # fp32 | bf16 | fp16 (autocast; changes vectors slightly, so part of identity)
    workers: int | None = None       # decoding/enhancement processes; None: chosen from cores and set size
    train_steps: int | None = None   # weights 'selfsup': training steps at build time; None: selfsup.py's rule
    finetune: int | None = None      # self-supervised steps on the generated set on top of the loaded weights
    cache: bool = True               # reuse embeddings by content hash (see fpindex/cache.py)
    cache_dir: str | None = None     # None: $FPINDEX_CACHE or ~/.cache/fpindex
    window: str | None = None        # DICOM/NIfTI intensity window 'C,W' or a name (load.WINDOWS); None: the file's
    axis: int = 2                    # NIfTI: the array axis volumes are sliced along
    max_pixels: int = 1 << 27        # decoded pixels per file, at most (fpindex/load/limits.py); larger files are bad

    # How a run executes, not what it computes: a query takes these from its caller, the rest from the index.
    RUNTIME: ClassVar[tuple[str, ...]] = ("batch_size", "device", "workers", "cache", "cache_dir", "max_pixels")

    def __post_init__(self) -> None:
        _check_int("--seed", self.seed, 0, MAX_SEED)
        _check_int("--image-size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, none=True)
        _check_int("--batch-size", self.batch_size, 1, none=True)
        _check_int("--train-steps", self.train_steps, 1, none=True)
        _check_int("--finetune", self.finetune, 1, none=True)
        _check_int("--max-pixels", self.max_pixels, 1)


@dataclass(frozen=True)
class IndexConfig:
    """How the index is chosen, built, tuned and placed (see fpindex/index/)."""

    factory: str = "auto"            # 'auto' or any FAISS index_factory string; vectors are L2-normalised, metric IP
    max_memory: int | None = None    # bytes for the index and its build; None: half the machine's RAM
    nprobe: int | None = None        # IVF lists visited per query; None: tuned at build time
    ef_search: int | None = None     # HNSW search breadth; None: tuned at build time
    target_recall: float = 0.95      # recall@10 vs exact search that tuning aims for
    device: str = "auto"             # auto | cpu | cuda — where FAISS builds and searches
    seed: int = 0                    # training and tuning samples

    def __post_init__(self) -> None:
        _check_int("--seed", self.seed, 0, MAX_SEED)
        _check_float("--target-recall", self.target_recall, 0.0, 1.0)
        _check_int("--nprobe", self.nprobe, 1, none=True)
        _check_int("--ef-search", self.ef_search, 1, none=True)


@dataclass(frozen=True)
class EvidenceConfig:
    k: int = 20                      # neighbours retrieved per real image (partial copies rank low: deep enough)
    features: tuple[str, ...] | None = None   # None: every registered feature (fpindex/evidence/)
    # Features that declare a screen (bandpass) computed only for each real image's `screen` best neighbours on
    # the screening feature; None: for all k (evidence/compute.py `screened`)
    screen: int | None = None

    def __post_init__(self) -> None:
        _check_int("--k", self.k, 1)
        _check_int("--screen", self.screen, 1, none=True)


@dataclass(frozen=True)
class DecideConfig:
    method: str = "auto"             # auto | calibrated | pu | reference | copies | fixed (decide/DECIDERS)
    score: str = "cosine"            # the evidence feature that `fixed` and `reference` threshold
    threshold: float | None = None   # `fixed` only; None: the feature's documented default
    alpha: float = 0.05              # false-positive rate allowed under the null
    cv_folds: int = 5
    permutations: int = 199          # label permutations for the calibrated verdict's p-value
    seed: int = 0
    # CSV image,patient (or study/series): the exact groups for folds, permutations and the patient-level answer;
    # None: DICOM PatientID/StudyInstanceUID tags where present, else the sibling proxy (decide/grouping.py)
    groups: str | None = None

    def __post_init__(self) -> None:
        _check_float("--threshold", self.threshold, none=True)      # NaN would label every image 0
        _check_float("--alpha", self.alpha, 0.0, 1.0)
        _check_int("cv_folds", self.cv_folds, 2)
        _check_int("permutations", self.permutations, 1)
        _check_int("--seed", self.seed, 0, MAX_SEED)
        if self.groups is not None and not isinstance(self.groups, str):
            raise FpindexError(f"--groups must be a CSV file's path, not {self.groups!r}")


@dataclass(frozen=True)
class CanaryConfig:
    """Planted copies of known-unused images that measure what this audit can see (canaries.py)."""

    n: int = 20                      # canary sources drawn from the known-unused images; 0: no canaries
    kinds: tuple[str, ...] | None = None   # plant kinds (plants.PLANTS); None: every kind at its default grid
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    quiet: bool = False
    verbose: bool = False
    verify: bool = False             # hash every file of an index opened, not only those whose size/mtime changed
    engine: str = "local"            # local | ray (fpindex/engine/: the same stages, spread over a Ray cluster)
    address: str | None = None       # ray: 'auto', HOST:PORT or ray://HOST:PORT; None: $RAY_ADDRESS or a local cluster


@dataclass(frozen=True)
class AuditConfig:
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    canaries: CanaryConfig = field(default_factory=CanaryConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        """`AuditConfig(embed={"seed": 1})`: a section given as a mapping is built like `from_dict` builds it
        (unknown keys refused in one line); anything else that is not the section is refused here, not by an
        AttributeError deep in a run."""
        for f in fields(self):
            value, kind = getattr(self, f.name), type(_default(f))
            if isinstance(value, dict):
                object.__setattr__(self, f.name, _build(kind, value, f.name + "."))
            elif not isinstance(value, kind):
                raise FpindexError(f"config section {f.name}: expected a {kind.__name__} or a mapping, got "
                                   f"{type(value).__name__}")

    @classmethod
    def of(cls, config: "AuditConfig | dict[str, Any] | None") -> "AuditConfig":
        """What the API accepts as `config`: an AuditConfig, a mapping like `to_dict`'s, or None (defaults)."""
        if config is None:
            return cls()
        if isinstance(config, dict):
            return cls.from_dict(config)
        if not isinstance(config, cls):
            raise FpindexError(f"config: expected an AuditConfig or a mapping, got {type(config).__name__}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AuditConfig":
        """The inverse of `to_dict`; missing fields take their defaults, unknown ones are refused."""
        return _build(cls, data, "")

    def override(self, **sections: dict[str, Any]) -> "AuditConfig":
        """A copy with some fields of some sections replaced: `cfg.override(embed={"seed": 1})`."""
        changed = {}
        for name, values in sections.items():
            part = getattr(self, name, None)
            if not is_dataclass(part):
                raise FpindexError(f"unknown config section {name!r}")
            changed[name] = _build(type(part), {**asdict(part), **values}, name + ".")
        return replace(self, **changed)


def _build(cls, data: dict[str, Any], prefix: str):
    if not isinstance(data, dict):
        raise FpindexError(f"config {prefix.rstrip('.') or 'root'}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise FpindexError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(known)}")
    values = {}
    for name, value in data.items():
        default = _default(known[name])
        if is_dataclass(default):
            value = _build(type(default), value, f"{prefix}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


__all__ = ["AuditConfig", "EmbedConfig", "IndexConfig", "EvidenceConfig", "DecideConfig", "CanaryConfig", "RunConfig",
           "replace"]
