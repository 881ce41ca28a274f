"""Patients (load/groups.py, decide/grouping.py, decide/patients.py): a groups CSV or DICOM tags say which
patient each image is of; folds and permutations move whole patients; the patient-level answer stays at α."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.config import DecideConfig
from fpindex.decide import Labelled, cross_fit, decide, groups_of
from fpindex.decide.grouping import PROXY, Grouping
from fpindex.decide.patients import Patients, patient_level
from fpindex.errors import FpindexError
from fpindex.evidence import Evidence
from fpindex.load.groups import folder_groups, read_groups

CSV = "groups CSV (patient)"


@pytest.mark.parametrize("text, match", [
    ("image,label\na.png,1\n", r"g\.csv: no group column: give one of patient, .* \(has image, label\)"),
    ("image,patient\na.png,P1\nb.png,\n", r"g\.csv:3: empty patient for 'b.png'"),
    ("image,patient\na.png,P1\nsub/a.dcm,P2\n", r"g\.csv:3: group of 'sub/a.dcm' has the id 'a' of line 2"),
    ("image,patient\na.png,P1,x\n", r"g\.csv:2: 3 fields, but the header has 2"),
    ("patient\nP1\n", r"g\.csv: missing column\(s\) image"),
    ("image,patient\n", r"g\.csv: no rows"),
])
def test_bad_groups_csv_is_one_line_naming_file_and_problem(tmp_path, text, match):
    (tmp_path / "g.csv").write_text(text)
    with pytest.raises(FpindexError, match=match):
        read_groups(tmp_path / "g.csv")


def test_groups_csv_is_joined_on_the_submission_id(tmp_path):
    (tmp_path / "g.csv").write_bytes("\ufeffimage,study,patient\r\nx/a.png,S1,P1\r\nscan.dcm#2,S2,P2\r\n".encode())
    t = read_groups(tmp_path / "g.csv")
    assert t.column == "patient" and t.group == {"a": "P1", "scan#2": "P2"}    # patient wins over study
    g = folder_groups(tmp_path, ["a.png", "other.png", "scan.dcm#2"], t)
    assert g.names == ["P1", "", "P2"] and g.sources == [CSV, "", CSV] and g.known == 2


def test_cli_refuses_a_bad_or_foreign_groups_csv_before_any_work(scenario, tmp_path, monkeypatch, capsys, helpers):
    args = ["audit", "--generated", scenario / "generated", "--real", scenario / "test", "--out", tmp_path / "o",
            "--model", "cnn", "--weights", "random", "--image-size", "64", "--canaries", "0"]
    (tmp_path / "bad.csv").write_text("image,patient\nreal_00000.png,\n")
    code, err = helpers.run_main(monkeypatch, capsys, *args, "--groups", tmp_path / "bad.csv")
    assert code == 2 and len(err) == 1 and "bad.csv:2: empty patient" in err[0]
    (tmp_path / "foreign.csv").write_text("image,patient\nsomeone_else.png,P1\n")
    code, err = helpers.run_main(monkeypatch, capsys, *args, "--groups", tmp_path / "foreign.csv")
    assert code == 2 and len(err) == 1 and "foreign.csv: lists none of the 12 images of the real folder" in err[0]
    assert not (tmp_path / "o").exists()


def _partition(labels) -> set[frozenset[int]]:
    by: dict = {}
    for i, g in enumerate(labels):
        by.setdefault(g, set()).add(i)
    return {frozenset(v) for v in by.values()}


def test_patients_reach_the_folds_and_the_outputs(scenario, tmp_path, helpers):
    from fpindex import audit

    rows = helpers.read_csv(scenario / "groups.csv")
    patient = {r["image"]: r["patient"] for r in rows}
    # Only some test images listed: the rest are counted, said, and keep the proxy.
    listed = [r for r in rows if not (r["image"].startswith("real_") and r["image"] >= "real_00006")]
    (tmp_path / "g.csv").write_text("image,patient\n" + "".join(f"{r['image']},{r['patient']}\n" for r in listed))
    cfg = helpers.CFG.override(decide={"groups": str(tmp_path / "g.csv"), "permutations": 49}, canaries={"n": 0})
    with pytest.warns(UserWarning, match=r"g\.csv: 6 of 12 real images are not listed .* keep the sibling proxy"):
        result = audit(scenario / "generated", scenario / "test", used=scenario / "train" / "used",
                       not_used=scenario / "train" / "not_used", config=cfg, out=tmp_path / "out")
    for folder in ("used", "not_used"):
        files = sorted((scenario / "train" / folder).iterdir())
        assert _partition(result.evidence[folder].groups) == _partition([patient[f.name] for f in files])
    # No patient is split across the folds of the cross-fit that makes the verdict.
    ev = result.evidence
    x = np.vstack([ev["used"].matrix(), ev["not_used"].matrix()])
    y = np.r_[np.ones(len(ev["used"])), np.zeros(len(ev["not_used"]))].astype(np.int8)
    groups = groups_of(ev["used"], ev["not_used"])
    cv = cross_fit(x, y, 3, DecideConfig(permutations=19), groups)
    assert all(len(set(cv.fold[groups == g].tolist())) == 1 for g in np.unique(groups))
    assert len(set(cv.fold.tolist())) == 3 and cv.group_test.groups == (3, 3)
    # The patient-level answer, typed in memory and in its files.
    p = result.patients
    assert isinstance(p, Patients) and p.known
    assert p.grouping["real"].by == {CSV: 6, PROXY: 6} and p.grouping["used"].by == {CSV: 6}
    assert set(p.table["patient"]) >= {patient[f"real_{i:05d}.png"] for i in range(6)}
    assert p.table["images"].sum() == 12
    written = helpers.read_csv(tmp_path / "out" / "patients.csv")
    assert [r["patient"] for r in written] == list(p.table["patient"])
    s = result.summary["patients"]
    assert s["verdict"]["text"] == p.verdict.text and s["grouping"]["real"]["by"][CSV] == 6
    from fpindex.report.html import write_report

    html = write_report(tmp_path / "out", top=0).read_text()
    assert 'id="patients"' in html and written[0]["patient"] in html


def test_without_patient_ids_the_decision_keeps_the_sibling_proxy(leak):
    s = leak.audit_summary["patients"]
    assert s["known"] is False and s["n"] == 0 and "no patient ids" in s["verdict"]["text"]
    assert set(s["grouping"]) == {"real", "used", "not_used"}
    assert all(g["by"] == {PROXY: g["images"]} for g in s["grouping"].values())
    assert (leak.audit_out / "patients.csv").read_text().startswith("patient,source,images,score,p_value,")


def _patients(rng, n_patients, per, shift=0.0, exposed=0):
    """Features of `n_patients` patients × `per` slices: slices of one patient share an effect (strongly
    dependent, as real series are); the first `exposed` patients have one slice shifted up by `shift` on
    every feature (a memorised slice)."""
    from test_copies import unused

    n = n_patients * per
    v = unused(rng, n)
    ids = np.repeat(np.arange(n_patients), per)
    effect = rng.normal(0, 0.05, n_patients)[ids]
    for f in v:
        v[f] = v[f] + effect
        v[f][np.arange(exposed) * per] += shift
    return Evidence(v, groups=ids), ids


def _grouping(ids) -> Grouping:
    return Grouping(ids, [f"P{i}" for i in ids.tolist()], [CSV] * len(ids))


@pytest.mark.parametrize("method", ["reference", "pu"])
def test_patient_verdict_false_alarms_on_null_draws_stay_at_alpha(method):
    """Real and known-unused patients drawn alike: how often the patient-level verdict says leakage."""
    rng = np.random.default_rng(5)
    alarms, draws, exposed = 0, 30, 0
    for _ in range(draws):
        target, t_ids = _patients(rng, 12, 4)
        ref, r_ids = _patients(rng, 10, 4)
        d = decide(DecideConfig(method=method, permutations=19, alpha=0.1), target, Labelled(reference=ref))
        p = patient_level(d, [f"r{i}" for i in range(len(t_ids))], {"real": _grouping(t_ids),
                                                                     "reference": _grouping(r_ids)}, 0.1)
        assert d.group_test is not None and d.group_test.groups == (12, 10)
        alarms += bool(p.verdict.leakage)
        exposed += int(p.table["label"].sum())
    assert alarms <= 7                          # α = 0.1 of 30 draws: 3 expected, 7 is P < 0.01 under α
    assert exposed <= 0.1 * 12 * draws


def test_a_memorised_slice_exposes_its_patient():
    rng = np.random.default_rng(6)
    target, t_ids = _patients(rng, 12, 4, shift=0.6, exposed=4)
    ref, r_ids = _patients(rng, 10, 4)
    d = decide(DecideConfig(method="pu", permutations=49), target, Labelled(reference=ref))
    p = patient_level(d, [f"r{i}" for i in range(len(t_ids))], {"real": _grouping(t_ids),
                                                                 "reference": _grouping(r_ids)}, 0.05)
    assert p.verdict.leakage is True and p.verdict.auc > 0.5
    exposed = set(p.table.loc[p.table["label"] == 1, "patient"])
    assert exposed and exposed <= {"P0", "P1", "P2", "P3"}
    assert p.table.set_index("patient").loc[["P0", "P1", "P2", "P3"], "p_value"].max() < \
        p.table.set_index("patient").drop(["P0", "P1", "P2", "P3"])["p_value"].min()


def test_dicom_patient_tags_group_images_when_no_csv_says(tmp_path):
    from test_medical import ct_values, write_dicom

    import pydicom

    def tagged(path, pixels, **tags):
        write_dicom(path, pixels)
        ds = pydicom.dcmread(path)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(path)

    tagged(tmp_path / "a.dcm", ct_values(1, 16), PatientID="P-7", StudyInstanceUID="1.2.3")
    tagged(tmp_path / "b.dcm", ct_values(2, 16), StudyInstanceUID="1.2.4")
    tagged(tmp_path / "scan.dcm", np.stack([ct_values(k, 16) for k in range(3)]), PatientID="P-8")
    write_dicom(tmp_path / "c.dcm", ct_values(3, 16))
    paths = ["a.dcm", "b.dcm", "c.dcm", "scan.dcm#0", "scan.dcm#1", "scan.dcm#2"]
    g = folder_groups(tmp_path, paths, None)
    assert g.names == ["P-7", "1.2.4", "", "P-8", "P-8", "P-8"]
    assert g.sources == ["DICOM PatientID", "DICOM StudyInstanceUID", "", *["DICOM PatientID"] * 3]
    (tmp_path / "g.csv").write_text("image,patient\na.dcm,P-1\n")
    assert folder_groups(tmp_path, paths, read_groups(tmp_path / "g.csv")).names[:2] == ["P-1", "1.2.4"]


def test_simulate_with_a_manifest_writes_every_real_image_patient(helpers, tmp_path):
    import fpindex

    real, rows = tmp_path / "real", ["file,patient_id"]
    for p in range(12):
        for z in range(2):
            helpers.write_png(real / f"p{p:02d}" / f"s{z}.png", helpers.smooth_image(100 * p + z))
            rows.append(f"p{p:02d}/s{z}.png,P{p:02d}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    sim = fpindex.simulate(real, tmp_path / "sim", members=6, kinds=["exact"], rate=1.0, seed=1,
                           manifest=tmp_path / "manifest.csv", size=64)
    out = sim.root
    groups = read_groups(out / "groups.csv").group
    written = [p for d in ("train/used", "train/not_used", "test") for p in sorted((out / d).iterdir())]
    assert sorted(groups) == sorted(p.stem for p in written)
    for p in sim.planted:                       # each copied member's patient is the manifest's
        original = p["original"].split("real/")[1]
        assert groups[p["source"].rsplit("/", 1)[1].rsplit(".", 1)[0]] == f"P{original[1:3]}"
    labels = {r["image"]: r["label"] for r in helpers.read_csv(out / "test_labels.csv")}
    members = {groups[p.stem] for p in (out / "train" / "used").iterdir()} | \
        {groups[n.rsplit(".", 1)[0]] for n, lab in labels.items() if lab == "1"}
    others = {groups[p.stem] for p in (out / "train" / "not_used").iterdir()} | \
        {groups[n.rsplit(".", 1)[0]] for n, lab in labels.items() if lab == "0"}
    assert members and others and not members & others
    assert sim.record["groups"] == "groups.csv"
