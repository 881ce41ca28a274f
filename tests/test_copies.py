"""The copy channel (decide/copies.py): copies are found whatever the fused fit learnt, at the stated rate."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.config import DecideConfig
from fpindex.decide import COPY_SHARE, CopyNull, Labelled, decide, tail_p
from fpindex.decide.base import Verdict
from fpindex.errors import FpindexError
from fpindex.evidence import FEATURES as REGISTRY, Evidence
from fpindex.decide.guardrails import Inputs, audit_warnings, needed_null

FEATURES = tuple(REGISTRY.names())
COPY = ("ssim_aligned", "bandpass")   # the cosine is no copy feature: typical CT images reach 0.98


def unused(rng, n):
    """Scores like an unused image's: bounded by 1, a copy feature far below its cap."""
    return {"cosine": rng.beta(40, 8, n), "ssim": rng.beta(6, 10, n), "jaccard": rng.beta(8, 8, n),
            "subspace": rng.beta(8, 8, n), "ssim_aligned": rng.beta(8, 10, n), "bandpass": rng.beta(5, 12, n),
            "density_ratio": rng.normal(0, 0.01, n)}


def evidence(rng, n, copies=0, leak_on=None):
    """n images; the first `copies` are exact copies (every copy feature at its cap); `leak_on`: a feature on
    which the other used images stand out a little (what a fused fit would learn)."""
    v = unused(rng, n)
    for f in COPY:
        v[f][:copies] = 1.0
    return Evidence(v)


def test_copy_features_are_declared_by_the_features():
    assert tuple(f for f in FEATURES if REGISTRY.get(f).copy) == COPY


def test_tail_p_is_empirical_inside_the_null_and_extrapolates_beyond_it():
    rng = np.random.default_rng(0)
    null = rng.beta(8, 10, 10)
    inside = np.sort(null)[[2, 5, 9]]
    np.testing.assert_allclose(tail_p(inside, null), (1 + np.array([8, 5, 1])) / 11)
    far = tail_p(np.array([null.max() + 0.01, 0.9, 0.99, 1.0]), null)
    assert np.all(far <= 1 / 11) and np.all(np.diff(far) <= 0)
    assert far[-1] < 1e-4                       # an exact copy is out of reach of 10 unused images' 1/11
    assert np.all(tail_p(np.array([0.5]), np.array([])) == 1.0)


def test_an_exact_copy_is_found_whatever_the_fused_fit_learnt():
    """The labelled split holds no copy (like a clean generator's, or a diffusion model's that copied a few
    images outside it): the fused fit sees noise, and an exact copy among the real images ranks like any other
    image by the fused score. The copy channel finds it."""
    rng = np.random.default_rng(1)
    used, not_used = Evidence(unused(rng, 60)), Evidence(unused(rng, 60))
    target = evidence(rng, 200, copies=3)
    d = decide(DecideConfig(method="calibrated", permutations=49), target, Labelled(used=used, not_used=not_used))
    assert d.label[:3].all() and all("copy:" in b for b in d.flagged_by[:3])
    assert d.p_value[:3].max() < 1e-3 and d.p_channels["copy"][:3].max() < 1e-4   # every copy feature agrees
    assert d.verdict.leakage is True and d.verdict.copies == 3 and d.verdict.fused is False
    assert "3 real images with copy-level evidence" in d.verdict.text and "fused score alone shows none" in d.verdict.text
    assert d.details["copy_channel"]["labelled_by"]["copy"] >= 3
    # The canaries' what-if goes through the same channel.
    _, p = d.rescore(evidence(rng, 4, copies=1))
    assert p[0] <= 0.05 and p[1:].min() > p[0]


@pytest.mark.parametrize("method", ["pu", "reference"])
def test_ten_known_unused_images_are_enough_to_prove_an_exact_copy(method):
    rng = np.random.default_rng(2)
    d = decide(DecideConfig(method=method, permutations=49), evidence(rng, 80, copies=2),
               Labelled(reference=Evidence(unused(rng, 10))))
    assert d.p_value[:2].max() <= 0.05 < 1 / 11 and d.label[:2].all()
    assert d.verdict.leakage is True and d.verdict.copies == 2


