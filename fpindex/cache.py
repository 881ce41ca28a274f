"""Embedding cache: vectors by file content hash, per embedder identity, so nothing known is recomputed.

Layout: `<root>/<key>/identity.json` (what made the vectors, for people) and `shard-*.npz` files, each holding
`keys` (hex SHA-256 of the image file's bytes) and `vectors` (float32 n × d). Shards are written whole under a
temporary name and renamed (atomic), read with `allow_pickle=False`, and never modified, so concurrent runs can
share a cache; too many shards are merged into one. `key` hashes the embedder identity: model, weights id (a
checkpoint's content hash, or a trained model's), enhancement, input size, seed, precision, dimension, and the
fpindex and torch versions, so any change that can change a vector selects another directory.

`PairCache` keeps SSIM values of (real, generated) pairs the same way, so an unchanged re-run re-ranks
without decoding a single image.

Root: `--cache-dir`, else $FPINDEX_CACHE, else $XDG_CACHE_HOME/fpindex, else ~/.cache/fpindex.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import FpindexError
from .utils import atomic_path, write_json_atomic

FORMAT = 1
MAX_SHARDS = 32


def default_cache_dir() -> Path:
    if os.environ.get("FPINDEX_CACHE"):
        return Path(os.environ["FPINDEX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fpindex"


def identity_key(identity: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class EmbeddingCache:
    """Vectors of one embedder identity, looked up by content hash."""

    def __init__(self, root: str | Path, identity: dict[str, Any]) -> None:
        self.identity = identity
        self.dir = Path(root).expanduser() / identity_key(identity)
        self._known: dict[str, np.ndarray] | None = None
        self._dim = int(identity.get("dim", 0)) or None

    def _load(self) -> dict[str, np.ndarray]:
        if self._known is None:
            self._known = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        keys, vecs = z["keys"], z["vectors"]
                except FileNotFoundError:      # merged away by a concurrent run: its rows are in the new shard
                    continue
                except Exception:              # a damaged shard is ignored, never trusted
                    continue
                if vecs.ndim != 2 or len(keys) != len(vecs) or (self._dim and vecs.shape[1] != self._dim):
                    continue
                self._known.update(zip(keys.tolist(), vecs.astype(np.float32, copy=False)))
        return self._known

    def keys(self) -> set[str]:
        return set(self._load())

    def get(self, digests: Iterable[str]) -> np.ndarray:
        known = self._load()
        rows = [known[d] for d in digests]
        return np.stack(rows) if rows else np.empty((0, self._dim or 0), np.float32)

    def put(self, digests: list[str], vectors: np.ndarray) -> None:
        """Store new vectors as one shard (atomically); no-op for an empty batch."""
        if not digests:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[0] != len(digests):
            raise ValueError("one vector per digest expected")
        known = self._load()
        fresh = [i for i, d in enumerate(digests) if d not in known]
        if not fresh:
            return
        keys = np.array([digests[i] for i in fresh], dtype="U64")
        self._write(keys, vectors[fresh])
        known.update(zip(keys.tolist(), vectors[fresh]))
        if len(list(self.dir.glob("shard-*.npz"))) > MAX_SHARDS:
            self._compact()

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "identity.json"
            if not meta.exists():
                write_json_atomic(meta, {"format": FORMAT, **self.identity})
            path = self.dir / f"shard-{uuid.uuid4().hex}.npz"
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, keys=keys, vectors=vectors)
        except OSError as e:
            raise FpindexError(f"embedding cache {self.dir}: cannot write ({e.strerror or e}); "
                               f"pass --cache-dir elsewhere or --no-cache") from None
        return path

    def _compact(self) -> None:
        """Merge every shard into one; old shards go only after the merged one is in place."""
        old = sorted(self.dir.glob("shard-*.npz"))
        known = self._load()
        keys = np.array(list(known), dtype="U64")
        self._write(keys, np.stack([known[k] for k in keys.tolist()]))
        for p in old:
            p.unlink(missing_ok=True)



class PairCache:
    """Values by (real image hash, other hash), so a re-run re-ranks without decoding.

    kind 'ssim': SSIM with a generated image (by its content hash); 'subspace': the subspace evidence, the other
    hash being that of the fitted subspace. Same layout and guarantees as `EmbeddingCache`; the identity is the
    canonical image size and the definition (for SSIM also the engine, whose last digits differ), so a value is
    reused only where it would be recomputed identically.
    """

    def __init__(self, root: str | Path, identity: dict[str, Any], kind: str = "ssim") -> None:
        self.identity = {"kind": kind, **identity}
        self.dir = Path(root).expanduser() / (f"{kind}-" + identity_key(self.identity))
        self._known: dict[tuple[str, str], float] | None = None

    def _load(self) -> dict[tuple[str, str], float]:
        if self._known is None:
            self._known = {}
            for shard in sorted(self.dir.glob("shard-*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        a, b, v = z["a"], z["b"], z["values"]
                except Exception:              # missing (merged away) or damaged: recompute instead
                    continue
                if not (len(a) == len(b) == len(v)) or v.ndim != 1:
                    continue
                self._known.update(zip(zip(a.tolist(), b.tolist()), v.astype(np.float32).tolist()))
        return self._known

    def get(self, a: list[str], b: list[str]) -> np.ndarray:
        """float32 values, NaN where unknown."""
        known = self._load()
        return np.array([known.get(k, np.nan) for k in zip(a, b)], dtype=np.float32)

    def put(self, a: list[str], b: list[str], values: np.ndarray) -> None:
        if not a:
            return
        known = self._load()
        values = np.asarray(values, dtype=np.float32)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / "identity.json"
            if not meta.exists():
                write_json_atomic(meta, {"format": FORMAT, **self.identity})
            with atomic_path(self.dir / f"shard-{uuid.uuid4().hex}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, a=np.array(a, dtype="U64"), b=np.array(b, dtype="U64"), values=values)
        except OSError as e:
            raise FpindexError(f"SSIM cache {self.dir}: cannot write ({e.strerror or e}); "
                               f"pass --cache-dir elsewhere or --no-cache") from None
        known.update(zip(zip(a, b), values.tolist()))
        shards = sorted(self.dir.glob("shard-*.npz"))
        if len(shards) > MAX_SHARDS:
            keys = list(known)
            with atomic_path(self.dir / f"shard-{uuid.uuid4().hex}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, a=np.array([k[0] for k in keys], dtype="U64"),
                             b=np.array([k[1] for k in keys], dtype="U64"),
                             values=np.array([known[k] for k in keys], dtype=np.float32))
            for p in shards:
                p.unlink(missing_ok=True)


__all__ = ["EmbeddingCache", "PairCache", "default_cache_dir", "identity_key"]
