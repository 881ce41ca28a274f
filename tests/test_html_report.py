"""The HTML report: what it contains, its error paths, its atomic and owned writing, and (in headless
Chromium) that every image loads, a header click sorts and the filters filter."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fpindex.errors import FpindexError
from fpindex.report.html import FILES, REPORT, write_report
from fpindex.report.outputs import MARKER
from fpindex.utils import sha256_file


@pytest.fixture(scope="module")
def report(leak, tmp_path_factory) -> Path:
    """A copy of the session's audit outputs with a report written into it (with labels: ROC and split)."""
    out = tmp_path_factory.mktemp("report") / "audit"
    shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
    write_report(out, top=5, labels=leak.labels)
    return out


def test_report_has_the_verdict_galleries_and_table(report, leak):
    html = (report / REPORT).read_text()
    assert leak.audit_summary["verdict"]["text"] in html
    assert html.count('class="real"') == 5                      # top 5 galleries
    n_real = leak.audit_summary["counts"]["real"]["embedded"]
    assert len(re.findall(r"<tr data-score=", html)) == n_real
    assert "roc.png" in html and (report / FILES / "roc.png").is_file()
    assert "ssim_aligned" in html and "Evidence weights" in html
    assert "http://" not in html and "https://" not in html        # nothing fetched from the network
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert (report / src).is_file(), src


def test_report_is_deterministic(report, leak):
    before = {p.name: p.read_bytes() for p in (report / FILES).iterdir()}
    html = (report / REPORT).read_text()
    write_report(report, top=5, labels=leak.labels)
    assert {p.name: p.read_bytes() for p in (report / FILES).iterdir()} == before
    assert (report / REPORT).read_text() == html


def test_report_escapes_file_names(report, leak, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(report, out)
    p = out / "predictions.csv"
    p.write_text(p.read_text().replace("real_", "<b>real_", 1))
    marker = json.loads((out / MARKER).read_text())       # the edit recorded as the run's, so the folder is whole
    marker["files"]["predictions.csv"]["sha256"] = sha256_file(p)
    (out / MARKER).write_text(json.dumps(marker))
    html = write_report(out, top=2).read_text()
    assert "&lt;b&gt;real_" in html and "<b>real_" not in html


@pytest.mark.parametrize("case, message", [
    ("missing", r"no such output folder"),
    ("no_summary", r"summary\.json: no such file"),
    ("bad_summary", r"summary\.json: not valid JSON"),
    ("not_a_summary", r"summary\.json: not an audit summary \(no counts"),
    ("no_predictions", r"predictions\.csv: no such file"),
    ("bad_parquet", r"neighbours\.parquet: not a readable Parquet file"),
    ("foreign_page", r"report\.html exists and was not written by fpindex"),
    ("foreign_files", r"report_files exists and was not written by fpindex"),
])
def test_damaged_output_folder_is_one_error_naming_the_file(report, tmp_path, case, message):
    out = tmp_path / "o"
    if case != "missing":
        shutil.copytree(report, out)
    if case == "no_summary":
        (out / "summary.json").unlink()
    elif case == "bad_summary":
        (out / "summary.json").write_text("{not json")
    elif case == "not_a_summary":
        (out / "summary.json").write_text(json.dumps({"x": 1}))
    elif case == "no_predictions":
        (out / "predictions.csv").unlink()
    elif case == "bad_parquet":
        (out / "neighbours.parquet").write_bytes(b"PAR1 damaged")
    elif case == "foreign_page":
        (out / REPORT).write_text("<html>my own notes</html>")
    elif case == "foreign_files":
        shutil.rmtree(out / FILES)
        (out / FILES).mkdir()
        (out / FILES / "mine.txt").write_text("keep")
    with pytest.raises(FpindexError, match=message):
        write_report(out)
    if case == "foreign_page":
        assert (out / REPORT).read_text() == "<html>my own notes</html>"
    if case == "foreign_files":
        assert (out / FILES / "mine.txt").read_text() == "keep"


def test_a_failed_report_leaves_the_previous_one(report, tmp_path, monkeypatch):
    out = tmp_path / "o"
    shutil.copytree(report, out)
    html, files = (out / REPORT).read_text(), sorted(p.name for p in (out / FILES).iterdir())
    from fpindex.report import plots

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "roc_curve", boom)
    monkeypatch.setattr(plots, "score_histogram", boom)
    with pytest.raises(RuntimeError):
        write_report(out)
    assert (out / REPORT).read_text() == html
    assert sorted(p.name for p in (out / FILES).iterdir()) == files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]      # no temporaries left


# ---- in a real browser ---------------------------------------------------------------------------