def test_per_image_and_set_level_false_alarms_stay_at_alpha_on_nulls():
    """Real and known-unused images drawn alike: the share of images labelled, and of sets said to leak."""
    rng = np.random.default_rng(3)
    flagged, sets, n = 0, 0, 0
    for _ in range(40):
        d = decide(DecideConfig(method="pu", permutations=19), Evidence(unused(rng, 60)),
                   Labelled(reference=Evidence(unused(rng, 30))))
        flagged += int((d.p_value <= 0.05).sum())
        n += len(d.p_value)
        sets += bool(d.verdict.leakage and d.verdict.copies)
    assert flagged / n <= 0.05 and sets <= 4          # measured: 0.041 of images, 0 of 40 sets


LEVELS = {"ssim_aligned": 0.85, "bandpass": 0.95}   # what near copies of these images score


def test_without_known_unused_images_only_images_at_copy_level_are_flagged():
    """Half the real images are exact copies (a replaying generator) and nothing is known to be unused: an image
    is flagged when two copy features reach the level near copies of the audit's own images reach."""
    rng = np.random.default_rng(4)
    target = evidence(rng, 100, copies=50)
    target.scores["bandpass"][50:] = 0.97       # one feature at copy level is not enough
    d = decide(DecideConfig(), target, Labelled(copy_levels=LEVELS))
    assert d.method == "copies" and d.label[:50].all() and not d.label[50:].any()
    assert d.verdict.leakage is True and d.verdict.copies == 50 and d.verdict.auc is None and d.p_value is None
    assert d.verdict.text == "leakage detected: 50 real images with copy-level evidence"
    assert d.details["uncalibrated"] is True and d.details["agree"] == 2 and d.details["copy_levels"] == LEVELS
    assert np.all(d.score[:50] > d.score[50:].max()) and all(b.startswith("copy:") for b in d.flagged_by[:50])
    clean = decide(DecideConfig(), evidence(rng, 100), Labelled(copy_levels=LEVELS))
    assert not clean.label.any() and clean.verdict.leakage is False
    assert clean.verdict.text == "no evidence of leakage at α = 0.05 (no copy-level evidence)"
    score, p = d.rescore(evidence(rng, 2, copies=1))         # a canary's what-if
    assert p is None and score[0] >= 0 > score[1]


def test_copies_needs_a_copy_level():
    with pytest.raises(FpindexError, match="^decision 'copies' needs the copy level of the audit's own images"):
        decide(DecideConfig(method="copies"), Evidence(unused(np.random.default_rng(0), 3)), Labelled())


def test_copy_null_describes_itself():
    rng = np.random.default_rng(5)
    c = CopyNull(Evidence(unused(rng, 12)))
    d = c.describe()
    assert d["features"] == list(COPY) and d["n_null"] == 12 and d["share_of_alpha"] == COPY_SHARE


# ---- guardrails -------------------------------------------------------------------------------------

def warnings_for(method="pu", auc=0.6, ci=(0.55, 0.65), n_null=100, n_real=100, n_generated=1000, same=0):
    from fpindex.decide import Decision

    v = Verdict(leakage=False, alpha=0.05, auc=auc, ci=ci, p_value=0.5)
    d = Decision(score=np.zeros(n_real), label=np.zeros(n_real, np.int8), method=method, verdict=v)
    return audit_warnings(d, Inputs(n_real=n_real, n_generated=n_generated, n_null=n_null, real_in_generated=same))


