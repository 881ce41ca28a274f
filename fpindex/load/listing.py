"""Finding the files of an image folder, and saying which files were passed over and why.

Why a file is passed over is part of the result: an unsupported format (.gif, .txt, ...), a broken symbolic
link, a name that is not valid UTF-8 (it could be written to no output file) or a folder that cannot be read
become `BadFile`s that the run counts and lists beside the images that failed to decode. Only hidden entries
(a name starting with '.', e.g. .DS_Store, .cache/) are left out without a word, as every tool does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import FpindexError

# .webp decodes through OpenCV like the others. GIF is refused on purpose: a palette format with possibly
# several frames (which one?), decoded only by recent OpenCV builds, and never a medical original.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SUPPORTED = IMAGE_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def kind(path: Path) -> str:
    """'image', 'dicom', 'nifti', or '' for files that are none of these."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == "":
        try:
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError:
            return ""
        return "dicom" if head[128:132] == b"DICM" else ""
    return ""


def unsupported_reason(path: Path) -> str:
    suffix = path.suffix.lower() or "without a suffix and not DICOM"
    return f"unsupported file type {suffix} (fpindex reads {', '.join(SUPPORTED)})"


def printable(path: Path | str) -> str:
    """A path as text that any output can hold: undecodable bytes of a file name become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def walk(root: Path, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk top-down, with an explicit stack instead of recursion (Python < 3.12's os.walk recurses, so a
    file 1,200 folders deep raised RecursionError); the caller may prune `dirs` in place, as with os.walk."""
    stack = [os.fspath(root)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                entries = list(it)
        except OSError as e:
            onerror(e)
            continue
        dirs, names = [], []
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            (dirs if is_dir else names).append(e.name)
        yield top, dirs, names
        stack.extend(os.path.join(top, d) for d in reversed(dirs))


def list_files(root: str | Path, what: str = "image folder") -> tuple[list[Path], list[BadFile]]:
    """(the files fpindex can read below `root`, sorted; every other non-hidden entry as a BadFile)."""
    root = Path(root)
    if not root.exists():
        raise FpindexError(f"{what} {root} does not exist")
    if root.is_file():
        raise FpindexError(f"{what} {root} is a file, expected a folder of images")
    if not os.access(root, os.R_OK | os.X_OK):
        raise FpindexError(f"{what} {root} cannot be read (permission denied)")
    files: list[Path] = []
    skipped: list[BadFile] = []

    def unreadable(e: OSError) -> None:
        skipped.append(BadFile(printable(e.filename or root), f"folder cannot be read ({e.strerror or e})"))

    for top, dirs, names in walk(root, unreadable):
        for d in dirs:
            if not d.startswith(".") and os.path.islink(os.path.join(top, d)):
                skipped.append(BadFile(printable(Path(top) / d), "symbolic link to a folder (not followed)"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(top, d)))
        for name in names:
            if name.startswith("."):
                continue
            p = Path(top) / name
            if not _utf8(name):
                skipped.append(BadFile(printable(p), "file name is not valid UTF-8; rename the file"))
            elif not p.exists():
                skipped.append(BadFile(str(p), "broken symbolic link"))
            elif not p.is_file():
                skipped.append(BadFile(str(p), "not a regular file"))
            elif kind(p):
                files.append(p)
            else:
                skipped.append(BadFile(str(p), unsupported_reason(p)))
    files.sort()
    skipped.sort(key=lambda b: b.path)
    if not files:
        extra = f"; {len(skipped)} other file(s) skipped, e.g. {skipped[0].path}: {skipped[0].reason}" \
            if skipped else ""
        raise FpindexError(f"{what} {root} holds no images ({', '.join(SUPPORTED)}){extra}")
    return files, skipped


def check_distinct(folders: dict[str, str | Path | None]) -> None:
    """Images known to be used and images known not to be must be different images: one folder given as both
    (or one inside the other) would give the same images both labels and a meaningless calibration."""
    given = {n: Path(p).resolve() for n, p in folders.items() if p is not None}
    for a, b in (("used", "not_used"), ("used", "reference")):
        if a in given and b in given:
            pa, pb = given[a], given[b]
            if pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa):
                how = "is the same folder as" if pa == pb else "overlaps"
                raise FpindexError(f"--{a.replace('_', '-')} {folders[a]} {how} --{b.replace('_', '-')} "
                                   f"{folders[b]}: the images would carry both labels; give separate folders")
