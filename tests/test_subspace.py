"""Stage 6b — the generated set's principal subspace and the evidence it gives each real image."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.evidence import subspace


def family(n: int, seed: int, basis_seed: int = 0, rank: int = 6, size: int = 64) -> np.ndarray:
    """n smooth images that are mixtures of `rank` fixed patterns (a low-dimensional 'generator'), in [0, 1]."""
    rng = np.random.default_rng(basis_seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.random()))
                         for _ in range(rank)])
    w = np.random.default_rng(seed).normal(0, 1, (n, rank))
    imgs = 0.5 + 0.08 * np.tensordot(w, patterns, axes=1)
    return np.clip(imgs, 0, 1).astype(np.float32)


@pytest.mark.slow
def test_images_of_the_generated_family_are_reconstructed_and_others_are_not():
    space = subspace.fit(family(200, seed=1))
    assert 1 <= len(space.basis) <= 6                       # the rank of the family, found from the data
    inside = space.evidence(family(20, seed=2))            # same family, new images
    outside = space.evidence(family(20, seed=2, basis_seed=9))
    assert inside.min() > 0.99
    assert outside.max() < inside.min()
    np.testing.assert_allclose(space.basis @ space.basis.T, np.eye(len(space.basis)), atol=1e-8)


def test_round_trip_and_damaged_bytes():
    space = subspace.fit(family(50, seed=3))
    again = subspace.Subspace.from_bytes(space.to_bytes())
    imgs = family(5, seed=4)
    np.testing.assert_allclose(again.evidence(imgs), space.evidence(imgs), atol=1e-6)
    assert again.describe() == space.describe()
    with pytest.raises(ValueError, match=r"^not a subspace file \(\w+\)$"):
        subspace.Subspace.from_bytes(b"garbage")


def test_degenerate_sets_do_not_crash():
    flat = np.full((3, 64, 64), 0.5, np.float32)
    space = subspace.fit(flat)                               # no variance at all
    assert len(space.basis) == 0
    assert np.all(space.evidence(flat) == 1.0)              # an image equal to the mean is reconstructed exactly
    assert len(subspace.fit(flat[:1]).basis) == 0
    assert subspace.fit(family(10, seed=5)).evidence(np.empty((0, 64, 64), np.float32)).shape == (0,)


def test_fitting_in_shrunk_chunks_equals_fitting_at_once():
    imgs = family(40, seed=6, size=96)
    whole = subspace.fit(imgs)
    chunked = subspace.fit_shrunk(np.concatenate([subspace.shrink(imgs[:15]), subspace.shrink(imgs[15:])]))
    np.testing.assert_allclose(np.abs(chunked.basis @ whole.basis.T), np.eye(len(whole.basis)), atol=1e-6)
    probe = family(7, seed=7, size=96)
    np.testing.assert_allclose(chunked.evidence(probe), whole.evidence(probe), atol=1e-6)
