"""Self-supervised training on the generated set: deterministic, stored with the index, reused by queries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpindex import open_index
from fpindex.embed import SELFSUP_FILE, CompactCNN
from fpindex.embed.selfsup import SelfSupConfig, corrupt, train
from fpindex.errors import FpindexError, FpindexWarning
from fpindex.index import MANIFEST_FILE, IndexStore
from fpindex.pipeline import build

pytestmark = pytest.mark.slow      # self-supervised training: minutes, run by make test and CI


def test_corrupt_keeps_shape_and_is_seeded():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = corrupt(x, torch.Generator().manual_seed(1))
    b = corrupt(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x, atol=1e-3)                    # it does change the images


def test_training_is_deterministic_and_moves_weights():
    images = np.random.default_rng(0).random((12, 1, 32, 32), dtype=np.float32)
    nets = []
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            nets.append(CompactCNN(1))
    before = [p.clone() for p in nets[0].parameters()]
    cfg = SelfSupConfig(steps=3, batch_size=8)
    reports = [train(n, n.dim, images, cfg) for n in nets]
    assert reports[0]["steps"] == 3 and reports[0]["images"] == 12
    for p, q, b in zip(nets[0].parameters(), nets[1].parameters(), before):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, b) for p, b in zip(nets[0].parameters(), before))


def test_auto_steps_scale_with_data_and_are_capped():
    cfg = SelfSupConfig()
    assert cfg.steps_for(24) == 10 and cfg.steps_for(400) == 50 and cfg.steps_for(10**6) == 250


def test_selfsup_index_stores_weights_and_queries_reuse_them(leak, helpers, tmp_path):
    cfg = helpers.CFG.override(embed={"weights": "selfsup"})
    idx = tmp_path / "index"
    summary = build(leak.generated, cfg, idx).summary
    e = summary["manifest"]["embedder"]
    assert e["weights"] == "selfsup" and e["weights_id"].startswith("file:sha256=")
    assert e["training"]["steps"] >= 10 and (idx / SELFSUP_FILE).is_file()
    loaded = IndexStore.load(idx)
    assert loaded.attachments[SELFSUP_FILE] == (idx / SELFSUP_FILE).read_bytes()
    out = tmp_path / "out"
    # Queried from the saved directory: the embedding settings and the trained weights come from the index.
    s = open_index(idx, helpers.CFG).query(leak.real, used=leak.used, not_used=leak.not_used, out=out).summary
    nb = helpers.read_parquet(out / "neighbours.parquet")
    exact = [c for img, r, c in zip(nb["image"], nb["rank"], nb["cosine"]) if img == leak.exact_real and r == 1]
    assert exact == [pytest.approx(1.0, abs=1e-5)]                # the planted copy is still found exactly
    assert s["settings"]["embedder"]["weights_id"] == e["weights_id"]
    # A tampered weights file is refused rather than silently giving other vectors: by the manifest's checksum,
    (idx / SELFSUP_FILE).write_bytes((idx / SELFSUP_FILE).read_bytes() + b"x")
    with pytest.raises(FpindexError, match=rf"^index {idx}/{SELFSUP_FILE}: its content does not match the checksum"):
        open_index(idx, helpers.CFG)
    # and, in an index from before checksums (format 2), by the weights id the embedder is checked against.
    manifest = json.loads((idx / MANIFEST_FILE).read_text())
    del manifest["files"], manifest["digest"]
    (idx / MANIFEST_FILE).write_text(json.dumps(dict(manifest, format_version=2)))
    with pytest.raises(FpindexError, match=f"^the index was built with weights_id='{e['weights_id']}' but the query "
                                           r"uses weights_id='file:sha256=[0-9a-f]{16}'; query with the index's"), \
            pytest.warns(FpindexWarning, match="records no checksums"):
        open_index(idx, helpers.CFG).query(leak.real, out=tmp_path / "out2")


def test_selfsup_for_any_trainable_model():
    from fpindex.embed import build_embedder

    e = build_embedder("resnet50", channels=1, size=32, weights="selfsup", seed=0, device="cpu")
    assert e.trainable() is e.net and e.weights_id == "selfsup:untrained"      # trained by the build
    with pytest.raises(FpindexError, match="^model 'pixels' has no weights"):
        build_embedder("pixels", channels=1, size=32, weights="selfsup", seed=0, device="cpu")
