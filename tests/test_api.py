"""The public API (fpindex/api.py): in-memory results, files only when asked, the config recorded whole."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fpindex
from fpindex import AuditConfig, EmbedConfig, FpindexError, audit, build_index, open_index
from fpindex.index import IndexStore

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_the_readme_python_example_runs(scenario, tmp_path, monkeypatch):
    """The README's Python example, run as written on the demo's layout (fpindex-demo/data/…): it once named
    folders (`real`, `used`) that no demo has."""
    code = README.read_text().split("<!-- api-example -->")[1].split("```python")[1].split("```")[0]
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 8
    shutil.copytree(scenario, tmp_path / "fpindex-demo" / "data")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "results-py").iterdir()) == [
        "fpindex-run.json", "generated.parquet", "neighbours.parquet", "patients.csv", "predictions.csv",
        "submission.csv", "summary.json"]


def test_audit_in_memory_writes_nothing(leak, helpers, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=helpers.CFG)
    assert list(tmp_path.iterdir()) == []
    assert list(result.predictions.columns) == ["image", "score", "label", "p_value", "flagged_by"]
    assert len(result.neighbours) == 3 * len(result.predictions)
    assert result.verdict.leakage is True and result.verdict.text.startswith("leakage detected")
    assert result.summary["verdict"]["text"] == result.verdict.text
    # The same numbers as the audit that wrote files (conftest's).
    on_disk = helpers.read_csv(leak.audit_out / "predictions.csv")
    assert [f"{s:.6f}" for s in result.predictions["score"]] == [r["score"] for r in on_disk]
    result.save(tmp_path / "later")
    assert (tmp_path / "later" / "predictions.csv").read_text() == (leak.audit_out / "predictions.csv").read_text()


def test_config_round_trips_and_is_recorded_whole(leak, helpers):
    cfg = AuditConfig.from_dict(json.loads(json.dumps(helpers.CFG.to_dict())))
    assert cfg == helpers.CFG
    assert leak.audit_summary["config"] == helpers.CFG.to_dict()
    manifest = IndexStore.load(leak.audit_out / "index").manifest
    assert AuditConfig.from_dict(manifest["config"]).embed == EmbedConfig(**{**helpers.EMBED.__dict__,
                                                                            "weights": "random", "image_size": 64})
    assert cfg.override(embed={"seed": 3}).embed.seed == 3 and cfg.embed.seed == 0
    with pytest.raises(FpindexError, match=r"^unknown setting embed\.colour; known: model, weights, "):
        AuditConfig.from_dict({"embed": {"colour": "red"}})
    with pytest.raises(FpindexError, match="^unknown config section 'render'$"):
        cfg.override(render={})
    assert isinstance(fpindex.PRESETS.get("zoq-cnn-cosine"), AuditConfig)


def test_index_search_by_vectors_and_by_folder(leak, helpers):
    index = open_index(leak.audit_out / "index", helpers.CFG)
    v = index.store.reconstruct(np.arange(3))
    nb = index.search(v, k=2)
    np.testing.assert_array_equal(nb.ids[:, 0], [0, 1, 2])
    by_folder = index.search(leak.real, k=1)
    exact = sorted(p.name for p in leak.real.iterdir()).index(leak.exact_real)
    assert Path(index.store.paths(by_folder.ids[exact])[0]).name == leak.exact_copy


@pytest.mark.slow
def test_an_index_in_memory_queries_like_a_saved_one(leak, helpers):
    index = build_index(leak.generated, None, helpers.CFG)
    assert index.directory is None
    result = index.query(leak.real, used=leak.used, not_used=leak.not_used)
    assert [f"{s:.6f}" for s in result.predictions["score"]] == \
        [r["score"] for r in helpers.read_csv(leak.audit_out / "predictions.csv")]


# ---- defects found in review -----------------------------------------------------------------------

def test_audit_refuses_an_existing_index_unless_overwrite(leak, helpers, tmp_path):
    idx = tmp_path / "idx"
    build_index(leak.generated, idx, helpers.CFG)
    before = (idx / "index.faiss").read_bytes()
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(idx))} already exists; pass --overwrite to "
                                           "replace it or choose another --index$"):
        audit(leak.generated, leak.real, config=helpers.CFG, out=tmp_path / "out", index_dir=idx)
    assert (idx / "index.faiss").read_bytes() == before and not (tmp_path / "out").exists()
    audit(leak.generated, leak.real, config=helpers.CFG, out=tmp_path / "out", index_dir=idx, overwrite=True)
    # Something that is not an fpindex index is never replaced, even when asked.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "letter.txt").write_text("keep me")
    with pytest.raises(FpindexError, match=rf"^{re.escape(str(docs))} exists and is not an fpindex index \(no "
                                           r"manifest\.json\); refusing to replace it: choose another --index$"):
        audit(leak.generated, leak.real, config=helpers.CFG, index_dir=docs, overwrite=True)
    assert (docs / "letter.txt").read_text() == "keep me"


def test_rerunning_an_audit_into_its_output_folder_replaces_its_own_index(leak, helpers, tmp_path):
    out = tmp_path / "out"
    first = audit(leak.generated, leak.real, config=helpers.CFG, out=out)
    second = audit(leak.generated, leak.real, config=helpers.CFG, out=out)
    assert first.predictions.equals(second.predictions) and (out / "index" / "manifest.json").is_file()


def test_add_refits_the_subspace_and_retunes_the_search(leak, helpers, tmp_path):
    gen = sorted(leak.generated.iterdir())
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for i, f in enumerate(gen):
        shutil.copyfile(f, (a if i < len(gen) // 2 else b) / f.name)
    idx = tmp_path / "idx"
    cfg = helpers.CFG.override(index={"factory": "IVF2,Flat", "target_recall": 1.0})
    first = build_index(a, idx, cfg).manifest
    assert first["subspace"]["images"] == len(gen) // 2
    added = build_index(b, idx, cfg, add=True).manifest
    store = IndexStore.load(idx)
    assert added["subspace"]["images"] == store.ntotal == len(gen)
    assert store.manifest["subspace"] == added["subspace"]
    assert store.manifest["tuning"]["queries"] == min(500, len(gen))    # retuned on everything now stored
    assert store.manifest["tuning"]["recall"] == 1.0


@pytest.mark.slow
def test_every_image_is_decoded_at_most_once_per_run(leak, helpers, tmp_path, monkeypatch):
    """Self-supervised sample, embedding, subspace fit and re-ranking share one pixel store; also when the
    vectors come from the cache and only re-ranking needs the pixels."""
    import fpindex.embed.stream as stream
    import fpindex.embed.train as train
    import fpindex.load as load

    seen: list[str] = []
    real_decode = load.decode

    def counting(data: bytes):
        seen.append(hashlib.sha256(data).hexdigest())
        return real_decode(data)

    for module in (stream, train, load):
        monkeypatch.setattr(module, "decode", counting)
    files: dict[str, int] = {}          # content hash → number of files with it (the planted exact copy shares)
    for folder in (leak.generated, leak.real, leak.used, leak.not_used):
        for f in folder.iterdir():
            h = hashlib.sha256(f.read_bytes()).hexdigest()
            files[h] = files.get(h, 0) + 1

    def at_most_once() -> bool:
        return bool(seen) and all(seen.count(h) <= files[h] for h in set(seen))

    cache = tmp_path / "cache"
    cfg = helpers.CFG.override(embed={"weights": None, "train_steps": 10, "cache_dir": str(cache), "workers": 0})
    audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=cfg)
    assert at_most_once()
    # Vectors cached, re-ranking values not: the real images are decoded once, for re-ranking.
    for d in cache.iterdir():
        if not d.name.startswith("embedding-"):
            shutil.rmtree(d)
    seen.clear()
    audit(leak.generated, leak.real, used=leak.used, not_used=leak.not_used, config=cfg)
    assert at_most_once()