def test_guardrails_name_the_likely_cause():
    assert warnings_for() == []
    assert needed_null(0.05) == 24
    (w,) = warnings_for(n_null=10)
    assert w.startswith("only 10 known-unused images: the fused score's p-values cannot go below 1/11") and \
        "give at least 24 known-unused images" in w
    assert warnings_for(method="calibrated", n_null=10) == []       # its labels are P ≥ 0.5, not p ≤ α
    (w,) = warnings_for(n_null=2)
    assert w.startswith("only 2 known-unused images: too few for any claim")
    (w,) = warnings_for(auc=0.315, ci=(0.25, 0.38))
    assert "well below chance" in w and "swapped" in w
    assert warnings_for(auc=0.437, ci=(0.382, 0.492)) == []       # dev-null's: patients differ, nothing swapped
    (w,) = warnings_for(n_generated=50)
    assert w.startswith("only 50 generated images for 100 real ones")
    (w,) = warnings_for(same=95)
    assert w.startswith("95 of 100 real images are byte-identical to generated images")
    assert warnings_for(method="copies", n_null=0)[0].startswith("no known-unused images (--not-used or --reference)")


# ---- end to end ---------------------------------------------------------------------------------------

def test_an_audit_without_known_unused_images_flags_copies_and_says_labels_are_uncalibrated(leak, helpers):
    from fpindex import FpindexWarning, audit

    with pytest.warns(FpindexWarning, match="^no known-unused images .* give --reference DIR"):
        r = audit(leak.generated, leak.real, config=helpers.CFG.override(canaries={"n": 4}))
    assert r.decision.method == "copies" and r.summary["warnings"][0].startswith("no known-unused images")
    row = r.predictions.set_index("image").loc[leak.exact_real]
    assert row["label"] == 1 and row["flagged_by"].startswith("copy:")
    assert r.predictions["label"].sum() <= len(r.predictions) // 2
    c = r.summary["canaries"]
    assert c["source_folder"] == "real" and c["table"][0]["kind"] == "exact"
    assert c["table"][0]["found"] == c["table"][0]["planted"] == 4


def test_used_without_not_used_is_refused_on_the_command_line_before_any_work(leak, tmp_path, monkeypatch, capsys):
    import sys

    from fpindex.cli import main

    monkeypatch.setattr(sys, "argv", ["fpindex", "audit", "-g", str(leak.generated), "-r", str(leak.real), "--used",
                                      str(leak.used), "--out", str(tmp_path / "o"), "--index", str(tmp_path / "i")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("fpindex: error: --used was given without --not-used")
    assert err.count("\n") == 1 and not (tmp_path / "o").exists() and not (tmp_path / "i").exists()


def test_swapped_folders_are_named_as_the_likely_cause(leak, helpers):
    """The generated folder given as the real one and the other way round: fewer generated images than real."""
    from fpindex import FpindexWarning, audit

    with pytest.warns(FpindexWarning, match="generated images for .* real ones: .* swapped"):
        audit(leak.real, leak.generated, config=helpers.CFG.override(canaries={"n": 0}))
    with pytest.warns(FpindexWarning, match="real images are byte-identical to generated images"):
        audit(leak.generated, leak.generated, config=helpers.CFG.override(canaries={"n": 0}))


def test_one_copy_feature_alone_is_no_copy():
    """A look-alike that aligns well on one measure only (two slices of similar anatomy) is not what a copy does
    to every copy feature: the copy channel asks all of them to agree (on patient-split nulls one feature alone
    alarmed in 61 of 360 re-decisions; benchmarks/README.md § Patients)."""
    rng = np.random.default_rng(3)
    used, not_used = Evidence(unused(rng, 60)), Evidence(unused(rng, 60))
    v = unused(rng, 200)
    v["ssim_aligned"][:3] = 0.99                 # far beyond every unused image on this feature …
    v["bandpass"][:3] = np.median(v["bandpass"])    # … and typical on the other
    d = decide(DecideConfig(method="calibrated", permutations=49), Evidence(v), Labelled(used=used, not_used=not_used))
    assert d.p_channels["copy"][:3].min() > 0.3
    assert not any("copy:" in b for b in d.flagged_by[:3])
