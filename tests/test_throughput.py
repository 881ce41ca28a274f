"""Throughput machinery keeps results exact: batched SSIM = skimage, the embedding cache and worker processes
change speed only. (Speed itself is measured in benchmarks/throughput.py, not here.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fpindex import audit
from fpindex.cache import ContentCache, identity_key
from fpindex.config import AuditConfig, EmbedConfig
from fpindex.embed import embed_folder, make_embedder, vector_cache
from fpindex.errors import FpindexError
from fpindex.evidence.similarity import ssim_indexed, ssim_pairs
from fpindex.load import list_images
from fpindex.pipeline import build, progress_bar
from fpindex.pixels import PixelStore
from fpindex.utils import Timings

pytestmark = pytest.mark.slow      # end-to-end audits and reruns: minutes, run by make test and CI


def reference_ssim(a, b):
    return structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)


# ---- SSIM -----------------------------------------------------------------------------------------------

def structured_pairs(helpers, n=12, size=48):
    rng = np.random.default_rng(5)
    a, b = [], []
    for i in range(n):
        img = helpers.smooth_image(100 + i, size)
        kind = i % 6
        other = {0: img,                                                     # identical
                 1: helpers.perturb(img, i),                                 # near copy
                 2: helpers.smooth_image(200 + i, size),                     # unrelated
                 3: np.clip(img * 0.5, 0, 1),                                # contrast change
                 4: np.zeros_like(img),                                      # black
                 5: rng.random(img.shape).astype(np.float32)}[kind]          # noise
        a.append(img)
        b.append(other.astype(np.float32))
    a.append(np.zeros((size, size), np.float32))                             # flat vs flat
    b.append(np.full((size, size), 1.0, np.float32))
    return np.stack(a), np.stack(b)


def test_batched_ssim_equals_skimage_on_structured_and_random_pairs(helpers):
    a, b = structured_pairs(helpers)
    rng = np.random.default_rng(0)
    ra = rng.random((6, 40, 56)).astype(np.float32)
    rb = np.clip(ra + rng.normal(0, 0.2, ra.shape), 0, 1).astype(np.float32)
    for x, y in [(a, b), (ra, rb)]:
        got = ssim_pairs(x, y)
        expected = np.array([reference_ssim(p, q) for p, q in zip(x, y)])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    same = ssim_pairs(a[:1], a[:1].copy())
    assert same[0] == 1.0                                    # exactly, whatever the rounding


def test_indexed_ssim_shares_image_terms_without_changing_values(helpers):
    """Real image i against k neighbours (shared across images), in small blocks or one."""
    rng = np.random.default_rng(1)
    real = np.stack([helpers.smooth_image(s, 32) for s in range(5)])
    gen = np.stack([helpers.perturb(helpers.smooth_image(s % 5, 32), s) for s in range(9)])
    ai = np.repeat(np.arange(5), 4)
    bi = rng.integers(0, 9, len(ai))
    expected = np.array([reference_ssim(real[i], gen[j]) for i, j in zip(ai, bi)])
    for max_images in (2, 5, 1024):
        got = ssim_indexed(real, gen, ai, bi, max_images=max_images)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(ssim_pairs(real[ai], gen[bi]), expected, atol=1e-5)
    assert ssim_indexed(real, gen, ai[:0], bi[:0]).shape == (0,)


def test_ssim_index_errors():
    # (The "unknown SSIM engine" check went with the engine= parameter: OpenCV is the only engine now.)
    x = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="^a_idx and b_idx must be 1-D and of equal length$"):
        ssim_indexed(x, x, np.array([0, 1]), np.array([0]))


# ---- cache ----------------------------------------------------------------------------------------------

def make_folder(helpers, root: Path, n=6) -> Path:
    for s in range(n):
        helpers.write_png(root / f"img_{s:02d}.png", helpers.smooth_image(s))
    return root


def embed(cfg, root, pixels=None, cache=True):
    emb_cfg = cfg
    embedder = make_embedder(emb_cfg)
    t = Timings()
    out = embed_folder(root, list_images(root), embedder, emb_cfg, t, progress_bar(quiet=True), "test",
                       pixels=pixels, cache=vector_cache(emb_cfg, embedder) if cache else None)
    return out, t


def kept(pixels: PixelStore, emb) -> np.ndarray:
    """The decoded images `embed_folder` put in the store, one per embedded row (each must be there)."""
    imgs = [pixels.known(f) for f in emb.files()]
    assert all(img is not None for img in imgs)
    return np.stack(imgs)


def test_cache_reuses_vectors_and_skips_work(helpers, tmp_path):
    root = make_folder(helpers, tmp_path / "imgs")
    cfg = EmbedConfig(model="cnn", image_size=helpers.SIZE, device="cpu", workers=0, cache_dir=str(tmp_path / "c"))
    first, t1 = embed(cfg, root)
    assert first.cached == 0 and t1.seconds["embed"] > 0
    store = PixelStore(helpers.SIZE)
    again, t2 = embed(cfg, root, pixels=store)
    assert again.cached == len(again.paths) == 6
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert all(store.known(f) is None for f in again.files()) and store.decoded == 0   # cached rows are not even decoded
    full, _ = embed(cfg, root, pixels=store)                  # ... unless their pixels are asked for
    pixels = store.stack(full.files(), lambda p, e: f"{p}: {e}")
    assert pixels.shape == (6, helpers.SIZE, helpers.SIZE) and full.cached == 6 and store.decoded == 6
    # A new image next to known ones: only it is embedded.
    helpers.write_png(root / "img_99.png", helpers.smooth_image(99))
    more, _ = embed(cfg, root)
    assert more.cached == 6 and len(more.paths) == 7
    np.testing.assert_array_equal(more.vectors[:6], first.vectors)
    # Shards are plain .npz of strings and floats: loadable without pickle.
    shards = sorted((tmp_path / "c").rglob("shard-*.npz"))
    assert len(shards) == 2
    with np.load(shards[0], allow_pickle=False) as z:
        assert z["keys"].dtype.kind == "U" and z["vectors"].dtype == np.float32


def test_cache_is_invalidated_by_model_weights_enhancement_and_precision(helpers, tmp_path):
    root = make_folder(helpers, tmp_path / "imgs", n=3)
    base = EmbedConfig(model="cnn", image_size=helpers.SIZE, device="cpu", workers=0, cache_dir=str(tmp_path / "c"))
    embed(base, root)
    assert embed(base, root)[0].cached == 3
    ckpt_a, ckpt_b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(make_embedder(base).net.state_dict(), ckpt_a)
    torch.save(make_embedder(EmbedConfig(model="cnn", image_size=helpers.SIZE, seed=7)).net.state_dict(), ckpt_b)
    variants = [EmbedConfig(**{**base.__dict__, "model": "pixels"}),
                EmbedConfig(**{**base.__dict__, "enhance": ("gaussian",)}),
                EmbedConfig(**{**base.__dict__, "precision": "bf16"}),
                EmbedConfig(**{**base.__dict__, "seed": 1}),
                EmbedConfig(**{**base.__dict__, "weights": str(ckpt_a)})]
    for cfg in variants:
        assert embed(cfg, root)[0].cached == 0, cfg
        assert embed(cfg, root)[0].cached == 3, cfg
    # Same file name, other weights inside: the weights id is the checkpoint's content hash.
    ckpt_a.write_bytes(ckpt_b.read_bytes())
    assert embed(variants[-1], root)[0].cached == 0
    # A new revision of the filters (their images changed) does not reuse vectors of the old images.
    import fpindex.embed.run as embed_run
    import fpindex.embed.train as embed_train

    old = embed_run.ENHANCE_REVISION
    with pytest.MonkeyPatch.context() as mp:                  # both modules that key a cache on the revision
        mp.setattr(embed_run, "ENHANCE_REVISION", old + 1)
        mp.setattr(embed_train, "ENHANCE_REVISION", old + 1)
        assert embed(variants[1], root)[0].cached == 0
    assert embed_run.ENHANCE_REVISION == embed_train.ENHANCE_REVISION == old
    assert embed(variants[1], root)[0].cached == 3


def test_cache_ignores_damaged_shards_and_can_be_disabled(helpers, tmp_path):
    root = make_folder(helpers, tmp_path / "imgs", n=3)
    cfg = EmbedConfig(model="cnn", image_size=helpers.SIZE, device="cpu", workers=0, cache_dir=str(tmp_path / "c"))
    first, _ = embed(cfg, root)
    for shard in (tmp_path / "c").rglob("shard-*.npz"):
        shard.write_bytes(b"not a zip")
    again, _ = embed(cfg, root)
    assert again.cached == 0
    np.testing.assert_array_equal(again.vectors, first.vectors)
    off = EmbedConfig(**{**cfg.__dict__, "cache": False, "cache_dir": str(tmp_path / "off")})
    assert embed(off, root)[0].cached == 0 and not (tmp_path / "off").exists()


def test_cache_key_and_put_contract(tmp_path):
    ident = {"model": "cnn", "weights_id": "random:seed=0", "dim": 3}
    assert identity_key(ident) == identity_key(dict(reversed(list(ident.items()))))
    assert identity_key(ident) != identity_key({**ident, "weights_id": "random:seed=1"})
    c = ContentCache(tmp_path, "embedding", ident, 3)
    c.put(["a" * 64], np.ones((1, 3), np.float32))
    fresh = ContentCache(tmp_path, "embedding", ident, 3)
    assert fresh.keys() == {"a" * 64}
    np.testing.assert_array_equal(fresh.get(["a" * 64]), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"^2 rows of 3 values expected, got shape \(1, 3\)$"):
        c.put(["b" * 64, "c" * 64], np.ones((1, 3), np.float32))
    assert json.loads((c.dir / "identity.json").read_text())["weights_id"] == "random:seed=0"


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    from fpindex.cache import default_cache_dir

    monkeypatch.setenv("FPINDEX_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FPINDEX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fpindex"


# ---- workers --------------------------------------------------------------------------------------------

def test_results_identical_with_and_without_workers(helpers, tmp_path):
    root = make_folder(helpers, tmp_path / "imgs", n=11)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    outs = []
    for workers in (0, 2):
        cfg = EmbedConfig(model="cnn", image_size=helpers.SIZE, device="cpu", batch_size=4, workers=workers,
                          enhance=("none", "gaussian"), cache=False)
        store = PixelStore(helpers.SIZE)
        emb, t = embed(cfg, root, pixels=store, cache=False)
        assert t.seconds["load"] > 0 and t.seconds["enhance"] > 0 and t.seconds["embed"] > 0
        outs.append((emb, kept(store, emb)))
    (a, a_pixels), (b, b_pixels) = outs
    assert a.paths == b.paths and a.sha256 == b.sha256 and len(a.paths) == 11
    assert [x.path for x in a.bad] == [x.path for x in b.bad] == [str(root / "broken.png")]
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a_pixels, b_pixels)


def test_bad_precision_and_workers_are_refused():
    with pytest.raises(FpindexError, match="^unknown precision 'int3'; choose from: fp32, bf16, fp16$"):
        make_embedder(EmbedConfig(precision="int3"))
    with pytest.raises(FpindexError, match="^--workers must be 0 or more$"):
        make_embedder(EmbedConfig(workers=-1))


# ---- whole pipeline ---------------------------------------------------------------------------------------

def test_rerun_audit_uses_cache_and_gives_identical_results(leak, helpers, tmp_path):
    """The session's audit filled the cache: a re-run embeds nothing and writes the same outputs."""
    out = tmp_path / "again"
    summary = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=helpers.CFG,
                    out=out).summary
    assert summary["build"]["cached"] == summary["build"]["added"] > 0
    for name in ("predictions.csv", "submission.csv"):
        assert (out / name).read_text() == (leak.audit_out / name).read_text()
    import pyarrow.parquet as pq

    assert pq.read_table(out / "neighbours.parquet").to_pydict() == \
        pq.read_table(leak.audit_out / "neighbours.parquet").to_pydict()


