"""What a new user reads: --help (one screen, then --help-all), the words of the options, warnings, and what
--json prints when a command fails."""

from __future__ import annotations

import json
import re
import sys

import pytest
from typer.testing import CliRunner

from fpindex.cli import app, main


def help_text(*args: str) -> str:
    r = CliRunner().invoke(app, [*args], terminal_width=80, env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return r.output


def flat(text: str) -> str:
    """The help as one line of words: box drawing and the wrapping of table cells removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fpindex", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


def test_audit_help_fits_one_screen_and_help_all_lists_the_rest():
    short, full = help_text("audit", "--help"), flat(help_text("audit", "--help-all"))
    assert len(short.splitlines()) <= 60, len(short.splitlines())          # it was 369 lines at 80 columns
    for common in ("--generated", "--real", "--out", "--used", "--not-used", "--reference", "--decision",
                   "--model", "--enhance", "--report", "--json", "--quiet"):
        assert common in short, common
    assert "--max-pixels" not in short and "--help-all" in short
    for rare in ("--max-pixels", "--window", "--axis", "--canaries", "--alpha", "--engine", "--train-steps"):
        assert rare in full, rare
    assert "calibrated: every evidence feature fused" in full                # every choice explained


def test_help_shows_text_as_written_flags_without_values_and_arguments_by_name():
    full = flat(help_text("audit", "--help-all"))
    assert "pip install 'fpindex[ray]'" in full                              # rich markup once ate "[ray]"
    assert "<bool>" not in full and "<bool>" not in help_text("demo", "--help")
    usage = help_text("query", "--help").splitlines()[1]
    assert re.search(r"query \[OPTIONS\] REAL\s*$", usage) and "{" not in usage
    assert re.search(r"report \[OPTIONS\] OUT\s*$", help_text("report", "--help").splitlines()[1])
    assert "<bool>" not in help_text("shard", "train", "--help")


def test_option_words_say_what_they_do():
    full = flat(help_text("audit", "--help-all"))
    assert "No progress bars or report" not in full and "the report included, are written" in full
    alpha = re.search(r"--alpha .*?\[default: 0\.05\]", full)[0]
    assert "verdict" in alpha and "pu" in alpha and "canary" in alpha
    assert "128–256" not in full
    size = re.search(r"--image-size .*?Default: the model's \((.*?)\)", full)[1]   # read from the registry
    assert "cnn: 64" in size and "pixels: 128" in size and "resnet50: 224" in size


def test_report_with_labels_warns_about_names_that_do_not_match(monkeypatch, capsys, leak, tmp_path):
    """A typo in a label file's names: `report --labels` says so, as `evaluate` does (it once said nothing)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
    rows = leak.labels.read_text().splitlines()
    rows[1] = rows[1].replace("real_", "rael_")                              # one name mistyped
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    code, cap = run_main(monkeypatch, capsys, "report", str(out), "--labels", str(labels), "--report-top", "1")
    assert code == 0
    assert "warning: 1 predictions without a label, 1 labels without a prediction" in cap.err
    code, cap = run_main(monkeypatch, capsys, "evaluate", str(out / "predictions.csv"), str(labels))
    assert "warning: 1 predictions without a label, 1 labels without a prediction" in cap.err


def test_json_failure_prints_the_error_as_json(monkeypatch, capsys, tmp_path):
    (tmp_path / "p.csv").write_text("image,score,label\na.png,0.5,1\n")
    (tmp_path / "l.csv").write_text("image,label\na.png,perhaps\n")
    code, cap = run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "--json")
    assert code == 2 and cap.err.count("\n") == 1 and "Traceback" not in cap.err
    assert json.loads(cap.out) == {"error": f"{tmp_path}/l.csv:2: label 'perhaps' is not 0/1 (or used/not_used)",
                                   "exit_code": 2}
    code, cap = run_main(monkeypatch, capsys, "audit", "-g", str(tmp_path / "nope"), "-r", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "out"), "--json")
    assert code == 2 and json.loads(cap.out)["error"].startswith("real-image folder")
    code, cap = run_main(monkeypatch, capsys, "audit", "--json")                 # a usage error too
    assert code == 2 and "Missing option" in json.loads(cap.out)["error"]
    code, cap = run_main(monkeypatch, capsys, "evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"))
    assert code == 2 and cap.out == ""                                           # without --json: stderr only


@pytest.mark.slow
def test_a_file_that_is_not_an_image_is_not_called_an_unreadable_image(monkeypatch, capsys, scenario, tmp_path,
                                                                         helpers):
    import shutil

    real = tmp_path / "real"
    shutil.copytree(scenario / "test", real)
    (real / "readme.txt").write_text("notes")
    (real / "zz_broken.png").write_bytes(b"\x89PNG broken")
    code, cap = run_main(monkeypatch, capsys, "audit", "-g", str(scenario / "generated"), "-r", str(real),
                         "--out", str(tmp_path / "out"), "--weights", "random", "--decision", "fixed",
                         "--device", "cpu", "--quiet")
    assert code == 0, cap.err
    assert f"warning: skipped real file (not an image) {real}/readme.txt: unsupported file type .txt" in cap.err
    assert f"warning: skipped real unreadable image {real}/zz_broken.png: " in cap.err
    assert "unreadable" not in cap.err.split("readme.txt")[0]
