"""A small DDPM written from scratch, so a benchmark scenario has a real diffusion model behind it.

Why from scratch: nothing may be downloaded at run time, and the scenario must be rebuilt by one seeded
command on 2 CPU cores. The model is deliberately small and trained on few images (about 200 at 48 px) for
long enough (thousands of steps) that it memorises some of them, as Carlini et al. (2023, "Extracting
Training Data from Diffusion Models") found real diffusion models do on small training sets.

Pieces (each the standard choice, kept short):
- epsilon prediction with the cosine noise schedule of Nichol & Dhariwal (2021), T = 1000;
- a UNet of about 1M parameters (16 base channels, wider at low resolution, self-attention at the
  bottom), time conditioning by a sinusoidal embedding;
- an exponential moving average (EMA) of the weights, which is what gets sampled;
- deterministic DDIM sampling (Song et al. 2021, eta = 0) in 50 steps, so 2,000 samples take minutes.

Determinism: each step's batch and noise come from generators seeded by (seed, step), so a run resumed
from a checkpoint draws exactly what an uninterrupted run would have.

    python benchmarks/generators/ddpm.py --images DIR --work /tmp/ddpm --steps 8000 --samples 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

T_STEPS = 1000


# ----------------------------------------------------------------------------- data

def load_images(paths, size: int) -> np.ndarray:
    """Grey PNGs as float32 (N, 1, size, size) in [-1, 1]; INTER_AREA so downscaling does not alias."""
    if isinstance(paths, (str, Path)):
        paths = sorted(Path(paths).glob("*.png"))
    out = []
    for p in paths:
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if im is None:
            raise ValueError(f"cannot read {p}")
        if im.shape != (size, size):
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
        out.append(im)
    x = np.stack(out).astype(np.float32)[:, None] / 127.5 - 1.0
    return x


def to_uint8(x: np.ndarray, size: int | None = None) -> np.ndarray:
    """(N, 1, s, s) in [-1, 1] to uint8 (N, size, size); cubic upscaling keeps edges sharper than linear."""
    ims = np.clip((x[:, 0] + 1.0) * 127.5, 0, 255)
    if size is not None and size != ims.shape[-1]:
        ims = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) for im in ims])
    return np.clip(np.rint(ims), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- schedule

def cosine_alpha_bar(t_steps: int = T_STEPS, s: float = 0.008) -> torch.Tensor:
    """alpha-bar of Nichol & Dhariwal: less noise destroyed early than the linear schedule at low resolution."""
    t = torch.arange(t_steps + 1, dtype=torch.float64) / t_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


# ----------------------------------------------------------------------------- model

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(a), torch.cos(a)], 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x))) + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Only at the lowest resolution (6 px): global context for little compute."""

    def __init__(self, c: int):
        super().__init__()
        self.n, self.qkv, self.o = nn.GroupNorm(8, c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.n(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), -1)  # (b, hw, hw)
        return x + self.o((v @ a.transpose(1, 2)).reshape(b, c, h, w))


