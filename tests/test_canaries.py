"""Canaries: planted copies of known-unused images measure what an audit can see, and move nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fpindex
from fpindex import audit
from fpindex.cli import app


@pytest.mark.slow
def test_canaries_do_not_move_any_other_output(leak, helpers, tmp_path):
    """The session's audit ran with the default canaries (every known-unused image, every kind); the same
    audit without them writes the same outputs byte for byte."""
    assert helpers.CFG.canaries.n >= 6
    plain = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used,
                  config=helpers.CFG.override(canaries={"n": 0}), out=tmp_path / "plain")
    assert "canaries" not in plain.summary
    for name in ("predictions.csv", "submission.csv", "neighbours.parquet"):
        assert (tmp_path / "plain" / name).read_bytes() == (leak.audit_out / name).read_bytes(), name
    with_canaries = json.loads((leak.audit_out / "summary.json").read_text())
    assert {k: v for k, v in with_canaries["verdict"].items()} == plain.summary["verdict"]
    assert with_canaries["decision"] == json.loads(json.dumps(plain.summary["decision"]))
    c = with_canaries["canaries"]
    assert c["n_sources"] == 6 and c["source_folder"] == "not_used" and c["method"] == "calibrated"
    assert sum(t["planted"] for t in c["table"]) == len(c["planted"]) == 6 * len(fpindex.plants.grid())
    assert {p["source"] for p in c["planted"]} == {p.name for p in leak.not_used.iterdir()}
    assert [t["kind"] for t in c["table"]][:4] == ["exact", "rigid", "rigid", "rigid"]


def _scenario(helpers, root, rate):
    rows = ["file,patient_id"]
    for p in range(30):
        helpers.write_png(root / "real" / f"p{p:02d}.png", helpers.smooth_image(700 + p))
        rows.append(f"p{p:02d}.png,P{p:02d}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return fpindex.simulate(root / "real", root / f"sim-{rate}", members=12, kinds=["rigid"], rate=rate, seed=1,
                            manifest=root / "manifest.csv", size=64, fresh=6).root


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_exact_copy_canaries_are_flagged_at_any_rate(helpers, tmp_path, rate):
    """Leaked or not, an exact copy of a known-unused image is what any audit must see. With 6 known-unused
    images no empirical p-value goes below 1/7, but the copy channel's tail model reaches beyond them, so the
    default α is enough. The one-score `reference` decision: on 6 + 6 images the weights of a fused one are noise."""
    d = _scenario(helpers, tmp_path, rate)
    cfg = helpers.CFG.override(decide={"method": "reference"},
                               canaries={"n": 6, "kinds": ("exact", "blend")})
    result = audit(d / "generated", d / "test", reference=d / "train" / "not_used", config=cfg)
    c = result.summary["canaries"]
    exact = next(t for t in c["table"] if t["kind"] == "exact")
    assert c["method"] == "reference" and exact["planted"] == 6 and exact["found"] == 6
    assert c["text"][0] == "would have flagged 6/6 exact copies"
    assert {t["description"] for t in c["table"][1:]} == {"2-image blends", "3-image blends", "5-image blends"}
    assert all(p["p_value"] <= 0.05 < 1 / 7 for p in c["planted"] if p["kind"] == "exact")


@pytest.mark.slow
def test_audit_prints_and_saves_what_it_would_have_caught(leak, helpers, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["audit", "--generated", str(leak.generated), "--real", str(leak.real), "--out",
                                 str(out), "--used", str(leak.used), "--not-used", str(leak.not_used),
                                 "--weights", "random", "--image-size", "64", "--device", "cpu", "--k", "3",
                                 "--index-type", "Flat", "--canaries", "2", "--canary-kinds", "exact",
                                 "--canary-kinds", "noise", "--report", "--report-top", "1"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert ("canaries (2 not-used images; found = p ≤ α = 0.05 against the not-used images (fused or copy "
            "channel)):") in r.output
    assert "would have flagged exact: " in r.output and "would have flagged noise (σ): 0.02: " in r.output
    saved = json.loads((out / "summary.json").read_text())["canaries"]
    assert saved["n_sources"] == 2 and [t["kind"] for t in saved["table"]] == ["exact"] + ["noise"] * 3
    assert saved == json.loads(json.dumps(saved))
    page = (out / "report.html").read_text()
    assert "What this audit would have caught" in page and "exact copies" in page
    assert np.isfinite([p["score"] for p in saved["planted"]]).all()
