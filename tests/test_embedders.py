"""Bring your own embedder: a built-in registered from this file alone, timm and TorchScript models from local
weight files made here (seeded), fine-tuning any trainable backbone, and a command line that imports no torch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fpindex
from fpindex import build_index, open_index
from fpindex.embed import EMBEDDERS, Embedder, Spec, build_embedder
from fpindex.embed.weights import ChannelAdapter, load_checkpoint, read_state, seeded
from fpindex.errors import FpindexError

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "faiss", "ray", "matplotlib", "scipy", "sklearn", "pyarrow", "pandas")


def imported_by(*argv: str) -> tuple[list[str], str]:
    """Which heavy libraries a fresh interpreter has imported when `fpindex ARGV` ends (and its stderr)."""
    code = ("import atexit, sys\n"
            f"atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules)))\n"
            f"sys.argv = ['fpindex', *{list(argv)!r}]\n"
            "from fpindex.cli import main\nmain()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [x for x in r.stdout.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[6:].split(",") if m], r.stderr


def test_importing_fpindex_and_its_command_line_imports_no_heavy_library():
    code = f"import sys, fpindex, fpindex.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.stdout.strip() == ""


@pytest.mark.parametrize("argv", [("--help",), ("--version",), ("audit", "--help-all"), ("build", "--help"),
                                  ("build", "x", "--model", "vgg"), ("build", "x", "--model", "timm:")])
def test_help_version_and_usage_errors_import_no_heavy_library(argv):
    heavy, err = imported_by(*argv)
    assert heavy == []
    if "--model" in argv:
        assert re.search(r"Invalid value for '--model'.*is not one of 'pixels', 'cnn', 'resnet50', 'timm:NAME', "
                         r"'torchscript'", err, re.S)


def test_the_public_api_is_there_on_first_use():
    assert callable(fpindex.audit) and fpindex.FEATURES.names()[0] == "cosine" and "timm" in fpindex.EMBEDDERS
    with pytest.raises(AttributeError):
        fpindex.no_such_thing  # noqa: B018


# ---- a built-in embedder in one module: here, this file -------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def toy():
    @EMBEDDERS.register("toy", "a 1-conv test model, 32-d", default_size=64, default_weights="selfsup")
    class ToyEmbedder(Embedder):
        built = 0

        def __init__(self, spec: Spec) -> None:
            super().__init__(spec)
            type(self).built += 1
            with seeded(spec.seed):
                self.net = Tiny(spec.channels)
            if spec.weights in ("random", "selfsup"):
                self.weights_id = f"{spec.weights}:seed={spec.seed}"
            else:
                self.weights_id = load_checkpoint(spec.weights, self.net)
            self.dim = 32

        def _forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def trainable(self) -> nn.Module:
            return self.net

    yield ToyEmbedder
    EMBEDDERS.unregister("toy")


def test_a_registered_embedder_is_listed_with_its_defaults_and_built(toy, runner, tmp_path):
    from fpindex.cli import app

    assert EMBEDDERS.meta("toy") == {"default_size": 64, "default_weights": "selfsup"}
    e = build_embedder("toy", channels=1, size=None, weights="random", seed=0, device="cpu")
    v = e(np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32))
    assert v.shape == (3, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # --model checks the registry when the command line is parsed: the new name is a valid choice
    r = runner.invoke(app, ["build", str(tmp_path / "none"), "--model", "toy"])
    assert r.exit_code != 0 and "--model" not in r.output and "not one of" not in r.output


@pytest.mark.slow
def test_a_registered_embedder_is_trained_indexed_and_queried(toy, leak, helpers, tmp_path):
    cfg = helpers.CFG.override(embed={"model": "toy", "weights": "selfsup", "train_steps": 3})
    built = build_index(leak.generated, tmp_path / "idx", cfg)
    e = built.manifest["embedder"]
    assert e["model"] == "toy" and e["training"]["steps"] == 3 and e["weights_id"].startswith("file:sha256=")
    result = open_index(tmp_path / "idx", cfg).query(leak.real, used=leak.used, not_used=leak.not_used,
                                                    out=tmp_path / "out")
    assert result.summary["settings"]["embedder"]["weights_id"] == e["weights_id"]     # the trained weights, reread
    assert toy.built == 2


# ---- the shared weight loader and channel adapter --------------------------------------------------------

def test_weights_load_from_safetensors_and_state_dicts_and_name_the_misfit(tmp_path):
    from safetensors.torch import save_file

    with seeded(1):
        net = Tiny(1)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        fresh = Tiny(1)
        ident = load_checkpoint(str(tmp_path / name), fresh)
        assert ident.startswith("file:sha256=")
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    with pytest.raises(FpindexError, match=r"w\.pth: does not fit this model \(shape mismatch for \['conv\.weight'"):
        load_checkpoint(str(tmp_path / "w.pth"), Tiny(2))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(FpindexError, match=r"bad\.safetensors: not a loadable safetensors file"):
        read_state(tmp_path / "bad.safetensors")


def test_the_channel_adapter_replicates_grey_and_refuses_a_misfit():
    a = ChannelAdapter(1, 3, (0.5, 0.4, 0.3), (0.5, 0.5, 0.5), widened=False)
    y = a(torch.full((2, 1, 4, 4), 0.5))
    assert y.shape == (2, 3, 4, 4) and torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 0.2, 0.4]))
    stacked = ChannelAdapter(2, 3, (0.5, 0.4, 0.3), (1, 1, 1), widened=True)(torch.zeros(1, 2, 2, 2))
    assert stacked.shape == (1, 6, 2, 2)
    with pytest.raises(FpindexError, match=r"^this model takes 3 input channel\(s\); --enhance gives 2: use one "
                                           r"filter or 3$"):
        ChannelAdapter(2, 3, (0.5,), (0.5,), widened=False)


# ---- timm --------------------------------------------------------------------------------------------------

@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def timm_file(timm, name: str, path: Path, **kw) -> Path:
    from fpindex.embed.timm_models import save_random

    return save_random(name, path, **kw)


def test_timm_models_load_local_weights_at_the_image_size(timm, tmp_path):
    w = timm_file(timm, "test_vit", tmp_path / "vit.safetensors", size=160, seed=3)     # made at 160 px
    e = build_embedder("timm:test_vit", channels=1, size=64, weights=str(w), seed=0, device="cpu")
    assert e.dim == 64 and e.weights_id.startswith("file:sha256=")        # position embedding resampled to 64 px
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    again = build_embedder("timm:test_vit", channels=1, size=64, weights=str(w), seed=9, device="cpu")
    np.testing.assert_allclose(e(x), again(x), atol=1e-6)                  # the file, not the seed, sets them
    r1 = build_embedder("timm:test_resnet", channels=2, size=32, weights="random", seed=0, device="cpu")
    r2 = build_embedder("timm:test_resnet", channels=2, size=32, weights="random", seed=0, device="cpu")
    x2 = np.random.default_rng(1).random((2, 2, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(r1(x2), r2(x2))
    assert r1.weights_id == "random:seed=0" and r1.trainable() is r1.net


@pytest.mark.parametrize("model,size,weights,message", [
    ("timm:test_vit", 72, "random", r"^model timm:test_vit cuts images into 16-px patches; --image-size 72 is not a "
                                    r"multiple of 16 \(try 64\)$"),
    ("timm:test_vit", 64, None, r"^model 'timm:test_vit' needs --weights: a local weights file \(fpindex never "
                                r"downloads any\)"),
    ("timm:test_vit", 64, "imagenet", r"^model timm:test_vit: fpindex never downloads weights; save them to a file "
                                      r"\(e\.g\. test_vit\.safetensors\) and pass --weights FILE"),
    ("timm:test_vit", 64, "nope.safetensors", r"^weights nope\.safetensors: no such file \(model timm:test_vit "
                                              r"takes a local \.safetensors/\.pth file, random or selfsup\)$"),
    ("timm:no_such_net", 64, "random", r"^unknown timm model 'no_such_net'"),
    ("timm", 64, "random", r"^model 'timm' needs an architecture name: --model timm:NAME$"),
])
def test_timm_errors_are_one_line_and_name_the_problem(timm, model, size, weights, message):
    with pytest.raises(FpindexError, match=message):
        build_embedder(model, channels=1, size=size, weights=weights, seed=0, device="cpu")


def test_a_file_for_another_architecture_is_refused(timm, tmp_path):
    w = timm_file(timm, "test_resnet", tmp_path / "resnet.safetensors", size=64)
    with pytest.raises(FpindexError, match=r"resnet\.safetensors: does not fit this model \(missing \["):
        build_embedder("timm:test_vit", channels=1, size=64, weights=str(w), seed=0, device="cpu")


@pytest.mark.slow
def test_timm_fine_tuned_on_the_generated_set_is_recorded_and_reread(timm, leak, helpers, tmp_path):
    w = timm_file(timm, "test_resnet", tmp_path / "r.safetensors", size=64, seed=0)
    cfg = helpers.CFG.override(embed={"model": "timm:test_resnet", "weights": str(w), "finetune": 2,
                                      "enhance": ("none", "gaussian")})       # 2 channels: the first conv widens
    built = build_index(leak.generated, tmp_path / "idx", cfg)
    e = built.manifest["embedder"]
    start = f"file:sha256={__import__('hashlib').sha256(w.read_bytes()).hexdigest()[:16]}"
    assert e["training"]["start"] == start and e["training"]["steps"] == 2 and e["weights_id"] != start
    assert built.manifest["config"]["embed"]["finetune"] == 2 and (tmp_path / "idx" / "selfsup.pt").is_file()
    out = tmp_path / "out"
    open_index(tmp_path / "idx", cfg).query(leak.real, used=leak.used, not_used=leak.not_used, out=out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["embedder"]["weights_id"] == e["weights_id"]
    assert summary["settings"]["embedder"]["training"]["start"] == start


def test_a_model_that_cannot_be_trained_is_refused_before_reading_images(tmp_path):
    from fpindex.config import EmbedConfig
    from fpindex.embed import make_embedder

    with pytest.raises(FpindexError, match=r"^model pixels cannot be trained; drop --finetune"):
        make_embedder(EmbedConfig(model="pixels", finetune=3, device="cpu"))


# ---- TorchScript and torch.export ------------------------------------------------------------------------

class RGBNet(nn.Module):
    """Takes 3 channels, like SSCD."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.conv(x), 3).flatten(1)


