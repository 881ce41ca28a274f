"""Ways to plant a (partial) copy of a real image: the kinds of leak that canaries and the simulator test.

Each kind is one function `(img, strength, rng, others) -> img` on canonical pixels (float32 in [0, 1],
S × S), registered in `PLANTS` with what its strength means and a default grid, weakest first; higher
strength = further from the source. `others` are other images a kind may mix in (patch, blend). Geometric
sizes are fractions of the side, so a strength means the same at 64 px and at 256 px. Output is rounded to
8 bits, as a PNG would store it, so an in-memory copy and a written one are the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from .errors import FpindexError
from .registry import Registry

PlantFn = Callable[[np.ndarray, float, np.random.Generator, Sequence[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Plant:
    """One kind of copy: `unit` says what strength is, `strengths` the default grid, `noun` names its copies."""

    name: str
    apply: PlantFn
    unit: str
    strengths: tuple[float, ...]
    noun: str                    # e.g. "copies rotated by {s:g}°"
    others: Callable[[float], int] = lambda s: 0   # other images the kind mixes in at a strength
    limits: tuple[float, float] = (0.0, 0.0)       # the strengths that mean something, both ends included
    whole: bool = False                            # strengths are counts (blend: images)

    def check(self, strength: Any) -> float:
        """The strength as a float, or a one-line refusal: each kind knows its range (a negative σ, a crop of
        more than the whole side, NaN, inf are no copies at all)."""
        try:
            s = float(strength)
        except (TypeError, ValueError, OverflowError):
            raise FpindexError(f"--strength {strength!r} for plant kind {self.name}: not a number") from None
        lo, hi = self.limits
        if not (np.isfinite(s) and lo <= s <= hi) or (self.whole and s != round(s)):
            what = "a whole number" if self.whole else "a number"
            raise FpindexError(f"--strength {s:g} for plant kind {self.name}: expected {what} of {self.unit} "
                               f"from {lo:g} to {hi:g}")
        return s

    def describe(self, strength: float) -> str:
        return self.noun.format(s=strength)

    def __call__(self, img: np.ndarray, strength: float, rng: np.random.Generator,
                 others: Sequence[np.ndarray] = ()) -> np.ndarray:
        out = self.apply(np.asarray(img, np.float32), float(strength), rng, others)
        return quantise(out)


PLANTS: Registry[Plant] = Registry("plant kind")


def quantise(img: np.ndarray) -> np.ndarray:
    return (np.rint(np.clip(img, 0, 1) * 255.0) / 255.0).astype(np.float32)


def write_png(path: str | Path, img: np.ndarray) -> None:
    """An image in [0, 1] as an 8-bit PNG: how the demo and the simulator write what they make."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
    if not ok:
        raise FpindexError(f"cannot encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())


def plant(name: str, unit: str, strengths: tuple[float, ...], noun: str, help: str,
          others: Callable[[float], int] = lambda s: 0, limits: tuple[float, float] = (0.0, 0.0),
          whole: bool = False) -> Callable[[PlantFn], PlantFn]:
    def deco(fn: PlantFn) -> PlantFn:
        PLANTS.register(name, help)(Plant(name, fn, unit, strengths, noun, others, limits, whole))
        return fn
    return deco


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


@plant("exact", "none", (0.0,), "exact copies", "the image itself, pixel for pixel")
def exact(img, s, rng, others):
    return img.copy()


@plant("rigid", "degrees", (3.0, 10.0, 25.0), "copies rotated by {s:g}° (and shifted, rescaled)",
       "rotation by STRENGTH degrees with a shift of STRENGTH·0.4 % of the side and a scale change of "
       "STRENGTH·0.4 %", limits=(0.0, 180.0))
def rigid(img, s, rng, others):
    n = img.shape[0]
    m = cv2.getRotationMatrix2D((n / 2, n / 2), _sign(rng) * s, 1.0 + _sign(rng) * 0.004 * s)
    m[:, 2] += 0.004 * s * n * np.array([_sign(rng), _sign(rng)])
    return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@plant("elastic", "% of side", (2.0, 5.0, 10.0), "elastic warps of up to {s:g} % of the side",
       "smooth random displacement field, largest displacement STRENGTH % of the side", limits=(0.0, 50.0))
def elastic(img, s, rng, others):
    n = img.shape[0]
    field = rng.standard_normal((2, n, n)).astype(np.float32)
    field = np.stack([cv2.GaussianBlur(f, (0, 0), n / 8) for f in field])
    field *= (s / 100.0 * n) / max(float(np.abs(field).max()), 1e-12)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return cv2.remap(img, xx + field[0], yy + field[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@plant("noise", "σ", (0.02, 0.05, 0.1), "copies with noise σ = {s:g}", "additive Gaussian noise of σ = STRENGTH",
       limits=(0.0, 1.0))
def noise(img, s, rng, others):
    return img + s * rng.standard_normal(img.shape).astype(np.float32)


@plant("blur", "% of side", (1.0, 2.0, 4.0), "copies blurred by σ = {s:g} % of the side",
       "Gaussian blur of σ = STRENGTH % of the side", limits=(0.0, 50.0))
def blur(img, s, rng, others):
    return cv2.GaussianBlur(img, (0, 0), max(s / 100.0 * img.shape[0], 0.1))


@plant("intensity", "relative change", (0.1, 0.25, 0.5), "copies with contrast/gamma changed by {s:g}",
       "gamma 1 ± STRENGTH and contrast × (1 ± STRENGTH/2) about the mean", limits=(0.0, 1.0))
def intensity(img, s, rng, others):
    gamma = (1.0 + s) ** _sign(rng)
    out = np.clip(img, 0, 1) ** gamma
    mean = float(out.mean())
    return mean + (out - mean) * (1.0 + _sign(rng) * s / 2)


@plant("crop", "share of side cut", (0.1, 0.25, 0.5), "crops keeping {s:g} less of the side, resized back",
       "a random window of side (1 − STRENGTH) of the image, resized to the full size", limits=(0.0, 0.9))
def crop(img, s, rng, others):
    n = img.shape[0]
    w = max(4, int(round((1.0 - s) * n)))
    y, x = (int(rng.integers(0, n - w + 1)) for _ in range(2))
    return cv2.resize(img[y:y + w, x:x + w], (n, n), interpolation=cv2.INTER_LINEAR)


@plant("patch", "share of area replaced", (0.25, 0.5, 0.75), "patches: {s:g} of the area from another image",
       "another image with a window of (1 − STRENGTH) of the area copied in from this one, at its place",
       others=lambda s: 1, limits=(0.0, 1.0))
def patch(img, s, rng, others):
    n = img.shape[0]
    base = _other(others, 0, "patch").copy()
    w = max(4, int(round(np.sqrt(1.0 - s) * n)))
    y, x = (int(rng.integers(0, n - w + 1)) for _ in range(2))
    base[y:y + w, x:x + w] = img[y:y + w, x:x + w]
    return base


@plant("blend", "images blended", (2.0, 3.0, 5.0), "{s:g}-image blends", "equal-weight average of the image "
       "and STRENGTH − 1 others", others=lambda s: max(0, int(round(s)) - 1),
       limits=(1.0, 16.0), whole=True)
def blend(img, s, rng, others):
    m = int(round(s))
    if m < 1:
        raise FpindexError(f"blend strength must be at least 1 image, got {s:g}")
    return (img + sum(_other(others, i, "blend") for i in range(m - 1))) / m


def _other(others: Sequence[np.ndarray], i: int, kind: str) -> np.ndarray:
    if i >= len(others):
        raise FpindexError(f"plant kind {kind!r} needs {i + 1} other image(s) to mix in, got {len(others)}")
    return np.asarray(others[i], np.float32)


def grid(kinds: Sequence[str] | None = None, strengths: Sequence[float] | None = None) -> list[tuple[str, float]]:
    """(kind, strength) pairs: each kind at the strengths given (default: its own grid); exact only at 0."""
    names = list(dict.fromkeys(kinds)) if kinds else PLANTS.names()
    out = []
    for k in names:
        p = PLANTS.get(k)
        values = p.strengths if strengths is None or k == "exact" else tuple(strengths)
        out += [(k, p.check(v)) for v in values]
    return list(dict.fromkeys(out))                  # a strength given twice is one cell
