"""The report shows the audit's own images (issue 23): the real folder is stored absolute, and every image is
checked against the content id recorded in neighbours.parquet before it is shown beside the scores."""

from __future__ import annotations

import json
import re

import pandas as pd

from fpindex import audit
from fpindex.report.html import REPORT, write_report


def _folders(tmp_path, helpers):
    gen, real = tmp_path / "a" / "gen", tmp_path / "a" / "real"
    for i in range(6):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(10 + i))
        helpers.write_png(real / f"r{i}.png", helpers.smooth_image(10 + i) if i < 2 else helpers.smooth_image(50 + i))
    return gen, real


def test_report_from_another_folder_shows_the_audits_images_and_refuses_changed_ones(tmp_path, helpers,
                                                                                      monkeypatch):
    gen, real = _folders(tmp_path, helpers)
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "out"
    audit("gen", "real", config=helpers.CFG.override(decide={"method": "fixed"}), out=out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["folders"]["real"] == str(real)            # absolute, not 'real'
    nb = pd.read_parquet(out / "neighbours.parquet")
    assert {"sha256", "generated_sha256"} <= set(nb.columns) and nb["sha256"].str.len().eq(64).all()
    # another folder with a 'real/' of the same names but other pictures: not what the report shows
    other = tmp_path / "b"
    for i in range(6):
        helpers.write_png(other / "real" / f"r{i}.png", helpers.smooth_image(900 + i))
    monkeypatch.chdir(other)
    html = write_report(out, top=6).read_text()
    assert "changed since the audit" not in html and "not shown" not in html
    # a neighbour and a real image replaced after the audit: named, not shown beside the old scores
    helpers.write_png(gen / "g0.png", helpers.smooth_image(777))
    helpers.write_png(real / "r1.png", helpers.smooth_image(778))
    html = write_report(out, top=6).read_text()
    assert re.search(r"g0\.png changed since the audit", html) and re.search(r"r1\.png changed since the audit", html)
    assert (out / REPORT).is_file()
    assert "sha256" not in re.findall(r"<th[^>]*>([^<]+)</th>", html)     # hashes are not evidence columns
