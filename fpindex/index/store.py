"""Stage 4 — the index: a FAISS index plus the metadata that makes it safe to reuse.

On disk an index is a directory:
- `index.faiss`   the FAISS index (inner product on L2-normalised vectors = cosine similarity);
- `items.parquet` row i describes FAISS id i: root, path (relative to root), sha256 of the file, bytes;
- `manifest.json` what made it: fpindex and library versions, embedder identity, dimension, metric,
                  FAISS factory string, creation time; since format 2 also the search parameters (nprobe,
                  efSearch), how they were tuned, and how the factory was chosen; since format 3 the sha256,
                  size and mtime of every other file and a digest of itself (integrity.py);
- `lists.ivfdata` only for an index merged from shards: FAISS on-disk inverted lists, memory-mapped.
The directory is written under a temporary name and swapped in whole, so a crash never leaves half an index.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import FpindexError
from ..locks import clear_stale
from ..safeio import WriteError, atomic_dir, read_json, recover_dir
from ..utils import versions, write_json_atomic
from .base import faiss_reason, has_ondisk_lists, make_faiss_index
from .factory import train_sample
from .gpu import gpu_clustering, to_cpu, to_device
from .integrity import Contained, check_attachment, check_items, check_manifest, check_sealed, seal
from .tuning import apply_params

INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
MANIFEST_FILE = "manifest.json"
LISTS_FILE = "lists.ivfdata"     # on-disk inverted lists of a merged sharded index, beside index.faiss
FORMAT_VERSION = 3               # 2: search parameters, optional on-disk inverted lists; 3: checksums
READABLE_VERSIONS = (1, 2, 3)    # 1 and 2 are read without checksums, with a warning (integrity.py)

ITEM_SCHEMA = pa.schema([("root", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
                         ("bytes", pa.int64())])

# Fields of the embedder identity that must match between an index and its queries.
IDENTITY_KEYS = ("model", "weights_id", "enhance", "image_size", "window", "axis")


def as_queries(x: np.ndarray, dim: int) -> np.ndarray:
    """Coerce at the FAISS boundary: 2-D, float32, C-contiguous, right width."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    if x.shape[1] != dim:
        raise FpindexError(f"vectors have dimension {x.shape[1]}, the index expects {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():       # FAISS answers NaN with ids -1 and -inf scores: silently wrong, so refused here
        rows = np.flatnonzero(bad)
        raise FpindexError(f"{len(rows)} vector(s) hold NaN or infinite values (row {int(rows[0])} first); "
                           "vectors must be finite")
    return x


GPU_MAX_K = 2048                     # the largest k FAISS's GPU search kernels accept


@dataclass
class IndexStore:
    index: faiss.Index
    manifest: dict[str, Any]
    items: pa.Table = field(default_factory=lambda: ITEM_SCHEMA.empty_table())
    # Small files that belong with the index (e.g. embedder weights trained at build time), saved beside it.
    attachments: dict[str, bytes] = field(default_factory=dict)
    directory: Path | None = None
    device: str = "cpu"              # where the index lives now: 'cpu' or 'cuda' (never saved)
    seed: int = 0                    # seeds the training sample
    _cpu_copy: faiss.Index | None = field(default=None, repr=False)

    # ---- creation -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, factory: str, dim: int, identity: dict[str, Any], device: str = "cpu",
               seed: int = 0) -> "IndexStore":
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "factory": factory,
            "metric": "inner_product",
            "normalized": True,
            "dim": dim,
            "ntotal": 0,
            "embedder": identity,
            "search_params": {},
            "versions": versions(),
        }
        return cls(index=make_faiss_index(factory, dim), manifest=manifest, device=device, seed=seed)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, rows: pa.Table) -> None:
        """Append vectors; row i of `rows` describes vector i. Trains the index first if it needs it."""
        x = as_queries(vectors, self.dim)
        if len(rows) != len(x):
            raise ValueError("one metadata row per vector")
        if len(x) == 0:
            return
        if not self.index.is_trained:
            self.train(x)
        self.index, self.device = to_device(self.index, self.device)
        self._cpu_copy = None
        rows = rows.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        check_items(rows, "new index items", "refusing to index it")
        self.index.add(x)
        self.items = pa.concat_tables([self.items, rows])
        self.manifest["ntotal"] = self.ntotal
        self.manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def train(self, x: np.ndarray) -> None:
        """Train on a seeded sample of x (IVF k-means and PQ/SQ codebooks do not need every vector)."""
        x = as_queries(x, self.dim)
        if self.device == "cuda":
            gpu_clustering(self.index)
        try:
            self.index.train(train_sample(x, self.index, self.seed))
        except RuntimeError as e:
            raise FpindexError(f"FAISS could not train {self.manifest['factory']!r} on {len(x)} vectors "
                               f"({faiss_reason(e)}); use a smaller index or 'Flat'") from None

    def set_search_params(self, params: dict[str, int] | None, save: bool = True) -> None:
        """Set nprobe / efSearch (and the like); with save=True they are stored in the manifest."""
        params = {k: int(v) for k, v in (params or {}).items() if v is not None}
        apply_params(self.index, params)
        if save:
            self.manifest.setdefault("search_params", {}).update(params)

    # ---- queries --------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (similarities, ids), both n × min(k, ntotal); missing slots have id -1."""
        x = as_queries(queries, self.dim)
        k = max(1, min(int(k), self.ntotal))
        if self.device == "cuda" and k > GPU_MAX_K:     # FAISS's GPU kernels stop at k = 2048; the CPU copy does not
            return IndexStore(self._cpu(), self.manifest, self.items).search(x, k)
        sims, ids = self.index.search(x, k)
        return sims, ids

    def _cpu(self) -> faiss.Index:
        """A CPU copy of a GPU index, made once per change of its contents."""
        if self._cpu_copy is None:
            self._cpu_copy = to_cpu(self.index)
        return self._cpu_copy

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for FAISS ids (decoded, so approximate for compressed indexes)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if self.device == "cuda":      # GPU indexes do not all decode; a CPU copy does
            return IndexStore(self._cpu(), self.manifest, self.items).reconstruct(ids)
        try:
            return self.index.reconstruct_batch(ids)
        except RuntimeError:
            try:
                faiss.extract_index_ivf(self.index).make_direct_map()
                return self.index.reconstruct_batch(ids)
            except RuntimeError:
                raise FpindexError(f"index {self.manifest['factory']!r} cannot return stored vectors, which "
                                   "Jaccard re-ranking needs; build with a Flat, IVF or HNSW index") from None

    def paths(self, ids: np.ndarray) -> list[str]:
        roots = self.items.column("root").to_pylist()
        paths = self.items.column("path").to_pylist()
        return [str(Path(roots[i]) / paths[i]) if i >= 0 else "" for i in np.asarray(ids).ravel()]

    def sha256_of(self, ids: np.ndarray) -> list[str]:
        """Content ids of FAISS ids ('' for the -1 of a missing slot), as `sha256` reads them."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        return [h if i >= 0 else "" for h, i in zip(self.sha256(np.maximum(flat, 0)), flat.tolist())]

    def relative(self, ids: np.ndarray) -> list[str]:
        """Each FAISS id's path inside the folder it was indexed from (POSIX)."""
        return self._column("path", ids)

    def hashes(self) -> set[str]:
        return set(self.items.column("sha256").to_pylist())

    def count_known(self, sha256: list[str]) -> int:
        """How many of these content hashes the index holds (vectorised: no Python set of the whole index)."""
        import pyarrow.compute as pc

        if not sha256:
            return 0
        return int(pc.sum(pc.is_in(pa.array(sha256, pa.string()), value_set=self.items.column("sha256"))).as_py()
                   or 0)

    # The generated files behind ids, for the stages that read their pixels (pixels.IndexedFiles).
    def files(self, ids: np.ndarray) -> list[str]:
        """Paths of the stored files, refused when one resolves (symlinks followed) outside its root."""
        inside = Contained(self.directory)
        roots, paths = self._column("root", ids), self._column("path", ids)
        return [inside(r, p, i) for r, p, i in zip(roots, paths, np.asarray(ids).ravel().tolist())]

    def sha256(self, ids: np.ndarray) -> list[str]:
        return self._column("sha256", ids)

    def sizes(self, ids: np.ndarray) -> list[int]:
        return self._column("bytes", ids)

    def _column(self, name: str, ids: np.ndarray) -> list:
        return self.items.column(name).take(pa.array(np.asarray(ids, dtype=np.int64).ravel())).to_pylist()

    # ---- compatibility ------------------------------------------------------------------------------
    def check_compatible(self, identity: dict[str, Any], dim: int) -> None:
        """Refuse queries embedded differently from the index: their similarities would mean nothing."""
        own = self.manifest["embedder"]
        for key in IDENTITY_KEYS:
            if key in identity and identity[key] != own.get(key):
                raise FpindexError(f"the index was built with {key}={own.get(key)!r} but the query uses "
                                   f"{key}={identity[key]!r}; query with the index's settings or rebuild it")
        if dim != self.dim:
            raise FpindexError(f"the index holds {self.dim}-d vectors but the query embedder makes {dim}-d ones")

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        index = to_cpu(self.index)
        with atomic_dir(directory, owned=is_index_dir) as tmp:
            # Through a Python file: FAISS's own writer only prints a failed final flush (disk full) and goes on.
            with open(tmp / INDEX_FILE, "wb") as f:
                try:
                    faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
                except RuntimeError as e:
                    raise WriteError(directory, faiss_reason(e)) from None
            if has_ondisk_lists(index):
                ivf = faiss.extract_index_ivf(index)
                copy_lists(Path(faiss.downcast_InvertedLists(ivf.invlists).filename), tmp / LISTS_FILE)
            pq.write_table(self.items, tmp / ITEMS_FILE)
            for name, data in self.attachments.items():
                (tmp / name).write_bytes(data)
            self.manifest["attachments"] = sorted(self.attachments)
            self.manifest["format_version"] = FORMAT_VERSION     # an older index re-saved (build --add) is sealed
            seal(tmp, self.manifest, MANIFEST_FILE)
            write_json_atomic(tmp / MANIFEST_FILE, self.manifest)
        self.directory = directory
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", verify: bool = False) -> "IndexStore":
        """Read an index directory; `device` 'cuda' moves it to the GPU (see fpindex.devices.faiss_device).
        Its files are checked against the manifest's checksums first: those whose size or mtime changed are
        hashed, and with `verify` all of them (integrity.py). A load that fails while a writer swaps the
        directory (its inode changed under the reader) is read again, up to 5 times: a swap, not damage."""
        def identity() -> tuple[int, int] | None:
            try:
                st = os.stat(directory)
                return st.st_dev, st.st_ino
            except OSError:
                return None
        for attempt in range(5):
            before = identity()
            try:
                return cls._load(directory, device, verify)
            except FpindexError:
                if attempt == 4 or identity() == before:
                    raise
            time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, directory: str | Path, device: str, verify: bool) -> "IndexStore":
        d = Path(directory)
        recover_dir(d)                   # a swap cut short by a kill is finished first
        clear_stale(d)                   # and the lock file of a killed writer removed (locks.py)
        if not d.is_dir():
            raise FpindexError(f"index {d} does not exist (build one with `fpindex build`)")
        for name in (INDEX_FILE, ITEMS_FILE, MANIFEST_FILE):
            if not (d / name).is_file():
                raise FpindexError(f"index {d} is incomplete: {name} is missing")
        try:
            manifest = json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FpindexError(f"index {d / MANIFEST_FILE}: unreadable manifest ({e})") from None
        version = check_manifest(manifest, d / MANIFEST_FILE, FORMAT_VERSION, READABLE_VERSIONS)
        names = manifest.get("attachments", [])
        for name in names:
            if Path(name).name != name or name in (MANIFEST_FILE, "", ".", "..") or not (d / name).is_file():
                raise FpindexError(f"index {d} is incomplete: {name} is missing")
        # A merged sharded index keeps its inverted lists in lists.ivfdata beside index.faiss.
        lists = LISTS_FILE in manifest["files"] if version >= 3 else (d / LISTS_FILE).is_file()
        check_sealed(d, d / MANIFEST_FILE, manifest, version, [INDEX_FILE, ITEMS_FILE] + [LISTS_FILE] * lists,
                     verify)
        try:
            index = faiss.read_index(str(d / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR if lists else 0)
        except RuntimeError:
            raise FpindexError(f"index {d / INDEX_FILE}: not a readable FAISS index") from None
        try:
            items = pq.read_table(d / ITEMS_FILE)
            items = items.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError/KeyError variants
            raise FpindexError(f"index {d / ITEMS_FILE}: unreadable ({type(e).__name__})") from None
        if index.ntotal != len(items) or index.ntotal != manifest["ntotal"] or index.d != manifest["dim"]:
            raise FpindexError(f"index {d}: files disagree (faiss: {index.ntotal} × {index.d}, items: {len(items)}, "
                               f"manifest: {manifest['ntotal']} × {manifest['dim']}); rebuild it")
        check_items(items, f"index {d / ITEMS_FILE}")
        attachments = {}
        for name in names:
            attachments[name] = (d / name).read_bytes()
            check_attachment(d / name, attachments[name], manifest.get("files"))
        manifest.setdefault("search_params", {})
        store = cls(index=index, manifest=manifest, items=items, attachments=attachments, directory=d)
        store.set_search_params(manifest["search_params"], save=False)
        store.index, store.device = to_device(store.index, device)
        store.set_search_params(manifest["search_params"], save=False)   # GPU copies take them separately
        return store


def is_index_dir(path: str | Path) -> bool:
    """A folder fpindex may replace as an index: it holds a manifest.json that an fpindex build wrote."""
    m = read_json(Path(path) / MANIFEST_FILE)
    return isinstance(m, dict) and isinstance(m.get("format_version"), int) and "factory" in m and "dim" in m


def copy_lists(src: Path, dst: Path) -> None:
    """Hard-link when possible (same file system, instant), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
