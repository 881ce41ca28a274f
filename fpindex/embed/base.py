"""Stage 3 — the embedder contract: what every model provides, and the registry `EMBEDDERS` of them.

This module imports no torch: the command line reads each model's name, help and defaults from the registry
(`EMBEDDERS.meta`), and the implementations (models.py, timm_models.py, graphs.py) are imported only when one
is built. A new built-in is one module that subclasses `Embedder` and registers itself with
`@EMBEDDERS.register(name, help, default_size=…, default_weights=…)`, plus a `declare` line here when it must
be listed before it is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FpindexError
from ..registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


SELFSUP = "selfsup"          # weights trained on the generated set at build time (embed/train.py)
SELFSUP_FILE = "selfsup.pt"  # where an index keeps them
UNTRAINED = f"{SELFSUP}:untrained"   # weights_id until the build has trained them
RANDOM = "random"            # seeded random initialisation
MIN_SIZE = 32                # no model sees anything useful in fewer pixels


def file_weights_id(sha256_hex: str) -> str:
    """How a `weights_id` names weights that are bytes (a file, trained weights): by their content, the first 16
    hex digits of the SHA-256; one format for every maker, so the same bytes always have the same id."""
    return f"file:sha256={sha256_hex[:16]}"


@dataclass(frozen=True)
class Spec:
    """How an embedder is asked for: what the registry factories receive. `model` is the full name asked for
    (`timm:resnet18`), `arg` the part after the colon for a family of models."""

    channels: int
    size: int
    weights: str
    seed: int
    device: "torch.device"
    model: str = ""
    arg: str = ""


class Embedder:
    """A C × S × S batch in [0, 1] in, L2-normalised float32 vectors out.

    Subclasses set `dim` and `weights_id` (what the weights are: `random:seed=…`, `file:sha256=…`) and implement
    `_forward`. A model that self-supervised training may update returns its network from `trainable()` (whose
    `state_dict` is what the trained weights file holds, loadable again through `--weights FILE`), and
    `features` runs the inputs through it with gradients (the same preprocessing as `_forward`)."""

    dim: int
    weights_id: str

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self, batch: "np.ndarray | torch.Tensor") -> "np.ndarray":
        import numpy as np
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(
                np.ascontiguousarray(batch, dtype=np.float32))
            x = x.to(self.spec.device, dtype=torch.float32, non_blocking=True)  # non-blocking from pinned memory
            v = F.normalize(self._forward(x).float(), dim=1, eps=1e-12)
            return v.cpu().numpy().astype(np.float32, copy=False)

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def trainable(self) -> "nn.Module | None":
        """The network self-supervised training updates, or None for a model that cannot be trained."""
        return None

    def features(self, x: "torch.Tensor") -> "torch.Tensor":
        """The training forward (with gradients): by default the same as inference."""
        return self._forward(x)


EMBEDDERS: Registry[Callable[[Spec], Embedder]] = Registry("model")

# The built-ins, listed without importing them. default_weights None: --weights must be given.
EMBEDDERS.declare("pixels", "fpindex.embed.models", "downsampled (32 px), mean-centred, L2-normalised pixels: the "
                  "reference baseline", default_size=128, default_weights="none")
EMBEDDERS.declare("cnn", "fpindex.embed.models", "compact 4-block CNN, 512-d (weights: selfsup = trained on the "
                  "generated set, random seeded, or a checkpoint)", default_size=64, default_weights=SELFSUP)
EMBEDDERS.declare("resnet50", "fpindex.embed.models", "torchvision ResNet-50, 2048-d pooled features (weights: "
                  "imagenet, random, selfsup or a checkpoint)", default_size=224, default_weights="imagenet")
EMBEDDERS.declare("timm", "fpindex.embed.timm_models", "timm:NAME, any timm architecture (pip install "
                  "'fpindex[timm]'), pooled features; weights from a local .safetensors/.pth file, random or "
                  "selfsup, never downloaded", default_size=224, default_weights=None, takes_name=True)
EMBEDDERS.declare("torchscript", "fpindex.embed.graphs", "a TorchScript (.pt, torch.jit.save) or torch.export "
                  "(.pt2) descriptor such as SSCD, from --weights FILE; loading runs the file's graph, so only "
                  "for files you trust", default_size=224, default_weights=None)


def split_model(model: str) -> tuple[str, str]:
    """'timm:resnet18' → ('timm', 'resnet18'); a plain name → (name, ''). Unknown names are refused."""
    base, colon, arg = model.partition(":")
    if base not in EMBEDDERS:
        raise FpindexError(f"unknown model {model!r}; choose one of: {', '.join(model_choices())}")
    takes = bool(EMBEDDERS.meta(base).get("takes_name"))
    if takes and not arg:
        raise FpindexError(f"model {base!r} needs an architecture name: --model {base}:NAME")
    if colon and not takes:
        raise FpindexError(f"model {base!r} takes no ':NAME'; pass --model {base}")
    return base, arg


def model_choices() -> list[str]:
    return [f"{n}:NAME" if EMBEDDERS.meta(n).get("takes_name") else n for n in EMBEDDERS.names()]


def default_weights(model: str) -> str | None:
    return EMBEDDERS.meta(split_model(model)[0]).get("default_weights")


def default_size(model: str) -> int:
    return int(EMBEDDERS.meta(split_model(model)[0]).get("default_size", 128))


def build_embedder(model: str, channels: int, size: int | None, weights: str | None, seed: int,
                   device: str) -> Embedder:
    from ..devices import torch_device

    base, arg = split_model(model)
    size = size or default_size(model)
    if size < MIN_SIZE:
        raise FpindexError(f"image size {size} is too small for model {model}; use at least {MIN_SIZE}")
    weights = weights or default_weights(model)
    if weights is None:
        raise FpindexError(f"model {model!r} needs --weights: a local weights file (fpindex never downloads "
                           f"any), or {RANDOM} / {SELFSUP} to start from seeded random weights")
    spec = Spec(channels=channels, size=size, weights=weights, seed=seed, device=torch_device(device),
                model=model, arg=arg)
    return EMBEDDERS.get(base)(spec)

