"""Evidence features are plug-ins: one registered in this file alone takes part in a whole audit."""

from __future__ import annotations

import numpy as np
import pytest

import fpindex
from fpindex.evidence import FEATURES, Feature, PairBatch, feature


@pytest.fixture
def toy():
    """A toy pair-level feature: how alike the mean intensities of a real image and a neighbour are."""

    @feature
    class MeanIntensity(Feature):
        name = "toy_mean"
        help = "1 − |difference of mean intensity| with the best neighbour (a test feature)"
        needs = frozenset({"pixels"})
        threshold = 0.99
        calls = 0

        def pairs(self, batch: PairBatch) -> np.ndarray:
            type(self).calls += 1
            real = batch.real_pixels.mean(axis=(1, 2))[batch.real_idx]
            gen = batch.gen_pixels.mean(axis=(1, 2))[batch.gen_idx]
            return (1.0 - np.abs(real - gen)).astype(np.float32)

    yield MeanIntensity
    FEATURES.unregister("toy_mean")


@pytest.mark.slow
def test_a_feature_registered_here_is_computed_fused_reported_and_thresholded(toy, leak, helpers):
    result = fpindex.audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=helpers.CFG)
    assert toy.calls > 0
    assert "toy_mean" in result.neighbours.columns
    exact = result.neighbours[(result.neighbours.image == leak.exact_real) & (result.neighbours["rank"] == 1)]
    assert float(exact["toy_mean"].iloc[0]) == pytest.approx(1.0, abs=1e-6)     # a byte-exact copy
    decision = result.summary["decision"]
    assert decision["features"][-1] == "toy_mean" and "toy_mean" in decision["weights"]
    assert result.summary["evidence"]["toy_mean"] == {"level": "pair", "help": toy.help, "computed": True}
    # The fixed decision on the new score uses its own default threshold.
    fixed = fpindex.audit(leak.generated, leak.real,
                          config=helpers.CFG.override(decide={"method": "fixed", "score": "toy_mean"}))
    assert fixed.summary.decision.details == {"score": "toy_mean", "threshold": 0.99}
    assert fixed.summary.decision.rule.threshold == 0.99 and fixed.summary.decision.rule.alpha is None
    best = fixed.neighbours.groupby("image", sort=False)["toy_mean"].max()
    np.testing.assert_array_equal(fixed.predictions["label"].to_numpy(), (best.to_numpy() >= 0.99).astype(np.int8))


@pytest.mark.slow
def test_a_feature_can_be_left_out_of_an_audit(toy, leak, helpers):
    cfg = helpers.CFG.override(evidence={"features": ("cosine", "ssim", "jaccard")})
    result = fpindex.audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=cfg)
    assert result.summary["decision"]["features"] == ["cosine", "ssim", "jaccard"]
    assert "toy_mean" not in result.neighbours.columns and toy.calls == 0


def test_a_bad_declaration_is_refused_at_registration():
    with pytest.raises(ValueError, match="^feature broken: level must be 'pair' or 'image'$"):
        @feature
        class Broken(Feature):
            name, help, level = "broken", "", "volume"
    assert "broken" not in FEATURES
