"""Index integrity (issue 11): damaged or edited index files, generated images changed after the build and
stored paths that leave their folder are refused with one line naming the file — never silently used.
Every damaged index is made here, from a small seeded one (docs/reliability.md § Index integrity)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fpindex import FpindexWarning, build_index, open_index
from fpindex.cli import main
from fpindex.config import EvidenceConfig
from fpindex.errors import FpindexError
from fpindex.index import INDEX_FILE, ITEMS_FILE, LISTS_FILE, MANIFEST_FILE, IndexStore, write_embeddings
from fpindex.index import shard_add, shard_merge, shard_train
from fpindex.config import IndexConfig
from fpindex.pixels import PixelStore, QueryImages

DIM = 8
IDENTITY = {"model": "cnn", "weights": "random", "weights_id": "random:seed=0", "enhance": ["none"],
            "image_size": 64, "seed": 0, "dim": DIM}


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(n: int, root: str = "/data/gen", paths: list[str] | None = None) -> pa.Table:
    return pa.table({"root": [root] * n, "path": paths or [f"{i}.png" for i in range(n)],
                     "sha256": [f"{i:064x}" for i in range(n)], "bytes": [1] * n})


def saved(tmp_path: Path, n: int = 12, attachments: dict[str, bytes] | None = None) -> Path:
    s = IndexStore.create("Flat", DIM, dict(IDENTITY))
    s.add(vectors(n), rows(n))
    s.attachments.update(attachments or {})
    return s.save(tmp_path / "idx")


def flip(path: Path) -> None:
    """One byte in the middle inverted: same size, different content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def manifest_of(d: Path) -> dict:
    return json.loads((d / MANIFEST_FILE).read_text())


def write_manifest(d: Path, manifest) -> None:
    (d / MANIFEST_FILE).write_text(json.dumps(manifest))


def as_format_2(d: Path) -> None:
    """What fpindex wrote before checksums existed: format 2, no 'files', no 'digest'."""
    m = manifest_of(d)
    m["format_version"] = 2
    del m["files"], m["digest"]
    write_manifest(d, m)


def refused(d: Path, message: str, **load) -> None:
    with pytest.raises(FpindexError, match=message) as e:
        IndexStore.load(d, **load)
    assert "\n" not in str(e.value)


CHANGED = r"the file changed after the index was written: restore it or rebuild the index$"


# ---- the files of the index --------------------------------------------------------------------------

def test_intact_index_loads_and_verifies(tmp_path):
    d = saved(tmp_path, attachments={"extra.bin": b"weights"})
    m = manifest_of(d)
    assert m["format_version"] == 3 and set(m["files"]) == {INDEX_FILE, ITEMS_FILE, "extra.bin"}
    assert IndexStore.load(d, verify=True).attachments == {"extra.bin": b"weights"}


def test_flipped_byte_in_faiss_file_is_refused(tmp_path):
    d = saved(tmp_path)
    flip(d / INDEX_FILE)
    refused(d, rf"^index {re.escape(str(d / INDEX_FILE))}: its content does not match the checksum in the "
               rf"manifest; {CHANGED}")


def test_flipped_byte_in_items_file_is_refused(tmp_path):
    d = saved(tmp_path)
    flip(d / ITEMS_FILE)
    refused(d, rf"^index {re.escape(str(d / ITEMS_FILE))}: its content does not match the checksum")


def test_items_of_another_index_are_refused(tmp_path):
    d = saved(tmp_path)
    other = IndexStore.create("Flat", DIM, dict(IDENTITY))
    other.add(vectors(12), rows(12, root="/data/other"))
    pq.write_table(other.items, d / ITEMS_FILE)
    refused(d, rf"^index {re.escape(str(d / ITEMS_FILE))}: (\d+ bytes, the manifest recorded \d+|its content "
               r"does not match the checksum)")


