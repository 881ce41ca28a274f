"""Stage 3 — embedders: a C × S × S image batch in, L2-normalised float32 vectors out.

Every embedder is built from (channels, size, weights, seed, device) and says who it is (`weights_id`), so
an index can refuse queries embedded differently. Weights are never fetched silently: `imagenet` is used
only when torchvision can provide it (torch cache, or a download when online); otherwise the error says
what to pass instead.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import torch_device
from ..errors import FpindexError
from ..registry import Registry
from ..utils import sha256_file


@dataclass(frozen=True)
class Spec:
    """How an embedder is asked for: what the registry factories receive."""

    channels: int
    size: int
    weights: str
    seed: int
    device: torch.device


class Embedder:
    """Base class: subclasses set `dim`, `weights_id` and implement `_forward` on a float tensor batch."""

    name: str = ""
    default_size: int = 128
    default_weights: str = "random"
    dim: int
    weights_id: str

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.to(self.spec.device, dtype=torch.float32, non_blocking=True)  # non-blocking from pinned memory
        v = self._forward(x).float()
        v = F.normalize(v, dim=1, eps=1e-12)
        return v.cpu().numpy().astype(np.float32, copy=False)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


EMBEDDERS: Registry[Callable[[Spec], Embedder]] = Registry("model")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seeded, isolated RNG for weight init: same weights for a seed, and the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _load_checkpoint(path: str, model: nn.Module, ignore_prefixes: tuple[str, ...] = ()) -> str:
    p = Path(path)
    if not p.is_file():
        raise FpindexError(f"weights {path}: no such file (use 'random', 'imagenet' for resnet50, or a checkpoint path)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean "not a usable checkpoint"
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else "empty or truncated file"
        raise FpindexError(f"weights {path}: not a loadable torch checkpoint ({type(e).__name__}: {detail})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FpindexError(f"weights {path}: expected a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()
             if not k.removeprefix("module.").startswith(ignore_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch for {wrong[:3]}"
        raise FpindexError(f"weights {path}: does not fit this model ({what})")
    model.load_state_dict(state, strict=False)
    return f"file:sha256={sha256_file(p)[:16]}"


@EMBEDDERS.register("pixels", "downsampled (32 px), mean-centred, L2-normalised pixels: the reference baseline")
class PixelEmbedder(Embedder):
    name = "pixels"
    default_size = 128
    default_weights = "none"
    side = 32

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        if spec.weights not in ("none", "random"):
            raise FpindexError("model 'pixels' has no weights; drop --weights or pass --weights none")
        self.weights_id = "none"
        self.dim = spec.channels * self.side * self.side

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(x, size=(self.side, self.side), mode="area").flatten(1)
        return small - small.mean(dim=1, keepdim=True)


class CompactCNN(nn.Module):
    """Four 3×3 conv blocks with average pooling, then a 4 × 4 spatial grid of 32 channels (512-d).

    Keeping a coarse grid (instead of global pooling) keeps *where* structures are, which is what tells a
    near-copy of a training image apart from another image of the same anatomy.
    """

    widths = (32, 64, 64, 32)
    grid = 4

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i, w in enumerate(self.widths):
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
            if i < len(self.widths) - 1:
                layers.append(nn.AvgPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def dim(self) -> int:
        return self.widths[-1] * self.grid * self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.features(x - 0.5)).flatten(1)
        return f - f.mean(dim=1, keepdim=True)  # ReLU features are all ≥ 0: centre them so cosine discriminates


@EMBEDDERS.register("cnn", "compact 4-block CNN on grayscale, 64 px by default (32–1024 with --image-size), 512-d (weights: selfsup = trained on the "
                    "generated set, random seeded, or a checkpoint)")
class CNNEmbedder(Embedder):
    name = "cnn"
    default_size = 64        # 64 px keeps self-supervised training affordable on a CPU
    default_weights = "selfsup"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        with _seeded(spec.seed):
            self.net = CompactCNN(spec.channels)
        if spec.weights == "random":
            self.weights_id = f"random:seed={spec.seed}"
        elif spec.weights == "selfsup":
            self.weights_id = "selfsup:untrained"  # pipeline.build trains it on the generated set, then sets the id
        elif spec.weights == "imagenet":
            raise FpindexError("model 'cnn' has no ImageNet weights; pass --weights random, selfsup or a checkpoint path")
        else:
            self.weights_id = _load_checkpoint(spec.weights, self.net)
        self.dim = self.net.dim
        self.net.eval().to(spec.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def trainable(self) -> nn.Module:
        return self.net


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_resnet50_state() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet50_Weights

    w = ResNet50_Weights.IMAGENET1K_V2
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return w.get_state_dict(progress=False)
    except Exception as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise FpindexError(
            f"resnet50 ImageNet weights are not in the torch cache ({cached}) and could not be downloaded "
            f"({reason}); copy them there, or pass --weights random or --weights PATH/TO/checkpoint.pth") from None
    finally:
        socket.setdefaulttimeout(old)


@EMBEDDERS.register("resnet50", "torchvision ResNet-50, 2048-d pooled features (weights: imagenet, random or a checkpoint)")
class ResNet50Embedder(Embedder):
    """Each input channel is fed as a grey RGB image: conv1's RGB filters are tiled over the C channels and
    divided by C, so a single channel gives exactly the pretrained network's response to a grey image."""

    name = "resnet50"
    default_size = 224
    default_weights = "imagenet"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        from torchvision.models import resnet50

        with _seeded(spec.seed):
            net = resnet50(weights=None)
        if spec.weights == "selfsup":
            raise FpindexError("--weights selfsup trains the cnn model; with resnet50 use imagenet, random or a checkpoint")
        if spec.weights == "imagenet":
            net.load_state_dict(_imagenet_resnet50_state())
            self.weights_id = "imagenet:IMAGENET1K_V2"
        elif spec.weights == "random":
            self.weights_id = f"random:seed={spec.seed}"
        else:
            self.weights_id = _load_checkpoint(spec.weights, net, ignore_prefixes=("fc.",))
        c = spec.channels
        with torch.no_grad():
            w = net.conv1.weight  # 64 × 3 × 7 × 7
            conv = nn.Conv2d(3 * c, 64, 7, stride=2, padding=3, bias=False)
            conv.weight.copy_(w.repeat(1, c, 1, 1) / c)
            net.conv1 = conv
        net.fc = nn.Identity()
        self.net = net.eval().to(spec.device)
        self.dim = 2048
        mean = torch.tensor(IMAGENET_MEAN * c).view(1, 3 * c, 1, 1)
        std = torch.tensor(IMAGENET_STD * c).view(1, 3 * c, 1, 1)
        self.mean, self.std = mean.to(spec.device), std.to(spec.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat_interleave(3, dim=1)
        return self.net((x - self.mean) / self.std)


def build_embedder(model: str, channels: int, size: int | None, weights: str | None, seed: int,
                   device: str) -> Embedder:
    cls = EMBEDDERS.get(model)
    size = size or cls.default_size  # type: ignore[attr-defined]
    if size < 32:
        raise FpindexError(f"image size {size} is too small; use at least 32")
    spec = Spec(channels=channels, size=size, weights=weights or cls.default_weights,  # type: ignore[attr-defined]
                seed=seed, device=torch_device(device))
    return cls(spec)
