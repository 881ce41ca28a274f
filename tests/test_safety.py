"""Writes: fpindex replaces only what it recognises as its own, swaps whole, keeps the umask, and every failure
is one line naming the path (docs/reliability.md, "Writes, swaps and interruptions")."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fpindex import audit, build_index
from fpindex.cli import main
from fpindex.decide import Decision, Verdict
from fpindex.errors import FpindexError
from fpindex.index import IndexStore
from fpindex.report.schema import Summary
from fpindex.report import AuditResult
from fpindex.report.html import read_outputs
from fpindex.report.outputs import MARKER
from fpindex.safeio import (OLD, TMP, WriteError, atomic_dir, atomic_path, recover_dir, same_json_keys, swap_in,
                            write_json_atomic)
from fpindex.search import Neighbours
from fpindex.utils import Timings

ROOT = Path(__file__).resolve().parent.parent


def small_store(n: int = 50, dim: int = 16) -> IndexStore:
    s = IndexStore.create("Flat", dim, {"model": "cnn", "weights": "random", "weights_id": "random:seed=0",
                                        "enhance": ["none"], "image_size": 64, "seed": 0, "dim": dim})
    v = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    s.add(v / np.linalg.norm(v, axis=1, keepdims=True),
          pa.table({"root": ["/g"] * n, "path": [f"{i}.png" for i in range(n)],
                    "sha256": [f"{i:064x}" for i in range(n)], "bytes": [1] * n}))
    return s


def small_result(n: int = 3) -> AuditResult:
    decision = Decision(score=np.linspace(0, 1, n), label=np.arange(n) % 2, method="fixed",
                        verdict=Verdict(leakage=None, alpha=0.05))
    nb = Neighbours(ids=np.zeros((n, 1), np.int64), cosine=np.ones((n, 1), np.float32))
    summary = Summary.from_dict({"decision": {"method": "fixed"}})
    return AuditResult.of([f"r{i}.png" for i in range(n)], decision, nb, {}, np.array(["g.png"] * n, dtype=object),
                          summary, Timings())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fpindex", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- only fpindex's own paths are replaced -------------------------------------------------------------

@pytest.mark.parametrize("case", ["real_folder", "documents", "plain_file", "foreign_manifest", "link_to_index"])
def test_an_index_target_that_is_not_an_fpindex_index_is_never_replaced(leak, helpers, tmp_path, case):
    target = tmp_path / "target"
    if case == "real_folder":
        shutil.copytree(leak.real, target)
    elif case == "documents":
        target.mkdir()
        (target / "letter.txt").write_text("keep me")
    elif case == "plain_file":
        target.write_text("keep me")
    elif case == "foreign_manifest":             # a folder that happens to hold a manifest.json of its own
        target.mkdir()
        (target / "manifest.json").write_text(json.dumps({"name": "my web app"}))
    else:
        small_store().save(tmp_path / "real_index")
        target.symlink_to(tmp_path / "real_index")
    before = snapshot(tmp_path)
    message = {"real_folder": r"exists and is not an fpindex index \(no manifest\.json\); refusing to replace it",
               "documents": r"exists and is not an fpindex index \(no manifest\.json\)",
               "plain_file": r"is a file, not a folder fpindex wrote; refusing to replace it",
               "foreign_manifest": r"exists and is not an fpindex index \(no valid fpindex manifest\.json\)",
               "link_to_index": r"is a symbolic link; fpindex does not write through links"}[case]
    with pytest.raises(FpindexError, match=rf"^{re.escape(str(target))} {message}"):
        build_index(leak.generated, target, helpers.CFG, overwrite=True)
    if case == "real_folder":                    # the case: audit --index <the real images> --overwrite
        with pytest.raises(FpindexError, match=message):
            audit(leak.generated, leak.real, config=helpers.CFG, out=tmp_path / "o", index_dir=target, overwrite=True)
    assert snapshot(tmp_path) == before and target.is_symlink() == (case == "link_to_index")


@pytest.mark.parametrize("case", ["link", "foreign_json", "text", "device", "folder"])
def test_a_single_file_output_replaces_only_an_earlier_one(monkeypatch, capsys, tmp_path, case):
    (tmp_path / "p.csv").write_text("image,score,label\na.png,0.9,1\nb.png,0.1,0\n")
    (tmp_path / "l.csv").write_text("image,label\na.png,1\nb.png,0\n")
    (tmp_path / "mine.txt").write_text("keep me")
    save = {"link": tmp_path / "link.json", "foreign_json": tmp_path / "conf.json", "text": tmp_path / "mine.txt",
            "device": Path("/dev/null"), "folder": tmp_path / "dir"}[case]
    if case == "link":
        save.symlink_to(tmp_path / "mine.txt")
    elif case == "foreign_json":
        save.write_text(json.dumps({"theme": "dark"}))
    elif case == "folder":
        save.mkdir()
    before = snapshot(tmp_path)
    code, err = run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"),
                         "--save", str(save))
    message = {"link": "is a symbolic link", "foreign_json": "exists and was not written by fpindex",
               "text": "exists and was not written by fpindex", "device": "is a device or other special file",
               "folder": "is a folder, not a file fpindex wrote"}[case]
    assert code == 2 and err.startswith(f"fpindex: error: {save} {message}")
    assert len(err.splitlines()) == 1 and snapshot(tmp_path) == before and save.is_symlink() == (case == "link")
    ok = tmp_path / "eval.json"                  # its own earlier result is replaced
    for _ in range(2):
        assert run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "--json",
                        "--save", str(ok))[0] in (0, None)
    assert json.loads(ok.read_text())["n"] == 2


@pytest.mark.parametrize("case", ["file", "images", "link", "own_outputs"])
def test_an_output_folder_that_is_not_fpindex_s_is_refused_before_any_work(leak, helpers, tmp_path, case):
    """A folder is fpindex's by the record of a run in it (fpindex-run.json), not by its file names: the user's
    own predictions.csv and summary.json, without that record, are never replaced (they once were)."""
    out = tmp_path / "out"
    if case == "file":
        out.write_text("keep me")
    elif case == "images":
        shutil.copytree(leak.real, out)
    elif case == "own_outputs":
        out.mkdir()
        (out / "predictions.csv").write_text("image,score\nmine.png,0.5\n")
        (out / "summary.json").write_text('{"mine": true}')
    else:
        (tmp_path / "elsewhere").mkdir()
        out.symlink_to(tmp_path / "elsewhere")
    before = snapshot(tmp_path)
    message = {"file": r"is a file, not a folder", "images": r"^output folder .* holds files fpindex did not write "
               r"\(real_\d+\.png and \d+ more\) and no fpindex-run\.json \(fpindex's record of a run\); refusing to "
               r"write into it", "link": r"is a symbolic link",
               "own_outputs": r"^output folder .* holds files fpindex did not write \(predictions\.csv and 1 more\) "
                              r"and no fpindex-run\.json"}[case]
    with pytest.raises(FpindexError, match=message):
        audit(leak.generated, leak.real, config=helpers.CFG, out=out)
    assert snapshot(tmp_path) == before and not (tmp_path / "elsewhere" / "index").exists()


# ---- outputs of two runs are never read together ----------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("summary_of_another_run", r"summary\.json is from run other but fpindex-run\.json from run .*: outputs of "
                               r"two runs are mixed"),
    ("predictions_changed", r"predictions\.csv is not the file run .* wrote \(missing or changed since\)"),
    ("no_marker", r"fpindex-run\.json: missing or not fpindex's"),
    ("interrupted", r"the audit writing run .* was interrupted, its outputs are incomplete"),
])
def test_mixed_or_incomplete_outputs_are_refused(tmp_path, case, message):
    out = tmp_path / "out"
    small_result().save(out)
    read_outputs(out)
    if case == "summary_of_another_run":
        s = json.loads((out / "summary.json").read_text())
        (out / "summary.json").write_text(json.dumps({**s, "run_id": "other"}))
    elif case == "predictions_changed":
        (out / "predictions.csv").write_text("image,score,label,p_value\nr0.png,1.0,1,\n")
    elif case == "no_marker":
        (out / MARKER).unlink()
    else:                                          # committed, but a staged file is gone: nothing to finish
        m = json.loads((out / MARKER).read_text())
        m["state"] = "committing"
        m["files"] = {n: {**f, "staged": ".gone"} for n, f in m["files"].items()}
        m["files"]["predictions.csv"]["sha256"] = "0" * 64
        (out / MARKER).write_text(json.dumps(m))
    with pytest.raises(FpindexError, match=message):
        read_outputs(out)
    if case == "no_marker":                        # without fpindex's record the files are not recognisably its
        with pytest.raises(FpindexError, match=r"holds files fpindex did not write .* and no fpindex-run\.json"):
            small_result().save(out)
        return
    small_result().save(out)                       # the next save makes the folder whole again
    assert read_outputs(out).summary["run_id"] == json.loads((out / MARKER).read_text())["run_id"]


def test_a_new_run_removes_the_report_and_evaluation_of_the_old_one(tmp_path):
    out = tmp_path / "out"
    small_result().save(out)
    (out / "report.html").write_text('<meta name="generator" content="fpindex report 0.1.0">')
    (out / "report_files").mkdir()
    (out / "report_files" / ".written-by-fpindex").write_text("")
    (out / "evaluation.json").write_text(json.dumps({"n": 3, "method": {}, "all_used": {}, "all_not_used": {}}))
    small_result().save(out)
    assert sorted(os.listdir(out)) == [MARKER, "generated.parquet", "neighbours.parquet", "predictions.csv",
                                       "submission.csv", "summary.json"]
    (out / "report.html").write_text("<html>my notes</html>")      # not fpindex's: kept
    small_result().save(out)
    assert (out / "report.html").read_text() == "<html>my notes</html>"


# ---- swaps -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exchange", [True, False])
def test_a_folder_swap_replaces_whole_and_leaves_no_temporaries(tmp_path, exchange):
    d = tmp_path / "d"
    d.mkdir()
    (d / "old").write_text("1")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new").write_text("2")
    swap_in(tmp_path / "new", d, exchange=exchange)
    assert os.listdir(d) == ["new"] and os.listdir(tmp_path) == ["d"]


def test_the_next_run_finishes_a_swap_a_kill_cut_short(tmp_path):
    idx = small_store().save(tmp_path / "idx")
    pid = dead_pid()
    # What the rename-aside swap leaves when killed between its two renames: the index aside, nothing at idx.
    os.rename(idx, tmp_path / f".idx.{pid}.abcd1234{OLD}")
    (tmp_path / f".idx.{pid}.ef567890{TMP}").mkdir()            # and the new one it was about to move in
    (tmp_path / f".idx.{os.getpid()}.00000000{TMP}").mkdir()     # a live process's temporary: not touched
    (tmp_path / ".idx.notes.tmp").write_text("not fpindex's")     # another name altogether: not touched
    assert IndexStore.load(idx).ntotal == 50
    assert sorted(os.listdir(tmp_path)) == sorted(["idx", f".idx.{os.getpid()}.00000000{TMP}", ".idx.notes.tmp"])
    os.rename(idx, tmp_path / f".idx.{pid}.abcd1234{OLD}")       # once more, now with a newer idx in place
    small_store(7).save(idx)
    recover_dir(idx)
    assert IndexStore.load(idx).ntotal == 7 and not any(n.endswith(OLD) for n in os.listdir(tmp_path))
    (tmp_path / f".e.json.{pid}.abcd1234{TMP}").write_text("{half")      # a file write a kill cut short
    write_json_atomic(tmp_path / "e.json", {})
    assert not any(n.startswith(".e.json") for n in os.listdir(tmp_path))


def test_links_and_special_files_at_the_destination_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FpindexError, match=r"link is a symbolic link; fpindex does not write through links"):
        with atomic_dir(tmp_path / "link"):
            pass
    with pytest.raises(FpindexError, match=r"link is a symbolic link"):
        small_store().save(tmp_path / "link")
    (tmp_path / "flink").symlink_to(tmp_path / "real" / "keep")
    with pytest.raises(FpindexError, match=r"flink is a symbolic link"):
        write_json_atomic(tmp_path / "flink", {})
    with pytest.raises(FpindexError, match=r"^/dev/null is a device or other special file"):
        with atomic_path("/dev/null"):
            pass
    assert (tmp_path / "real" / "keep").read_text() == "keep" and os.listdir(tmp_path / "real") == ["keep"]


# ---- modes, errors, names --------------------------------------------------------------------------------

def test_new_files_and_folders_keep_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "a.json", {})
        small_store().save(tmp_path / "idx")
        small_result().save(tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "a.json", *tmp_path.glob("*/*")]}
    folders = {tmp_path / "idx", tmp_path / "out"}
    assert {f.stat().st_mode & 0o777 for f in folders} == {0o750}
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("case", ["not_a_folder", "name_too_long"])
def test_a_failed_write_is_one_line_naming_the_path(tmp_path, case):
    (tmp_path / "file").write_text("x")
    where = tmp_path / "file" / "out" if case == "not_a_folder" else tmp_path / ("n" * 300)
    reason = "Not a directory" if case == "not_a_folder" else "File name too long"
    for write in (lambda p: write_json_atomic(p / "x.json" if case == "not_a_folder" else p, {}),
                  lambda p: small_store().save(p), lambda p: small_result().save(p)):
        with pytest.raises(WriteError, match=rf"^cannot write {re.escape(str(tmp_path))}/.*: {reason}$"):
            write(where)
    assert os.listdir(tmp_path) == ["file"]


def test_unusual_names_work_and_messages_stay_one_line(monkeypatch, capsys, tmp_path):
    long = tmp_path / ("x" * 250 + ".json")         # valid; its temporary's name must be too
    write_json_atomic(long, {"a": 1})
    small_store().save(tmp_path / ("i" * 250))
    odd = tmp_path / "two\nlines é.json"
    write_json_atomic(odd, {"a": 1}, owned=same_json_keys({"a": 1}))
    assert json.loads(odd.read_text()) == {"a": 1} and len(os.listdir(tmp_path)) == 3
    odd_link = tmp_path / "odd\nlink"
    odd_link.symlink_to(odd)
    (tmp_path / "p.csv").write_text("image,score,label\na.png,0.9,1\nb.png,0.1,0\n")
    (tmp_path / "l.csv").write_text("image,label\na.png,1\nb.png,0\n")
    code, err = run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"),
                         "--save", str(odd_link))
    assert code == 2 and len(err.splitlines()) == 1
    with pytest.raises(FpindexError, match=r"odd\\nlink is a symbolic link"):
        write_json_atomic(odd_link, {})


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_old_file(monkeypatch, capsys, tmp_path):
    """A file-size limit stands in for a full disk (as root, nothing else makes a write fail this honestly):
    the write fails part way, with EFBIG where a full disk gives ENOSPC, through the same path."""
    (tmp_path / "p.csv").write_text("image,score,label\n" + "".join(f"a{i}.png,0.{i},1\n" for i in range(9)))
    (tmp_path / "l.csv").write_text("image,label\n" + "".join(f"a{i}.png,{i % 2}\n" for i in range(9)))
    run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "--save",
             str(tmp_path / "eval.json"))
    before = (tmp_path / "eval.json").read_text()
    small_store().save(tmp_path / "idx")
    index_before = snapshot(tmp_path / "idx")
    code = ("import resource, signal, sys; from tests.test_safety import small_store; from fpindex.cli import main; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
            "from fpindex.errors import FpindexError\ntry:\n"
            f"    small_store().save({str(tmp_path / 'idx')!r})\nexcept FpindexError as e:\n    print(e)\n"
            "sys.argv = "
            f"['fpindex', 'evaluate', {str(tmp_path / 'p.csv')!r}, {str(tmp_path / 'l.csv')!r}, '--save', "
            f"{str(tmp_path / 'eval.json')!r}]; main()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"fpindex: error: cannot write {tmp_path / 'eval.json'}: File too large"]
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "idx", "l.csv", "p.csv"]
    assert (tmp_path / "eval.json").read_text() == before
    assert proc.stdout.splitlines() == [f"cannot write {tmp_path / 'idx'}: File too large"]     # FAISS's write
    assert snapshot(tmp_path / "idx") == index_before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so a read-only folder cannot make this fail")
def test_a_folder_without_write_permission_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"ro/x\.json: Permission denied$"):
            write_json_atomic(tmp_path / "ro" / "x.json", {})
    finally:
        (tmp_path / "ro").chmod(0o700)
