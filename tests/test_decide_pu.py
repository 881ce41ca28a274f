"""The no-labels decision: real images (a mix) against known-unused ones, fused without labels."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.config import DecideConfig
from fpindex.decide import Labelled, decide, positive_unlabelled, storey_share
from fpindex.errors import FpindexError
from fpindex.evidence import FEATURES as REGISTRY, Evidence
from fpindex.metrics import rank_auc

FEATURES = tuple(REGISTRY.names())


def mix(rng, n_used, n_unused, shift, informative=("ssim", "jaccard")):
    """Members differ from non-members only on some features; the others are noise the fusion must learn to
    leave out without being told which."""
    return Evidence({f: np.r_[rng.normal(shift if f in informative else 0.0, 1, n_used), rng.normal(0, 1, n_unused)]
                     for f in FEATURES})


def test_pu_finds_members_without_labels_and_beats_the_single_score():
    rng = np.random.default_rng(0)
    target = mix(rng, 150, 150, 1.5)
    ref = mix(rng, 0, 200, 0.0)
    y = np.r_[np.ones(150), np.zeros(150)]
    d = decide(DecideConfig(method="pu"), target, Labelled(reference=ref))
    single = decide(DecideConfig(method="reference"), target, Labelled(reference=ref))   # reads cosine only
    assert d.method == "pu" and d.verdict.leakage is True and d.verdict.p_value <= 0.05
    assert rank_auc(y, d.score) > 0.9 > 0.6 > rank_auc(y, single.score)
    assert d.details["weights"]["ssim"] > 0 and d.details["weights"]["jaccard"] > 0
    assert d.p_value[:150].mean() < 0.15 < d.p_value[150:].mean()
    lo, hi = d.details["used_share"]["ci95"]
    assert lo <= d.details["used_share"]["estimate"] <= hi and lo < 0.5 < hi + 0.15


@pytest.mark.parametrize("seed", range(6))
def test_pu_on_a_clean_generator_says_no_evidence_and_labels_nothing(seed):
    rng = np.random.default_rng(seed)
    d = decide(DecideConfig(method="pu", seed=seed), mix(rng, 0, 300, 0.0), Labelled(reference=mix(rng, 0, 150, 0.0)))
    assert d.verdict.leakage is False and not d.label.any()


@pytest.mark.slow
def test_pu_false_alarm_rate_stays_near_alpha_over_many_null_sets():
    """Twenty seeded null sets at alpha 0.2: the permutation verdict fires about a fifth of the time, not more."""
    fired = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        d = decide(DecideConfig(method="pu", alpha=0.2, permutations=49, seed=seed), mix(rng, 0, 80, 0.0),
                   Labelled(reference=mix(rng, 0, 60, 0.0)))
        fired += bool(d.verdict.leakage)
    assert fired <= 8          # binomial(20, 0.2): P(≥ 9) < 1 %


def test_pu_never_reads_less_similar_as_used():
    rng = np.random.default_rng(3)
    d = decide(DecideConfig(method="pu"), mix(rng, 150, 150, -1.5, FEATURES), Labelled(reference=mix(rng, 0, 200, 0.0)))
    assert d.verdict.leakage is False and not d.label.any()


def test_pu_is_deterministic_and_uses_not_used_when_no_reference():
    rng = np.random.default_rng(4)
    target, ref = mix(rng, 40, 40, 2.0), mix(rng, 0, 40, 0.0)
    a = decide(DecideConfig(method="pu"), target, Labelled(reference=ref))
    b = decide(DecideConfig(method="pu"), target, Labelled(not_used=ref))
    np.testing.assert_array_equal(a.score, b.score)
    assert a.details == b.details


def test_pu_needs_known_unused_images():
    with pytest.raises(FpindexError, match="decision 'pu' needs known-unused real images"):
        decide(DecideConfig(method="pu"), mix(np.random.default_rng(0), 5, 5, 1.0), Labelled())
    with pytest.raises(FpindexError, match="at least 2 real images and 2 known-unused"):
        rng = np.random.default_rng(0)
        decide(DecideConfig(method="pu"), mix(rng, 5, 5, 1.0), Labelled(reference=mix(rng, 0, 1, 0.0)))


def test_storey_share_by_hand():
    assert storey_share(np.array([0.01, 0.02, 0.6, 0.9])) == pytest.approx(0.0)   # 2 of 4 above 0.5: pi0 = 1
    assert storey_share(np.array([0.01, 0.02, 0.03, 0.9])) == pytest.approx(0.5)  # 1 of 4: pi0 = 0.5
    assert storey_share(np.array([])) == 0.0


def clustered(rng, groups, per_group, offset):
    """Images in series: each group (a patient) shares one random effect on every feature, so the images of a
    group are alike whether or not they were used."""
    centre = rng.normal(0, 1, (groups, len(FEATURES)))
    x = np.repeat(centre, per_group, axis=0) + 0.2 * rng.normal(0, 1, (groups * per_group, len(FEATURES)))
    return Evidence({f: x[:, i] for i, f in enumerate(FEATURES)},
                    groups=np.repeat(np.arange(groups), per_group) + offset)


@pytest.mark.slow
def test_sibling_groups_keep_the_verdict_at_alpha_where_image_level_tests_cry_wolf():
    """A few patients per side and nothing leaked: an image-level permutation test reads the patients'
    differences as a signal; permuting whole groups does not."""
    alarms = {"grouped": 0, "images": 0}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        target, ref = clustered(rng, 6, 8, 0), clustered(rng, 6, 8, 100)
        cfg = DecideConfig(method="pu", permutations=99, seed=seed)
        grouped = positive_unlabelled(cfg, target, Labelled(reference=ref))      # the fused channel alone
        flat = positive_unlabelled(cfg, Evidence(target.scores), Labelled(reference=Evidence(ref.scores)))
        alarms["grouped"] += bool(grouped.verdict.leakage)
        alarms["images"] += bool(flat.verdict.leakage)
        assert grouped.details["sibling_groups"] == {"real": 6, "reference": 6}
        assert flat.details["sibling_groups"] is None
    assert alarms["grouped"] <= 1 and alarms["images"] >= 4      # measured: 0 and 6 of 8


def test_cross_fit_refuses_a_group_spanning_both_classes():
    from fpindex.decide import cross_fit

    x = np.random.default_rng(0).normal(size=(8, 2))
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="a sibling group spans both classes"):
        cross_fit(x, y, 2, DecideConfig(), groups=np.array([0, 0, 1, 1, 1, 2, 2, 3]))
