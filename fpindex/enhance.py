"""Stage 2 — classical enhancement filters (ZOQ, ImageCLEFmed GAN 2025, Table 2).

Each enhancer maps a canonical image (float32, [0, 1], H × W) to another of the same shape and range.
Several enhancers are stacked as channels, in the order given, and the embedder sees one C-channel image:
one forward pass per image whatever the number of filters (concatenating per-filter embeddings would cost a
forward pass per filter).

Speed: a filter should add at most ~10 % to the embedding stage (issue #5), i.e. well under 0.1 ms per 64-px
image, so every filter is a few OpenCV calls on the whole image (no per-pixel Python, no scikit-image). Two
filters were changed for this and no longer give bit-identical images to their earlier versions:
- `hessian` computes skimage's `hessian_matrix(σ = 1, mode='reflect', use_gaussian_derivatives=False)` and
  its eigenvalues with OpenCV filters and the closed-form 2 × 2 eigenvalues; the binary map agrees with
  skimage's on ≥ 99.9 % of pixels (tested), differences being float32 rounding right at the 1 % threshold.
- `bilateral` filters on the 8-bit scale (uint8 in and out, as the ZOQ paper's OpenCV call did) instead of
  float32 × 255: ≈ 2.5× cheaper; values within 1.5 grey levels of the float version (tested; ≈ 0.003
  measured).
Measured per 64-px image (one core, CPU time, on a busy 2-core machine): hessian 208 → 62 µs, bilateral
275 → 108 µs, laplacian 9 → 7 µs, gaussian 25 → 21 µs (same output), dog 31 µs (unchanged).
When the main process decodes and enhances (no workers), OpenCV's own thread pool is turned off meanwhile
(stream.batches), as it is in the workers: a 64-px image gains nothing from a second thread (measured in
isolation: no filter was faster with two, the Gaussian blur was slower).

Batches: `enhance_batch` enhances a DataLoader batch (stream.Collate) or the self-supervised sample in one
call. A filter may register a batch version (BATCH_ENHANCERS); it must be bit-identical to the per-image
function (tested), so results and REVISION never depend on which path ran. At 64 px a filter's cost is
mostly its convolutions plus ~15 small calls' overhead: `hessian`'s batch version runs its five separable
filters once on a tall stack of row-padded tiles: 66–70 → 41–43 µs per image (CPU time, one thread,
batches of 64, busy 2-core machine). `bilateral` has none: cv2.bilateralFilter's own kernel is its cost,
and on a tall stack it was slower in every run (e.g. 145–175 vs 125 µs). The other filters only lose
enhance_stack's per-image stacking (≈ 4 µs).
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import FpindexError
from .registry import Registry

Enhancer = Callable[[np.ndarray], np.ndarray]
ENHANCERS: Registry[Enhancer] = Registry("enhancement")
# Optional batch versions, under the same names: N × H × W images (and optionally the N × H × W float32 array
# to write into) → N × H × W float32, bit-identical to the per-image function on every image (tested), so
# which path ran never shows in the output or in REVISION.
BatchEnhancer = Callable[..., np.ndarray]
BATCH_ENHANCERS: Registry[BatchEnhancer] = Registry("batch enhancement")
# Pixels per chunk a batch version works on (16 images of 64 px): measured, larger chunks leave the cache and
# gain nothing; where a chunk would hold a single image (from 182 px) the per-image function is as fast or
# faster, and enhance_batch uses it instead.
BATCH_PIXELS = 1 << 16
# Raised whenever any filter's output changes, so cached vectors of the old images are not reused
# (2: OpenCV Hessian and 8-bit bilateral replaced the scikit-image / float versions).
REVISION = 2


def _to_u8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounded to nearest (ties to even) and saturated (negatives to 0 first, as
    convertScaleAbs would otherwise take their absolute value): two OpenCV calls, ≈ 5× cheaper than numpy's."""
    return cv2.convertScaleAbs(cv2.max(np.asarray(img, dtype=np.float32), 0.0), alpha=255.0)


