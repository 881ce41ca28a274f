"""Stage 2 — enhancement filters and their parsing."""

from __future__ import annotations

import numpy as np
import pytest

from fpindex.enhance import ENHANCERS, enhance_stack, parse_enhance
from fpindex.errors import FpindexError


def _inputs(helpers):
    rng = np.random.default_rng(0)
    return {
        "noise": rng.random((64, 64)).astype(np.float32),
        "structured": helpers.smooth_image(3),
        "non_square": rng.random((48, 80)).astype(np.float32),
        "constant": np.full((64, 64), 0.3, np.float32),
        "black": np.zeros((64, 64), np.float32),
        "white": np.ones((64, 64), np.float32),
    }


def test_registry_has_the_documented_filters():
    assert set(ENHANCERS.names()) >= {"none", "gaussian", "laplacian", "hessian", "bilateral", "dog"}


@pytest.mark.parametrize("name", ENHANCERS.names())
def test_enhancer_keeps_shape_range_dtype(name, helpers):
    fn = ENHANCERS.get(name)
    for kind, img in _inputs(helpers).items():
        out = fn(img)
        assert out.shape == img.shape, (name, kind)
        assert out.dtype == np.float32, (name, kind)
        assert np.isfinite(out).all(), (name, kind)
        assert out.min() >= 0.0 and out.max() <= 1.0, (name, kind)


@pytest.mark.parametrize("name", [n for n in ENHANCERS.names() if n != "none"])
def test_enhancer_changes_a_structured_image(name, helpers):
    img = helpers.smooth_image(5)
    assert not np.allclose(ENHANCERS.get(name)(img), img, atol=1e-3)


def test_filter_semantics_on_simple_inputs(helpers):
    img = helpers.smooth_image(1)
    np.testing.assert_array_equal(ENHANCERS.get("none")(img), img)
    flat = np.full((32, 32), 0.4, np.float32)
    np.testing.assert_allclose(ENHANCERS.get("laplacian")(flat), 0.0, atol=1e-6)   # no edges
    np.testing.assert_array_equal(ENHANCERS.get("dog")(flat), 0.0)
    np.testing.assert_array_equal(ENHANCERS.get("hessian")(np.zeros((32, 32), np.float32)), 0.0)
    # DoG is min-max scaled, histogram equalisation spreads to the full range, the Hessian map is binary.
    dog = ENHANCERS.get("dog")(img)
    assert dog.min() == 0.0 and dog.max() == pytest.approx(1.0)
    assert ENHANCERS.get("gaussian")(img).max() == pytest.approx(1.0)
    assert set(np.unique(ENHANCERS.get("hessian")(img))) <= {0.0, 1.0}


def test_enhance_stack_channels_in_order(helpers):
    img = helpers.smooth_image(2)
    names = ("laplacian", "none", "dog")
    stack = enhance_stack(img, names)
    assert stack.shape == (3, 64, 64) and stack.dtype == np.float32
    for i, n in enumerate(names):
        np.testing.assert_array_equal(stack[i], ENHANCERS.get(n)(img))


@pytest.mark.parametrize("value,expected", [
    (None, ("none",)),
    ("gaussian", ("gaussian",)),
    ("gaussian,laplacian", ("gaussian", "laplacian")),
    (" dog , none ", ("dog", "none")),
    (["laplacian", "gaussian"], ("laplacian", "gaussian")),
    (["gaussian,dog", "gaussian", "dog,hessian"], ("gaussian", "dog", "hessian")),   # repeats dropped, order kept
    ("", ("none",)),
    ([",", ""], ("none",)),
])
def test_parse_enhance(value, expected):
    assert parse_enhance(value) == expected


@pytest.mark.parametrize("value", ["sharpen", "gaussian,sharpen", ["none", "Gaussian"]])
def test_parse_enhance_unknown_name(value):
    with pytest.raises(FpindexError, match="unknown enhancement"):
        parse_enhance(value)
