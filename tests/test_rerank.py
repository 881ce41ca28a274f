"""Stage 6 — SSIM (against scikit-image's reference) and Jaccard of binarised embeddings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from fpindex.evidence.jaccard import binarize, jaccard
from fpindex.evidence.similarity import ssim_pairs


def reference_ssim(a, b):
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)


def pairs(helpers, h=64, w=64):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    smooth = helpers.smooth_image(7, max(h, w))[:h, :w]
    grad = (0.2 + 0.6 * xx).astype(np.float32)
    stripes = (0.5 + 0.5 * np.sin(12 * xx + 4 * yy)).astype(np.float32)
    noise = rng.random((h, w)).astype(np.float32)
    shifted = np.roll(smooth, 2, axis=1)
    blurred = cv2.GaussianBlur(smooth, (0, 0), 1.5)
    a = [noise, noise, smooth, smooth, smooth, smooth, grad, stripes, stripes, np.zeros((h, w), np.float32)]
    b = [rng.random((h, w)).astype(np.float32),                       # independent noise
         np.clip(noise + 0.1 * rng.standard_normal((h, w)), 0, 1),    # noisy copy
         smooth,                                                      # identical
         shifted, blurred, np.clip(0.8 * smooth + 0.1, 0, 1),         # shift, blur, contrast change
         grad[:, ::-1].copy(), 1 - stripes, np.clip(stripes ** 2, 0, 1),
         np.full((h, w), 0.5, np.float32)]                            # flat vs flat
    return np.stack(a).astype(np.float32), np.stack(b).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (11, 30)])
def test_ssim_matches_skimage(helpers, shape):
    a, b = pairs(helpers, *shape)
    got = ssim_pairs(a, b)
    expected = np.array([reference_ssim(x, y) for x, y in zip(a, b)])
    assert got.dtype == np.float32 and got.shape == (len(a),)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if shape == (64, 64):
        assert got[2] == pytest.approx(1.0, abs=1e-6)           # identical images
        assert abs(got[0]) < 0.05                               # independent noise
        assert got[1] > got[0] and got[3] < got[2]


def test_ssim_random_batch_matches_skimage_whatever_the_batch_size():
    rng = np.random.default_rng(3)
    a = rng.random((7, 32, 32)).astype(np.float32)
    b = np.clip(a + rng.normal(0, rng.uniform(0.01, 0.5, (7, 1, 1)), a.shape), 0, 1).astype(np.float32)
    expected = np.array([reference_ssim(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ssim_pairs(a, b), expected, atol=1e-4)
    from fpindex.evidence.similarity import ssim_indexed

    idx = np.arange(len(a))     # holding the terms of 2 images at a time changes nothing
    np.testing.assert_array_equal(ssim_indexed(a, b, idx, idx, max_images=2), ssim_pairs(a, b))
    np.testing.assert_allclose(ssim_pairs(a, b), ssim_pairs(b, a), atol=1e-6)   # symmetric


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"^expected two n × H × W stacks of equal shape, got \(2, 32, 32\) and "
                                         r"\(2, 32, 31\)$"):
        ssim_pairs(np.zeros((2, 32, 32), np.float32), np.zeros((2, 32, 31), np.float32))
    with pytest.raises(ValueError, match=r"^expected two n × H × W stacks of equal shape, got \(32, 32\) and "
                                         r"\(32, 32\)$"):
        ssim_pairs(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="^images must be at least 11 px for SSIM$"):
        ssim_pairs(np.zeros((2, 10, 32), np.float32), np.zeros((2, 10, 32), np.float32))


def test_binarize_by_own_median():
    v = np.array([[1.0, 5.0, 3.0, 2.0],          # median 2.5
                  [-4.0, 0.0, -1.0, 10.0],       # median -0.5, scale does not matter
                  [100.0, 500.0, 300.0, 200.0]])  # = row 0 × 100
    bits = binarize(v)
    assert bits.dtype == bool
    np.testing.assert_array_equal(bits, [[False, True, True, False],
                                         [False, True, False, True],
                                         [False, True, True, False]])
    np.testing.assert_array_equal(bits.sum(axis=1), 2)   # half the bits on
    np.testing.assert_array_equal(binarize(v[0]), bits[0])  # 1-D works too
    np.testing.assert_array_equal(binarize(np.ones((1, 6))), np.zeros((1, 6), bool))


def test_jaccard_hand_made():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 1], bool)
    assert jaccard(a, b) == pytest.approx(2 / 4)    # |{0,4}| / |{0,1,2,4}|
    assert jaccard(a, a) == 1.0
    assert jaccard(a, ~a) == 0.0
    assert jaccard(np.zeros(5, bool), np.zeros(5, bool)) == 0.0   # both empty
    # Broadcasting: one code against several.
    many = np.array([[1, 1, 0, 0, 1], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
    got = jaccard(a[None], many)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [1.0, 0.0, 1 / 3])


def test_jaccard_of_binarised_embeddings_tracks_similarity():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1, 64))
    near = v + 0.05 * rng.standard_normal((1, 64))
    far = rng.standard_normal((1, 64))
    assert jaccard(binarize(v), binarize(3.0 * v))[0] == 1.0     # scale-free
    assert jaccard(binarize(v), binarize(near))[0] > 0.8 > jaccard(binarize(v), binarize(far))[0]


def test_indexed_ssim_cpu_chunks_threads_and_blocks_agree_bit_for_bit():
    """Audit-like pairs (each real image against k neighbours, neighbours shared, some identical to the real
    image) over many 32-pair chunks: same values whatever the threads or the number of images held, equal to
    skimage, and exactly 1 for identical images wherever they fall in a chunk."""
    from fpindex.evidence.similarity import ssim_indexed

    rng = np.random.default_rng(5)
    real = rng.random((12, 24, 24)).astype(np.float32)
    gen = np.clip(np.concatenate([real[:4], rng.random((30, 24, 24))]) +
                  np.r_[np.zeros(4), np.full(30, 0.05)][:, None, None] * rng.standard_normal((34, 24, 24)),
                  0, 1).astype(np.float32)
    ai = np.repeat(np.arange(12), 9)
    bi = rng.integers(4, 34, len(ai))
    bi[[0, 9, 18, 27]] = [0, 1, 2, 3]                       # real image i against its exact copy gen[i]
    got = ssim_indexed(real, gen, ai, bi, threads=2)
    for kw in ({"threads": 1}, {"max_images": 3}, {"max_images": 1, "threads": 3}):
        np.testing.assert_array_equal(ssim_indexed(real, gen, ai, bi, **kw), got)
    np.testing.assert_array_equal(got[[0, 9, 18, 27]], 1.0)
    pick = rng.choice(len(ai), 20, replace=False)
    np.testing.assert_allclose(got[pick], [reference_ssim(real[ai[i]], gen[bi[i]]) for i in pick], atol=1e-5)


# ---- SSIM after rigid alignment -------------------------------------------------------------------------

def moved(img, angle, dx, dy):
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_alignment_recovers_shifted_and_rotated_copies(helpers):
    from fpindex.evidence.align import align_to, ssim_aligned

    imgs = np.stack([helpers.smooth_image(s) for s in range(6)])
    copies = np.stack([moved(im, ang, dx, dy) for im, (ang, dx, dy)
                       in zip(imgs, [(0, 0, 0), (4, 0, 0), (0, 3, -2), (-5, 2, 1), (6, -3, 3), (2, 1, 0)])])
    idx = np.arange(len(imgs))
    plain, aligned = ssim_pairs(imgs, copies), ssim_aligned(imgs, copies, idx, idx)
    assert aligned[0] == pytest.approx(1.0, abs=1e-6)                # an identical pair stays exactly matched
    assert np.all(aligned[1:] > 0.9) and np.all(aligned[1:] > plain[1:] + 0.05)
    # Unrelated images gain far less than copies do: alignment does not make everything match.
    other = ssim_aligned(imgs, np.roll(copies, 1, axis=0), idx, idx)
    assert other.max() < aligned[1:].min() - 0.2
    np.testing.assert_allclose(ssim_aligned(imgs, copies, idx, idx, threads=1, chunk=2), aligned, atol=0)
    flat = np.full((64, 64), 0.5, np.float32)                        # ECC finds nothing: image unchanged
    np.testing.assert_array_equal(align_to(flat, flat), flat)
