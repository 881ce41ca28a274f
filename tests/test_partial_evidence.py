"""Stage 5–6 — evidence for partial copies (band-passed correlation after alignment) and for leaks beyond
typicality (density ratio against the audit's other real images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fpindex.evidence import FEATURES, ImageBatch
from fpindex.evidence.bandpass import bandpass_correlation
from fpindex.search import search_real


def textured(seed: int, size: int = 64) -> np.ndarray:
    """Structure at every scale, like a CT slice: smooth shapes plus fine seeded texture."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.0)
    img = 0.6 * coarse + 0.8 * fine
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def moved(img, angle, scale, dx, dy):
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_bandpass_finds_copies_and_blends_that_an_unrelated_image_does_not_match():
    real = np.stack([textured(s) for s in range(6)])
    others = np.stack([textured(100 + s) for s in range(12)])
    copies = np.stack([real[0], moved(real[1], 4, 1.0, 2, -1), moved(real[2], -3, 1.04, -2, 2)])
    # A blend of three, the member one third of it, warped a little: what dev-blend's generator emits.
    blends = np.stack([(moved(real[3 + i], 3, 1.0, 1, 1) + others[2 * i] + others[2 * i + 1]) / 3 for i in range(3)])
    gen = np.concatenate([copies, blends, others[6:]])
    ai, bi = np.arange(6), np.arange(6)
    got = bandpass_correlation(real, gen, ai, bi)
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(got[1:3] > 0.8)
    unrelated = bandpass_correlation(real, gen, np.arange(6), np.arange(6, 12))
    assert got[3:].min() > unrelated.max() + 0.15                   # a third of an image still stands out
    np.testing.assert_array_equal(bandpass_correlation(real, gen, ai, bi, threads=1), got)   # thread-independent


def test_bandpass_is_registered_after_the_older_features():
    f = FEATURES.get("bandpass")
    assert f.level == "pair" and f.needs == {"pixels"} and f.on_demand
    assert FEATURES.names()[:6] == ["cosine", "ssim", "jaccard", "subspace", "ssim_aligned", "bandpass"]
    assert f.cache_identity(64) != f.cache_identity(128)


def unit(rng, n, d=16):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_search_real_excludes_the_image_and_its_copies_and_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = unit(rng, 7), unit(rng, 5)
    sha_a = [f"a{i}" for i in range(7)]
    sha_b = [f"b{i}" for i in range(5)]
    b[0], sha_b[0] = a[3], "a3"                          # the same file in two folders
    got_a, got_b = search_real([(a, sha_a), (b, sha_b)], k=4, batch=3)
    allv, alls = np.concatenate([a, b]), sha_a + sha_b
    for vecs, shas, got in ((a, sha_a, got_a), (b, sha_b, got_b)):
        for v, s, row in zip(vecs, shas, got):
            sims = np.sort([float(v @ w) for w, t in zip(allv, alls) if t != s])[::-1][:4]
            np.testing.assert_allclose(row, sims, atol=1e-6)
    assert np.all(got_a[3] < 0.9999) and np.all(got_b[0] < 0.9999)   # neither copy sees the other


def test_search_real_pads_with_nan_when_the_audit_is_small():
    rng = np.random.default_rng(1)
    v = unit(rng, 3)
    (got,) = search_real([(v, ["x", "y", "z"])], k=5)
    assert got.shape == (3, 5) and np.isfinite(got[:, :2]).all() and np.isnan(got[:, 2:]).all()
    (alone,) = search_real([(v[:1], ["x"])], k=5)
    assert np.isnan(alone).all()


def test_density_ratio_is_generated_minus_real_mean_and_zero_without_background():
    f = FEATURES.get("density_ratio")
    assert f.level == "image" and f.needs == {"neighbours", "real_neighbours"} and f.cache_identity(64) is None
    cos = np.array([[0.9, 0.7, np.nan], [0.5, 0.5, 0.5], [0.8, 0.6, 0.4]], np.float32)
    real = np.array([[0.6, 0.6, 0.6], [0.7, np.nan, np.nan], [np.nan, np.nan, np.nan]], np.float32)
    got = f.images(ImageBatch(cosine=cos, real_cosine=real))
    np.testing.assert_allclose(got, [0.8 - 0.6, 0.5 - 0.7, 0.0], atol=1e-6)


def test_only_image_level_features_may_read_whole_neighbour_lists():
    from fpindex.evidence import Feature, feature

    class Bad(Feature):
        name, help, needs = "bad_lists", "x", frozenset({"neighbours"})

    with pytest.raises(ValueError, match="only image-level features read whole neighbour lists"):
        feature(Bad)
    assert "bad_lists" not in FEATURES


def test_sibling_groups_join_mutual_neighbours_within_a_folder_only():
    from fpindex.search import sibling_groups

    rng = np.random.default_rng(2)
    centres = unit(rng, 4)
    series = np.repeat(centres, 3, axis=0) + 0.01 * rng.standard_normal((12, 16)).astype(np.float32)
    series /= np.linalg.norm(series, axis=1, keepdims=True)
    a, b = sibling_groups([series, series[:3].copy()])
    assert len(np.unique(a)) == 4 and all(len(np.unique(a[3 * i:3 * i + 3])) == 1 for i in range(4))
    assert len(np.unique(b)) == 1 and not set(a) & set(b)            # ids kept apart across folders
    (one,) = sibling_groups([series[:1]])
    assert one.tolist() == [0]


