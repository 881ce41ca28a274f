"""The stages wired together: build, query, audit, on small seeded folders."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import fpindex
from fpindex import audit, build_index, open_index
from fpindex.decide import Labelled, decide
from fpindex.evidence import FEATURES
from fpindex.config import DecideConfig, EvidenceConfig, IndexConfig
from fpindex.errors import FpindexError
from fpindex.evidence import subspace
from fpindex.index import IndexStore
from fpindex.utils import STAGES


def fixed_cfg(helpers, **decide):
    return helpers.CFG.override(evidence={"k": 2}, decide={"method": "fixed", **decide})


def folder(helpers, root: Path, seeds, prefix="img") -> Path:
    for s in seeds:
        helpers.write_png(root / f"{prefix}_{s:03d}.png", helpers.smooth_image(s))
    return root


def neighbours_by_image(path: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    out: dict[str, list[dict]] = {}
    for row in pq.read_table(path).to_pylist():
        out.setdefault(row["image"], []).append(row)
    return out


# ---- the shared leak scenario (built once in conftest) -------------------------------------------------

def test_planted_copies_found_at_rank_1(leak):
    nb = neighbours_by_image(leak.audit_out / "neighbours.parquet")
    exact, moved = nb[leak.exact_real], nb[leak.moved_real]
    assert [r["rank"] for r in exact] == [1, 2, 3]
    assert Path(exact[0]["generated"]).name == leak.exact_copy
    assert exact[0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert exact[0]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert exact[0]["jaccard"] == 1.0
    assert Path(moved[0]["generated"]).name == leak.moved_copy
    assert moved[0]["cosine"] > moved[1]["cosine"]
    assert moved[0]["ssim"] > max(r["ssim"] for r in moved[1:])


def test_audit_writes_consistent_outputs(leak, helpers):
    out = leak.audit_out
    real = sorted(p.name for p in leak.real.iterdir())
    preds = helpers.read_csv(out / "predictions.csv")
    assert list(preds[0]) == ["image", "score", "label", "p_value", "flagged_by"]
    assert [r["image"] for r in preds] == real
    assert all(r["label"] in ("0", "1") and 0.0 <= float(r["score"]) <= 1.0 for r in preds)
    # The byte-exact copy is among the most convincing: labelled used, the smallest p-value any image gets, and a
    # score at the top (near-copies saturate the pixel features, so typicality, via density_ratio, orders them).
    exact = next(r for r in preds if r["image"] == leak.exact_real)
    assert exact["label"] == "1" and float(exact["p_value"]) == min(float(r["p_value"]) for r in preds)
    assert float(exact["score"]) >= max(float(r["score"]) for r in preds) - 0.02

    sub = helpers.read_csv(out / "submission.csv", header=False)
    assert sub == [[Path(r["image"]).stem, r["label"]] for r in preds]       # no header, stem,label
    assert (out / "submission.csv").read_text().splitlines()[0] == f"{Path(real[0]).stem},{preds[0]['label']}"

    nb = helpers.read_parquet(out / "neighbours.parquet")
    assert set(nb) == {"image", "rank", "generated_id", "generated", "cosine", "ssim", "ssim_aligned", "jaccard",
                       "bandpass", "sha256", "generated_sha256"}          # content ids: the report checks them
    assert len(nb["image"]) == len(real) * 3
    store = IndexStore.load(out / "index")
    assert store.paths(np.array(nb["generated_id"])) == nb["generated"]
    cos = np.array(nb["cosine"]).reshape(len(real), 3)
    assert (np.diff(cos, axis=1) <= 1e-6).all()
    assert np.array(nb["rank"]).reshape(len(real), 3).tolist() == [[1, 2, 3]] * len(real)

    summary = json.loads((out / "summary.json").read_text())
    n_gen = len(list(leak.generated.iterdir()))
    assert summary["counts"]["real"] == {"files": len(real), "embedded": len(real), "bad": 0}
    assert summary["counts"]["generated_indexed"] == n_gen == store.ntotal
    assert summary["counts"]["predicted_used"] == sum(r["label"] == "1" for r in preds)
    assert summary["decision"]["method"] == "calibrated"
    assert summary["decision"]["cross_validation"]["folds"] == 5
    assert summary["settings"]["k"] == 3 and summary["settings"]["embedder"]["model"] == "cnn"
    assert summary["build"]["ntotal"] == n_gen and summary["build"]["bad_files"] == []
    assert set(summary["timings"]) == set(STAGES) | {"total"}
    assert all(v >= 0 for v in summary["timings"].values())
    assert summary["timings"]["embed"] > 0 and summary["timings"]["rerank"] > 0
    assert summary["timings"]["total"] >= sum(v for k, v in summary["timings"].items() if k != "total") - 1e-3
    assert summary == json.loads(json.dumps(leak.audit_summary.to_dict()))


def test_summary_records_write_time(leak):
    summary = json.loads((leak.audit_out / "summary.json").read_text())
    assert summary["timings"]["write"] > 0


def test_summary_records_how_the_real_images_own_neighbours_were_searched(leak):
    """density_ratio reads them; below search.REAL_EXACT_BELOW real images the search is exact."""
    summary = json.loads((leak.audit_out / "summary.json").read_text())
    real = summary["settings"]["index"]["real_neighbours"]
    assert real["factory"] == "Flat" and real["nprobe"] is None and real["k"] > 0
    assert real["images"] == sum(c["embedded"] for n, c in summary["counts"].items() if isinstance(c, dict))


@pytest.mark.slow
def test_build_then_query_equals_audit(leak, helpers, tmp_path):
    idx = tmp_path / "index"
    built = build_index(leak.generated, idx, helpers.CFG)
    store, bsum = built.store, built.build_summary
    assert bsum["ntotal"] == bsum["added"] == store.ntotal
    out = tmp_path / "out"
    summary = open_index(idx, helpers.CFG).query(leak.real, used=leak.used, not_used=leak.not_used, out=out).summary
    a = leak.audit_out
    assert (out / "predictions.csv").read_text() == (a / "predictions.csv").read_text()
    assert (out / "submission.csv").read_text() == (a / "submission.csv").read_text()
    mine, theirs = helpers.read_parquet(out / "neighbours.parquet"), helpers.read_parquet(a / "neighbours.parquet")
    for col in ("image", "rank", "generated_id", "generated"):
        assert mine[col] == theirs[col], col
    for col in ("cosine", "ssim", "ssim_aligned", "jaccard"):
        np.testing.assert_allclose(mine[col], theirs[col], atol=1e-6)
    assert summary["decision"] == leak.audit_summary["decision"]
    # The two indexes hold the same vectors for the same files.
    other = IndexStore.load(a / "index")
    assert store.items.equals(other.items)
    np.testing.assert_array_equal(store.reconstruct(np.arange(store.ntotal)),
                                  other.reconstruct(np.arange(other.ntotal)))


@pytest.mark.slow
def test_index_keeps_the_generated_subspace_and_old_indexes_still_query(leak, helpers, tmp_path):
    store = IndexStore.load(leak.audit_out / "index")
    assert subspace.FILE in store.attachments
    space = subspace.Subspace.from_bytes(store.attachments[subspace.FILE])
    assert store.manifest["subspace"] == space.describe() and 1 <= len(space.basis) <= store.ntotal
    assert "subspace" in leak.audit_summary["decision"]["weights"]
    def format_2(name: str) -> Path:
        """A copy as fpindex wrote it before checksums (format 3) existed: nothing verifies its files."""
        d = tmp_path / name
        shutil.copytree(leak.audit_out / "index", d)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["format_version"] = 2
        del manifest["files"], manifest["digest"]
        (d / "manifest.json").write_text(json.dumps(manifest))
        return d

    # An index made before the subspace existed: the evidence is absent (0 for all), the query still works.
    old = format_2("old")
    (old / subspace.FILE).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["attachments"].remove(subspace.FILE)
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(fpindex.FpindexWarning, match="records no checksums"):
        summary = open_index(old, helpers.CFG).query(leak.real, used=leak.used, not_used=leak.not_used).summary
    assert summary["decision"]["weights"]["subspace"] == 0.0
    # A damaged subspace file (that no checksum guards) is refused with its name, not a traceback.
    bad = format_2("bad")
    (bad / subspace.FILE).write_bytes(b"not an npz")
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(bad))}: subspace.npz is damaged \(.*\); "
                                           r"rebuild the index$"), pytest.warns(fpindex.FpindexWarning):
        open_index(bad, helpers.CFG).query(leak.real, out=tmp_path / "out2")


def test_costly_evidence_only_when_the_decision_reads_it(leak, helpers, tmp_path):
    """Fixed and reference decisions read one score: the aligned SSIM is then not computed (NaN)."""
    calibrated = helpers.read_parquet(leak.audit_out / "neighbours.parquet")["ssim_aligned"]
    assert np.isfinite(calibrated).all() and max(calibrated) > 0.9
    open_index(leak.audit_out / "index", helpers.CFG).query(leak.real, config=fixed_cfg(helpers), out=tmp_path / "fixed")
    fixed = helpers.read_parquet(tmp_path / "fixed" / "neighbours.parquet")
    assert np.isnan(fixed["ssim_aligned"]).all() and np.isfinite(fixed["ssim"]).all()
    open_index(leak.audit_out / "index", helpers.CFG).query(leak.real, config=fixed_cfg(helpers, score="ssim_aligned"),
                                                            out=tmp_path / "aligned")
    assert np.isfinite(helpers.read_parquet(tmp_path / "aligned" / "neighbours.parquet")["ssim_aligned"]).all()


def test_query_refuses_other_embedding_settings(leak, helpers, tmp_path):
    idx = leak.audit_out / "index"
    for key, value in [("model", "pixels"), ("enhance", ["gaussian"]), ("image_size", 128),
                       ("weights", str(tmp_path / "w.pth"))]:
        with pytest.raises(FpindexError, match=rf"^the index was built with {key}=.* but the query asks for {key}="):
            open_index(idx, helpers.CFG, expect={key: value}).query(leak.real, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_query_with_a_non_flat_index_and_reference_decision(leak, helpers, tmp_path):
    idx = tmp_path / "ivf"
    build_index(leak.generated, idx, helpers.CFG.override(index={"factory": "IVF4,Flat"}))
    cfg = helpers.CFG.override(evidence={"k": 2}, decide={"alpha": 0.2, "method": "reference"})
    summary = open_index(idx, cfg).query(leak.real, reference=leak.not_used, out=tmp_path / "out").summary
    assert summary["settings"]["index"]["factory"] == "IVF4,Flat"
    assert summary["decision"]["method"] == "reference" and summary["decision"]["n_reference"] == 6
    nb = neighbours_by_image(tmp_path / "out" / "neighbours.parquet")
    top = nb[leak.exact_real][0]
    assert Path(top["generated"]).name == leak.exact_copy and top["jaccard"] == 1.0
    preds = {r["image"]: r for r in helpers.read_csv(tmp_path / "out" / "predictions.csv")}
    assert float(preds[leak.exact_real]["score"]) == pytest.approx(1.0, abs=1e-5)   # reference: raw cosine
    assert preds[leak.exact_real]["label"] == "1"   # p = 1/7 ≤ 0.2: beats every known non-member


# ---- build modes ------------------------------------------------------------------------------------

def test_build_refuses_existing_index_then_overwrites(helpers, tmp_path):
    a = folder(helpers, tmp_path / "a", range(3))
    b = folder(helpers, tmp_path / "b", range(10, 15))
    idx = tmp_path / "idx"
    build_index(a, idx, helpers.CFG)
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(idx))} already exists; pass --add"):
        build_index(b, idx, helpers.CFG)
    assert IndexStore.load(idx).ntotal == 3
    s = build_index(b, idx, helpers.CFG, overwrite=True).build_summary
    store = IndexStore.load(idx)
    assert s["ntotal"] == store.ntotal == 5
    assert [Path(p).name for p in store.paths(np.arange(5))] == [f"img_{i:03d}.png" for i in range(10, 15)]


def test_add_appends_only_new_images(helpers, tmp_path):
    a = folder(helpers, tmp_path / "a", range(4))
    idx = tmp_path / "idx"
    build_index(a, idx, helpers.CFG)
    # b: two of a's files under new names (same bytes), three new images, one unreadable file.
    b = folder(helpers, tmp_path / "b", range(20, 23), prefix="new")
    shutil.copyfile(a / "img_000.png", b / "dup_a.png")
    shutil.copyfile(a / "img_003.png", b / "dup_b.png")
    (b / "broken.png").write_bytes(b"definitely not a png")
    # Different model asked for: --add reuses the index's own settings.
    added = build_index(b, idx, helpers.CFG.override(embed={"model": "pixels"}), add=True)
    store, emb, s = added.store, added.embedded, added.build_summary
    assert s["added"] == 3 and s["skipped_known"] == 2 and len(s["bad_files"]) == 1
    assert s["ntotal"] == store.ntotal == 7
    assert s["manifest"]["embedder"]["model"] == "cnn"
    loaded = IndexStore.load(idx)
    assert loaded.ntotal == 7 and len(loaded.items) == 7
    names = [Path(p).name for p in loaded.paths(np.arange(7))]
    assert names == [f"img_{i:03d}.png" for i in range(4)] + ["new_020.png", "new_021.png", "new_022.png"]
    # Row i is still id i: the new vectors find their own rows.
    _, ids = loaded.search(emb.vectors, 1)
    np.testing.assert_array_equal(ids[:, 0], [4, 5, 6])
    # Adding the same folder again adds nothing.
    s2 = build_index(b, idx, helpers.CFG, add=True).build_summary
    assert s2["added"] == 0 and s2["skipped_known"] == 5 and IndexStore.load(idx).ntotal == 7


def test_add_to_missing_index_creates_it(helpers, tmp_path):
    a = folder(helpers, tmp_path / "a", range(2))
    s = build_index(a, tmp_path / "idx", helpers.CFG, add=True).build_summary
    assert s["ntotal"] == 2 and IndexStore.load(tmp_path / "idx").ntotal == 2


# ---- bad input ---------------------------------------------------------------------------------------

def test_corrupt_files_are_reported_and_skipped(helpers, tmp_path):
    gen = folder(helpers, tmp_path / "gen", range(5))
    (gen / "x.png").write_bytes(np.random.default_rng(0).bytes(256))
    (gen / "empty.png").write_bytes(b"")
    real = folder(helpers, tmp_path / "real", [1, 30, 31])
    (real / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    summary = audit(gen, real, config=fixed_cfg(helpers), out=out).summary
    bad_gen = {Path(b["path"]).name for b in summary["build"]["bad_files"]}
    assert bad_gen == {"x.png", "empty.png"}
    assert all(b["reason"] for b in summary["build"]["bad_files"])
    assert [Path(b["path"]).name for b in summary["bad_files"]["real"]] == ["broken.jpg"]
    assert summary["counts"]["real"] == {"files": 4, "embedded": 3, "bad": 1}
    assert summary["counts"]["generated_indexed"] == 5
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["bad_files"] == summary["bad_files"] and on_disk["build"]["bad_files"]
    preds = helpers.read_csv(out / "predictions.csv")
    assert [r["image"] for r in preds] == ["img_001.png", "img_030.png", "img_031.png"]
    # img_001 is in both folders: found exactly, labelled used by the fixed rule.
    assert preds[0]["label"] == "1" and float(preds[0]["score"]) == pytest.approx(1.0, abs=1e-5)
    manifest = json.loads((out / "index" / "manifest.json").read_text())
    assert len(manifest["last_build"]["bad_files"]) == 2


def test_build_with_only_unreadable_images(tmp_path, helpers):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "a.png").write_bytes(b"nope")
    with pytest.raises(FpindexError, match=rf"^generated-image folder {re.escape(str(gen))}: none of its 1 images "
                                           r"could be read$"):
        build_index(gen, tmp_path / "idx", helpers.CFG)
    assert not (tmp_path / "idx").exists()


def test_audit_checks_folders_before_building(helpers, tmp_path):
    gen = folder(helpers, tmp_path / "gen", range(2))
    for kwargs, missing in [({"real": tmp_path / "missing"}, "real-image folder missing"),
                            ({"real": gen, "used": tmp_path / "nope"}, "used folder nope")]:
        real = kwargs.pop("real")
        what, name = missing.rsplit(" ", 1)
        with pytest.raises(FpindexError, match=f"^{what} {re.escape(str(tmp_path / name))} does not exist$"):
            audit(gen, real, config=fixed_cfg(helpers), out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_query_input_errors(helpers, tmp_path):
    gen = folder(helpers, tmp_path / "gen", range(3))
    idx = tmp_path / "idx"
    build_index(gen, idx, helpers.CFG)
    index = open_index(idx, helpers.CFG)
    with pytest.raises(FpindexError, match="^--k must be at least 1$"):
        index.query(gen, config=helpers.CFG.override(evidence={"k": 0}), out=tmp_path / "o")
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(tmp_path / 'no-index'))} does not exist \("):
        open_index(tmp_path / "no-index", helpers.CFG)
    with pytest.raises(FpindexError, match=f"^real folder {re.escape(str(tmp_path / 'no-real'))} does not exist$"):
        index.query(tmp_path / "no-real", config=fixed_cfg(helpers), out=tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    with pytest.raises(FpindexError, match=f"^real-image folder {re.escape(str(bad))}: none of its 1 images could be read$"):
        index.query(bad, config=fixed_cfg(helpers), out=tmp_path / "o")
    with pytest.raises(FpindexError, match="^decision 'calibrated' needs labelled images: pass both --used DIR and "
                                           "--not-used DIR$"):
        index.query(gen, config=helpers.CFG.override(decide={"method": "calibrated"}), out=tmp_path / "o")
    # A generated file needed for SSIM re-ranking has gone.
    (gen / "img_001.png").unlink()
    with pytest.raises(FpindexError, match=rf"^generated image \S*/img_001\.png \(index id 1\) is needed for SSIM "
                                           r"re-ranking but .*; restore the file or rebuild the index$"):
        index.query(folder(helpers, tmp_path / "real", [1]), out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_result_keeps_every_folders_evidence_and_its_sibling_groups(leak, helpers):
    result = open_index(leak.audit_out / "index", helpers.CFG).query(leak.real, reference=leak.not_used)
    assert result.decision.method == "pu" and set(result.evidence) == {"real", "reference"}
    real, ref = result.evidence["real"], result.evidence["reference"]
    assert len(real) == len(result.predictions) and len(ref) == len(list(leak.not_used.iterdir()))
    assert real.features == tuple(FEATURES.names()) and np.isfinite(real.matrix()).all()
    assert real.groups is not None and len(real.groups) == len(real) and not set(real.groups) & set(ref.groups)
    again = decide(helpers.CFG.decide, real, Labelled(reference=ref), method="pu")
    np.testing.assert_array_equal(again.score, result.decision.score)     # re-decidable from what it kept


def test_a_stage_with_nothing_left_to_do_draws_no_progress_bar():
    """A cached stage used to draw an empty bar ("0img [00:00, ?img/s]")."""
    from fpindex.pipeline import progress_bar

    assert progress_bar(False)(0, "re-rank real").disable is True
    assert progress_bar(False)(5, "re-rank real").disable is False
    assert progress_bar(True)(5, "re-rank real").disable is True


def test_audit_queries_without_the_build_copy_of_the_generated_vectors(leak, helpers, monkeypatch):
    """The index holds them; at 1M images the embedding's own copy is 2 GB more for the whole query."""
    from fpindex import pipeline

    seen = {}
    query = pipeline.query

    def spy(index, *args, **kwargs):
        seen["vectors"] = index.embedded.vectors
        return query(index, *args, **kwargs)

    monkeypatch.setattr(pipeline, "query", spy)
    result = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=helpers.CFG)
    assert seen["vectors"].shape == (0, result.summary["settings"]["embedder"]["dim"])
    assert seen["vectors"].base is None            # not a view that keeps the whole array alive
