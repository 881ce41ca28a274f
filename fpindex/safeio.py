"""Every file and folder fpindex writes goes through here, so one set of rules holds for all of them.

- A destination is replaced only when it is a plain file or folder (never through a symbolic link, never a
  device node or other special file); callers say what else makes it fpindex's own (`owned`).
- Files are written beside the destination and renamed over it; folders are built beside it and exchanged
  with it in one step (Linux `renameat2(RENAME_EXCHANGE)`), so the path always holds a complete old or new
  version. Where the exchange is not available the old folder is renamed aside first, and a swap cut short
  between the two renames is undone by the next run (`recover_dir`), which also removes the temporaries of
  processes that have died.
- New files and folders get the user's umask (mkstemp and mkdtemp would make them private: not used).
- An OSError while writing (disk full, read-only, no permission, a name too long) is one `WriteError`
  naming the destination; the destination keeps what it held before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import FpindexError

TMP, OLD = ".fpindex-tmp", ".fpindex-old"     # suffixes of fpindex's own temporaries: nothing else is removed


class WriteError(FpindexError):
    """Writing `path` failed for a reason the system gave (`reason`); nothing at `path` was changed."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write {shown(path)}: {reason}")
        self.path, self.reason = path, reason


def shown(path: str | Path) -> str:
    """A path (or a message naming paths) as one printable line: bytes that are not UTF-8 and control characters
    (a newline in a file name) escaped."""
    text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def reason(e: OSError) -> str:
    return e.strerror or str(e)


def pause_for_tests(point: str) -> None:
    """Test-only: with FPINDEX_TEST_PAUSE=<point> in the environment, say so on stderr and sleep, so that
    tests/test_kill.py can SIGKILL the process exactly there. Does nothing otherwise."""
    if os.environ.get("FPINDEX_TEST_PAUSE") == point:
        sys.stderr.write(f"fpindex-test-pause {point}\n")
        sys.stderr.flush()
        time.sleep(120)


def refuse_special(path: Path, kind: str = "file") -> None:
    """A destination that exists must be a plain `kind` ('file' or 'folder') and not a symbolic link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise WriteError(path, reason(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise FpindexError(f"{shown(path)} is a symbolic link; fpindex does not write through links: give the "
                           "real path or remove the link")
    want = stat.S_ISDIR if kind == "folder" else stat.S_ISREG
    if not want(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "a file" if stat.S_ISREG(st.st_mode) else \
            "a device or other special file"
        raise FpindexError(f"{shown(path)} is {what}, not a {kind} fpindex wrote; refusing to replace it")


def temp_name(path: Path, tag: str) -> str:
    """`.NAME.PID.RANDOM<tag>`; NAME cut short so a long destination name still leaves a valid temporary one."""
    return f".{path.name[:80]}.{os.getpid()}.{uuid.uuid4().hex[:8]}{tag}"


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(folder, "it is a file, not a folder") from None
    except OSError as e:
        raise WriteError(folder, reason(e)) from None


@contextlib.contextmanager
def atomic_path(path: str | Path, owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds. An existing
    `path` must be a plain file (and, with `owned`, one it accepts as fpindex's)."""
    path = Path(path)
    refuse_special(path)
    if owned is not None and path.exists() and not _owned(owned, path):
        raise FpindexError(f"{shown(path)} exists and was not written by fpindex; refusing to replace it: "
                           "choose another name or move it away")
    _mkdir(path.parent)
    for stale, pid in _siblings(path, TMP):           # what a killed write of this same file left
        if not _alive(pid):
            _remove(stale)
    tmp = path.with_name(temp_name(path, TMP))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)      # the umask applies, as for open()
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, reason(e)) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _owned(owned: Callable[[Path], bool], path: Path) -> bool:
    try:
        return owned(path)
    except OSError:                      # unreadable: not recognisably fpindex's
        return False


def write_text_atomic(path: str | Path, text: str, owned: Callable[[Path], bool] | None = None) -> None:
    with atomic_path(path, owned) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, owned: Callable[[Path], bool] | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n", owned)


