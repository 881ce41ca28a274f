"""Shared fixtures: small seeded images and one small leak scenario, built once per session.

Everything is generated here (numpy + OpenCV) under pytest's tmp dirs: no network, no ../shared, no pickles.
Images are 64 × 64 and the embedder is the compact CNN at 64 px, so the whole suite stays fast on a CPU.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from fpindex.config import AuditConfig, DecideConfig, EmbedConfig, EvidenceConfig, IndexConfig, RunConfig
from fpindex.demo import ScenarioSize, make_scenario

SIZE = 64
SMALL = ScenarioSize(n_train_each=6, n_test_each=6, n_generated=24, replay_fraction=0.5, slices_per_patient=2,
                     size=SIZE)
EMBED = EmbedConfig(model="cnn", weights="random", image_size=SIZE, seed=0, batch_size=16, device="cpu")
QUIET = RunConfig(quiet=True)
FLAT = IndexConfig(factory="Flat")
# The tests' audit: random-weight CNN at 64 px, exact index, 3 neighbours, quiet.
CFG = AuditConfig(embed=EMBED, index=FLAT, evidence=EvidenceConfig(k=3), decide=DecideConfig(seed=0), run=QUIET)


# ---- small helpers (exposed as fixtures so test modules need no imports from here) ---------------

def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def write_png(path: Path, img: np.ndarray) -> Path:
    """Write a float [0, 1] grayscale image as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), to_u8(img))
    return path


def smooth_image(seed: int, size: int = SIZE) -> np.ndarray:
    """A seeded, structured float32 image in [0, 1] (blurred noise plus a few blobs)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((size // 8, size // 8)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(4):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        img += 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    img = img - img.min()
    return (img / img.max()).astype(np.float32)


def perturb(img: np.ndarray, seed: int) -> np.ndarray:
    """A light near-copy: 2° rotation, 1 px shift, Gaussian noise σ = 0.02."""
    rng = np.random.default_rng(seed)
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 2.0, 1.0)
    m[:, 2] += (1.0, -1.0)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = out + 0.02 * rng.standard_normal(out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


@pytest.fixture(scope="session", autouse=True)
def _isolated_embedding_cache(tmp_path_factory):
    """The embedding cache defaults to ~/.cache/fpindex: tests use a fresh one of their own."""
    import os

    old = os.environ.get("FPINDEX_CACHE")
    os.environ["FPINDEX_CACHE"] = str(tmp_path_factory.mktemp("embedding-cache"))
    yield
    if old is None:
        os.environ.pop("FPINDEX_CACHE", None)
    else:
        os.environ["FPINDEX_CACHE"] = old


@pytest.fixture(scope="session")
def helpers():
    class H:
        pass

    h = H()
    h.to_u8, h.write_png, h.smooth_image, h.perturb = to_u8, write_png, smooth_image, perturb
    h.read_csv, h.read_parquet, h.run_main = read_csv, read_parquet, run_main
    h.SIZE, h.EMBED, h.CFG, h.QUIET, h.FLAT, h.SMALL = SIZE, EMBED, CFG, QUIET, FLAT, SMALL
    return h


def run_main(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """`fpindex ARGS` through the CLI's main(), as a user runs it: (exit code, stderr lines), never a traceback."""
    import sys

    from fpindex.cli import main

    monkeypatch.setattr(sys, "argv", ["fpindex", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return e.value.code, err.strip().splitlines()


def read_csv(path: Path, header: bool = True) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def read_parquet(path: Path) -> dict:
    return pq.read_table(path).to_pydict()


# ---- the shared scenario ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Leak:
    """A small scenario plus two planted copies of real non-member images among the generated ones."""

    root: Path
    generated: Path
    real: Path
    used: Path
    not_used: Path
    labels: Path
    exact_real: str        # real image (file name) whose byte-exact copy is in generated/
    moved_real: str        # real image whose shifted + rotated + noisy copy is in generated/
    exact_copy: str        # file names of the copies in generated/
    moved_copy: str
    audit_out: Path        # where the session's audit wrote its outputs
    audit_summary: dict


@pytest.fixture(scope="session")
def scenario(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenario")
    return make_scenario(root, seed=0, size=SMALL)


@pytest.fixture(scope="session")
def leak(scenario, tmp_path_factory) -> Leak:
    from fpindex import audit
    from fpindex.load import load_image

    root = tmp_path_factory.mktemp("leak")
    gen = root / "generated"
    shutil.copytree(scenario / "generated", gen)
    # Non-members: the scenario's generator never replayed them, so the planted copy is their only match.
    non_members = sorted(r["image"] for r in read_csv(scenario / "test_labels.csv") if r["label"] == "0")
    exact_real, moved_real = non_members[0], non_members[1]
    shutil.copyfile(scenario / "test" / exact_real, gen / "planted_exact.png")
    moved = perturb(load_image(scenario / "test" / moved_real, SIZE)[0], seed=1)
    write_png(gen / "planted_moved.png", moved)
    out = root / "audit"
    summary = audit(gen, scenario / "test", used=scenario / "train" / "used",
                    not_used=scenario / "train" / "not_used", config=CFG, out=out).summary
    return Leak(root=root, generated=gen, real=scenario / "test", used=scenario / "train" / "used",
                not_used=scenario / "train" / "not_used", labels=scenario / "test_labels.csv",
                exact_real=exact_real, moved_real=moved_real, exact_copy="planted_exact.png",
                moved_copy="planted_moved.png", audit_out=out, audit_summary=summary)