def _browser():
    """Headless Chromium through Selenium and Debian's chromium-driver; skipped (with the reason) only when
    neither can be had."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no chromium + chromedriver on PATH (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,2000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    from selenium.webdriver.chrome.service import Service

    try:
        return webdriver.Chrome(options=opts, service=Service(driver))
    except WebDriverException as e:
        pytest.skip(f"chromium would not start: {str(e).splitlines()[0]}")


@pytest.mark.slow
def test_report_in_headless_chromium(report, tmp_path):
    from selenium.webdriver.common.by import By

    b = _browser()
    try:
        b.get((report / REPORT).resolve().as_uri())
        b.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")   # folded parts
        sizes = b.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.complete, "
                                 "i.naturalWidth])")
        assert sizes and all(ok and w > 0 for _, ok, w in sizes), [s for s in sizes if not s[2]]

        def column(i):
            return b.execute_script(f"return [...document.querySelectorAll('#all tbody tr')]"
                                    f".filter(r => !r.hidden).map(r => r.cells[{i}].textContent.trim())")

        header = b.find_elements(By.CSS_SELECTOR, "#all thead th")
        header[1].click()                                                   # score, ascending
        up = [float(v) for v in column(1)]
        assert up == sorted(up)
        header[1].click()                                                   # again: descending
        down = [float(v) for v in column(1)]
        assert down == sorted(up, reverse=True)
        header[0].click()
        names = column(0)
        assert names == sorted(names)

        first = names[0]
        b.find_element(By.ID, "name-filter").send_keys(first)
        assert column(0) == [first]
        b.find_element(By.ID, "name-filter").clear()
        b.execute_script("const e = document.getElementById('name-filter'); e.value = '';"
                         "e.dispatchEvent(new Event('input'))")
        cut = sorted(down)[len(down) // 2]
        b.find_element(By.ID, "min-score").send_keys(f"{cut:.4f}")
        kept = [float(v) for v in column(1)]
        assert kept and len(kept) < len(down) and min(kept) >= cut - 1e-4
        assert b.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 0
    finally:
        b.quit()


def test_the_threshold_drawn_is_the_decisions_own_rule():
    """The report draws the line each method's LabelRule states, never one guessed from the method's name: `pu`
    and `reference` label on the p-value (no score line; `pu` once fell into a guessed midpoint), `calibrated`
    at P(used) = 0.5, `fixed` at its threshold, `copies` at margin 0. The canaries apply the same rule."""
    import numpy as np

    from fpindex.config import DecideConfig
    from fpindex.decide import Labelled, decide
    from fpindex.evidence import Evidence
    from fpindex.report.html import _threshold
    from fpindex.report.schema import DecisionRecord, Summary

    rng = np.random.default_rng(0)

    def ev(n, hi):
        return Evidence({f: np.clip(rng.normal(0.9 if hi else 0.6, 0.05, n), 0, 1)
                         for f in ("cosine", "ssim", "jaccard", "ssim_aligned", "bandpass")})

    target, used, unused = ev(30, True), ev(20, True), ev(20, False)
    cases = {"fixed": (Labelled(), 0.97), "calibrated": (Labelled(used=used, not_used=unused), 0.5),
             "pu": (Labelled(reference=unused), None), "reference": (Labelled(reference=unused), None),
             "copies": (Labelled(copy_levels={"ssim_aligned": 0.95, "bandpass": 0.95}), 0.0)}
    for method, (data, line) in cases.items():
        d = decide(DecideConfig(method=method, score="cosine", threshold=0.97), target, data)
        record = Summary.from_dict({"decision": DecisionRecord(d.method, d.rule, d.details).to_dict()})
        assert record.decision.rule == d.rule and _threshold(record) == line, method
        found = d.rule.found(*d.rescore(target))            # what the canaries apply
        if d.rule.alpha is not None:
            np.testing.assert_array_equal(found, d.p_value <= 0.05)
        else:
            np.testing.assert_array_equal(found, d.score >= line)
    # an older summary.json (no rule recorded) still shows a stored threshold, and no guessed one
    assert _threshold(Summary.from_dict({"decision": {"method": "fixed", "threshold": 0.9}})) == 0.9
    assert _threshold(Summary.from_dict({"decision": {"method": "reference"}})) is None


def test_report_reads_volumes_like_the_audit_and_joins_labels_on_submission_ids(scenario, helpers, tmp_path):
    """A NIfTI audit with --axis 0 and --window: the report's pictures are the slices the audit scored (not
    the default axis and window), and its truth column joins `vol.nii.gz#k` to the label `vol#k`, as
    `fpindex evaluate` does (it once joined on `vol.nii`, so nothing was labelled)."""
    import hashlib

    import cv2
    import numpy as np

    from fpindex import audit
    from fpindex.load import ReadOptions, load_image

    nibabel = pytest.importorskip("nibabel")
    real = tmp_path / "real"
    real.mkdir()
    vol = np.stack([helpers.smooth_image(40 + k) * 1000.0 for k in range(6)]).astype(np.float32)   # (6, 64, 64)
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), real / "vol.nii.gz")
    cfg = helpers.CFG.override(embed={"axis": 0, "window": "500,1000"}, decide={"method": "fixed"})
    out = tmp_path / "out"
    audit(scenario / "generated", real, config=cfg, out=out)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\n" + "".join(f"vol#{k},{int(k in (1, 2))}\n" for k in range(6)))
    html = write_report(out, top=6, labels=labels).read_text()
    truth = dict(re.findall(r">(vol\.nii\.gz#\d)</a>.*?<td>(used|not used)</td></tr>", html))
    assert truth == {f"vol.nii.gz#{k}": "used" if k in (1, 2) else "not used" for k in range(6)}
    assert (out / FILES / "roc.png").is_file()
    read = ReadOptions(window=(500.0, 1000.0), axis=0)
    for k in (0, 3):
        path = f"{real}/vol.nii.gz#{k}"
        name = hashlib.sha256(path.encode()).hexdigest()[:20] + ".png"
        shown = cv2.imread(str(out / FILES / name), cv2.IMREAD_UNCHANGED)
        want = helpers.to_u8(load_image(path, 64, read)[0])
        np.testing.assert_array_equal(shown, want)


def test_long_parts_are_folded_and_the_weights_table_has_a_header(leak, tmp_path):
    """The page once ran to ~37,000 px for 40 images: galleries past the first few and the table of every image
    now sit in <details>; the weights table says what its columns are."""
    from fpindex.report.html import OPEN_GALLERIES

    out = tmp_path / "audit"
    shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
    html = write_report(out, top=OPEN_GALLERIES + 3).read_text()
    head, folded = html.split('<details id="more-galleries">')
    assert head.count('class="real"') == OPEN_GALLERIES
    assert folded.split("</details>")[0].count('class="real"') == 3
    assert re.search(r'<details id="all-table"><summary>The table of all \d+ real images.*?<table id="all">.*?'
                     r"</table>\s*</details>", html, re.S)
    assert re.search(r'<h2 id="weights">.*?<table><tr><th>feature</th><th>weight</th>', html, re.S)
    few = write_report(out, top=2).read_text()
    assert "more-galleries" not in few and few.count('class="real"') == 2


def test_a_perfect_roc_curve_is_drawn_above_the_frame(monkeypatch):
    """AUC 1 runs along the left and top edges: the axes leave a margin and the curve is drawn over the frame."""
    from fpindex.report import plots

    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    plots.roc_curve([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    ax = figures[0].axes[0]
    curve = ax.lines[0]
    assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1
    assert curve.get_zorder() > max(sp.get_zorder() for sp in ax.spines.values()) and not curve.get_clip_on()


def test_report_truth_and_roc_for_multi_frame_dicom(scenario, helpers, tmp_path):
    """A multi-frame DICOM's images are `scan.dcm#k` in predictions.csv and `scan#k` in a label table (the
    submission id): the truth column labels every frame and the ROC is drawn from all of them."""
    import numpy as np

    from fpindex import audit
    from test_medical import write_dicom

    pytest.importorskip("pydicom")
    real = tmp_path / "real"
    frames = np.stack([np.rint(helpers.smooth_image(400 + k) * 2000).astype(np.int16) - 1024 for k in range(6)])
    write_dicom(real / "scan.dcm", frames, intercept=0)
    out = tmp_path / "out"
    audit(scenario / "generated", real, config=helpers.CFG.override(decide={"method": "fixed"}), out=out)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\n" + "".join(f"scan#{k},{int(k % 2)}\n" for k in range(6)))
    html = write_report(out, top=6, labels=labels).read_text()
    truth = dict(re.findall(r">(scan\.dcm#\d)</a>.*?<td>(used|not used)</td></tr>", html))
    assert truth == {f"scan.dcm#{k}": "used" if k % 2 else "not used" for k in range(6)}
    assert (out / FILES / "roc.png").is_file()


def test_the_report_shows_the_images_to_withhold_and_names_the_answers(leak, tmp_path):
    """The withhold section shows each generated image graded a copy beside its real match (the leak's exact
    copy first, graded exact), and the verdict box names the three answers."""
    out = tmp_path / "audit"
    shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
    html = write_report(out, top=10).read_text()
    section = html.split('<h2 id="withhold">')[1].split('<h2 id="suspicious">')[0]
    first = re.search(r"<h3>(.*?) — (.*?) of real image (.*?)</h3>", section)
    assert first.groups() == (leak.exact_copy, "exact", leak.exact_real)
    assert f"generated: {leak.moved_copy}" in section and section.count('class="real match"') >= 2
    answers = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", html.split('id="answers"')[1].split("</table>")[0])
    assert [q for q, _ in answers] == ["Was the generator trained on these real images?",
                                       "Which synthetic images must be withheld?", "Which patients are exposed?"]
    assert re.match(r"\d+ of \d+ generated images graded a copy \(1 exact", answers[1][1])