class UNet(nn.Module):
    """One residual block per level; channels grow where the maps are small, which is where capacity is cheap."""

    def __init__(self, chs=(16, 32, 64, 96), tdim: int = 64):
        super().__init__()
        self.chs, self.tdim = tuple(chs), tdim
        self.temb = nn.Sequential(nn.Linear(chs[0], tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.cin = nn.Conv2d(1, chs[0], 3, padding=1)
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        prev = chs[0]
        for i, c in enumerate(chs):
            self.down.append(ResBlock(prev, c, tdim))
            self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chs) - 1 else nn.Identity())
            prev = c
        self.mid1, self.attn, self.mid2 = ResBlock(prev, prev, tdim), Attention(prev), ResBlock(prev, prev, tdim)
        self.up, self.unpool = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chs))):
            self.up.append(ResBlock(prev + chs[i], chs[i], tdim))
            self.unpool.append(nn.Conv2d(chs[i], chs[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            prev = chs[i - 1] if i > 0 else chs[0]
        self.nout, self.cout = nn.GroupNorm(8, chs[0]), nn.Conv2d(chs[0], 1, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.chs[0]))
        h, skips = self.cin(x), []
        for block, pool in zip(self.down, self.pool):
            h = block(h, temb)
            skips.append(h)
            h = pool(h)
        h = self.mid2(self.attn(self.mid1(h, temb)), temb)
        for j, (block, unpool) in enumerate(zip(self.up, self.unpool)):
            h = block(torch.cat([h, skips[-1 - j]], 1), temb)
            if not isinstance(unpool, nn.Identity):
                h = unpool(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.cout(F.silu(self.nout(h)))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- training

def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(images: np.ndarray, work: Path, steps: int = 8000, seed: int = 0, batch: int = 32, lr: float = 2e-4,
          warmup: int = 200, ema_decay: float = 0.999, chs=(16, 32, 64, 96), ckpt_every: int = 250,
          log_every: int = 50, time_budget_s: float | None = None, min_steps: int = 0, log=print) -> dict:
    """Train (or resume from work/ckpt.pt, to this call's `steps`) and return the EMA model plus what was done.

    No augmentation and no dropout: the point is a model that memorises some of its few training images.
    A constant learning rate after warm-up means the run can be cut short (time_budget_s) without a
    schedule that assumed more steps. time_budget_s, if given, is checked after the first 100 steps of this
    process: the step count is lowered (never below min_steps) so training ends within the budget.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = UNet(chs)
    ema = UNet(chs)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ab = cosine_alpha_bar()
    data = torch.from_numpy(images)
    ckpt, start, losses, planned = work / "ckpt.pt", 0, [], steps
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start = int(st["step"])
        steps = max(steps, start)
        losses = [v for v in json.loads(st["losses"]) if v[0] <= start] if "losses" in st else []
        log(f"resumed at step {start} from {ckpt} (its run planned {int(st['steps'])} steps; now {steps})")
    log(f"UNet {n_params(model):,} parameters, {len(images)} images at {images.shape[-1]} px, "
        f"batch {batch}, {steps} steps, threads {torch.get_num_threads()}")
    model.train()
    t0, tlog, budget_checked, window = time.perf_counter(), time.perf_counter(), False, []

    def save(step):
        _save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                      "step": torch.tensor(step), "steps": torch.tensor(steps),
                      "losses": json.dumps(losses)}, ckpt)

    step = start
    while step < steps:
        rng = np.random.default_rng([seed, step])
        idx = torch.from_numpy(rng.integers(0, len(data), batch))
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x0 = data[idx]
        t = torch.randint(0, T_STEPS, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ab[t][:, None, None, None]
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        for pg in opt.param_groups:
            pg["lr"] = lr * min(1.0, (step + 1) / warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))  # short memory early, so the EMA is not stuck at init
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        step += 1
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            now = time.perf_counter()
            losses.append([step, float(np.mean(window))])
            log(f"step {step}/{steps} loss {np.mean(window):.4f} {(now - tlog) / len(window):.3f} s/step "
                f"elapsed {now - t0:.0f} s")
            tlog, window = now, []
        if time_budget_s is not None and not budget_checked and step - start >= 100:
            budget_checked = True
            per = (time.perf_counter() - t0) / (step - start)
            fit = start + int((time_budget_s - (time.perf_counter() - t0)) / per) + (step - start)
            new = max(min(steps, fit), min_steps, step)
            if new != steps:
                log(f"time budget {time_budget_s:.0f} s at {per:.3f} s/step: steps {steps} -> {new}")
                steps = new
        if step % ckpt_every == 0 or step == steps:
            save(step)
    ema.eval()
    return {"ema": ema, "steps": steps, "planned_steps": planned, "resumed_from": start,
            "train_s": round(time.perf_counter() - t0, 1), "losses": losses, "params": n_params(model),
            "chs": list(chs), "batch": batch, "lr": lr, "ema_decay": ema_decay}


def load_ema(work: Path, chs=(16, 32, 64, 96)) -> UNet:
    """The EMA weights of a checkpoint, for sampling again without training."""
    st = torch.load(Path(work) / "ckpt.pt", weights_only=True)
    m = UNet(chs)
    m.load_state_dict(st["ema"])
    return m.eval()


# ----------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample(model: UNet, n: int, size: int, seed: int = 0, ddim_steps: int = 50, batch: int = 250,
           log=print) -> np.ndarray:
    """DDIM (eta 0): deterministic given the starting noise, and 20x fewer network calls than ancestral DDPM."""
    ab = cosine_alpha_bar()
    ts = np.linspace(T_STEPS - 1, 0, ddim_steps).round().astype(int)
    g = torch.Generator().manual_seed(seed)
    out, t0 = [], time.perf_counter()
    for s in range(0, n, batch):
        b = min(batch, n - s)
        x = torch.randn((b, 1, size, size), generator=g)
        for i, t in enumerate(ts):
            a = ab[t]
            a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            eps = model(x, torch.full((b,), int(t)))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # consistent with the clipped x0
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(x.numpy())
        log(f"sampled {s + b}/{n} ({time.perf_counter() - t0:.0f} s)")
    return np.concatenate(out)


# ----------------------------------------------------------------------------- memorisation

def nearest_ratios(gen: np.ndarray, train: np.ndarray, n_mean: int = 50) -> dict:
    """Carlini et al. (2023)-style copy test in pixel space: for each generated image, the L2 distance to its
    nearest training image over the distance to the second nearest (`ratio2`) and over the mean distance to
    the n_mean nearest (`ratio_mean`). A near-copy is close to one training image and not to the rest."""
    g = torch.from_numpy(gen.reshape(len(gen), -1)).double()
    tr = torch.from_numpy(train.reshape(len(train), -1)).double()
    d = torch.cdist(g, tr).numpy() / math.sqrt(g.shape[1])  # RMS pixel difference, [-1, 1] scale
    order = np.argsort(d, 1)
    ds = np.take_along_axis(d, order, 1)
    k = min(n_mean, d.shape[1])
    return {"nearest": order[:, 0], "d1": ds[:, 0], "d2": ds[:, 1], "ratio2": ds[:, 0] / ds[:, 1],
            "ratio_mean": ds[:, 0] / ds[:, :k].mean(1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="folder of grey PNGs")
    ap.add_argument("--work", required=True, help="checkpoints and samples")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--ddim-steps", type=int, default=50)
    a = ap.parse_args(argv)
    x = load_images(a.images, a.size)
    r = train(x, Path(a.work), steps=a.steps, seed=a.seed, batch=a.batch,
              log=lambda m: print(m, flush=True))
    s = sample(r["ema"], a.samples, a.size, seed=a.seed + 1, ddim_steps=a.ddim_steps,
               log=lambda m: print(m, flush=True))
    np.save(Path(a.work) / "samples.npy", s)
    m = nearest_ratios(s, x)
    print(f"near-copies (d1/d2 < 1/3): {(m['ratio2'] < 1 / 3).sum()} of {len(s)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