def test_changed_attachment_is_refused(tmp_path):
    d = saved(tmp_path, attachments={"extra.bin": b"weights"})
    (d / "extra.bin").write_bytes(b"WEIGHTS")
    refused(d, rf"^index {re.escape(str(d / 'extra.bin'))}: its content does not match the checksum")


def test_flipped_byte_in_on_disk_lists_is_refused(tmp_path):
    """A merged sharded index keeps its inverted lists in lists.ivfdata: they are checked like the rest."""
    x = vectors(400, seed=1)
    p = write_embeddings(tmp_path / "e.parquet", x, rows(400), dict(IDENTITY))
    shard_train(p, tmp_path / "work", IndexConfig(factory="IVF4,Flat", device="cpu", nprobe=2))
    for part in (0, 1):
        shard_add(tmp_path / "work", part, 2)
    d = tmp_path / "merged"
    shard_merge(tmp_path / "work", d, 2)
    assert LISTS_FILE in manifest_of(d)["files"]
    flip(d / LISTS_FILE)
    refused(d, rf"^index {re.escape(str(d / LISTS_FILE))}: its content does not match the checksum")


@pytest.mark.parametrize("plan", ["{not json", "[]", '{"n": "many"}'])
def test_shard_plan_of_the_wrong_shape_is_one_line(tmp_path, plan):
    x = vectors(200, seed=2)
    p = write_embeddings(tmp_path / "e.parquet", x, rows(200), dict(IDENTITY))
    work = tmp_path / "work"
    shard_train(p, work, IndexConfig(factory="IVF4,Flat", device="cpu", nprobe=2))
    (work / "plan.json").write_text(plan)
    with pytest.raises(FpindexError, match=rf"^shard folder {re.escape(str(work))}: plan\.json (is unreadable \(|"
                                           r"has no valid 'embeddings'; )"):
        shard_add(work, 0, 2)


def test_damage_that_keeps_size_and_mtime_needs_verify(tmp_path):
    """The fast path trusts a file whose size and mtime are the recorded ones; --verify hashes it anyway."""
    d = saved(tmp_path)
    rec = manifest_of(d)["files"][INDEX_FILE]
    flip(d / INDEX_FILE)
    os.utime(d / INDEX_FILE, ns=(rec["mtime_ns"], rec["mtime_ns"]))
    later = rec["mtime_ns"] + 10**9                  # the manifest clearly newer than the file: not a racy stat
    os.utime(d / MANIFEST_FILE, ns=(later, later))
    assert IndexStore.load(d).ntotal == 12
    refused(d, rf"^index {re.escape(str(d / INDEX_FILE))}: its content does not match", verify=True)


def test_copy_without_mtimes_is_hashed_and_loads(tmp_path):
    d = saved(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in d.iterdir():
        shutil.copyfile(f, copy / f.name)             # new mtimes: every file is hashed, and matches
    assert IndexStore.load(copy).ntotal == 12


def built(helpers, tmp_path, n: int, seed: int):
    """An index of n smooth generated images in tmp_path/idx; returns (generated folder, index folder)."""
    gen = tmp_path / "gen"
    for i in range(n):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(seed + i))
    d = tmp_path / "idx"
    build_index(gen, d, helpers.CFG)
    return gen, d


def test_build_add_updates_the_checksums(helpers, tmp_path):
    gen, d = built(helpers, tmp_path, 4, 100)
    before = manifest_of(d)["files"]
    for i in range(4, 6):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(100 + i))
    build_index(gen, d, helpers.CFG, add=True)
    after = manifest_of(d)["files"]
    assert after[ITEMS_FILE]["sha256"] != before[ITEMS_FILE]["sha256"]
    assert open_index(d, helpers.CFG, verify=True).ntotal == 6


# ---- the manifest ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("image_size", 128), ("enhance", ["dog"]), ("model", "pixels"),
                                       ("weights_id", "random:seed=1")])
