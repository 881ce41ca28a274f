"""What an index directory read back is what was written: checksums, the manifest's shape, stored paths.

Since format 3 the manifest records every file of the directory (sha256, size, mtime) and a digest of its own
canonical content, so damaged files and edited settings are refused instead of silently changing answers.
Loading is cheap by default: a file whose size and mtime are the recorded ones is trusted unhashed, unless its
mtime is not older than the manifest's (a rewrite within the same clock tick would keep the mtime);
`verify=True` hashes every file. The digest catches damage and hand edits, not forgery: it is not a signature.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import FpindexError, FpindexWarning
from ..utils import json_default, sha256_bytes, sha256_file

FILES_KEY = "files"
DIGEST_KEY = "digest"
CHECKED_SINCE = 3                # the first format whose manifest carries checksums

# Keys every readable manifest has, and the type of each; then optional keys that code reads, with theirs.
REQUIRED = {"format_version": int, "factory": str, "metric": str, "dim": int, "ntotal": int, "embedder": dict}
OPTIONAL = {"search_params": dict, "attachments": list, "config": dict, "files": dict, "digest": str,
            "tuning": dict, "selection": dict}
EMBEDDER_KEYS = ("model", "weights", "enhance", "image_size", "seed")   # read when the manifest has no 'config'
HEX64 = re.compile(r"[0-9a-f]{64}")
# A stored path that could leave its root: a '..' segment, an absolute or drive path, or nothing at all.
ESCAPE = r"(^|[/\\])\.\.([/\\]|$)|^[/\\]|^[A-Za-z]:|^$"


def _json_name(value: Any) -> str:
    """What JSON calls the value's type, for messages."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


_WANTED = {int: "a whole number", str: "a string", dict: "an object", list: "an array"}


def _is(value: Any, t: type) -> bool:
    return isinstance(value, t) and not (t is int and isinstance(value, bool))


# ---- the manifest ------------------------------------------------------------------------------------

def check_manifest(manifest: Any, path: Path, newest: int, readable: tuple[int, ...]) -> int:
    """Refuse a manifest that is valid JSON of the wrong shape, naming the file; returns its format version."""
    def bad(problem: str) -> FpindexError:
        return FpindexError(f"index {path}: {problem}; rebuild the index")

    if not isinstance(manifest, dict):
        raise bad(f"the manifest is {_json_name(manifest)}, not an object")
    version = manifest.get("format_version")
    if not _is(version, int):
        raise bad(f"format version {version!r} is not a number")
    if version > newest:
        raise FpindexError(f"index {path}: format version {version}, this fpindex reads "
                           f"{', '.join(map(str, readable))}; upgrade fpindex (or rebuild the index with this one)")
    if version not in readable:
        raise bad(f"format version {version}, this fpindex reads {', '.join(map(str, readable))}")
    for key, t in REQUIRED.items():
        if key not in manifest:
            raise bad(f"the manifest has no {key!r}")
    for key, t in {**REQUIRED, **OPTIONAL}.items():
        if key in manifest and not _is(manifest[key], t):
            raise bad(f"the manifest's {key!r} is {_json_name(manifest[key])}, not {_WANTED[t]}")
    if not all(_is(v, int) for v in manifest.get("search_params", {}).values()):
        raise bad("the manifest's 'search_params' are not all whole numbers")
    if not all(_is(n, str) for n in manifest.get("attachments", [])):
        raise bad("the manifest's 'attachments' are not all file names")
    if "config" in manifest and not _is(manifest["config"].get("embed"), dict):
        raise bad("the manifest's 'config.embed' is not an object")
    if "config" not in manifest:              # the embedder identity is then what queries are embedded with
        missing = [k for k in EMBEDDER_KEYS if k not in manifest["embedder"]]
        if missing or not isinstance(manifest["embedder"]["enhance"], list):
            raise bad(f"the manifest's 'embedder' has no valid {(missing or ['enhance'])[0]!r}")
    if version >= CHECKED_SINCE:
        if FILES_KEY not in manifest or DIGEST_KEY not in manifest:
            raise bad(f"format {version} records checksums, but the manifest has no {FILES_KEY!r} or {DIGEST_KEY!r}")
        for name, rec in manifest[FILES_KEY].items():
            if not (isinstance(rec, dict) and _is(rec.get("bytes"), int) and _is(rec.get("mtime_ns"), int)
                    and isinstance(rec.get("sha256"), str) and HEX64.fullmatch(rec["sha256"])):
                raise bad(f"the manifest's checksum record of {name!r} is malformed")
    elif FILES_KEY in manifest or DIGEST_KEY in manifest:
        raise bad(f"format version {version} has no checksums, yet the manifest carries them: it was edited")
    return version


