"""An audit's output folder as one unit: whose it is, which run wrote it, and whether that run finished.

OUT/fpindex-run.json names the run (`run_id`, also in summary.json) and the sha256 of each file it wrote.
Saving is a small journal: every file is first written complete under a temporary name beside its place; then
the marker is written in state "committing" with those names (the commit point); then each is renamed into
place and the marker rewritten "complete". A kill before the commit point leaves the previous run's files,
whole; after it, the next run (or reader) finishes the renames (`recover`). Readers check the marker, so files
of two runs are never read together silently (`verify`). Reports and evaluations derived from an older run
are removed at the commit, since they would describe other predictions.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import FpindexError
from ..safeio import (TMP, WriteError, clean_temps, read_json, reason, refuse_special, shown, temp_name,
                      pause_for_tests, write_json_atomic)
from ..utils import sha256_file

MARKER = "fpindex-run.json"
OUTPUTS = ("predictions.csv", "submission.csv", "neighbours.parquet", "generated.parquet", "patients.csv",
           "summary.json")
REPORT, FILES, MARK = "report.html", "report_files", ".written-by-fpindex"
GENERATOR = "fpindex report"
EVALUATION = "evaluation.json"


def _marker(out: Path) -> dict[str, Any] | None:
    m = read_json(out / MARKER)
    return m if isinstance(m, dict) and m.get("generator") == "fpindex" and isinstance(m.get("files"), dict) \
        else None


def _ours_without_a_run(out: Path, name: str) -> bool:
    """What an audit may leave in OUT before its first run is committed (a kill, a failure after the build):
    its temporaries and OUT/index, each recognised by fpindex's own record, never by its name alone."""
    from ..index.store import is_index_dir

    from ..locks import LOCK_SUFFIX

    return name.endswith((TMP, LOCK_SUFFIX)) or (name == "index" and is_index_dir(out / name))


def check_folder(out: str | Path) -> None:
    """Refuse an OUT that is not fpindex's to write into: a link, a file, or a folder holding anything without
    fpindex's record of a run in it (OUT/fpindex-run.json): the real images, or the user's own predictions.csv
    and summary.json, which a name alone cannot tell from fpindex's. Cheap, so callers run it before any work."""
    out = Path(out)
    refuse_special(out, "folder")
    if not out.exists() or _marker(out) is not None:
        return
    foreign = sorted(n for n in os.listdir(out) if not _ours_without_a_run(out, n))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise FpindexError(f"output folder {shown(out)} holds files fpindex did not write ({shown(foreign[0])}"
                           f"{more}) and no {MARKER} (fpindex's record of a run); refusing to write into it: "
                           "choose a new or empty --out")
    for name in OUTPUTS:
        refuse_special(out / name)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]


def stage(out: Path, name: str) -> Path:
    """A new empty temporary file beside OUT/name, to be committed in its place."""
    refuse_special(out / name)
    tmp = out / temp_name(out / name, TMP)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise WriteError(out / name, reason(e)) from None
    return tmp


def commit(out: Path, run_id: str, staged: dict[str, Path]) -> None:
    """Put the complete staged files in place as one run (see the module's docstring)."""
    files = {name: {"sha256": sha256_file(tmp), "staged": tmp.name} for name, tmp in staged.items()}
    write_json_atomic(out / MARKER, {"generator": "fpindex", "version": __version__, "run_id": run_id,
                                     "state": "committing", "files": files})
    _finish(out, _marker(out))


def _finish(out: Path, marker: dict[str, Any]) -> None:
    try:
        for i, (name, f) in enumerate(marker["files"].items()):
            if (out / f["staged"]).exists():
                if i == 1:
                    pause_for_tests("rename")     # one file of the new run in place, the others still the old run's
                os.replace(out / f["staged"], out / name)
    except OSError as e:
        raise WriteError(out, reason(e)) from None
    _drop_derived(out)
    write_json_atomic(out / MARKER, {**marker, "state": "complete", "finished": datetime.now(timezone.utc)
                                     .isoformat(timespec="seconds"),
                                     "files": {n: {"sha256": f["sha256"]} for n, f in marker["files"].items()}})


def _drop_derived(out: Path) -> None:
    """Remove the report and evaluation an older run left (only those fpindex wrote)."""
    import shutil

    page, files, ev = out / REPORT, out / FILES, out / EVALUATION
    if page.is_file() and not page.is_symlink() and f'content="{GENERATOR}'.encode() in page.read_bytes()[:4096]:
        page.unlink()
    if files.is_dir() and not files.is_symlink() and (files / MARK).is_file():
        shutil.rmtree(files)
    old = read_json(ev) if ev.is_file() and not ev.is_symlink() else None
    if isinstance(old, dict) and {"method", "all_used", "all_not_used"} <= set(old):
        ev.unlink()


def recover(out: str | Path) -> None:
    """Finish a commit a kill cut short (every staged file is still there or already in place); remove the
    temporaries of dead processes."""
    out = Path(out)
    m = _marker(out)
    if m is not None and m.get("state") == "committing":
        ready = all((out / f.get("staged", "")).is_file() or
                    ((out / n).is_file() and sha256_file(out / n) == f.get("sha256"))
                    for n, f in m["files"].items())
        if ready:
            _finish(out, m)
    clean_temps(out)
    from ..locks import clear_stale

    clear_stale(out)
    clear_stale(out / "index")


def verify(out: Path, summary: dict[str, Any]) -> None:
    """The files in OUT are one complete run's, unchanged since; else one FpindexError saying what is wrong."""
    m = _marker(out)
    again = "run the audit again"
    if m is None:
        raise FpindexError(f"{shown(out / MARKER)}: missing or not fpindex's, so nothing says these outputs are "
                           f"one complete audit's; {again}")
    if m.get("state") != "complete":
        raise FpindexError(f"{shown(out)}: the audit writing run {m.get('run_id')} was interrupted, its outputs are "
                           f"incomplete; {again}")
    if summary.get("run_id") != m.get("run_id"):
        raise FpindexError(f"{shown(out / 'summary.json')} is from run {summary.get('run_id')} but {MARKER} from run "
                           f"{m.get('run_id')}: outputs of two runs are mixed; {again}")
    for name, f in m["files"].items():
        p = out / name
        if not p.is_file() or sha256_file(p) != f.get("sha256"):
            raise FpindexError(f"{shown(p)} is not the file run {m['run_id']} wrote (missing or changed since): "
                               f"outputs of two runs may be mixed; {again}")