def batch_version(name: str) -> Callable[[BatchEnhancer], BatchEnhancer]:
    """Register the batch version of the (already registered) enhancer `name`."""
    ENHANCERS.get(name)
    return BATCH_ENHANCERS.register(name, f"batch version of {name!r}")


@ENHANCERS.register("none", "the canonical grayscale image, unchanged")
def none(img: np.ndarray) -> np.ndarray:
    return img


@batch_version("none")
def none_batch(imgs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        return np.array(imgs, dtype=np.float32)
    out[...] = imgs
    return out


@ENHANCERS.register("gaussian", "5×5 Gaussian blur, then histogram equalisation")
def gaussian(img: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(_to_u8(img), (5, 5), 0)
    return cv2.equalizeHist(blurred).astype(np.float32) / 255.0


@ENHANCERS.register("laplacian", "|Laplacian| (kernel 3), clipped to [0, 1]")
def laplacian(img: np.ndarray) -> np.ndarray:
    out = cv2.Laplacian(img, cv2.CV_32F, ksize=3)
    np.abs(out, out=out)
    return np.minimum(out, 1.0, out=out)


_HESSIAN_KERNELS = None


def _hessian_kernels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scipy's Gaussian for σ = 1 (truncate 4: radius 4), its central-difference derivative, and the
    central differences d/2 and d (the factor 2 makes the mixed term 2·h_rc directly)."""
    global _HESSIAN_KERNELS
    if _HESSIAN_KERNELS is None:
        x = np.arange(-4, 5, dtype=np.float64)
        g = np.exp(-0.5 * x * x)
        g /= g.sum()
        gp = np.pad(g, 2)
        dg = 0.5 * (gp[2:] - gp[:-2])                  # correlation kernel of (f[i+1] − f[i−1]) / 2 ∘ Gaussian
        _HESSIAN_KERNELS = (g.astype(np.float32), dg.astype(np.float32), np.array([-0.5, 0.0, 0.5], np.float32),
                    np.array([-1.0, 0.0, 1.0], np.float32), np.ones(1, np.float32))
    return _HESSIAN_KERNELS


def _hessian_magnitude2(img: np.ndarray) -> np.ndarray:
    """2 × the largest eigenvalue magnitude of skimage's `hessian_matrix(img, sigma=1, mode='reflect',
    use_gaussian_derivatives=False)`: Gaussian blur (reflect border), then `np.gradient` twice (central
    differences, one-sided on the edge rows/columns). The blur and the first difference are one separable
    filter; a central difference with the edge pixel repeated is half the one-sided difference there, hence
    the doubled edge rows/columns. For [[h_rr, h_rc], [h_rc, h_cc]] the largest |eigenvalue| is
    |h_rr + h_cc| / 2 + sqrt(((h_rr − h_cc) / 2)² + h_rc²)."""
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape
    g, dg, d, d2, one = _hessian_kernels()
    reflect, edge = cv2.BORDER_REFLECT, cv2.BORDER_REPLICATE
    gr = cv2.sepFilter2D(img, cv2.CV_32F, g, dg, borderType=reflect)
    gr[::h - 1] *= 2
    gc = cv2.sepFilter2D(img, cv2.CV_32F, dg, g, borderType=reflect)
    gc[:, ::w - 1] *= 2
    hrr = cv2.sepFilter2D(gr, cv2.CV_32F, one, d, borderType=edge)
    hrr[::h - 1] *= 2
    hrc2 = cv2.sepFilter2D(gr, cv2.CV_32F, d2, one, borderType=edge)
    hrc2[:, ::w - 1] *= 2
    hcc = cv2.sepFilter2D(gc, cv2.CV_32F, d, one, borderType=edge)
    hcc[:, ::w - 1] *= 2
    mag = cv2.add(hrr, hcc)
    np.abs(mag, out=mag)
    mag += cv2.magnitude(cv2.subtract(hrr, hcc), hrc2)
    return mag


@ENHANCERS.register("hessian", "Hessian edge map: |largest eigenvalue| > 0.01 × its maximum (σ = 1)")
def hessian(img: np.ndarray) -> np.ndarray:
    mag = _hessian_magnitude2(img)         # the map is relative to its maximum: the factor 2 does not matter
    peak = float(mag.max())
    if peak <= 0.0:
        return np.zeros_like(img, dtype=np.float32)
    return cv2.threshold(mag, 0.01 * peak, 1.0, cv2.THRESH_BINARY)[1]


_WORK = threading.local()


def _workspace(name: str, count: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """`count` float32 buffers of `shape`, kept per thread between calls. A fresh array of a batch's size comes
    from mmap and is zero-filled page by page on first touch: measured, that page-faulting cost the batch
    hessian as much as it saved."""
    bufs = getattr(_WORK, name, None)
    if bufs is None or len(bufs) < count or bufs[0].shape[0] < shape[0] or bufs[0].shape[1:] != shape[1:]:
        bufs = [np.empty(shape, np.float32) for _ in range(count)]
        setattr(_WORK, name, bufs)
    return [b[:shape[0]] for b in bufs[:count]]


@batch_version("hessian")
def hessian_batch(imgs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`hessian` on N images at once, bit-identical (see _hessian_tiles), in chunks of BATCH_PIXELS."""
    imgs = np.asarray(imgs, dtype=np.float32)
    n, h, w = imgs.shape
    if out is None:
        out = np.empty((n, h, w), np.float32)
    if h <= _HESSIAN_PAD or w < 2:              # too small for the tiles' padding: image by image
        for i in range(n):
            out[i] = hessian(imgs[i])
        return out
    step = max(1, BATCH_PIXELS // (h * w))
    for s in range(0, n, step):
        _hessian_tiles(imgs[s:s + step], out[s:s + step])
    return out


_HESSIAN_PAD = 5                                # radius of the derivative-of-Gaussian kernel


def _hessian_tiles(imgs: np.ndarray, out: np.ndarray) -> None:
    """The same five sepFilter2D calls as `_hessian_magnitude2`, each made once on one tall image of all tiles
    instead of once per image (per-call overhead and the many small edge/threshold steps were a third of the
    per-image cost at 64 px). Each tile gets its own rows of BORDER_REFLECT padding (numpy 'symmetric'), so
    every filter sees, at every output pixel, the same input values in the same order as on the single image;
    the left/right borders are the tall image's own, handled by OpenCV exactly as before. The second
    differences' BORDER_REPLICATE rows are written into that padding after the edge doubling."""
    n, h, w = imgs.shape
    r = _HESSIAN_PAD
    g, dg, d, d2, one = _hessian_kernels()
    ph = h + 2 * r
    tall, gr, gc, hrr, hrc2, hcc = _workspace("hessian", 6, (n * ph, w))
    padded = tall.reshape(n, ph, w)
    padded[:, r:r + h] = imgs
    padded[:, :r] = imgs[:, r - 1::-1]          # numpy 'symmetric' == OpenCV BORDER_REFLECT
    padded[:, r + h:] = imgs[:, h - 1:h - 1 - r:-1]
    reflect, edge = cv2.BORDER_REFLECT, cv2.BORDER_REPLICATE
    gr = cv2.sepFilter2D(tall, cv2.CV_32F, g, dg, dst=gr, borderType=reflect)
    gc = cv2.sepFilter2D(tall, cv2.CV_32F, dg, g, dst=gc, borderType=reflect)
    gr3 = gr.reshape(n, ph, w)
    top, bottom = r, r + h - 1                  # each tile's first and last image row
    gr3[:, top] *= 2
    gr3[:, bottom] *= 2
    gr3[:, top - 1] = gr3[:, top]               # BORDER_REPLICATE rows for hrr's vertical difference
    gr3[:, bottom + 1] = gr3[:, bottom]
    gc[:, 0] *= 2                               # (columns: the padding rows' junk is cropped below)
    gc[:, w - 1] *= 2
    hrr = cv2.sepFilter2D(gr, cv2.CV_32F, one, d, dst=hrr, borderType=edge)
    hrc2 = cv2.sepFilter2D(gr, cv2.CV_32F, d2, one, dst=hrc2, borderType=edge)
    hcc = cv2.sepFilter2D(gc, cv2.CV_32F, d, one, dst=hcc, borderType=edge)
    hrr3 = hrr.reshape(n, ph, w)
    hrr3[:, top] *= 2
    hrr3[:, bottom] *= 2
    for a in (hrc2, hcc):
        a[:, 0] *= 2
        a[:, w - 1] *= 2
    mag = cv2.add(hrr, hcc, dst=tall)           # the buffers of finished steps are reused
    np.abs(mag, out=mag)
    mag += cv2.magnitude(cv2.subtract(hrr, hcc, dst=gr), hrc2, magnitude=gc)
    mag3 = mag.reshape(n, ph, w)[:, r:r + h]
    # cv2.threshold compares with the threshold as float32: same rounding of 0.01 × peak here.
    thresh = (mag3.max(axis=(1, 2)).astype(np.float64) * 0.01).astype(np.float32)
    np.greater(mag3, thresh[:, None, None], out=out)


@ENHANCERS.register("bilateral", "bilateral filter, d = 9, sigmaColor = 75, sigmaSpace = 75 (8-bit scale)")
def bilateral(img: np.ndarray) -> np.ndarray:
    out = cv2.bilateralFilter(_to_u8(img), d=9, sigmaColor=75, sigmaSpace=75)
    return out.astype(np.float32) * np.float32(1 / 255)


@ENHANCERS.register("dog", "difference of Gaussians (σ 1 − σ 2), min-max scaled to [0, 1]")
def dog(img: np.ndarray) -> np.ndarray:
    d = cv2.GaussianBlur(img, (0, 0), 1.0) - cv2.GaussianBlur(img, (0, 0), 2.0)
    lo, hi = float(d.min()), float(d.max())
    if hi - lo < 1e-12:
        return np.zeros_like(img)
    return ((d - lo) / (hi - lo)).astype(np.float32)


def parse_enhance(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """Accept 'a,b', ['a', 'b'] or ['a,b']; validate against the registry; keep order, drop repeats."""
    if values is None:
        return ("none",)
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for v in values:
        for name in (s.strip() for s in v.split(",")):
            if not name:
                continue
            if name not in ENHANCERS:
                raise FpindexError(f"unknown enhancement {name!r}; choose from: {', '.join(ENHANCERS.names())}")
            if name not in names:
                names.append(name)
    return tuple(names) or ("none",)


def enhance_stack(img: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """One canonical image → C × H × W float32, one channel per enhancer."""
    return np.stack([ENHANCERS.get(n)(img) for n in names]).astype(np.float32, copy=False)


def enhance_batch(imgs: np.ndarray | Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """N canonical images of one size → N × C × H × W float32, exactly `enhance_stack` of each image; filters
    with a batch version run on the stack (small images: fewer, larger OpenCV calls), the others image by
    image."""
    imgs = np.asarray(imgs)
    if imgs.ndim != 3:
        raise ValueError(f"expected N × H × W images, got shape {imgs.shape}")
    n, h, w = imgs.shape
    out = np.empty((n, len(names), h, w), np.float32)
    for c, name in enumerate(names):
        if name in BATCH_ENHANCERS and BATCH_PIXELS // max(1, h * w) >= 2:
            BATCH_ENHANCERS.get(name)(imgs, out=out[:, c])
        else:
            fn = ENHANCERS.get(name)
            for i in range(n):
                out[i, c] = fn(imgs[i])
    return out
