"""`--model timm:NAME`: any timm architecture as the embedder, its weights from a local file.

timm builds the architecture (`pretrained=False` always: nothing is downloaded); the weights come from
`--weights FILE` (.safetensors or a torch state dict), `random` (seeded) or `selfsup` (seeded, then trained on
the generated set). The classifier head is dropped: the vector is the model's pooled features. Inputs go
through the shared `ChannelAdapter` with the model's own mean and std.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import FpindexError
from .base import EMBEDDERS, RANDOM, SELFSUP, UNTRAINED, Embedder, Spec
from .weights import (ChannelAdapter, check_forward, file_id, load_into, read_state, seeded, weights_file,
                      widen_first_conv)

CHOICES = "a local .safetensors/.pth file, random or selfsup"


def _timm():
    try:
        import timm
    except ImportError:
        raise FpindexError("--model timm:NAME needs timm: pip install 'fpindex[timm]'") from None
    return timm


def create(name: str, size: int, seed: int) -> nn.Module:
    """The architecture at `size` (models with a fixed input grid, e.g. ViTs, are built for it), no head."""
    timm = _timm()
    if not timm.is_model(name):
        raise FpindexError(f"unknown timm model {name!r} (timm {timm.__version__}; see timm.list_models())")
    with seeded(seed):
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
        except TypeError:          # architectures without a fixed input grid take no img_size
            net = timm.create_model(name, pretrained=False, num_classes=0)
    patch = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if patch is not None:
        p = max(patch) if isinstance(patch, (tuple, list)) else int(patch)
        if size % p:
            raise FpindexError(f"model timm:{name} cuts images into {p}-px patches; --image-size {size} is not a "
                               f"multiple of {p} (try {max(p, size // p * p)})")
    return net


@EMBEDDERS.register("timm")
class TimmEmbedder(Embedder):
    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        name, c = spec.arg, spec.channels
        net = create(name, spec.size, spec.seed)
        cfg = net.pretrained_cfg
        first = cfg.get("first_conv")
        first = first[0] if isinstance(first, (list, tuple)) else first
        if spec.weights == "imagenet":
            raise FpindexError(f"model timm:{name}: fpindex never downloads weights; save them to a file (e.g. "
                               f"{name}.safetensors) and pass --weights FILE, or --weights {RANDOM}")
        if spec.weights in (RANDOM, SELFSUP):
            self.weights_id = f"random:seed={spec.seed}" if spec.weights == RANDOM else UNTRAINED
            widened = False
        else:
            path = weights_file(spec.weights, f"timm:{name}", CHOICES)
            state = read_state(path)
            own = net.state_dict()
            widened = c > 1 and first is not None and _takes(state.get(f"{first}.weight"),
                                                             own.get(f"{first}.weight"), c)
            if widened:              # weights fpindex trained on C channels: widen first, then load
                widen_first_conv(net, first, c)
            elif any(k in own and v.shape != own[k].shape for k, v in state.items()):
                state = _filtered(net, state)      # e.g. a ViT's position embedding at another image size
            load_into(net, state, path, ignore_prefixes=_head(cfg))
            self.weights_id = file_id(path)
        if c > 1 and not widened:
            if first is None:
                raise FpindexError(f"model timm:{name} has no first convolution to adapt; use one --enhance filter")
            widen_first_conv(net, first, c)
        self.net = net.eval().to(spec.device)
        self.adapt = ChannelAdapter(c, int(cfg.get("input_size", (3,))[0]), cfg.get("mean", (0.5,)),
                                    cfg.get("std", (0.5,)), widened=True).to(spec.device)
        self.dim = check_forward(spec.model, spec.size, self._forward, c, spec.device).shape[1]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapt(x)).flatten(1)

    def trainable(self) -> nn.Module:
        return self.net


def _takes(theirs: torch.Tensor | None, ours: torch.Tensor | None, channels: int) -> bool:
    return theirs is not None and ours is not None and theirs.ndim == 4 and theirs.shape[1] == ours.shape[1] * channels


def _head(cfg: dict) -> tuple[str, ...]:
    head = cfg.get("classifier") or ()
    return tuple(f"{h}." for h in ((head,) if isinstance(head, str) else head))


def _filtered(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own conversion of a checkpoint to this model's shapes, where its module has one."""
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        return fn(state, net)
    except Exception:
        return state       # load_into names the misfit


def save_random(name: str, path: Path, size: int = 224, seed: int = 0) -> Path:
    """A seeded weights file for the architecture (tests and benchmarks; never a pretrained one)."""
    from safetensors.torch import save_file

    net = create(name, size, seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path
