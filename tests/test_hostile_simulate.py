"""Hostile arguments of `simulate` and `sensitivity` (issue 23): each refused before any work with one line,
or a clean result; never a traceback. Plant strengths are checked by the kind that knows its range; the
manifest is read like the label tables. Every file is made here."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fpindex
from fpindex import FpindexError
from fpindex.plants import PLANTS, grid

PROPS = settings(max_examples=20, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 1e-300, 1e300, 0.5, 3.0])
ANY_INT = st.integers() | st.integers(-3, 40) | st.sampled_from([2**31, 2**32, 2**63, -2**63])


@pytest.fixture(scope="module")
def real(helpers, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-sim") / "real"
    for i in range(12):
        helpers.write_png(root / f"r{i:02d}.png", helpers.smooth_image(3000 + i, 32))
    return root


def _one_line(e: FpindexError) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("kind,bad", [("rigid", -1.0), ("rigid", 181.0), ("noise", math.inf), ("noise", math.nan),
                                      ("crop", 0.95), ("patch", 1.5), ("blend", 0.0), ("blend", 2.5),
                                      ("blend", 1e9), ("elastic", "x")])
def test_strengths_are_checked_by_their_kind(kind, bad):
    p = PLANTS.get(kind)
    with pytest.raises(FpindexError, match=rf"^--strength .* for plant kind {kind}: "):
        grid([kind], [bad])
    assert all(p.limits[0] <= s <= p.limits[1] for s in p.strengths)     # every default grid is in range
    assert grid([kind, kind], [p.strengths[0], p.strengths[0]]) == [(kind, p.strengths[0])]


def test_manifest_is_read_like_the_label_tables(real, tmp_path):
    m = tmp_path / "m.csv"
    rows = "".join(f"r{i:02d}.png,P{i // 2}\r\n" for i in range(12))
    m.write_bytes(b"\xef\xbb\xbf" + f"file,patient_id\r\n{rows}".encode())
    sim = fpindex.simulate(real, tmp_path / "ok", manifest=m, members=4, kinds=["exact"], size=32)
    assert sim.record["split"]["by"] == "patient (manifest)"
    cases = {
        "file,patient_id\nr00.png\n": r"m\.csv:2: 1 field\(s\), but the header has 2",
        "file,patient_id\nr00.png,P0\nr00.png,P1\n": r"m\.csv:3: 'r00\.png' is listed on line 2 already \(another",
        "file,patient_id\nr00.png,\n": r"m\.csv:2: empty patient_id",
    }
    for text, message in cases.items():
        m.write_text(text)
        with pytest.raises(FpindexError, match=message):
            fpindex.simulate(real, tmp_path / "no", manifest=m)
    with pytest.raises(FpindexError, match="is a folder, expected a CSV file"):
        fpindex.simulate(real, tmp_path / "no", manifest=tmp_path)
    assert not (tmp_path / "no").exists()


def test_checks_come_before_the_work(real, tmp_path):
    inside = real / "sens"
    with pytest.raises(FpindexError, match=r"--out .*sens overlaps --real"):
        fpindex.sensitivity(real, inside, kinds=["exact"])
    with pytest.raises(FpindexError, match=r"overlaps --real"):
        fpindex.simulate(real, real / "sim")
    assert not inside.exists() and not (real / "sim").exists()
    with pytest.raises(FpindexError, match="would share the cell folder cells/rigid-1"):
        fpindex.sensitivity(real, tmp_path / "s", kinds=["rigid"], strengths=[1.0, 1.0000000001])
    with pytest.raises(FpindexError, match=r"--plant-size must be a whole number from 16 to 1,024, got 8000"):
        fpindex.simulate(real, tmp_path / "big", size=8000)
    few = tmp_path / "few"
    shutil.copytree(real, few, ignore=lambda d, names: names[3:])
    with pytest.raises(FpindexError) as e:
        fpindex.simulate(few, tmp_path / "three")
    assert "3 images are too few" in _one_line(e.value) and "--members" not in str(e.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "big").exists()


def test_report_refuses_a_sensitivity_table_without_fpr(leak, tmp_path):
    from fpindex.report.html import write_report

    out = tmp_path / "audit"
    shutil.copytree(leak.audit_out, out, ignore=shutil.ignore_patterns("index"))
    (out / "sensitivity.png").write_bytes(b"\x89PNG")
    (out / "sensitivity.json").write_text(json.dumps({"fpr": None, "table": []}))
    with pytest.raises(FpindexError, match=r"sensitivity\.json: not a sensitivity table \(needs \"fpr\""):
        write_report(out, top=1)
    assert not (out / "report.html").exists()


def test_cli_failures_are_exit_2_one_line(real, tmp_path, monkeypatch, capsys):
    from fpindex.cli import main

    (tmp_path / "file").write_text("mine")
    for args in (["simulate", "--real", str(real), "--out", str(tmp_path / "o"), "--manifest", str(tmp_path)],
                 ["demo", "--out", str(tmp_path / "file"), "--small"],
                 ["simulate", "--real", str(real), "--out", str(tmp_path / "o"), "--strength", "nan"]):
        monkeypatch.setattr(sys, "argv", ["fpindex", *args])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("fpindex: error: "), (args, err)
    assert (tmp_path / "file").read_text() == "mine"


# ---- every argument, any value: a clean result or one line ------------------------------------------

def _simulate_or_one_line(real, out, **kw):
    try:
        sim = fpindex.simulate(real, out, **{"kinds": ["rigid"], "members": 4, "size": 16, **kw})
    except FpindexError as e:
        _one_line(e)
        assert not out.exists()
        return
    assert (sim.root / "planted.json").is_file()
    shutil.rmtree(out)


@pytest.mark.parametrize("arg,values", [
    ("members", ANY_INT), ("rate", ANY_FLOAT), ("seed", ANY_INT), ("size", ANY_INT | st.integers(16, 64)),
    ("fresh", ANY_INT | st.none()), ("strengths", st.lists(ANY_FLOAT, min_size=1, max_size=3)),
    ("kinds", st.lists(st.sampled_from(PLANTS.names()) | st.text(max_size=5), min_size=1, max_size=3)),
])
def test_every_simulate_argument_gives_a_result_or_one_line(real, tmp_path, arg, values):
    @PROPS
    @given(value=values)
    def run(value):
        _simulate_or_one_line(real, tmp_path / "sim", **{arg: value})
    run()


class _Started(Exception):
    """Raised where sensitivity starts its first audit: every argument was accepted."""


@pytest.mark.parametrize("arg,values", [
    ("members", ANY_INT), ("rate", ANY_FLOAT), ("seed", ANY_INT), ("size", ANY_INT), ("fresh", ANY_INT),
    ("fpr", ANY_FLOAT), ("strengths", st.lists(ANY_FLOAT, min_size=1, max_size=3)),
    ("kinds", st.lists(st.sampled_from(PLANTS.names()) | st.text(max_size=5), min_size=1, max_size=3)),
])
def test_every_sensitivity_argument_is_checked_before_the_first_cell(real, tmp_path, monkeypatch, arg, values):
    import fpindex.pipeline

    def started(*a, **k):
        raise _Started
    monkeypatch.setattr(fpindex.pipeline, "audit", started)

    @PROPS
    @given(value=values)
    def run(value):
        out = tmp_path / "sens"
        try:
            fpindex.sensitivity(real, out, **{"kinds": ["rigid"], "members": 4, "size": 16, arg: value})
        except FpindexError as e:
            _one_line(e)
            assert not out.exists()
        except _Started:
            pass
        shutil.rmtree(out, ignore_errors=True)
    run()
