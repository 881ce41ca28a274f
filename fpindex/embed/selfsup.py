"""Self-supervised fine-tuning of the embedder on the generated set itself (weights `selfsup`).

Why: a generator rarely emits a training image unchanged; it shifts, rotates, rescales, warps, blurs, re-exposes,
adds noise and blends. An embedder that is invariant to exactly those changes, and only those, maps a training
image and its generated echoes to the same place. We teach that invariance without labels: two random
"generator-like" corruptions of the same generated image must embed closer to each other than to any other
image in the batch (InfoNCE / SimCLR loss). Training uses only the generated images, never the real ones, so it
cannot learn anything about which real images are members.

The corruption family (strengths at `strength = 1`): rotation ±15°, scale ±12 %, shift ±8 % of the side,
a smooth elastic warp, partial Gaussian blur, gamma ±20 %, contrast ±10 %, brightness ±5 %, noise σ 6/255,
and with probability 0.3 a blend with another image of the batch (weight ≤ 0.4).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import sha256_bytes
from .base import file_weights_id


@dataclass(frozen=True)
class SelfSupConfig:
    steps: int | None = None  # None: about 8 passes over the images, 10 to 250 steps
    batch_size: int = 64
    lr: float = 2e-3
    temperature: float = 0.1
    strength: float = 1.0
    max_images: int = 20000   # a seeded sample of at most this many generated images is trained on
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def steps_for(self, n_images: int) -> int:
        return self.steps if self.steps is not None else int(min(250, max(10, math.ceil(8 * n_images / self.batch_size))))


def _blur_kernel(device: torch.device) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device)
    k = k[:, None] * k[None, :]
    return (k / k.sum())[None, None]


def corrupt(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """A batch (B, C, H, W) in [0, 1] → the same images as a generator might echo them."""
    b, c, h, w = x.shape
    s = strength

    def u(*shape: int) -> torch.Tensor:  # uniform in [-1, 1]
        return torch.rand(*shape, generator=g) * 2 - 1

    ang, scale, shift = u(b) * math.radians(15 * s), 1 + u(b) * 0.12 * s, u(b, 2) * 0.16 * s
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    warp = F.interpolate(torch.randn(b, 2, 8, 8, generator=g) * 0.03 * s, size=(h, w), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1)
    x = F.grid_sample(x, (grid + warp).to(x.dtype), padding_mode="reflection", align_corners=False)
    kernel = _blur_kernel(x.device).expand(c, 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)
    amount = torch.rand(b, 1, 1, 1, generator=g).clamp(max=1.0) * min(s, 1.0)
    x = x * (1 - amount) + blurred * amount
    x = x.clamp(1e-4, 1.0) ** torch.exp(u(b, 1, 1, 1) * 0.2 * s)
    x = x * (1 + u(b, 1, 1, 1) * 0.1 * s) + u(b, 1, 1, 1) * 0.05 * s
    mix = (torch.rand(b, 1, 1, 1, generator=g) < 0.3).float() * torch.rand(b, 1, 1, 1, generator=g) * 0.4 * min(s, 1.0)
    x = x * (1 - mix) + x[torch.randperm(b, generator=g)] * mix
    return x + torch.randn(x.shape, generator=g) * (6 / 255) * s


class _Head(nn.Module):
    """Projection head used only during training (SimCLR): the loss acts on it, retrieval uses the backbone."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(inplace=True), nn.Linear(256, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def train(net: nn.Module, dim: int, images: np.ndarray, cfg: SelfSupConfig,
          progress: Callable[[int], None] | None = None,
          forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Train `net` in place on N × C × S × S images in [0, 1]; returns a report. `forward` maps the images
    to dim-d features through `net` (default: `net` itself; an embedder with an input adapter passes its own)."""
    forward = forward or net
    t0 = time.perf_counter()
    # Corruptions are drawn on the CPU from one seeded generator, then the batch moves to the model's device:
    # the same training inputs whatever the device (on a GPU only the network's arithmetic differs).
    device = next(net.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = _Head(dim).to(device)
    data = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.steps_for(len(data))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    bs = min(cfg.batch_size, len(data))
    target = torch.arange(bs, device=device)
    net.train()
    losses = []
    for _ in range(steps):
        batch = data[torch.randperm(len(data), generator=g)[:bs]]
        xa, xb = (corrupt(batch, g, cfg.strength).to(device, non_blocking=True) for _ in range(2))
        za, zb = head(forward(xa).flatten(1)), head(forward(xb).flatten(1))
        logits = za @ zb.T / cfg.temperature
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(1)
    net.eval()
    return {"config": cfg.as_dict(), "steps": steps, "images": len(data), "seconds": round(time.perf_counter() - t0, 2),
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None}


def state_bytes(net: nn.Module) -> tuple[bytes, str]:
    """The trained weights as torch.save bytes (a plain state_dict, loadable with weights_only=True) and their id."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
    data = buf.getvalue()
    return data, file_weights_id(sha256_bytes(data))
