"""Content-addressed cache: anything already computed from the same bytes with the same settings is read back.

Why this shape: values are keyed by content hashes (of image files, of a fitted subspace), so renaming or moving
files costs nothing and any change of content misses. The directory is named by a hash of everything that can
change a value (the identity), so a new model, filter revision or library version simply selects another one.

`ContentCache`: fixed-width float32 rows by string key, in `<root>/<kind>-<key>/shard-*.npz`. A shard is written
whole under a temporary name and renamed, never modified, and removed only after a merge holding its rows is in
place, so concurrent runs can share a directory. Shards are read with `allow_pickle=False` and checked for
shape; anything damaged or odd is ignored (recomputed), never trusted. Blobs (`blob_path`, `read_blob`,
`write_blob`) hold one file per identity with a JSON sidecar carrying its hash: a partial blob reads as absent.

Root: `--cache-dir`, else $FPINDEX_CACHE, else $XDG_CACHE_HOME/fpindex, else ~/.cache/fpindex.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import FpindexError, FpindexWarning
from .safeio import WriteError, clean_temps
from .utils import atomic_path, write_json_atomic

FORMAT = 2
MAX_SHARDS = 32


def default_cache_dir() -> Path:
    if os.environ.get("FPINDEX_CACHE"):
        return Path(os.environ["FPINDEX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fpindex"


def cache_root(cfg: Any) -> str | None:
    """Where an embedding config's caches live (vectors, evidence, trained weights); None when caching is off.
    A root that is a file (or lies below one) is refused here, before any work, not when the first write fails."""
    if not cfg.cache:
        return None
    root = cfg.cache_dir or str(default_cache_dir())
    p = Path(root).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise FpindexError(f"cache folder {root}: {p} is a file, not a folder; pass --cache-dir elsewhere or "
                           "--no-cache")
    return root


def damaged(what: Path, why: str, action: str) -> None:
    """A cache entry that fpindex wrote but cannot trust: a miss, said once per entry."""
    warnings.warn(f"cache entry {what} is damaged ({why}); {action}", FpindexWarning, stacklevel=3)


def identity_key(identity: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def pair_keys(a: Iterable[str], b: Iterable[str]) -> list[str]:
    """One key per (a[i], b[i]) pair of hashes; hex digests never contain ':'."""
    return [f"{x}:{y}" for x, y in zip(a, b, strict=True)]


def _write_error(kind: str, where: Path, e: OSError | WriteError) -> FpindexError:
    why = e.reason if isinstance(e, WriteError) else e.strerror or e
    return FpindexError(f"{kind} cache {where}: cannot write ({why}); "
                        f"pass --cache-dir elsewhere or --no-cache")


class ContentCache:
    """`width` float32 numbers per key, for one identity (vectors: width = d; pair values: width = 1)."""

    def __init__(self, root: str | Path, kind: str, identity: dict[str, Any], width: int) -> None:
        self.kind, self.width = kind, int(width)
        self.identity = {"kind": kind, **identity, "width": self.width}
        self.dir = Path(root).expanduser() / f"{kind}-{identity_key(self.identity)}"
        self._known: dict[str, np.ndarray] | None = None

    def _read(self, shard: Path) -> dict[str, np.ndarray]:
        """A shard's rows, or nothing if it is missing (merged away meanwhile), damaged or of another shape."""
        try:
            with open(shard, "rb") as f, np.load(f, allow_pickle=False) as z:   # closed even when np.load fails
                keys, rows = z["keys"], z["vectors"]
        except FileNotFoundError:
            return {}
        except Exception as e:
            return self._drop(shard, f"{type(e).__name__}: {e}")
        if keys.ndim != 1 or keys.dtype.kind != "U" or rows.dtype.kind != "f" \
                or rows.shape != (len(keys), self.width):
            return self._drop(shard, f"arrays of shape {keys.shape} and {rows.shape}")
        return dict(zip(keys.tolist(), rows.astype(np.float32, copy=False)))

    def _drop(self, shard: Path, why: str) -> dict[str, np.ndarray]:
        """A shard is written whole and renamed, so a damaged one stays damaged: removed (it is fpindex's own),
        its rows recomputed and written again by the run."""
        damaged(shard, why, "its values are recomputed and the shard removed")
        try:
            shard.unlink(missing_ok=True)
        except OSError:
            pass
        return {}

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.npz"))

    def _load(self) -> dict[str, np.ndarray]:
        if self._known is None:
            self._known = {}
            for shard in self._shards():
                self._known.update(self._read(shard))
        return self._known

    def keys(self) -> set[str]:
        return set(self._load())

    def get(self, keys: Iterable[str]) -> np.ndarray:
        """(n, width) float32, or (n,) for width 1; NaN where a key is unknown."""
        known = self._load()
        keys = list(keys)
        out = np.full((len(keys), self.width), np.nan, np.float32)
        for i, k in enumerate(keys):
            row = known.get(k)
            if row is not None:
                out[i] = row
        return out[:, 0] if self.width == 1 else out

    def put(self, keys: Iterable[str], values: np.ndarray) -> None:
        """Store the rows of keys not known yet as one new shard (atomic); merge when there are too many."""
        keys = list(keys)
        if not keys:
            return
        values = np.asarray(values, dtype=np.float32)
        if self.width == 1 and values.ndim == 1:
            values = values[:, None]
        if values.shape != (len(keys), self.width):
            raise ValueError(f"{len(keys)} rows of {self.width} values expected, got shape {values.shape}")
        known = self._load()
        fresh = {k: row for k, row in zip(keys, values) if k not in known}
        if not fresh:
            return
        self._write(fresh)
        known.update(fresh)
        if len(self._shards()) > MAX_SHARDS:
            self._compact()

    def _write(self, rows: dict[str, np.ndarray]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            clean_temps(self.dir)                       # shards a killed run was writing
            meta = self.dir / "identity.json"
            if not meta.exists():
                write_json_atomic(meta, {"format": FORMAT, **self.identity})
            with atomic_path(self.dir / f"shard-{uuid.uuid4().hex}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, keys=np.array(list(rows), dtype=str),
                             vectors=np.stack(list(rows.values())).astype(np.float32, copy=False))
        except (OSError, WriteError) as e:
            raise _write_error(self.kind, self.dir, e) from None

    def _compact(self) -> None:
        """Merge every shard into one, under the folder's writer lock (locks.py; a run that finds another
        merging leaves it to that one): the shards are re-read (a concurrent run may have added some), and
        removed only once the merged shard holding their rows is in place."""
        from .locks import Busy, writing

        try:
            with writing(self.dir, what="cache folder"):
                self._merge()
        except Busy:
            return

    def _merge(self) -> None:
        old = self._shards()
        merged: dict[str, np.ndarray] = {}
        for shard in old:
            merged.update(self._read(shard))
        merged.update(self._load())
        self._write(merged)
        try:
            for p in old:
                p.unlink(missing_ok=True)
        except OSError as e:
            raise _write_error(self.kind, self.dir, e) from None
        self._known = merged


# ---- blobs: one file per identity -------------------------------------------------------------------------

def blob_path(root: str | Path, kind: str, identity: dict[str, Any], suffix: str) -> Path:
    """`<root>/<kind>/<identity key><suffix>`, e.g. suffix '.pt'."""
    return Path(root).expanduser() / kind / f"{identity_key({'kind': kind, **identity})}{suffix}"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_blob(path: str | Path) -> bytes | None:
    """The blob's bytes, or None if it is absent, partial or damaged (its hash is not the recorded one).
    Absent or half-written (no sidecar yet) is a plain miss; damaged is a miss with a warning."""
    path = Path(path)
    if not _sidecar(path).exists():
        return None
    try:
        side = json.loads(_sidecar(path).read_text())
        data = path.read_bytes()
    except (OSError, ValueError) as e:
        damaged(path, f"{type(e).__name__}: {e}", "computed again and rewritten")
        return None
    if not isinstance(side, dict) or side.get("sha256") != hashlib.sha256(data).hexdigest():
        damaged(path, f"its {len(data):,} bytes do not match the recorded hash", "computed again and rewritten")
        return None
    return data


def blob_meta(path: str | Path) -> dict[str, Any] | None:
    """The `meta` written with the blob (None if none was, or the sidecar is unreadable)."""
    try:
        side = json.loads(_sidecar(Path(path)).read_text())
    except (OSError, ValueError):
        return None
    meta = side.get("meta") if isinstance(side, dict) else None
    return meta if isinstance(meta, dict) else None


def write_blob(path: str | Path, data: bytes, meta: dict[str, Any] | None = None) -> None:
    """Write the blob, then its sidecar (hash, size, meta), each atomically; a reader caught between the two, or
    after a crash, finds the hash wrong and recomputes."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        write_json_atomic(_sidecar(path), {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
                                           "bytes": len(data), "meta": meta})
    except (OSError, WriteError) as e:
        raise _write_error(path.parent.name, path.parent, e) from None


__all__ = ["ContentCache", "MAX_SHARDS", "blob_meta", "blob_path", "default_cache_dir", "identity_key",
           "pair_keys", "read_blob", "write_blob"]