def test_edited_embedder_in_manifest_is_refused(tmp_path, key, value):
    d = saved(tmp_path)
    m = manifest_of(d)
    m["embedder"][key] = value
    write_manifest(d, m)
    refused(d, rf"^index {re.escape(str(d / MANIFEST_FILE))}: the manifest was changed after the index was "
               r"written \(its digest does not match its content\); restore it or rebuild the index$")


def test_edited_search_parameters_are_refused(tmp_path):
    d = saved(tmp_path)
    m = manifest_of(d)
    m["search_params"] = {"nprobe": 1}
    write_manifest(d, m)
    refused(d, r"manifest\.json: the manifest was changed after the index was written")


def _drop(m, key):
    del m[key]
    return m


@pytest.mark.parametrize("change,problem", [
    (lambda m: [m], r"the manifest is an array, not an object"),
    (lambda m: None, r"the manifest is null, not an object"),
    (lambda m: _drop(m, "embedder"), r"the manifest has no 'embedder'"),
    (lambda m: dict(m, dim="8"), r"the manifest's 'dim' is a string, not a whole number"),
    (lambda m: dict(m, ntotal=True), r"the manifest's 'ntotal' is a boolean, not a whole number"),
    (lambda m: dict(m, embedder=["cnn"]), r"the manifest's 'embedder' is an array, not an object"),
    (lambda m: dict(m, attachments="extra.bin"), r"the manifest's 'attachments' is a string, not an array"),
    (lambda m: dict(m, attachments=[3]), r"the manifest's 'attachments' are not all file names"),
    (lambda m: dict(m, search_params={"nprobe": "many"}), r"the manifest's 'search_params' are not all whole numbers"),
    (lambda m: dict(m, config={"embed": 3}), r"the manifest's 'config.embed' is not an object"),
    (lambda m: dict(m, embedder={"model": "cnn"}), r"the manifest's 'embedder' has no valid 'weights'"),
    (lambda m: dict(m, files={INDEX_FILE: [1, 2]}), r"the manifest's checksum record of 'index.faiss' is malformed"),
    (lambda m: _drop(m, "digest"), r"format 3 records checksums, but the manifest has no 'files' or 'digest'"),
    (lambda m: dict(m, format_version="3"), r"format version '3' is not a number"),
    (lambda m: dict(m, format_version=0), r"format version 0, this fpindex reads 1, 2, 3")])
def test_manifest_of_the_wrong_shape_is_one_line(tmp_path, change, problem):
    d = saved(tmp_path)
    write_manifest(d, change(manifest_of(d)))
    refused(d, rf"^index {re.escape(str(d / MANIFEST_FILE))}: {problem}; rebuild the index$")


def test_manifest_from_a_newer_fpindex_asks_for_an_upgrade(tmp_path):
    d = saved(tmp_path)
    write_manifest(d, dict(manifest_of(d), format_version=4))
    refused(d, r"manifest\.json: format version 4, this fpindex reads 1, 2, 3; upgrade fpindex \(or rebuild the "
               r"index with this one\)$")


def test_manifest_that_is_not_utf8_is_one_line(tmp_path):
    d = saved(tmp_path)
    (d / MANIFEST_FILE).write_bytes(b"\xff\xfe{}")
    refused(d, r"manifest\.json: unreadable manifest \(")


def test_index_without_checksums_loads_with_a_warning_and_cannot_be_verified(tmp_path):
    d = saved(tmp_path)
    as_format_2(d)
    with pytest.warns(FpindexWarning, match=rf"^index {re.escape(str(d))}: format version 2 records no checksums, "
                                            r"so damage to its files cannot be detected; rebuild the index"):
        assert IndexStore.load(d).ntotal == 12
    refused(d, r": format version 2 records no checksums, so it cannot be verified; rebuild the index with "
               r"this fpindex$", verify=True)


def test_old_format_number_with_checksums_is_refused(tmp_path):
    """Lowering the format number does not switch the checks off."""
    d = saved(tmp_path)
    write_manifest(d, dict(manifest_of(d), format_version=2))
    refused(d, r"format version 2 has no checksums, yet the manifest carries them: it was edited; rebuild")


