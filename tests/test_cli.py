"""The command line: help, the main commands end to end, the demo, and error exits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fpindex import __version__
from fpindex.cli import app, main
from fpindex.config import AuditConfig, DecideConfig, EmbedConfig, EvidenceConfig, IndexConfig, RunConfig
from fpindex.errors import FpindexError
from fpindex.index import IndexStore
from fpindex.utils import STAGES

COMMANDS = ["build", "query", "audit", "evaluate", "demo"]


@pytest.fixture
def runner():
    return CliRunner()


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def fpindex_error(result, match: str):
    assert isinstance(result.exception, FpindexError), (result.exit_code, result.output, result.exception)
    assert re.search(match, str(result.exception)), str(result.exception)


# ---- help and version ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["-h"]] + [[c, "--help"] for c in COMMANDS])
def test_help(runner, args):
    r = ok(runner.invoke(app, args))
    assert "Usage:" in r.output
    if args[0] in COMMANDS:
        assert f"fpindex {args[0]}" in r.output
    else:
        assert all(c in r.output for c in COMMANDS)


def test_help_lists_registry_choices(runner):
    out = ok(runner.invoke(app, ["audit", "--help"])).output
    for name in ("pixels", "cnn", "resnet50", "gaussian", "laplacian", "hessian", "bilateral", "dog",
                 "calibrated", "reference", "fixed"):
        assert name in out


def test_version(runner):
    assert ok(runner.invoke(app, ["--version"])).output.strip() == f"fpindex {__version__}"


def test_bad_choice_is_a_usage_error(runner, tmp_path):
    r = runner.invoke(app, ["build", str(tmp_path), "--model", "vgg"])
    assert r.exit_code == 2
    assert re.search(r"Invalid value for '--model'.*'vgg' is not one of", r.output + r.stderr, re.S)


# ---- build, query, audit, evaluate on the small scenario ----------------------------------------------------

@pytest.mark.slow
def test_build_query_evaluate(runner, scenario, tmp_path):
    idx, out = tmp_path / "idx", tmp_path / "out"
    gen, test = str(scenario / "generated"), str(scenario / "test")
    r = ok(runner.invoke(app, ["build", gen, "--index", str(idx), "--image-size", "64", "--device", "cpu"]))
    n_gen = len(list((scenario / "generated").iterdir()))
    assert f"{n_gen} vectors ({n_gen} added" in r.stdout and "cnn" in r.stdout
    assert IndexStore.load(idx).ntotal == n_gen

    fpindex_error(runner.invoke(app, ["build", gen, "--index", str(idx)]),
                  rf"^index {re.escape(str(idx))} already exists; pass --add to append to it or --overwrite")
    fpindex_error(runner.invoke(app, ["build", gen, "--index", str(idx), "--add", "--overwrite"]),
                  r"^--add and --overwrite exclude each other$")
    r = ok(runner.invoke(app, ["build", gen, "--index", str(idx), "--add", "--quiet"]))
    assert r.stdout == "" and IndexStore.load(idx).ntotal == n_gen   # nothing new to add

    fpindex_error(runner.invoke(app, ["query", test, "--index", str(idx), "--out", str(out), "--model", "pixels"]),
                  r"^the index was built with model='cnn' but the query asks for model='pixels'")
    fpindex_error(runner.invoke(app, ["query", test, "--index", str(idx), "--out", str(out), "-e", "gaussian"]),
                  r"^the index was built with enhance=\['none'\] but the query asks for enhance=\['gaussian'\]")
    assert not out.exists()

    r = ok(runner.invoke(app, ["query", test, "--index", str(idx), "--out", str(out), "--k", "2",
                               "--model", "cnn", "--enhance", "none", "--decision", "fixed", "--verbose"]))
    assert "decision: fixed" in r.stdout and "timings (s):" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"predictions.csv", "submission.csv", "neighbours.parquet",
                                               "summary.json"}

    r = ok(runner.invoke(app, ["evaluate", str(out / "predictions.csv"), str(scenario / "test_labels.csv"),
                               "--json", "--save", str(tmp_path / "eval.json")]))
    result = json.loads(r.stdout)
    assert result["n"] == 12 and result["positives"] == 6 and result["missing_predictions"] == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    r = ok(runner.invoke(app, ["evaluate", str(out / "predictions.csv"), str(scenario / "test_labels.csv")]))
    assert "12 images matched (6 used)" in r.stdout and "| accuracy |" in r.stdout


@pytest.mark.slow
def test_build_default_index_location(runner, scenario, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(runner.invoke(app, ["build", str(scenario / "train" / "used"), "--image-size", "64", "-q"]))
    assert IndexStore.load(tmp_path / "indexes" / "used").ntotal == 6


def test_audit_pixels_with_stacked_enhancements_and_reference(runner, scenario, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "real").mkdir()
    for p in sorted((scenario / "test").iterdir())[:4]:
        (tmp_path / "real" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "real" / "zz_broken.png").write_bytes(b"not an image")
    r = ok(runner.invoke(app, ["audit", "--generated", str(scenario / "generated"), "--real", str(tmp_path / "real"),
                               "--out", str(out), "--model", "pixels", "--enhance", "gaussian",
                               "--enhance", "dog,gaussian", "--image-size", "64", "--k", "2",
                               "--reference", str(scenario / "train" / "not_used")]))
    assert "decision: pu" in r.stdout                   # no labels: auto fuses against the reference
    assert "warning: skipped real unreadable image" in r.stderr and "zz_broken.png" in r.stderr
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert manifest["embedder"]["enhance"] == ["gaussian", "dog"]
    assert manifest["embedder"]["model"] == "pixels" and manifest["dim"] == 2 * 32 * 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["real"] == {"files": 5, "embedded": 4, "bad": 1}
    assert len((out / "submission.csv").read_text().splitlines()) == 4


# ---- demo ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo(runner, tmp_path, monkeypatch):
    """The quick demo (--small: 20 + 20 labelled, 40 test and 120 generated images, 10 training steps): what it
    writes, what it prints, and a sane result. Measured with seeds 0, 1 and 2: accuracy, kappa and AUC 1.000."""
    out = tmp_path / "demo"
    r = ok(runner.invoke(app, ["demo", "--small", "--out", str(out)]))
    res = out / "audit"
    real = sorted(p.name for p in (out / "data" / "test").iterdir())
    lines = r.stdout.splitlines()
    assert lines[0] == (f"demo scenario written to {out / 'data'} (generated/, train/used, train/not_used, test/, "
                        "test_labels.csv)")
    assert "decision: calibrated → " in r.stdout
    assert re.search(r"calibration \(\d-fold CV on the labelled images\)", r.stdout)   # folds: sibling groups
    assert (f"wrote {res}/predictions.csv, submission.csv, neighbours.parquet, generated.parquet, patients.csv, "
            "summary.json") in lines
    table = lines[lines.index("evaluation on test/ (labels never seen by the audit):") + 1:]
    assert table[0] == "| metric | fpindex | all used | all not used |" and table[-1].startswith("| ")

    with open(res / "predictions.csv") as f:
        header = f.readline().strip()
    assert header == "image,score,label,p_value,flagged_by"

    sub = (res / "submission.csv").read_text().splitlines()
    assert len(sub) == len(real) == 40
    assert all(re.fullmatch(r"real_\d{5},[01]", line) for line in sub)
    assert [line.split(",")[0] for line in sub] == [Path(n).stem for n in real]

    import pyarrow.parquet as pq

    nb = pq.read_table(res / "neighbours.parquet")
    assert nb.num_rows == 40 * EvidenceConfig().k
    assert set(nb.column_names) >= {"image", "rank", "generated", "cosine", "ssim", "ssim_aligned", "jaccard"}

    summary = json.loads((res / "summary.json").read_text())
    assert set(summary["timings"]) == {"load", "enhance", "embed", "index", "search", "rerank", "decide", "write",
                                       "total"} == set(STAGES) | {"total"}
    assert summary["decision"]["method"] == "calibrated"
    assert summary["counts"]["generated_indexed"] == 120
    assert summary["settings"]["embedder"]["training"]["steps"] == 10
    evaluation = json.loads((res / "evaluation.json").read_text())
    assert evaluation["n"] == 40 and evaluation["positives"] == 20
    m = evaluation["method"]
    assert m["auc"] > 0.95 and m["kappa"] > 0.8 and m["accuracy"] > 0.9
    assert f"| kappa | {m['kappa']:.3f} | " in [row[:len("| kappa | 0.000 | ")] for row in table]   # = evaluation.json

    # --quiet prints nothing (the same result, handed back without a second run).
    import fpindex.demo

    calls = []
    from fpindex.report.schema import Summary

    real_result = fpindex.demo.DemoResult(data=out / "data", results=res, summary=Summary.from_dict(summary),
                                          evaluation=evaluation)
    monkeypatch.setattr(fpindex.demo, "run_demo", lambda *a, **kw: calls.append((a, kw)) or real_result)
    r = ok(runner.invoke(app, ["demo", "--out", str(tmp_path / "q"), "--seed", "3", "--quiet"]))
    assert r.stdout == "" and r.stderr == ""
    (args, kw), = calls
    assert args == (tmp_path / "q",) and kw["seed"] == 3 and kw["small"] is False and kw["run"].quiet


def test_demo_without_small_keeps_the_full_scenario_and_training(tmp_path, monkeypatch):
    """`fpindex demo` (make demo, the README's quick start) is unchanged: the full scenario, the default
    training steps, calibration on train/. Checked on the arguments, without running the 10 s demo."""
    import fpindex.api as api
    import fpindex.demo as demo

    seen = {}

    class Stop(Exception):
        pass

    def audit(generated, real, *, config, out, **kw):
        seen.update(generated=generated, real=real, out=out, config=config, **kw)
        raise Stop

    monkeypatch.setattr(demo, "make_scenario", lambda root, seed, size: seen.update(seed=seed, size=size) or root)
    monkeypatch.setattr(api, "audit", audit)
    for small, size, steps in [(False, demo.ScenarioSize(), None), (True, demo.SMALL_SIZE, 10)]:
        with pytest.raises(Stop):
            demo.run_demo(tmp_path, seed=4, small=small)
        data = tmp_path / "data"
        assert seen["size"] == size and seen["seed"] == 4
        cfg = seen["config"]
        assert cfg.embed == EmbedConfig(seed=4, train_steps=steps) and cfg.index == IndexConfig()
        assert cfg.evidence == EvidenceConfig() and cfg.decide == DecideConfig(seed=4)   # the old QueryConfig
        assert cfg == AuditConfig(embed=EmbedConfig(seed=4, train_steps=steps), decide=DecideConfig(seed=4),
                                  run=RunConfig())
        assert (seen["generated"], seen["real"], seen["out"]) == (data / "generated", data / "test", tmp_path / "audit")
        assert (seen["used"], seen["not_used"]) == (data / "train" / "used", data / "train" / "not_used")
    assert demo.ScenarioSize() == demo.ScenarioSize(n_train_each=20, n_test_each=40, n_generated=240)


# ---- error exits: one line on stderr, exit code 2, no traceback -------------------------------------------

def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fpindex", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("case", ["audit_missing", "query_missing_index", "evaluate_bad_label", "build_no_images"])
def test_main_turns_errors_into_one_line(monkeypatch, capsys, tmp_path, case):
    (tmp_path / "empty").mkdir()
    t = re.escape(str(tmp_path))
    if case == "audit_missing":
        args = ["audit", "--generated", str(tmp_path / "nope"), "--real", str(tmp_path / "nope2"),
                "--out", str(tmp_path / "out")]
        expected = rf"real-image folder {t}/nope2 does not exist"     # checked before the build starts
    elif case == "query_missing_index":
        args = ["query", str(tmp_path), "--index", str(tmp_path / "idx"), "--out", str(tmp_path / "out")]
        expected = rf"index {t}/idx does not exist \(build one with `fpindex build`\)"
    elif case == "evaluate_bad_label":
        (tmp_path / "p.csv").write_text("image,score,label\na.png,0.5,1\n")
        (tmp_path / "l.csv").write_text("image,label\na.png,perhaps\n")
        args = ["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv")]
        expected = rf"{t}/l.csv:2: label 'perhaps' is not 0/1 \(or used/not_used\)"
    else:
        args = ["build", str(tmp_path / "empty"), "--index", str(tmp_path / "idx")]
        expected = rf"generated-image folder {t}/empty holds no images \("
    code, cap = run_main(monkeypatch, capsys, *args)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"fpindex: error: {expected}", lines[0]), lines
    assert "Traceback" not in cap.err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_subprocess_missing_folder_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fpindex.cli", "audit", "--generated", str(tmp_path / "gen"),
                           "--real", str(tmp_path / "real"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"fpindex: error: real-image folder {tmp_path / 'real'} does not exist"]
    assert proc.stdout == ""


def test_device_cuda_moves_the_model_and_lets_faiss_follow_only_when_it_can():
    from fpindex.cli.index_commands import _index_cfg
    from fpindex.cli.options import FIELDS, Device, _cuda_means_auto as _faiss_device

    assert _faiss_device(Device("cuda")) == "auto"       # faiss-cpu: index stays on the CPU, no refusal
    assert _faiss_device(Device("cpu")) == "cpu" and _faiss_device("auto") == "auto"
    assert _index_cfg("auto", None, None, None, 0.95, _faiss_device(Device("cuda")), 0).device == "auto"
    # --device sets where the model runs as given, and the index's device through the rule above.
    assert {(section, name, convert(Device("cuda"))) for section, name, convert in FIELDS["device"]} == \
        {("embed", "device", "cuda"), ("index", "device", "auto")}


# ---- --json, --report and `fpindex report` -------------------------------------------------------------

FAST = ["--model", "cnn", "--weights", "random", "--image-size", "64", "--index-type", "Flat", "--k", "3",
        "--device", "cpu"]


@pytest.mark.slow
def test_audit_and_query_json_print_one_document_and_write_the_report(runner, scenario, tmp_path):
    out, qout = tmp_path / "out", tmp_path / "qout"
    r = ok(runner.invoke(app, ["audit", "--generated", str(scenario / "generated"), "--real", str(scenario / "test"),
                               "--used", str(scenario / "train" / "used"), "--not-used",
                               str(scenario / "train" / "not_used"), "--out", str(out), "--json", "--report",
                               "--report-top", "3", *FAST]))
    summary = json.loads(r.stdout)                         # the whole of stdout is one JSON document
    assert summary.pop("gate") == {"policy": "never", "passed": True, "exit_code": 0,
                                   "reason": "no release policy (--fail-on never)"}   # the release gate's answer
    assert summary == json.loads((out / "summary.json").read_text())
    assert "verdict:" not in r.stdout and f"report: {out / 'report.html'}" in r.stderr
    assert (out / "report.html").read_text().count('class="real"') == 3

    r = ok(runner.invoke(app, ["query", str(scenario / "test"), "--index", str(out / "index"), "--out", str(qout),
                               "--reference", str(scenario / "train" / "not_used"), "--json"]))
    q = json.loads(r.stdout)
    assert q["decision"]["method"] == "pu" and q["counts"]["real"]["embedded"] == 12
    assert not (qout / "report.html").exists()

    r = ok(runner.invoke(app, ["query", str(scenario / "test"), "--index", str(out / "index"), "--out", str(qout),
                               "--reference", str(scenario / "train" / "not_used"), "--report"]))
    assert f"report: {qout / 'report.html'}" in r.stdout.splitlines() and "verdict: " in r.stdout

    r = ok(runner.invoke(app, ["report", str(qout), "--labels", str(scenario / "test_labels.csv"),
                               "--report-top", "2"]))
    assert r.stdout == f"wrote {qout / 'report.html'}\n"
    html = (qout / "report.html").read_text()
    assert 'id="metrics"' in html and "roc.png" in html and html.count('class="real"') == 2


def test_evaluate_and_bench_json_print_exactly_one_document(runner, tmp_path):
    (tmp_path / "p.csv").write_text("image,score,label\na.png,0.9,1\nb.png,0.1,0\nc.png,0.2,1\n")
    (tmp_path / "l.csv").write_text("image,label\na.png,1\nb.png,0\nc.png,0\nd.png,1\n")
    r = ok(runner.invoke(app, ["evaluate", str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "--json"]))
    assert json.loads(r.stdout)["n"] == 3 and r.stderr == ""
    r = ok(runner.invoke(app, ["bench", "--n", "500", "--dim", "8", "--index-type", "Flat", "--queries", "10",
                               "--tune-queries", "10", "--repeats", "1", "--single", "10", "--json"]))
    assert json.loads(r.stdout)["n"] == 500


@pytest.mark.parametrize("case", ["missing", "no_summary", "labels_missing"])
def test_report_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, case, leak):
    import shutil

    out = tmp_path / "out"
    args = ["report", str(out)]
    t = re.escape(str(out))
    if case == "missing":
        expected = rf"{t}: no such output folder \(run `fpindex audit --out {t}` first\)"
    elif case == "no_summary":
        out.mkdir()
        expected = rf"{t}/summary\.json: no such file \(is {t} an audit's output folder\?\)"
    else:
        shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
        args += ["--labels", str(tmp_path / "nope.csv")]
        expected = rf"{re.escape(str(tmp_path))}/nope\.csv: no such file"
    code, cap = run_main(monkeypatch, capsys, *args)
    assert code == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"fpindex: error: {expected}", lines[0]), lines
    assert not (out / "report.html").exists()


@pytest.mark.slow
def test_python_dash_m_fpindex_is_the_command_line():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fpindex", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().startswith("fpindex")


def test_demo_refuses_a_folder_holding_the_users_files(monkeypatch, capsys, tmp_path, helpers):
    """`fpindex demo --out u` where u/data/test holds the user's scans: refused before anything is written (the
    demo once replaced real_00000.png and audited my_scan.png as part of its scenario)."""
    u = tmp_path / "u"
    for name in ("real_00000.png", "my_scan.png"):
        helpers.write_png(u / "data" / "test" / name, helpers.smooth_image(7))
    before = {p: p.read_bytes() for p in u.rglob("*") if p.is_file()}
    code, cap = run_main(monkeypatch, capsys, "demo", "--small", "--out", str(u))
    assert code == 2 and "Traceback" not in cap.err
    assert cap.err.strip() == (f"fpindex: error: demo folder {u} holds files the demo did not write (data) and no "
                               "fpindex-demo.json; refusing to write into it: choose a new or empty --out")
    assert {p: p.read_bytes() for p in u.rglob("*") if p.is_file()} == before


def test_demo_rewrites_its_own_folder_whole(monkeypatch, tmp_path):
    """An earlier demo's folder (its fpindex-demo.json) is the demo's to write again, and its data/ is replaced
    whole: a file dropped into data/test/ is not audited as part of the scenario."""
    import fpindex.api as api
    import fpindex.demo as demo

    audited = []

    class Stop(Exception):
        pass

    def audit(generated, real, **kw):
        audited.append(sorted(p.name for p in Path(real).iterdir()))
        raise Stop

    monkeypatch.setattr(api, "audit", audit)
    out = tmp_path / "d"
    with pytest.raises(Stop):
        demo.run_demo(out, small=True)
    assert json.loads((out / "fpindex-demo.json").read_text())["generator"] == "fpindex demo"
    (out / "data" / "test" / "my_scan.png").write_bytes((out / "data" / "test" / "real_00000.png").read_bytes())
    with pytest.raises(Stop):
        demo.run_demo(out, small=True)
    assert audited[0] == audited[1] and "my_scan.png" not in audited[1]
    assert sorted(p.name for p in out.iterdir()) == ["data", "fpindex-demo.json"]
