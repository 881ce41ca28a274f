"""One writer per folder: an advisory lock (fcntl.flock) that every run takes on each folder it writes.

Why: two audits into one OUT at once left one run's outputs beside the other's index, and a second
`build --overwrite` could swap an index under the first. The lock lives beside the folder, in
`.NAME.fpindex-lock` (the folder itself is swapped whole, so a lock inside it would be swapped away), holding
the holder's pid; the holder removes it when done (a run that opened it meanwhile finds it stale and opens the
new one). A second writer is refused in one line at once, never queued; a killed holder's lock is freed by
the kernel, its file left behind (hidden) and taken over by the next run."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import FpindexError
from .safeio import WriteError, reason

LOCK_SUFFIX = ".fpindex-lock"


class Busy(FpindexError):
    """Another run holds the lock."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def writing(*folders: str | Path | None, what: str = "folder") -> Iterator[None]:
    """Hold the writer's lock of each folder (None skipped) for the block; refuse if another run holds one."""
    paths = list(dict.fromkeys(lock_path(f) for f in folders if f is not None))
    with contextlib.ExitStack() as stack:
        for p in paths:
            stack.enter_context(_locked(p, what))
        yield


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    folder = path.parent / path.name[1:-len(LOCK_SUFFIX)]
    fd = _acquire(path, folder, what)
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)             # still locked: a run that opened it meanwhile sees it is stale
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, folder: Path, what: str) -> int:
    """An open, exclusively locked descriptor of the lock file now at `path` (a file unlinked by its last
    holder between our open and our lock is stale: opened again)."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as e:
            raise WriteError(path, reason(e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise Busy(f"{what} {folder} is being written by another fpindex run{by}; wait for it to "
                               "finish, or write elsewhere") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def clear_stale(folder: str | Path) -> None:
    """Remove the lock file of `folder` that a killed writer left (nobody holds it); a held one is left."""
    path = lock_path(folder)
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