def test_a_query_without_the_real_images_neighbours_is_refused_for_a_feature_that_reads_them():
    from types import SimpleNamespace

    from fpindex.evidence.compute import _real_cosines

    with pytest.raises(ValueError, match="^feature density_ratio needs the real images' own neighbours"):
        _real_cosines(FEATURES.get("density_ratio"), SimpleNamespace(real_cosine=None), np.arange(2))
    assert _real_cosines(FEATURES.get("cosine"), SimpleNamespace(real_cosine=None), np.arange(2)) is None


class _Pixels:
    """The runner's view of a few in-memory images (evidence/compute.py's Images protocol)."""

    size = 64

    def __init__(self, real, gen):
        self._real, self._gen = real, gen

    def real(self, rows):
        return self._real[rows]

    def generated(self, ids):
        return self._gen[ids]

    def check_generated(self, ids):
        pass


def test_bandpass_is_computed_only_for_the_neighbours_the_aligned_ssim_screens_in():
    from fpindex.evidence import Query, Run, compute_evidence
    from fpindex.search import Neighbours

    assert FEATURES.get("bandpass").screen == "ssim_aligned"
    real = np.stack([textured(s) for s in range(3)])
    gen, ids = [], []
    for i, img in enumerate(real):            # per real image: two unrelated images, a moved copy, a copy
        ids.append([len(gen) + j for j in range(4)])
        gen += [textured(100 + 2 * i), textured(101 + 2 * i), moved(img, 3, 1.02, 1, -1), img.copy()]
    gen, ids = np.stack(gen), np.array(ids)
    nb = Neighbours(ids, np.tile(np.float32([0.9, 0.8, 0.7, 0.6]), (3, 1)))   # the copies ranked last by cosine
    q = Query(sha256=[f"r{i}" for i in range(3)], vectors=np.zeros((3, 4), np.float32), nb=nb,
              gen_sha256=lambda x: [f"g{i}" for i in x.tolist()], gen_vectors=lambda x: np.zeros((len(x), 4)),
              images=_Pixels(real, gen), attachments={}, where="test")
    wanted = frozenset({"ssim_aligned", "bandpass"})
    everything, _ = compute_evidence(q, Run(wanted=wanted), ["ssim_aligned", "bandpass"])   # default: all k
    assert np.isfinite(everything["bandpass"]).all()
    pair, ev = compute_evidence(q, Run(wanted=wanted, screen=2), ["ssim_aligned", "bandpass"])
    band = pair["bandpass"]
    np.testing.assert_array_equal(band[:, 2:], everything["bandpass"][:, 2:])    # the same values where computed
    assert np.isnan(band[:, :2]).all() and np.isfinite(band[:, 2:]).all()     # the two copies only
    ai, gi = np.repeat(np.arange(3), 2), ids[:, 2:].ravel()
    np.testing.assert_array_equal(band[:, 2:].ravel(), bandpass_correlation(real, gen, ai, gi))
    np.testing.assert_allclose(ev.scores["bandpass"], band[:, 3], atol=1e-6)   # best of those computed: the copy


def test_a_merged_list_reapplies_the_screen():
    from fpindex.evidence.compute import pool

    valid = np.ones((1, 3), bool)
    # the canaries' what-if: a planted copy (last) joins a list whose two computed pairs were the best screened
    screen = np.array([[0.6, 0.5, 0.9]], np.float32)
    band = np.array([[0.4, 0.7, 0.95]], np.float32)
    assert pool("bandpass", band, valid, {"ssim_aligned": screen}, 2) == pytest.approx(0.95)
    band_low = np.array([[0.4, 0.7, 0.1]], np.float32)    # the pair pushed out (0.7) no longer counts
    assert pool("bandpass", band_low, valid, {"ssim_aligned": screen}, 2) == pytest.approx(0.4)
    # no screen asked for, or no screening values (the aligned SSIM not computed): every pair counts
    assert pool("bandpass", band_low, valid, {"ssim_aligned": screen}) == pytest.approx(0.7)
    assert pool("bandpass", band_low, valid, {}, 2) == pytest.approx(0.7)


def test_a_screen_must_name_an_earlier_pair_level_feature():
    from fpindex.evidence import Feature, feature

    class Bad(Feature):
        name, help, screen = "bad_screen", "x", "no_such_feature"

    with pytest.raises(ValueError, match="screen must name a pair-level feature registered before it"):
        feature(Bad)
    assert "bad_screen" not in FEATURES


def test_screen_is_a_whole_number_of_neighbours():
    from fpindex.config import EvidenceConfig
    from fpindex.errors import FpindexError

    with pytest.raises(FpindexError, match="--screen must be at least 1"):
        EvidenceConfig(screen=0)
    assert EvidenceConfig().screen is None


def test_an_absent_neighbour_stays_zero_and_only_screened_out_pairs_are_nan():
    from fpindex.evidence import Query, Run, compute_evidence
    from fpindex.search import Neighbours

    real = np.stack([textured(7)])
    gen = np.stack([real[0].copy(), textured(8), textured(9)])
    nb = Neighbours(np.array([[0, 1, 2, -1]]), np.float32([[0.9, 0.8, 0.7, np.nan]]))   # the index had 3 images
    q = Query(sha256=["r0"], vectors=np.zeros((1, 4), np.float32), nb=nb,
              gen_sha256=lambda x: [f"g{i}" for i in x.tolist()], gen_vectors=lambda x: np.zeros((len(x), 4)),
              images=_Pixels(real, gen), attachments={}, where="test")
    for screen in (None, 1):
        pair, _ = compute_evidence(q, Run(wanted=frozenset({"ssim_aligned", "bandpass"}), screen=screen),
                                   ["ssim_aligned", "bandpass"])
        assert pair["bandpass"][0, 3] == 0 and pair["ssim_aligned"][0, 3] == 0
        assert np.isnan(pair["bandpass"][0, 1:3]).all() == (screen == 1)
