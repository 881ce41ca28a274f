"""Checks before the work, not after it, and the API's configs (issue 23): a refusal that can be known at the
start costs a second, writes nothing, and a setting the run cannot honour is said, not ignored."""

from __future__ import annotations

import sys

import pytest

import fpindex
from fpindex.config import AuditConfig, EmbedConfig
from fpindex.errors import FpindexError


def _folders(tmp_path, helpers, n=6):
    gen, real = tmp_path / "gen", tmp_path / "real"
    for i in range(n):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(20 + i))
        helpers.write_png(real / f"r{i}.png", helpers.smooth_image(20 + i if i < 2 else 80 + i))
    return gen, real


def test_report_over_the_users_report_is_refused_before_the_audit(tmp_path, helpers, monkeypatch, capsys):
    gen, real = _folders(tmp_path, helpers)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<html>my own notes</html>")
    code, err = helpers.run_main(monkeypatch, capsys, "audit", "-g", gen, "-r", real, "--out", out, "--report", "--quiet",
                     "--weights", "random", "--image-size", "32")
    assert code == 2 and len(err) == 1 and "report.html exists and was not written by fpindex" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]          # no OUT/index: nothing was built
    assert (out / "report.html").read_text() == "<html>my own notes</html>"


def test_index_dir_equal_to_out_is_refused_before_the_build(tmp_path, helpers):
    gen, real = _folders(tmp_path, helpers)
    out = tmp_path / "out"
    with pytest.raises(FpindexError, match=r"index_dir .*out is \(or holds\) the output folder"):
        fpindex.audit(gen, real, out=out, index_dir=out, config=helpers.CFG)
    with pytest.raises(FpindexError, match=r"is \(or holds\) the output folder"):
        fpindex.audit(gen, real, out=out / "sub", index_dir=out, config=helpers.CFG)
    assert not out.exists()


def test_canaries_that_cannot_be_planted_are_said(tmp_path, helpers, monkeypatch, capsys):
    gen, real = _folders(tmp_path, helpers)
    code, err = helpers.run_main(monkeypatch, capsys, "audit", "-g", gen, "-r", real, "--out", tmp_path / "out", "--quiet",
                     "--decision", "fixed", "--canaries", "5", "--weights", "random", "--image-size", "32")
    assert code == 0
    assert any(line.startswith("fpindex: warning: --canaries 5: no canaries planted: the fixed decision")
               for line in err), err


def test_configs_as_nested_mappings(tmp_path, helpers):
    assert AuditConfig(embed={"seed": 3}).embed == EmbedConfig(seed=3)
    assert AuditConfig.of(helpers.CFG.to_dict()) == helpers.CFG
    with pytest.raises(FpindexError, match=r"^unknown setting embed\.sed; known: "):
        AuditConfig(embed={"sed": 3})
    with pytest.raises(FpindexError, match=r"^config section embed: expected a EmbedConfig or a mapping, got int"):
        AuditConfig(embed=3)
    with pytest.raises(FpindexError, match=r"^config: expected an AuditConfig or a mapping, got str"):
        fpindex.build_index(tmp_path, config="fast")
    gen, _ = _folders(tmp_path, helpers, n=4)
    built = fpindex.build_index(gen, config=helpers.CFG.to_dict())
    assert built.ntotal == 4 and built.config == helpers.CFG
