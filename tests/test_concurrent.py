"""Concurrent writers and readers (issue 23): one writer per folder, a second refused in one line before any
work; a reader that meets a swap in progress reads again instead of calling the index damaged."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

import fpindex
from fpindex.errors import FpindexError
from fpindex.index import IndexStore
from fpindex.locks import lock_path, writing


def _images(folder, helpers, seed, n=4):
    for i in range(n):
        helpers.write_png(folder / f"i{i}.png", helpers.smooth_image(seed + i))
    return folder


def test_a_second_writer_is_refused_in_one_line(tmp_path, helpers, monkeypatch, capsys):
    gen, real = _images(tmp_path / "gen", helpers, 0), _images(tmp_path / "real", helpers, 50)
    out, index = tmp_path / "out", tmp_path / "idx"
    with writing(out):                      # another run holds OUT
        with pytest.raises(FpindexError, match=rf"^output folder or index {out} is being written by another "
                                               rf"fpindex run \(pid {os.getpid()}\); wait"):
            fpindex.audit(gen, real, out=out, config=helpers.CFG)
        from fpindex.cli import main

        monkeypatch.setattr(sys, "argv", ["fpindex", "audit", "-g", str(gen), "-r", str(real), "--out", str(out),
                                          "--quiet"])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and "is being written by another fpindex run" in err[0]
    assert not out.exists()
    with writing(index):
        with pytest.raises(FpindexError, match=r"^index .*idx is being written by another fpindex run"):
            fpindex.build_index(gen, index, config=helpers.CFG)
    assert not index.exists()
    built = fpindex.build_index(gen, index, config=helpers.CFG)      # the lock is freed with its holder
    assert built.ntotal == 4 and not lock_path(index).exists()
    result = fpindex.audit(gen, real, out=out, config=helpers.CFG)   # OUT/.index.fpindex-lock is not foreign
    result = fpindex.audit(gen, real, out=out, config=helpers.CFG)
    assert len(result.predictions) == 4


def test_a_reader_meeting_a_swap_reads_again(tmp_path, helpers, monkeypatch):
    a = fpindex.build_index(_images(tmp_path / "ga", helpers, 0, 4), tmp_path / "idx", config=helpers.CFG)
    fpindex.build_index(_images(tmp_path / "gb", helpers, 9, 6), tmp_path / "new", config=helpers.CFG)
    assert a.ntotal == 4
    import fpindex.index.store as store

    real_check, calls = store.check_sealed, []

    def swap_midway(d, *args, **kw):         # a writer exchanges the folder after the manifest was read
        if not calls:
            calls.append(1)
            os.rename(tmp_path / "idx", tmp_path / "old")
            os.rename(tmp_path / "new", tmp_path / "idx")
            shutil.rmtree(tmp_path / "old")
            raise FpindexError(f"index {d}: checksum mismatch")
        return real_check(d, *args, **kw)
    monkeypatch.setattr(store, "check_sealed", swap_midway)
    assert IndexStore.load(tmp_path / "idx").ntotal == 6 and calls == [1]
    calls.append(2)
    monkeypatch.setattr(store, "check_sealed", lambda d, *a, **k: (_ for _ in ()).throw(FpindexError("damaged")))
    with pytest.raises(FpindexError, match="^damaged$"):         # real damage (no swap) is still refused
        IndexStore.load(tmp_path / "idx")