def canonical(manifest: dict[str, Any]) -> bytes:
    """The manifest as JSON reads it back (string keys, lists), keys sorted, without its digest."""
    plain = json.loads(json.dumps(manifest, default=json_default))
    plain.pop(DIGEST_KEY, None)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": sha256_file(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def seal(directory: Path, manifest: dict[str, Any], skip: str) -> None:
    """Record every file of `directory` (but the manifest, `skip`) and then the manifest's own digest."""
    manifest[FILES_KEY] = {p.name: record(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != skip}
    manifest[DIGEST_KEY] = sha256_bytes(canonical(manifest))


def check_sealed(directory: Path, manifest_file: Path, manifest: dict[str, Any], version: int,
                 names: list[str], verify: bool) -> None:
    """Refuse an edited manifest and any of `names` whose content is not the recorded one."""
    if version < CHECKED_SINCE:
        if verify:
            raise FpindexError(f"index {directory}: format version {version} records no checksums, so it cannot "
                               "be verified; rebuild the index with this fpindex")
        warnings.warn(f"index {directory}: format version {version} records no checksums, so damage to its files "
                      "cannot be detected; rebuild the index to add them", FpindexWarning, stacklevel=3)
        return
    if sha256_bytes(canonical(manifest)) != manifest[DIGEST_KEY]:
        raise FpindexError(f"index {manifest_file}: the manifest was changed after the index was written (its "
                           "digest does not match its content); restore it or rebuild the index")
    files = manifest[FILES_KEY]
    since = manifest_file.stat().st_mtime_ns
    for name in names:
        if name not in files:
            raise FpindexError(f"index {directory}: the manifest records no checksum of {name}; rebuild the index")
        check_file(directory / name, files[name], verify, since)


def check_file(path: Path, rec: dict[str, Any], verify: bool, since: int) -> None:
    """Hash the file unless its size and mtime are the recorded ones (and the mtime predates `since`)."""
    try:
        st = path.stat()
    except OSError as e:
        raise FpindexError(f"index {path}: cannot read ({e.strerror or e})") from None
    changed = "; the file changed after the index was written: restore it or rebuild the index"
    if st.st_size != rec["bytes"]:
        raise FpindexError(f"index {path}: {st.st_size} bytes, the manifest recorded {rec['bytes']}{changed}")
    if not verify and st.st_mtime_ns == rec["mtime_ns"] and rec["mtime_ns"] < since:
        return
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise FpindexError(f"index {path}: cannot read ({e.strerror or e})") from None
    if digest != rec["sha256"]:
        raise FpindexError(f"index {path}: its content does not match the checksum in the manifest{changed}")


def check_attachment(path: Path, data: bytes, files: dict[str, Any] | None) -> None:
    """Attachments are small and read whole: their bytes are hashed as read, every time. `files`: the
    manifest's records (None for a format without checksums)."""
    if files is None:
        return
    if path.name not in files:
        raise FpindexError(f"index {path.parent}: the manifest records no checksum of {path.name}; rebuild the index")
    if sha256_bytes(data) != files[path.name]["sha256"]:
        raise FpindexError(f"index {path}: its content does not match the checksum in the manifest; the file "
                           "changed after the index was written: restore it or rebuild the index")


# ---- stored paths ---------------------------------------------------------------------------------

def check_items(items: pa.Table, where: str, fix: str = "the metadata was edited: rebuild the index") -> None:
    """Every stored path is relative and stays below its root: no '..', no absolute path, no empty one."""
    path, root = items.column("path"), items.column("root")
    bad = pc.or_kleene(pc.or_kleene(pc.is_null(path), pc.is_null(root)),
                       pc.match_substring_regex(pc.fill_null(path, ""), ESCAPE))
    if len(items) and pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        raise FpindexError(f"{where}: item {i} has path {path[i].as_py()!r} under root {root[i].as_py()!r}, "
                           f"which leaves its root; {fix}")


class Contained:
    """Turns (root, path) into a file path only when it resolves (symlinks followed) inside the root."""

    def __init__(self, where: Path | None) -> None:
        self.where = f"index {where}: " if where is not None else ""
        self._roots: dict[str, str] = {}

    def __call__(self, root: str, rel: str, i: int) -> str:
        if not os.path.isabs(root):
            raise FpindexError(f"{self.where}index id {i} stores no image folder (it was indexed from "
                               "vectors alone), so its pixels cannot be read")
        real_root = self._roots.get(root)
        if real_root is None:
            real_root = self._roots[root] = os.path.realpath(root)
        full = os.path.join(root, rel)
        # `scan.dcm#3` names image 3 of scan.dcm: the file itself must stay inside too.
        for candidate in (full, full.rsplit("#", 1)[0]) if "#" in rel else (full,):
            real = os.path.realpath(candidate)
            if os.path.commonpath([real_root, real]) != real_root:
                raise FpindexError(f"{self.where}generated image {full} (index id {i}) resolves to "
                                   f"{real}, outside its folder {root}; refusing to read it")
        return full
