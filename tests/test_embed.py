"""Stage 3 — embedders: shape, normalisation, determinism, weights handling, devices."""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import torch

from fpindex.embed import EMBEDDERS, CNNEmbedder, build_embedder
from fpindex.errors import FpindexError


def batch(n=4, c=1, size=64, seed=0):
    return np.random.default_rng(seed).random((n, c, size, size)).astype(np.float32)


def cnn(seed=0, channels=1, weights="random", size=64):
    return build_embedder("cnn", channels=channels, size=size, weights=weights, seed=seed, device="cpu")


def test_registry_lists_the_built_in_models():
    assert EMBEDDERS.names() == ["pixels", "cnn", "resnet50", "timm", "torchscript"]


@pytest.mark.parametrize("model,channels,dim", [("pixels", 1, 1024), ("pixels", 3, 3072),
                                                 ("cnn", 1, 512), ("cnn", 2, 512)])
def test_output_is_l2_normalised_float32_of_dim(model, channels, dim):
    e = build_embedder(model, channels=channels, size=64, weights=None, seed=0, device="cpu")
    assert e.dim == dim
    v = e(batch(5, channels))
    assert v.shape == (5, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Different images → different vectors; the same image → the same vector wherever it sits in a batch.
    assert not np.allclose(v[0], v[1])
    x = batch(3, channels, seed=1)
    both = e(np.concatenate([x, x[::-1]]))
    np.testing.assert_allclose(both[:3], both[3:][::-1], atol=1e-5)
    np.testing.assert_allclose(e(x[:1])[0], both[0], atol=1e-5)


def test_pixels_is_mean_centred_downsampled_pixels():
    e = build_embedder("pixels", channels=1, size=64, weights=None, seed=0, device="cpu")
    assert e.weights_id == "none"
    x = batch(2)
    # 64 → 32 with area interpolation = mean of 2 × 2 blocks.
    small = x.reshape(2, 32, 2, 32, 2).mean(axis=(2, 4)).reshape(2, -1)
    small -= small.mean(axis=1, keepdims=True)
    expected = small / np.linalg.norm(small, axis=1, keepdims=True)
    np.testing.assert_allclose(e(x), expected, atol=1e-5)
    # Brightness offset does not change a mean-centred embedding.
    np.testing.assert_allclose(e(np.clip(x * 0.5 + 0.2, 0, 1)), e(x * 0.5), atol=1e-5)


def test_pixels_refuses_weights():
    with pytest.raises(FpindexError, match="^model 'pixels' has no weights; drop --weights"):
        build_embedder("pixels", channels=1, size=64, weights="imagenet", seed=0, device="cpu")


def test_cnn_deterministic_for_a_seed_and_different_across_seeds():
    x = batch()
    a, b, c = cnn(seed=0), cnn(seed=0), cnn(seed=1)
    np.testing.assert_array_equal(a(x), b(x))
    assert a.weights_id == "random:seed=0" and c.weights_id == "random:seed=1"
    assert not np.allclose(a(x), c(x), atol=1e-3)


def test_seeded_init_leaves_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cnn(seed=7)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_cnn_refuses_imagenet():
    with pytest.raises(FpindexError, match="^model 'cnn' has no ImageNet weights; pass --weights random"):
        cnn(weights="imagenet")


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "module_prefix"])
def test_cnn_checkpoint_round_trip(tmp_path, wrap):
    src = cnn(seed=5)
    state = src.net.state_dict()
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    loaded = cnn(seed=0, weights=str(path))     # a different seed: the checkpoint must win
    assert loaded.weights_id.startswith("file:sha256=")
    x = batch()
    np.testing.assert_allclose(loaded(x), src(x), atol=1e-6)
    assert not np.allclose(loaded(x), cnn(seed=0)(x), atol=1e-3)


def test_checkpoint_id_tracks_file_content(tmp_path):
    torch.save(cnn(seed=1).net.state_dict(), tmp_path / "a.pth")
    torch.save(cnn(seed=2).net.state_dict(), tmp_path / "b.pth")
    ids = {cnn(weights=str(tmp_path / n)).weights_id for n in ("a.pth", "b.pth")}
    assert len(ids) == 2


