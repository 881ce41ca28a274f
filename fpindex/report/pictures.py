"""The report's pictures: each image read once as the audit read it (its --window, --axis, --max-pixels) and
written once as a PNG in report_files/, and the aligned views of a pair (neighbour moved onto the real image,
overlay, difference)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FpindexError
from ..load import DEFAULT_MAX_PIXELS, ReadOptions, Reader, load_image, split_frame
from .schema import Summary
from .outputs import FILES


def read_options(summary: Summary) -> ReadOptions:
    """How the audit read its images (--window, --axis, --max-pixels: the index's embedder records the first
    two), so the report shows the pixels that were scored, not the files' default rendering."""
    e = summary.settings.embedder
    embed = summary.config.get("embed") or {}
    window = e.get("window")
    return ReadOptions(window=tuple(float(v) for v in window) if window else None, axis=int(e.get("axis", 2)),
                       max_pixels=int(embed.get("max_pixels") or DEFAULT_MAX_PIXELS))


class Images:
    """Canonical pixels of the report's images, each read once and written once as a PNG in report_files/."""

    def __init__(self, folder: Path, size: int, read: ReadOptions = ReadOptions()):
        self.folder, self.size = folder, size
        self.reader = Reader(read)
        self.pixels: dict[str, Any] = {}
        self.names: dict[str, str] = {}

    def load(self, path: str, sha256: str | None = None):
        """The pixels at `path`, or why not: a file whose content id is no longer the audited one (`sha256`)
        is not shown, since it would sit beside scores computed from other bytes."""
        if path not in self.pixels:
            try:
                if not Path(split_frame(path)[0]).is_absolute():
                    raise ValueError("the audit recorded this folder as a relative path (an older fpindex); "
                                     "not shown, since it may name other images from here")
                if sha256 and self.reader.content(path)[0] != sha256:
                    raise ValueError(f"{path} changed since the audit (its content is not the one scored); "
                                     "not shown")
                self.pixels[path] = load_image(path, self.size, reader=self.reader)[0]
            except (ValueError, OSError) as e:
                self.pixels[path] = str(e)
        return self.pixels[path]

    def png(self, key: str, img: np.ndarray) -> str:
        import cv2

        if key not in self.names:
            name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".png"
            arr = img if img.dtype == np.uint8 else np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".png", arr)
            if not ok:
                raise FpindexError(f"cannot encode a PNG for {key}")
            (self.folder / name).write_bytes(buf.tobytes())
            self.names[key] = f"{FILES}/{name}"
        return self.names[key]

    def picture(self, path: str, sha256: str | None = None) -> dict[str, str]:
        px = self.load(path, sha256)
        if isinstance(px, str):
            return {"src": "", "error": px}
        return {"src": self.png(path, px), "error": ""}


def pair_views(images: Images, real: str, gen: str) -> list[dict[str, str]]:
    """The best neighbour moved onto the real image (align_to), their colour overlay (real in magenta,
    neighbour in green: grey where they agree) and the absolute difference, amplified ×4."""
    from ..evidence.align import align_to

    a, b = images.load(real), images.load(gen)
    if isinstance(a, str) or isinstance(b, str):
        return []
    moved = align_to(a, b)
    overlay = np.stack([a, moved, a], axis=-1)          # OpenCV's order is BGR; magenta = B + R
    diff = np.clip(np.abs(a - moved) * 4.0, 0, 1)
    key = f"{real}\n{gen}"
    return [{"title": "neighbour aligned", "src": images.png(key + "\nmoved", moved)},
            {"title": "overlay (real magenta, neighbour green)", "src": images.png(key + "\noverlay", overlay)},
            {"title": "|difference| × 4", "src": images.png(key + "\ndiff", diff)}]