@pytest.fixture
def rgbnet():
    with seeded(0):
        return RGBNet().eval()


def test_a_torchscript_file_embeds_grey_images_replicated_to_its_channels(rgbnet, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(rgbnet, torch.zeros(2, 3, 32, 32)).save(str(tmp_path / "m.pt"))
    e = build_embedder("torchscript", channels=1, size=32, weights=str(tmp_path / "m.pt"), seed=0, device="cpu")
    assert e.dim == 36 and e.trainable() is None
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        want = rgbnet((torch.from_numpy(x).repeat(1, 3, 1, 1) - mean) / std)
    np.testing.assert_allclose(e(x), nn.functional.normalize(want, dim=1).numpy(), atol=1e-5)


def test_a_torch_export_program_embeds_like_the_module(rgbnet, tmp_path):
    batch = torch.export.Dim("batch", min=1, max=1024)
    prog = torch.export.export(rgbnet, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(prog, str(tmp_path / "m.pt2"))
    e = build_embedder("torchscript", channels=1, size=32, weights=str(tmp_path / "m.pt2"), seed=0, device="cpu")
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    assert e(x).shape == (5, 36)
    torch.export.save(torch.export.export(rgbnet, (torch.zeros(1, 3, 32, 32),)), str(tmp_path / "static.pt2"))
    with pytest.raises(FpindexError, match=r"^model torchscript cannot embed a batch of 32×32 images \(.*\); .*a "
                                           r"torch\.export program needs a dynamic batch dimension"):
        build_embedder("torchscript", channels=1, size=32, weights=str(tmp_path / "static.pt2"), seed=0, device="cpu")


@pytest.mark.parametrize("weights,message", [
    ("random", r"^model torchscript runs a graph from a file: pass --weights FILE"),
    (None, r"^model 'torchscript' needs --weights"),
    ("garbage.pt", r"garbage\.pt: not a loadable TorchScript archive"),
    ("garbage.pt2", r"garbage\.pt2: not a loadable torch\.export program"),
])
def test_torchscript_errors_are_one_line(tmp_path, monkeypatch, weights, message):
    monkeypatch.chdir(tmp_path)
    for name in ("garbage.pt", "garbage.pt2"):
        (tmp_path / name).write_bytes(b"not a graph")
    with pytest.raises(FpindexError, match=message):
        build_embedder("torchscript", channels=1, size=32, weights=weights, seed=0, device="cpu")