def test_old_index_re_saved_by_build_add_gets_checksums(helpers, tmp_path):
    gen, d = built(helpers, tmp_path, 3, 200)
    as_format_2(d)
    helpers.write_png(gen / "g3.png", helpers.smooth_image(203))
    with pytest.warns(FpindexWarning, match="records no checksums"):
        build_index(gen, d, helpers.CFG, add=True)
    assert manifest_of(d)["format_version"] == 3
    assert IndexStore.load(d, verify=True).ntotal == 4


# ---- stored paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../x.png", "", "..\\..\\x.png",
                                  "C:/x.png"])
def test_items_whose_path_leaves_the_root_are_not_indexed(path):
    s = IndexStore.create("Flat", DIM, dict(IDENTITY))
    with pytest.raises(FpindexError, match=rf"^new index items: item 1 has path {re.escape(repr(path))} under "
                                           r"root '/data/gen', which leaves its root; refusing to index it$"):
        s.add(vectors(2), rows(2, paths=["ok.png", path]))
    assert s.ntotal == 0


def test_old_index_whose_path_leaves_the_root_is_refused(tmp_path):
    """Without checksums (format 2) the items can be edited: the paths are still checked on load."""
    d = saved(tmp_path)
    items = pq.read_table(d / ITEMS_FILE).to_pydict()
    items["path"][3] = "../../etc/passwd"
    pq.write_table(pa.table(items), d / ITEMS_FILE)
    as_format_2(d)
    with pytest.raises(FpindexError, match=rf"^index {re.escape(str(d / ITEMS_FILE))}: item 3 has path "
                                           r"'\.\./\.\./etc/passwd' under root '/data/gen', which leaves its root; "
                                           r"the metadata was edited: rebuild the index$"), \
            pytest.warns(FpindexWarning):
        IndexStore.load(d)


def test_symlink_leaving_the_folder_is_refused_when_building(helpers, tmp_path):
    gen = tmp_path / "gen"
    for i in range(3):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(300 + i))
    outside = helpers.write_png(tmp_path / "elsewhere" / "secret.png", helpers.smooth_image(399))
    (gen / "link.png").symlink_to(outside)
    with pytest.raises(FpindexError, match=rf"^generated image {re.escape(str(gen.resolve() / 'link.png'))} "
                                           rf"\(index id 3\) resolves to {re.escape(str(outside.resolve()))}, "
                                           r"outside its folder"):
        build_index(gen, tmp_path / "idx", helpers.CFG)
    assert not (tmp_path / "idx").exists()


# ---- generated images read for re-ranking -------------------------------------------------------------

@pytest.fixture()
def small(helpers, tmp_path):
    """An index of 4 generated images and 2 real near-copies; every generated image is a neighbour (k = 4)."""
    gen, real = tmp_path / "gen", tmp_path / "real"
    for i in range(4):
        img = helpers.smooth_image(500 + i)
        helpers.write_png(gen / f"g{i}.png", img)
        if i < 2:
            helpers.write_png(real / f"r{i}.png", helpers.perturb(img, i))
    cfg = helpers.CFG.override(evidence={"k": 4}, embed={"cache_dir": str(tmp_path / "cache")})
    build_index(gen, tmp_path / "idx", cfg)
    return gen, real, tmp_path / "idx", cfg


def test_generated_file_replaced_after_the_build_is_refused(small, helpers, tmp_path):
    gen, real, d, cfg = small
    helpers.write_png(gen / "g2.png", helpers.smooth_image(999))
    cold = cfg.override(embed={"cache": False})        # re-ranking reads (and hashes) every neighbour
    with pytest.raises(FpindexError, match=rf"^generated image {re.escape(str(gen.resolve() / 'g2.png'))} \(index "
                                           r"id 2\) is needed for SSIM re-ranking but its content changed since it "
                                           r"was indexed \(sha256 [0-9a-f]{12}…, the index has [0-9a-f]{12}…\); "
                                           r"restore the file or rebuild the index$"):
        open_index(d, cold).query(real)


