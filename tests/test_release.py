"""The answers a data steward acts on: each generated image graded against the real images (generated.parquet),
`fpindex filter` (the generated set without its copies, in a new folder) and the release gate (--fail-on)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from fpindex import audit
from fpindex.errors import FpindexError
from fpindex.release import check_policy, filter_generated, release_gate
from fpindex.decide.replication import GRADES, KIND_GRADE
from fpindex.report.schema import GeneratedSummary, Summary


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content hash (folders: '')."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = ""
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def test_planted_copies_are_graded_beside_their_real_image(leak):
    """The leak's byte-exact copy is graded exact of its real image and the lightly moved copy (2°, 1 px,
    noise 0.02) a near copy at least; generated.parquet holds what AuditResult.generated holds, one row per
    generated image, and the levels say what they were calibrated on."""
    g = pd.read_parquet(leak.audit_out / "generated.parquet")
    assert g["generated_id"].is_unique and set(g["grade"]) <= {*GRADES, "not a copy"}
    by = g.set_index("relative")
    assert by.loc[leak.exact_copy, "grade"] == "exact" and by.loc[leak.exact_copy, "real"] == leak.exact_real
    assert by.loc[leak.moved_copy, "grade"] in ("exact", "near copy")
    assert by.loc[leak.moved_copy, "real"] == leak.moved_real
    summary = json.loads((leak.audit_out / "summary.json").read_text())
    assert summary["schema_version"] == 2 and summary["generated"]["graded"] == len(g)
    levels = summary["generated"]["levels"]
    assert levels["source"] == "planted copies of not-used images" and "known unused" in levels["null"]
    assert levels["features"] == ["ssim_aligned", "bandpass"]
    for f in levels["features"]:      # exact asks at least what a copy must pass
        assert levels["exact"][f] >= levels["floor"][f] > 0


def test_filter_withholds_the_copies_into_a_new_folder_and_touches_nothing_else(leak, helpers, tmp_path):
    """The filtered set is the generated folder minus the images graded a copy (withheld.csv says which and
    why); nothing outside the new folder changes (tree hashes); re-auditing the filtered set finds none of the
    withheld copies' content at rank 1 and no exact or near copy of their real images."""
    before = tree_hashes(leak.root), tree_hashes(leak.real.parent)
    released = tmp_path / "released"
    withheld = filter_generated(leak.generated, leak.audit_out, released)
    assert (tree_hashes(leak.root), tree_hashes(leak.real.parent)) == before
    listed = pd.read_csv(released / "withheld.csv")
    assert {leak.exact_copy, leak.moved_copy} <= set(listed["file"]) and len(listed) == len(withheld)
    assert all(listed["reason"].str.startswith("graded "))
    kept = {p.name for p in released.iterdir()} - {"withheld.csv"}
    assert kept == {p.name for p in leak.generated.iterdir()} - set(listed["file"])
    one = next(iter(kept))
    assert (released / one).read_bytes() == (leak.generated / one).read_bytes()

    again = audit(released, leak.real, used=leak.used, not_used=leak.not_used, config=helpers.CFG)
    gone = set(withheld["generated_sha256"])
    first = again.neighbours[again.neighbours["rank"] == 1]
    assert not gone & set(first["generated_sha256"])
    real = set(withheld.loc[withheld["folder"] == "real", "real"])
    close = again.generated[again.generated["grade"].isin(["exact", "near copy"])]
    assert not real & set(close["real"]), close


def test_filter_refuses_what_it_must_not_write_or_read(leak, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(FpindexError, match="exists; `fpindex filter` writes a new folder only"):
        filter_generated(leak.generated, leak.audit_out, existing)
    with pytest.raises(FpindexError, match="are one inside the other"):
        filter_generated(leak.generated, leak.audit_out, leak.generated / "out")
    with pytest.raises(FpindexError, match="is not the generated folder .* audited \\(none of its \\d+ graded images"):
        filter_generated(leak.real, leak.audit_out, tmp_path / "new")
    with pytest.raises(FpindexError, match="--grade 'copy': choose from exact, near copy, partial copy"):
        filter_generated(leak.generated, leak.audit_out, tmp_path / "new", ("copy",))
    moved = tmp_path / "moved"                    # the audited folder moved: recognised by content
    shutil.copytree(leak.generated, moved)
    (moved / leak.exact_copy).write_bytes(b"not the graded image")
    with pytest.raises(FpindexError, match=f"{leak.exact_copy} is missing or changed since the audit; audit again"):
        filter_generated(moved, leak.audit_out, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _summary(leakage, withhold=0):
    s = Summary.from_dict({"verdict": {"leakage": leakage, "alpha": 0.05}})
    s.generated = GeneratedSummary(graded=10, grades={"exact": withhold}, withhold=withhold, levels={})
    return s


def test_release_gate_policies():
    assert release_gate(_summary(True, 2), "never").passed
    gate = release_gate(_summary(False, 2), "copies")
    assert not gate.passed and gate.reason.startswith("2 generated images graded a copy of a real image (2 exact)")
    assert gate.as_dict()["exit_code"] == 3
    assert release_gate(_summary(True, 0), "copies").passed
    assert not release_gate(_summary(True, 0), "leakage").passed
    assert release_gate(_summary(False, 0), "leakage").passed
    assert not release_gate(_summary(None, 0), "leakage").passed          # not tested is no pass
    none = _summary(False)
    none.generated = None
    assert not release_gate(none, "copies").passed
    with pytest.raises(FpindexError, match="^--fail-on copies: the fixed decision tests no verdict"):
        check_policy("copies", "fixed")


def test_fail_on_copies_exits_3_with_one_line_and_the_same_in_json(leak, monkeypatch, capsys, tmp_path):
    from fpindex.cli import main

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["fpindex", "audit", "-g", str(leak.generated), "-r", str(leak.real), "-o",
                                      str(out), "--not-used", str(leak.not_used), "--used", str(leak.used),
                                      "--model", "cnn", "--weights", "random", "--image-size", "64", "--k", "3",
                                      "--factory", "Flat", "--quiet", "--json", "--fail-on", "copies"])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capsys.readouterr()
    assert e.value.code == 3
    [line] = [x for x in cap.err.splitlines() if x.startswith("fpindex:")]
    assert line.startswith("fpindex: release gate (--fail-on copies) failed: ") and "graded a copy" in line
    doc = json.loads(cap.out)
    assert doc["gate"] == {"policy": "copies", "passed": False, "reason": line.split("failed: ", 1)[1],
                           "exit_code": 3}
    assert (out / "generated.parquet").is_file()          # the audit's files are written whatever the gate says


def test_without_canaries_the_grades_plant_their_own_copies(leak, helpers):
    """--canaries 0: nothing is reported as canaries, but the grades still rest on planted copies of every kind
    (planted for them alone), and the fixed decision, which reads no copy feature, grades nothing."""
    r = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used,
              config=helpers.CFG.override(canaries={"n": 0}))
    assert r.summary.canaries is None and r.summary.generated is not None
    assert set(r.summary.generated.levels["planted"]) == set(KIND_GRADE)
    assert r.generated.set_index("relative").loc[leak.exact_copy, "grade"] == "exact"
    fixed = audit(leak.generated, leak.real, config=helpers.CFG.override(decide={"method": "fixed"}))
    assert fixed.generated is None and fixed.summary.generated is None and "generated" not in fixed.summary