def test_precision_is_recorded_and_reused_by_queries(helpers, tmp_path):
    root = make_folder(helpers, tmp_path / "imgs", n=4)
    from fpindex.config import IndexConfig, RunConfig
    from fpindex.index import IndexStore
    from fpindex.pipeline import embed_config_of

    cfg = EmbedConfig(model="cnn", weights="random", image_size=helpers.SIZE, device="cpu", precision="bf16",
                      workers=0)
    build(root, AuditConfig(embed=cfg, index=IndexConfig(), run=RunConfig(quiet=True)), tmp_path / "idx")
    store = IndexStore.load(tmp_path / "idx")
    assert store.manifest["embedder"]["precision"] == "bf16"
    assert embed_config_of(store).precision == "bf16"
    del store.manifest["config"]                                    # as written before the whole config was recorded
    assert embed_config_of(store).precision == "bf16"
    del store.manifest["embedder"]["precision"]                     # ... and before the option existed
    assert embed_config_of(store).precision == "fp32"


def test_cli_cache_and_precision_options(helpers, tmp_path):
    from typer.testing import CliRunner

    from fpindex.cli import app

    root = make_folder(helpers, tmp_path / "imgs", n=3)
    runner = CliRunner()
    args = ["build", str(root), "--index", str(tmp_path / "i1"), "--image-size", str(helpers.SIZE), "--device",
            "cpu", "--workers", "0", "--cache-dir", str(tmp_path / "c"), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "c").rglob("shard-*.npz"))
    r = runner.invoke(app, ["build", str(root), "--index", str(tmp_path / "i2"), "--image-size", str(helpers.SIZE),
                            "--no-cache", "--cache-dir", str(tmp_path / "c2"), "--precision", "bf16", "-q"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "c2").exists()
    manifest = json.loads((tmp_path / "i2" / "manifest.json").read_text())
    assert manifest["embedder"]["precision"] == "bf16"
    r = runner.invoke(app, ["build", str(root), "--index", str(tmp_path / "i3"), "--precision", "fp8"])
    assert r.exit_code == 2 and not (tmp_path / "i3").exists()
    assert re.search(r"Invalid value for '--precision'.*'fp8' is not one of", r.output + r.stderr, re.S)


def test_unchanged_rerun_decodes_nothing(helpers, tmp_path, monkeypatch):
    """Vectors and SSIM values both come from the caches: not one image is decoded on a re-run."""
    import fpindex.embed.stream as stream
    import fpindex.embed.train as train
    import fpindex.pixels as pixels
    from fpindex.config import DecideConfig, EvidenceConfig, IndexConfig

    gen = make_folder(helpers, tmp_path / "gen", n=5)
    real = tmp_path / "real"
    for s in (1, 3, 8):
        helpers.write_png(real / f"r{s}.png", helpers.perturb(helpers.smooth_image(s), s))
    cfg = EmbedConfig(model="cnn", image_size=helpers.SIZE, device="cpu", workers=0, cache_dir=str(tmp_path / "c"))
    config = AuditConfig(embed=cfg, index=IndexConfig(), evidence=EvidenceConfig(k=2),
                         decide=DecideConfig(method="fixed"), run=helpers.QUIET)
    first = audit(gen, real, config=config, out=tmp_path / "o1").summary
    decoded = []
    real_decode, real_load = stream.decode, pixels.load_image
    # Every place that decodes: the embedding stream, the self-supervised training sample (the default cnn
    # weights; its pixels then feed the stream) and the pixel store (re-ranking).
    monkeypatch.setattr(stream, "decode", lambda data: decoded.append(1) or real_decode(data))
    monkeypatch.setattr(train, "decode", lambda data: decoded.append(1) or real_decode(data))
    monkeypatch.setattr(pixels, "load_image", lambda *a: decoded.append(1) or real_load(*a))
    second = audit(gen, real, config=config, out=tmp_path / "o2").summary
    assert decoded == []
    assert (tmp_path / "o1" / "predictions.csv").read_text() == (tmp_path / "o2" / "predictions.csv").read_text()
    # Work skipped, counted rather than timed (the speed-up itself: benchmarks/throughput.py, audit re-run).
    assert first["build"]["cached"] == 0 and second["build"]["cached"] == second["build"]["added"] == 5
    # Without the caches the same run decodes every image again.
    audit(gen, real, config=config.override(embed={"cache": False}), out=tmp_path / "o3")
    assert len(decoded) >= 8