def test_generated_file_resized_is_refused_with_a_warm_cache(small, helpers):
    gen, real, d, cfg = small
    open_index(d, cfg).query(real)                      # warms the re-ranking cache: nothing is read next time
    (gen / "g1.png").write_bytes((gen / "g1.png").read_bytes() + b"\0")
    with pytest.raises(FpindexError, match=r"\(index id 1\) is needed for SSIM re-ranking but changed since it was "
                                           r"indexed \(\d+ bytes, the index has \d+\)"):
        open_index(d, cfg).query(real)


def test_generated_symlink_leaving_the_folder_is_refused_with_a_warm_cache(small, helpers, tmp_path):
    gen, real, d, cfg = small
    open_index(d, cfg).query(real)
    outside = tmp_path / "outside.png"
    shutil.move(gen / "g3.png", outside)                # same bytes, now reached through a link out of gen/
    (gen / "g3.png").symlink_to(outside)
    with pytest.raises(FpindexError, match=r"generated image .*g3\.png \(index id 3\) resolves to .*outside\.png, "
                                           r"outside its folder .*; refusing to read it$"):
        open_index(d, cfg).query(real)


def test_pixel_store_checks_the_content_id_of_an_image_in_a_volume(tmp_path):
    """Image k of a multi-image file is checked against the id derived from the file's hash."""
    nibabel = pytest.importorskip("nibabel")
    from fpindex.load import Reader, frame_path

    f = tmp_path / "vol.nii.gz"
    vol = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), f)
    right = Reader().content(frame_path(f, 1))[0]
    store = PixelStore(16)
    assert store.get(frame_path(f, 1), lambda e: e, sha256=right).shape == (16, 16)
    with pytest.raises(FpindexError, match="^its content changed since it was indexed"):
        PixelStore(16).get(frame_path(f, 2), lambda e: e, sha256=right)


def test_query_images_refuse_an_index_entry_without_a_folder(tmp_path):
    """An index built from vectors alone (.npy) has no images to re-rank with: said so, not a missing file."""
    s = IndexStore.create("Flat", DIM, dict(IDENTITY))
    s.add(vectors(2), rows(2, root=""))
    images = QueryImages(PixelStore(16), [], s)
    with pytest.raises(FpindexError, match=r"index id 0 stores no image folder \(it was indexed from vectors "
                                           r"alone\)"):
        images.check_generated(np.array([0]))


# ---- the command line ------------------------------------------------------------------------------

def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["fpindex", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_cli_verify_refuses_what_the_fast_path_trusts(monkeypatch, capsys, tmp_path):
    d = saved(tmp_path)
    rec = manifest_of(d)["files"][ITEMS_FILE]
    flip(d / ITEMS_FILE)
    os.utime(d / ITEMS_FILE, ns=(rec["mtime_ns"], rec["mtime_ns"]))
    later = rec["mtime_ns"] + 10**9
    os.utime(d / MANIFEST_FILE, ns=(later, later))
    code, err = run_main(monkeypatch, capsys, "query", str(tmp_path / "real"), "--index", str(d), "--out",
                         str(tmp_path / "out"), "--verify")
    assert code == 2 and len(err) == 1, err
    assert re.match(rf"fpindex: error: index {re.escape(str(d / ITEMS_FILE))}: its content does not match", err[0])
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_old_format_warning_as_one_line(monkeypatch, capsys, tmp_path):
    d = saved(tmp_path)
    as_format_2(d)
    code, err = run_main(monkeypatch, capsys, "query", str(tmp_path / "real"), "--index", str(d), "--out",
                         str(tmp_path / "out"))
    assert code == 2 and len(err) == 2, err                 # the warning, then the missing real folder
    assert err[0].startswith(f"fpindex: warning: index {d}: format version 2 records no checksums")
    assert err[1].startswith("fpindex: error: real folder")
