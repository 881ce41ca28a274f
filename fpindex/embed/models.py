"""Stage 3 — the built-in embedders: raw pixels, the compact CNN, torchvision's ResNet-50.

Weights are never fetched silently: `imagenet` is used only when torchvision can provide it (torch cache, or
a download when online); otherwise the error says what to pass instead.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FpindexError
from .base import build_embedder  # noqa: F401  (its old home)
from .base import EMBEDDERS, RANDOM, SELFSUP, UNTRAINED, Embedder, Spec
from .weights import IMAGENET_MEAN, IMAGENET_STD, ChannelAdapter, load_checkpoint, seeded, widen_first_conv


@EMBEDDERS.register("pixels")
class PixelEmbedder(Embedder):
    side = 32

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        if spec.weights not in ("none", RANDOM):
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


@EMBEDDERS.register("cnn")
class CNNEmbedder(Embedder):
    """Takes the C channels as they are (it is trained on them)."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        with seeded(spec.seed):
            self.net = CompactCNN(spec.channels)
        if spec.weights == RANDOM:
            self.weights_id = f"random:seed={spec.seed}"
        elif spec.weights == SELFSUP:
            self.weights_id = UNTRAINED  # pipeline.build trains it on the generated set, then sets the id
        elif spec.weights == "imagenet":
            raise FpindexError("model 'cnn' has no ImageNet weights; pass --weights random, selfsup or a checkpoint "
                               "path")
        else:
            self.weights_id = load_checkpoint(spec.weights, self.net, choices="random, selfsup or a checkpoint path")
        self.dim = self.net.dim
        self.net.eval().to(spec.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def trainable(self) -> nn.Module:
        return self.net


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


@EMBEDDERS.register("resnet50")
class ResNet50Embedder(Embedder):
    """Each input channel is fed as a grey RGB image (the shared `ChannelAdapter`)."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        from torchvision.models import resnet50

        with seeded(spec.seed):
            net = resnet50(weights=None)
        if spec.weights == "imagenet":
            net.load_state_dict(_imagenet_resnet50_state())
            self.weights_id = "imagenet:IMAGENET1K_V2"
        elif spec.weights in (RANDOM, SELFSUP):
            self.weights_id = f"random:seed={spec.seed}" if spec.weights == RANDOM else UNTRAINED
        else:
            widened = _widened_state(spec.weights, spec.channels)
            if widened:       # weights trained by fpindex on C channels: widen first, then load
                widen_first_conv(net, "conv1", spec.channels)
            self.weights_id = load_checkpoint(spec.weights, net, ignore_prefixes=("fc.",),
                                              choices="imagenet, random, selfsup or a checkpoint path")
        if spec.weights in ("imagenet", RANDOM, SELFSUP) or not widened:
            widen_first_conv(net, "conv1", spec.channels)
        net.fc = nn.Identity()
        self.net = net.eval().to(spec.device)
        self.adapt = ChannelAdapter(spec.channels, 3, IMAGENET_MEAN, IMAGENET_STD, widened=True).to(spec.device)
        self.dim = 2048

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapt(x))

    def trainable(self) -> nn.Module:
        return self.net


def _widened_state(path: str, channels: int) -> bool:
    """Whether a checkpoint's conv1 already takes `channels` grey images (weights fpindex trained)."""
    from .weights import read_state

    if channels == 1 or not Path(path).is_file():
        return False
    w = read_state(path).get("conv1.weight")
    return w is not None and w.ndim == 4 and w.shape[1] == 3 * channels
