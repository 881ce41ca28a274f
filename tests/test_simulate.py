"""The leak simulator, its plant kinds, and the sensitivity sweep: small seeded real images made here."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fpindex
from fpindex import FpindexError
from fpindex.config import AuditConfig, DecideConfig, EvidenceConfig
from fpindex.load import load_image
from fpindex.plants import PLANTS, grid


@pytest.fixture(scope="module")
def real(helpers, tmp_path_factory):
    """24 'patients' of two slices each, and a manifest saying which slices belong together."""
    root = tmp_path_factory.mktemp("sim-real")
    rows = ["file,patient_id"]
    for p in range(24):
        base = helpers.smooth_image(1000 + p)
        for z in range(2):
            img = np.clip(base + 0.03 * z * helpers.smooth_image(5000 + p), 0, 1)
            helpers.write_png(root / "images" / f"p{p:02d}" / f"s{z}.png", img)
            rows.append(f"p{p:02d}/s{z}.png,P{p:02d}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_plants_are_deterministic_and_drift_with_strength(helpers):
    img = helpers.smooth_image(3)
    others = [helpers.smooth_image(s) for s in range(10, 14)]
    assert np.array_equal(PLANTS.get("exact")(img, 0, np.random.default_rng(0)), np.rint(img * 255) / 255)
    for name in PLANTS:
        p = PLANTS.get(name)
        out = [p(img, s, np.random.default_rng([1, i]), others) for i, s in enumerate(p.strengths)]
        again = p(img, p.strengths[0], np.random.default_rng([1, 0]), others)
        assert np.array_equal(out[0], again) and out[0].shape == img.shape and out[0].dtype == np.float32
        dist = [float(np.abs(o - img).mean()) for o in out]
        assert dist == sorted(dist), name               # weakest first: further from the source as it grows
    assert grid(["exact", "rigid"], [7.0]) == [("exact", 0.0), ("rigid", 7.0)]
    with pytest.raises(FpindexError, match="^unknown plant kind 'smudge'; choose one of: exact, rigid"):
        grid(["smudge"])
    with pytest.raises(FpindexError, match="needs 2 other image"):
        PLANTS.get("blend")(img, 3, np.random.default_rng(0), others[:1])


def test_simulate_records_exactly_what_was_planted(real, tmp_path):
    out = tmp_path / "sim"
    sim = fpindex.simulate(real / "images", out, members=16, kinds=["exact", "rigid", "blend"], strengths=[10],
                           rate=0.5, seed=3, manifest=real / "manifest.csv", size=64)
    record = json.loads((out / "planted.json").read_text())
    assert record["planted"] == sim.planted and record["parameters"]["rate"] == 0.5
    assert record["versions"]["fpindex"] == fpindex.__version__
    labels = dict(line.split(",") for line in (out / "test_labels.csv").read_text().split()[1:])
    members = {f"train/used/{p.name}" for p in (out / "train" / "used").iterdir()} | {
        f"test/{n}" for n, lab in labels.items() if lab == "1"}
    assert len(members) == record["split"]["members"] and len(sim.planted) == round(0.5 * len(members))
    planted_files = {f"generated/{p.name}" for p in (out / "generated").iterdir() if p.name.startswith("sim_")}
    assert planted_files == {p["generated"] for p in sim.planted}
    assert len(list((out / "generated").iterdir())) == record["split"]["generated_copied"] + len(sim.planted)
    by_kind = {k: [p for p in sim.planted if p["kind"] == k] for k in ("exact", "rigid", "blend")}
    assert all(by_kind.values())
    for p in sim.planted:
        assert p["source"] in members                              # only members are ever copied
        assert (out / p["source"]).read_bytes() == open(p["original"], "rb").read()
        rebuilt = PLANTS.get(p["kind"])(load_image(p["original"], 64)[0], p["strength"],
                                        np.random.default_rng(p["rng"]),
                                        [load_image(out / m, 64)[0] for m in p["mixed_in"]])
        assert np.array_equal(load_image(out / p["generated"], 64)[0], rebuilt), p
    assert all((out / p["generated"]).read_bytes() == (out / p["source"]).read_bytes() for p in by_kind["exact"])
    assert all(len(p["mixed_in"]) == 9 for p in by_kind["blend"])   # --strength 10: ten images blended
    # Split by patient: no patient on both sides of member / non-member.
    patient = {line.split(",")[0]: line.split(",")[1] for line in (real / "manifest.csv").read_text().split()[1:]}
    origin = {p["source"]: p["original"] for p in sim.planted}
    assert origin and all(patient[o.split("images/")[1]] for o in origin.values())


def test_simulate_refuses_bad_input_and_touches_nothing(real, tmp_path):
    before = sorted(p.stat().st_mtime_ns for p in (real / "images").rglob("*.png"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(FpindexError, match="exists and is not empty"):
        fpindex.simulate(real / "images", tmp_path / "full", members=8)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    with pytest.raises(FpindexError, match="--rate must be between 0 and 1"):
        fpindex.simulate(real / "images", tmp_path / "a", rate=1.5)
    bad = tmp_path / "manifest.csv"
    bad.write_text("file,patient_id\np00/s0.png,P0\n")
    with pytest.raises(FpindexError, match=r"manifest .*manifest\.csv: no patient_id for p00/s1\.png"):
        fpindex.simulate(real / "images", tmp_path / "b", manifest=bad)
    bad.write_text("name,who\nx,y\n")
    with pytest.raises(FpindexError, match=r"manifest\.csv: missing column\(s\) file, patient_id"):
        fpindex.simulate(real / "images", tmp_path / "c", manifest=bad)
    with pytest.raises(FpindexError, match="too few to split"):
        fpindex.simulate(real / "images", tmp_path / "d", members=46)
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert sorted(p.stat().st_mtime_ns for p in (real / "images").rglob("*.png")) == before


@pytest.mark.slow
def test_sensitivity_curve_falls_with_strength(real, helpers, tmp_path):
    cfg = helpers.CFG.override(decide={"permutations": 19})
    rec = fpindex.sensitivity(real / "images", tmp_path / "sens", kinds=["rigid"], strengths=[2, 40], members=8,
                              seed=0, manifest=real / "manifest.csv", size=64, fresh=8, config=cfg)
    weak, strong = rec["table"]
    assert (weak["strength"], strong["strength"]) == (2.0, 40.0)
    assert weak["recall"] > strong["recall"]
    assert {p.name for p in (tmp_path / "sens").iterdir()} == {"cells", "sensitivity.json", "sensitivity.csv",
                                                               "sensitivity.png"}
    assert (tmp_path / "sens" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "sens" / "sensitivity.csv").read_text().splitlines()
    assert lines[0].startswith("kind,strength,unit,description,recall") and len(lines) == 3
    assert json.loads((tmp_path / "sens" / "sensitivity.json").read_text())["config"]["canaries"]["n"] == 0
    # An audit's HTML report shows the curve when its output folder holds one.
    from fpindex.report.html import write_report

    audit_out = tmp_path / "sens" / "cells" / "rigid-2" / "audit"
    for name in ("sensitivity.json", "sensitivity.png"):
        (audit_out / name).write_bytes((tmp_path / "sens" / name).read_bytes())
    page = write_report(audit_out, top=1).read_text()
    assert 'id="sensitivity"' in page and "report_files/sensitivity.png" in page
    png = (tmp_path / "sens" / "sensitivity.png").read_bytes()
    assert (audit_out / "report_files" / "sensitivity.png").read_bytes() == png