def json_default(obj: Any) -> Any:
    """`json.dumps(default=…)` for what results hold besides plain types: numpy scalars and arrays, paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def same_json_keys(obj: dict[str, Any]) -> Callable[[Path], bool]:
    """An `owned` test for a JSON result: the file there holds an object with the same keys, i.e. an earlier
    result of the same command (nothing else of the user's is replaced)."""
    def owned(path: Path) -> bool:
        old = read_json(path)
        return isinstance(old, dict) and set(old) == set(obj)
    return owned


# ---- folders ------------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                                   # exists, owned by someone else
    return True


def _parse(name: str, tag: str) -> tuple[str, int] | None:
    """('.NAME', PID) of an fpindex temporary's name, None for any other name."""
    if not name.endswith(tag):
        return None
    parts = name[: -len(tag)].rsplit(".", 2)
    return (parts[0], int(parts[1])) if len(parts) == 3 and parts[1].isdigit() else None


def _temporaries(folder: Path, tag: str) -> list[tuple[Path, str, int]]:
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if (parsed := _parse(entry.name, tag)) is not None:
                found.append((folder / entry.name, *parsed))
    return found


def _siblings(path: Path, tag: str) -> list[tuple[Path, int]]:
    """fpindex temporaries of `path` with the PID that made them."""
    stem = f".{path.name[:80]}"
    return [(p, pid) for p, s, pid in _temporaries(path.parent, tag) if s == stem]


def clean_temps(folder: str | Path) -> None:
    """Remove the temporaries that processes now dead left in `folder`."""
    for p, _, pid in _temporaries(Path(folder), TMP):
        if not _alive(pid):
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def recover_dir(path: str | Path) -> None:
    """Finish what a killed run left at `path`: a folder renamed aside and never replaced is put back; the
    temporaries of dead processes are removed. Cheap when there is nothing to do."""
    path = Path(path)
    for old, pid in sorted(_siblings(path, OLD), key=lambda t: t[0].name):
        if _alive(pid):
            continue
        if not os.path.lexists(path):
            with contextlib.suppress(OSError):     # if it cannot go back, it stays where it is: never removed
                os.rename(old, path)
            continue
        _remove(old)
    for tmp, pid in _siblings(path, TMP):
        if not _alive(pid):
            _remove(tmp)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_supported(folder: str | Path) -> bool:
    """Whether folders in `folder` can be swapped in one step (else swap_in renames the old one aside first)."""
    a, b = Path(tempfile.mkdtemp(dir=folder, suffix=TMP)), Path(tempfile.mkdtemp(dir=folder, suffix=TMP))
    try:
        return _exchange(a, b)
    except OSError:
        return False
    finally:
        a.rmdir(), b.rmdir()


def swap_in(tmp: Path, path: Path, exchange: bool = True) -> None:
    """Put the complete folder `tmp` at `path`, replacing what is there; the old folder is removed after."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if exchange and _exchange(tmp, path):
        pause_for_tests("swap")
        shutil.rmtree(tmp, ignore_errors=True)      # tmp now holds the old folder
        return
    old = path.with_name(temp_name(path, OLD))
    os.rename(path, old)
    pause_for_tests("swap")                          # here the path is missing: recover_dir puts `old` back
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name beside `path`, then swap it in whole; a crash or kill leaves the
    old one (or the new one) complete. An existing `path` must be a plain folder (and, with `owned`, one it
    accepts as fpindex's)."""
    path = Path(path)
    recover_dir(path)
    refuse_special(path, "folder")
    if owned is not None and path.exists() and not _owned(owned, path):
        raise FpindexError(f"{shown(path)} exists and was not written by fpindex; refusing to replace it")
    _mkdir(path.parent)
    tmp = path.with_name(temp_name(path, TMP))
    try:
        tmp.mkdir(0o777)                              # the umask applies
        yield tmp
        pause_for_tests("staged")
        swap_in(tmp, path)
    except OSError as e:
        raise WriteError(path, reason(e)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
