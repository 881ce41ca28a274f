"""Canonical pixels, decoded at most once per run.

Several stages need an image's canonical pixels: self-supervised training (a sample of the generated set),
embedding, the subspace fit, and re-ranking (real images and their neighbours). One `PixelStore` per run
keeps what was decoded, keyed by the file's resolved path, so each image is decoded once however many stages
read it. It holds at most `limit_bytes`: beyond that the image used longest ago is dropped (decoded again if
asked for). Why least-recently-used: the stages run in order (training sample, embedding, subspace sample,
real images, re-ranking), so what was touched last — the real images, embedded just before they are
re-ranked — is what is read next; on large sets memory then stays at the limit however many images there
are, and on small ones (everything fits) each image is decoded exactly once.

Generated images are read against the index's record of them: a file whose bytes no longer hash to the
stored content id is refused, not re-ranked (the bytes read for decoding are hashed, once per read).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
import os
from typing import Callable, Protocol, Sequence

import numpy as np

from .errors import FpindexError
from .load import ReadOptions, Reader, load_image, split_frame
from .utils import sha256_bytes

# 512 MiB: 32,768 images at the default 64 px (bench-dev's 2,700 images take 44 MB), 2,675 at 224 px; was
# 2 GiB, which at 100k generated images was most of the audit's memory and grew with the set.
DEFAULT_LIMIT = 512 << 20


class PixelStore:
    def __init__(self, size: int, limit_bytes: int | None = None, read: ReadOptions = ReadOptions()) -> None:
        self.size, self.limit = size, DEFAULT_LIMIT if limit_bytes is None else limit_bytes
        self.reader = Reader(read)
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()   # least recently used first
        self._bytes = 0
        self.decoded = 0           # decodes done by the store itself (not counting images handed to it)

    @staticmethod
    def key(path: str | Path) -> str:
        return str(Path(path).resolve())

    def put(self, path: str | Path, img: np.ndarray) -> None:
        self._keep(self.key(path), img)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._memo)

    def _keep(self, k: str, img: np.ndarray) -> None:
        if k in self._memo or img.nbytes > self.limit:
            return
        while self._bytes + img.nbytes > self.limit:
            self._bytes -= self._memo.popitem(last=False)[1].nbytes
        self._memo[k] = img
        self._bytes += img.nbytes

    def _hit(self, k: str) -> np.ndarray | None:
        img = self._memo.get(k)
        if img is not None:
            self._memo.move_to_end(k)
        return img

    def known(self, path: str | Path) -> np.ndarray | None:
        return self._hit(self.key(path))

    def get(self, path: str | Path, fail: Callable[[str], str], sha256: str | None = None) -> np.ndarray:
        """The image's pixels; when it cannot be read, or `sha256` is given and the bytes read are not that
        content, FpindexError(fail(reason)). Images kept from earlier in the run were hashed when read."""
        k = self.key(path)
        img = self._hit(k)
        if img is None:
            try:
                img, data = load_image(path, self.size, self.reader.read, self.reader)
                got = None if sha256 is None else self._content_id(path, data)
            except ValueError as e:
                raise FpindexError(fail(str(e))) from None
            if got != sha256:
                raise FpindexError(fail(f"its content changed since it was indexed (sha256 {got[:12]}…, the "
                                        f"index has {sha256[:12]}…)"))
            self.decoded += 1
            self._keep(k, img)
        return img

    def _content_id(self, path: str | Path, data: bytes) -> str:
        """The id the index stores for this image: its file's hash, or for image k of a multi-image file the
        id derived from the file's hash, which the reader took when it read the file."""
        return sha256_bytes(data) if split_frame(path)[1] is None else self.reader.content(path)[0]

    def stack(self, paths: Sequence[str | Path], fail: Callable[[str, str], str],
              sha256: Sequence[str] | None = None) -> np.ndarray:
        out = np.empty((len(paths), self.size, self.size), np.float32)
        for i, p in enumerate(paths):
            out[i] = self.get(p, lambda reason, p=p: fail(str(p), reason), None if sha256 is None else sha256[i])
        return out


class IndexedFiles(Protocol):
    """What the index knows of its generated files (fpindex.index.IndexStore)."""

    def files(self, ids: np.ndarray) -> list[str]: ...       # paths, refused if one leaves its root
    def sha256(self, ids: np.ndarray) -> list[str]: ...      # content ids when indexed
    def sizes(self, ids: np.ndarray) -> list[int]: ...       # file sizes when indexed


class QueryImages:
    """The evidence runner's view: real images by row of their folder, generated ones by index id."""

    def __init__(self, store: PixelStore, real_paths: Sequence[Path], index: IndexedFiles) -> None:
        self.store, self.real_paths, self.index = store, real_paths, index
        self.size = store.size

    def real(self, rows: np.ndarray) -> np.ndarray:
        return self.store.stack([self.real_paths[r] for r in rows.tolist()],
                                lambda p, e: f"image {p} changed or vanished during the run ({e})")

    def generated(self, ids: np.ndarray) -> np.ndarray:
        paths = self.index.files(ids)
        id_of = dict(zip(paths, ids.tolist()))
        return self.store.stack(paths, lambda p, e: f"generated image {p} (index id {id_of[p]}) is needed for SSIM "
                                                    f"re-ranking but {e}; restore the file or rebuild the index",
                                self.index.sha256(ids))

    def check_generated(self, ids: np.ndarray) -> None:
        """Neighbours whose values came from the cache are not read, but are reported: each must still stay
        inside its folder, exist, and have the size it was indexed with (a stat, not a read)."""
        for i, p, size in zip(ids.tolist(), self.index.files(ids), self.index.sizes(ids)):
            if self.store.known(p) is not None:
                continue
            try:
                now = os.stat(split_frame(p)[0]).st_size
            except OSError:
                now = None
            if now != size:
                why = "is missing" if now is None else f"changed since it was indexed ({now} bytes, the index has {size})"
                raise FpindexError(f"generated image {p} (index id {i}) is needed for SSIM re-ranking "
                                   f"but {why}; restore the file or rebuild the index")

