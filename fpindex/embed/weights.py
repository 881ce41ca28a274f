"""The one weight loader and the one channel adapter every torch embedder shares.

Weights come only from local files and are read without unpickling code: state dicts through
`torch.load(weights_only=True)`, or `.safetensors`. The adapter turns fpindex's inputs (one grey channel, or C
stacked enhancement channels, in [0, 1]) into what a backbone expects (usually 3 normalised RGB channels)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import FpindexError
from ..utils import sha256_file
from .base import file_weights_id

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seeded, isolated RNG for weight init: same weights for a seed, and the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def file_id(path: str | Path) -> str:
    return file_weights_id(sha256_file(Path(path)))


def weights_file(path: str, model: str, choices: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FpindexError(f"weights {path}: no such file (model {model} takes {choices})")
    return p


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a .safetensors file or a torch checkpoint (weights only, never code)."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise FpindexError(f"weights {path}: reading .safetensors needs the safetensors package "
                                   "(pip install 'fpindex[timm]')") from None
            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except FpindexError:
        raise
    except Exception as e:  # torch and safetensors raise many types for a bad file; all mean "not usable"
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else "empty or truncated file"
        kind = "safetensors file" if p.suffix == ".safetensors" else "torch checkpoint"
        raise FpindexError(f"weights {path}: not a loadable {kind} ({type(e).__name__}: {detail})") from None
    if isinstance(state, dict):
        for key in WRAPPERS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FpindexError(f"weights {path}: expected a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a state dict that must fill every tensor of `model` (keys under `ignore_prefixes`, e.g. a
    classifier head, and keys the model lacks are left out); a misfit is named, never half-loaded."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch for {wrong[:3]}"
        raise FpindexError(f"weights {path}: does not fit this model ({what})")
    model.load_state_dict({k: state[k] for k in own}, strict=False)


def load_checkpoint(path: str, model: nn.Module, ignore_prefixes: tuple[str, ...] = (),
                    choices: str = "random, selfsup or a weights file") -> str:
    """Read a file into `model` in place; returns its identity (the file's content hash)."""
    p = weights_file(path, type(model).__name__, choices)
    load_into(model, read_state(p), p, ignore_prefixes)
    return file_id(p)


def widen_first_conv(net: nn.Module, name: str, channels: int) -> int:
    """Make the conv layer `name` take `channels` grey images in place of one RGB image: its filters are tiled
    over the channels and divided by their number, so one channel gives exactly the network's response to a
    grey image. Returns the number of input channels the layer had."""
    conv = net.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise FpindexError(f"layer {name} is not a 2-D convolution; cannot adapt the input channels")
    cin = conv.in_channels
    if channels == 1:
        return cin
    wide = nn.Conv2d(cin * channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        wide.weight.copy_(conv.weight.repeat(1, channels, 1, 1) / channels)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, wide)
    return cin


class ChannelAdapter(nn.Module):
    """C channels in [0, 1] → the `expects` normalised channels a backbone takes.

    Every input channel becomes one grey image of `expects` channels (replicated), normalised with the
    backbone's mean and std. With C > 1 the backbone's first conv must have been widened (`widen_first_conv`);
    a backbone whose layers cannot be changed (a TorchScript graph) takes one grey channel or exactly `expects`."""

    def __init__(self, channels: int, expects: int, mean: Sequence[float], std: Sequence[float],
                 widened: bool) -> None:
        super().__init__()
        if not widened and channels not in (1, expects):
            raise FpindexError(f"this model takes {expects} input channel(s); --enhance gives {channels}: use "
                               f"one filter{f' or {expects}' if expects > 1 else ''}")
        self.repeat = expects if (widened or channels == 1) else 1
        out = channels * self.repeat
        mean, std = (list(mean) * out)[:out], (list(std) * out)[:out]      # channel k: statistic k mod 3
        self.register_buffer("mean", torch.tensor(mean).view(1, out, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, out, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.repeat_interleave(self.repeat, dim=1)
        return (x - self.mean) / self.std


def check_forward(model: str, size: int, run, channels: int, device: torch.device,
                  hint: str = "try another --image-size") -> torch.Tensor:
    """One dummy batch through the model at the asked size: a size the architecture cannot take is named now,
    in one line, instead of as a traceback deep inside the first batch."""
    x = torch.full((2, channels, size, size), 0.5, device=device)
    try:
        with torch.inference_mode():
            out = run(x)
    except Exception as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise FpindexError(f"model {model} cannot embed a batch of {size}×{size} images ({detail}); {hint}") from None
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 2:
        raise FpindexError(f"model {model}: its output is not one feature vector per image")
    return out.flatten(1)