@pytest.mark.parametrize("content,reason", [("garbage", "not a loadable torch checkpoint"),
                                            ("empty", "not a loadable torch checkpoint"),
                                            ("not_tensors", "expected a state_dict of tensors"),
                                            ("wrong_shape", r"does not fit this model \(shape mismatch for"),
                                            ("missing_keys", r"does not fit this model \(missing \[")])
def test_bad_checkpoint_is_an_fpindex_error(tmp_path, content, reason):
    path = tmp_path / "bad.pth"
    if content == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "not_tensors":
        torch.save({"a": 1, "b": "x"}, path)
    elif content == "wrong_shape":
        torch.save(cnn(channels=3).net.state_dict(), path)   # conv1 takes 3 channels, not 1
    else:
        sd = cnn().net.state_dict()
        sd.pop(next(iter(sd)))
        torch.save(sd, path)
    with pytest.raises(FpindexError, match=rf"^weights {re.escape(str(path))}: {reason}"):
        cnn(weights=str(path))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FpindexError, match=rf"^weights {re.escape(str(tmp_path / 'nope.pth'))}: no such file"):
        cnn(weights=str(tmp_path / "nope.pth"))


def test_build_embedder_defaults_and_limits():
    e = build_embedder("cnn", channels=1, size=None, weights=None, seed=0, device="cpu")
    assert e.spec.size == EMBEDDERS.meta("cnn")["default_size"] == 64 and e.spec.weights == "selfsup"
    assert e.weights_id == "selfsup:untrained"          # trained by the build, which then sets the real id
    with pytest.raises(FpindexError, match="^image size 16 is too small for model cnn; use at least 32$"):
        build_embedder("cnn", channels=1, size=16, weights=None, seed=0, device="cpu")
    with pytest.raises(FpindexError, match="^unknown model 'vit'; choose one of: pixels, cnn, resnet50, timm:NAME, torchscript$"):
        build_embedder("vit", channels=1, size=64, weights=None, seed=0, device="cpu")


# ---- resnet50 (slow on CPU: 32 px inputs, one or two images) ------------------------------------------

@pytest.mark.slow
def test_resnet50_random_weights():
    a = build_embedder("resnet50", channels=1, size=32, weights="random", seed=0, device="cpu")
    assert a.dim == 2048 and a.weights_id == "random:seed=0"
    x = batch(2, 1, 32)
    v = a(x)
    assert v.shape == (2, 2048) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Same seed, same vectors; conv1 is tiled over channels and divided by C, so C identical channels
    # give exactly the 1-channel response.
    b = build_embedder("resnet50", channels=2, size=32, weights="random", seed=0, device="cpu")
    np.testing.assert_allclose(b(np.repeat(x[:1], 2, axis=1)), v[:1], atol=1e-4)


def test_resnet50_imagenet_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)   # honour TORCH_HOME even after set_dir()

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", offline)   # never download, even on a networked machine
    with pytest.raises(FpindexError, match=r"^resnet50 ImageNet weights are not in the torch cache \(") as err:
        build_embedder("resnet50", channels=1, size=32, weights="imagenet", seed=0, device="cpu")
    msg = str(err.value)
    assert "--weights" in msg and str(tmp_path / "torch") in msg
    assert not list((tmp_path / "torch").rglob("*.pth"))


# ---- devices (how --device is read: tests/test_devices.py) ------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_build_embedder_refuses_cuda_without_gpu():
    with pytest.raises(FpindexError, match="^--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto$"):
        build_embedder("cnn", channels=1, size=64, weights=None, seed=0, device="cuda")


def test_worker_fork_server_preloads_a_module_that_exists(monkeypatch):
    """The fork server imports its preload list in a fresh process; a stale name (it was `fpindex.stream`) fails
    there, where nobody sees it, and every worker then pays the import itself."""
    import importlib.util
    import multiprocessing as mp

    from fpindex.embed import stream

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no forkserver start method on this platform")
    seen = []
    monkeypatch.setattr(type(mp.get_context("forkserver")), "set_forkserver_preload",
                        lambda self, names: seen.extend(names), raising=False)
    stream._context()
    assert seen and all(importlib.util.find_spec(n) is not None for n in seen), seen
