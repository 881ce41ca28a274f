"""Stage 1 — find and decode images into one canonical form.

Canonical form: a float32 grayscale array in [0, 1], `size` × `size`.
- Formats: whatever OpenCV decodes (PNG, JPEG, TIFF, BMP, ...), 8- or 16-bit, read unchanged.
- Range: unsigned integers are divided by their type's maximum (255, 65535); signed integers (e.g. int16 CT)
  are mapped from their type's full range; floats are clipped to [0, 1].
- Colour: alpha is dropped, then ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), OpenCV's rule.
- Size: the shorter side is resized to `size` (area interpolation when shrinking, bicubic when enlarging),
  then the centre `size` × `size` square is kept, so aspect ratio is never distorted.
Files that cannot be decoded are reported as `BadFile`s, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import FpindexError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def list_images(root: str | Path, what: str = "image folder") -> list[Path]:
    """All image files below `root`, sorted, so ids are stable across runs and machines."""
    root = Path(root)
    if not root.exists():
        raise FpindexError(f"{what} {root} does not exist")
    if root.is_file():
        raise FpindexError(f"{what} {root} is a file, expected a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FpindexError(f"{what} {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def decode(data: bytes) -> np.ndarray:
    """Bytes → float32 grayscale in [0, 1], original size. Raises ValueError when undecodable."""
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH) if buf.size else None
    if img is None:
        raise ValueError("not a decodable image")
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 1:
            img = img[:, :, 0]
        else:
            raise ValueError(f"unsupported channel count {img.shape[2]}")
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"unsupported image shape {img.shape}")
    if np.issubdtype(img.dtype, np.unsignedinteger):
        # k ≤ max rounds to a float32 ≤ max's, so the correctly rounded quotient is already in [0, 1] and float32,
        # a fresh contiguous array: no clip or copy pass.
        out = img.astype(np.float32)
        out /= np.float32(np.iinfo(img.dtype).max)
        return out
    if np.issubdtype(img.dtype, np.signedinteger):
        info = np.iinfo(img.dtype)
        out = (img.astype(np.float64) - info.min) / (float(info.max) - info.min)
    else:
        out = np.nan_to_num(img.astype(np.float32))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)   # clip made a fresh array already


def fit_size(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side → `size`, then centre crop to `size` × `size` (see module docstring)."""
    h, w = img.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(img, dtype=np.float32)
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = img[top:top + size, left:left + size]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def load_image(path: str | Path, size: int) -> tuple[np.ndarray, bytes]:
    """Read one file; returns (canonical image, raw bytes). Raises ValueError with the reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    return fit_size(decode(data), size), data
