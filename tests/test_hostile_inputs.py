"""Hostile inputs, one test per family (docs/reliability.md, "Inputs and limits"): every file is made here.

What each promises: a bad file fails alone, counted and named; a bad setting or table is refused before any
work with one line naming the option, file or line; nothing is silently ignored."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpindex import build_index
from fpindex.config import AuditConfig, DecideConfig, EmbedConfig, IndexConfig
from fpindex.errors import FpindexError, FpindexWarning
from fpindex.evaluate import evaluate_files
from fpindex.load import ReadOptions, decode_file, fit_size, list_folder, list_images, load_image

T = re.escape


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR claiming w × h 8-bit gray pixels, with a tiny IDAT: a decompression bomb
    for any decoder that allocates from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def images(folder: Path, helpers, n: int = 4, seed: int = 0) -> Path:
    for i in range(n):
        helpers.write_png(folder / f"img{i}.png", helpers.smooth_image(seed + i))
    return folder


# ---- limits ----------------------------------------------------------------------------------------

def test_decompression_bomb_header_is_one_bad_file_not_a_crash(tmp_path, helpers):
    gen = images(tmp_path / "gen", helpers)
    (gen / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    assert (gen / "bomb.png").stat().st_size < 600
    built = build_index(gen, config=helpers.CFG)
    assert built.ntotal == 4
    [bad] = built.build_summary["bad_files"]
    assert bad["path"] == str(gen / "bomb.png")
    assert re.search(r"over the limit of 134,217,728 decoded pixels per file \(--max-pixels\)", bad["reason"])


def test_pixel_limit_is_configurable_and_names_the_size(tmp_path, helpers):
    p = helpers.write_png(tmp_path / "a.png", helpers.smooth_image(0))          # 64 × 64 = 4096 pixels
    assert load_image(p, 32, ReadOptions(max_pixels=4096))[0].shape == (32, 32)
    with pytest.raises(ValueError, match=r"^the header claims 64 × 64 = 4,096 pixels, over the limit of 4,095 "):
        load_image(p, 32, ReadOptions(max_pixels=4095))
    cfg = helpers.CFG.override(embed={"max_pixels": 4095, "cache": False})   # a cached vector needs no decode
    with pytest.raises(FpindexError, match=r"none of its 2 images could be read"):
        build_index(images(tmp_path / "gen", helpers, n=2), config=cfg)
    with pytest.raises(FpindexError, match=r"^--max-pixels must be at least 1$"):
        EmbedConfig(max_pixels=0)


def _dicom_claiming(rows: int, cols: int, frames: int) -> bytes:
    import io

    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = rows, cols, frames, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\0\0" * 16
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True) if pydicom.__version__ >= "3" else ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["png_truncated", "png_garbage", "empty", "tiff_garbage", "dicom_bomb",
                                  "dicom_garbage", "nifti_not_gzip", "nifti_gzip_bomb", "webp_truncated"])
def test_every_decoder_error_fails_its_file_only(tmp_path, helpers, case):
    good = helpers.write_png(tmp_path / "good.png", helpers.smooth_image(0)).read_bytes()
    ok, webp = cv2.imencode(".webp", helpers.to_u8(helpers.smooth_image(1)))
    name, data, reason = {
        "png_truncated": ("x.png", good[:len(good) // 2], "not a decodable image"),
        "png_garbage": ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a decodable image"),
        "empty": ("x.png", b"", "not a decodable image"),
        "tiff_garbage": ("x.tif", b"II*\x00" + b"\xff" * 200, "not a decodable image|cannot decode"),
        "dicom_bomb": ("x.dcm", _dicom_claiming(60_000, 60_000, 1),
                       r"Rows × Columns × frames × samples = 60000 × 60000 × 1 × 1 = 3,600,000,000 pixels, over"),
        "dicom_garbage": ("x.dcm", b"\0" * 128 + b"DICM" + b"\x07" * 100, "DICOM"),
        "nifti_not_gzip": ("x.nii.gz", b"\x1f\x8b" + b"\x00" * 50, "cannot decode|not a readable NIfTI"),
        "nifti_gzip_bomb": ("x.nii.gz", gzip.compress(b"\0" * (1 << 21)), "decompresses to more than"),
        "webp_truncated": ("x.webp", webp.tobytes()[:30], "not a decodable image"),
    }[case]
    path = tmp_path / name
    path.write_bytes(data)
    read = ReadOptions(max_pixels=10_000) if case == "nifti_gzip_bomb" else ReadOptions()
    with pytest.raises(ValueError, match=reason):
        decode_file(path, data, read)
    assert ok and decode_file(tmp_path / "y.webp", webp.tobytes())[0].shape == (64, 64)   # .webp is read


def test_elongated_image_is_cut_before_resizing(helpers):
    strip = np.tile(np.linspace(0, 1, 100_000, dtype=np.float32), (1, 1))          # 1 × 100000
    out = fit_size(strip, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.allclose(out, fit_size(strip[:, 49_998:50_002], 64))                # the centre 4:1 part
    img = helpers.smooth_image(3)[:, :20]                                           # 64 × 20: 3.2:1, as before
    h, w = img.shape
    scale = 64 / w
    expect = cv2.resize(img, (64, round(h * scale)), interpolation=cv2.INTER_CUBIC)
    top = (expect.shape[0] - 64) // 2
    assert np.allclose(fit_size(img, 64), np.clip(expect[top:top + 64], 0, 1))


def test_image_size_and_memory_are_bounded_before_allocating():
    from fpindex.embed.train import check_training_memory
    from fpindex.index.bench import check_memory, run_bench
    from fpindex.index.factory import select

    with pytest.raises(FpindexError, match=r"^--image-size must be from 32 to 1024, not 100000$"):
        EmbedConfig(image_size=100_000)
    with pytest.raises(FpindexError, match=r"^training on 20,000 generated images at --image-size 1024 needs "
                                           r"about 234\.4 GiB, but 1\.0 GiB of memory is available; lower"):
        check_training_memory(20_000, 1024, 1, free=1 << 30)
    check_training_memory(100, 64, 1, free=1 << 30)
    with pytest.raises(FpindexError, match=r"^training on 100 generated images at --image-size 64 needs about 1\.5 GiB"):
        check_training_memory(100, 64, 1, free=1 << 30, parameters=100_000_000)     # a large backbone's AdamW state
    sel = select("Flat", 1000, 100_000, budget=1 << 50)
    with pytest.raises(FpindexError, match=r"^bench of 1,000 × 100000-d vectors \(Flat\) needs about .* GiB, but "
                                           r"1\.0 GiB of memory is available; lower --n, --dim or --queries$"):
        check_memory(sel, 1000, 100_000, 1500, 10, synthetic=True, free=1 << 30)
    with pytest.raises(FpindexError, match=r"^bench of 10 × 100000000-d vectors"):   # before any allocation
        run_bench(10, 10**8, "Flat", budget=1 << 62, n_eval=10, n_tune=10)
    with pytest.raises(FpindexError, match=r"^--dim must be from 2 to 2,147,483,647, not 1,000,000,000,000$"):
        run_bench(10, 10**12, "Flat")


# ---- listing: nothing passed over in silence ------------------------------------------------------

def test_unsupported_broken_and_undecodable_names_are_counted_and_listed(tmp_path, helpers):
    real = images(tmp_path / "real", helpers)
    from PIL import Image

    Image.new("L", (40, 40)).save(real / "anim.gif")
    (real / "notes.txt").write_text("x")
    (real / ".DS_Store").write_bytes(b"\0")                        # hidden: left out, as by every tool
    os.symlink(tmp_path / "nowhere.png", real / "dangling.png")
    os.symlink(tmp_path, real / "loop")
    odd = os.fsdecode(b"bad\xffname.png")
    (real / odd).write_bytes((real / "img0.png").read_bytes())
    files, skipped = list_folder(real)
    assert [p.name for p in files] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert {Path(b.path).name: b.reason.split(" (")[0] for b in skipped} == {
        "anim.gif": "unsupported file type .gif", "notes.txt": "unsupported file type .txt",
        "dangling.png": "broken symbolic link", "loop": "symbolic link to a folder",
        "bad\\xffname.png": "file name is not valid UTF-8; rename the file"}
    idx = build_index(images(tmp_path / "gen", helpers, seed=10), config=helpers.CFG)
    result = idx.query(real, out=tmp_path / "out")
    counts = result.summary["counts"]["real"]
    assert counts == {"files": 9, "embedded": 4, "bad": 5}
    json.dumps(result.summary.to_dict())                                     # every listed path can be written out
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())["bad_files"]["real"]) == 5


def test_folder_with_only_unsupported_files_says_what_it_skipped(tmp_path):
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(FpindexError, match=rf"^image folder {T(str(tmp_path))} holds no images \(\.png, .*\); 1 "
                                           rf"other file\(s\) skipped, e\.g\. {T(str(tmp_path / 'a.gif'))}: "
                                           r"unsupported file type \.gif"):
        list_images(tmp_path)


def test_shared_stems_and_same_labelled_folders_are_refused_before_work(tmp_path, helpers):
    gen = images(tmp_path / "gen", helpers, seed=10)
    real = tmp_path / "real"
    helpers.write_png(real / "a" / "x.png", helpers.smooth_image(1))
    helpers.write_png(real / "b" / "x.png", helpers.smooth_image(2))
    idx = build_index(gen, config=helpers.CFG)
    with pytest.raises(FpindexError, match=r"real images a/x\.png and b/x\.png share the id 'x'"):
        idx.query(real)
    lab = images(tmp_path / "lab", helpers, seed=20)
    helpers.write_png(lab / "sub" / "y.png", helpers.smooth_image(30))
    for used, not_used, how in [(lab, lab, "is the same folder as"), (lab, lab / "sub", "overlaps")]:
        with pytest.raises(FpindexError, match=rf"^--used {T(str(used))} {how} --not-used {T(str(not_used))}: "
                                               "the images would carry both labels"):
            idx.query(gen, used=used, not_used=not_used)


# ---- tables ----------------------------------------------------------------------------------------

def _csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_excel_bom_and_crlf_tables_are_read(tmp_path):
    preds = _csv(tmp_path / "p.csv", "\ufeffimage,score,label\r\na.png,0.9,1\r\nb.png,0.1,0\r\n")
    labels = _csv(tmp_path / "l.csv", "\ufeffimage,label\r\na.png,1\r\nb.png,0\r\n")
    r = evaluate_files(preds, labels)
    assert (r["n"], r["positives"], r["method"]["accuracy"], r["method"]["auc"]) == (2, 1, 1.0, 1.0)


@pytest.mark.parametrize("which,text,message", [
    ("p", "image,score,label\na.png,nan,1\n", r"p\.csv:2: score 'nan' is not finite"),
    ("p", "image,score,label\na.png,0.5,1\nb.png,-inf,0\n", r"p\.csv:3: score '-inf' is not finite"),
    ("p", "image,score,label\na.png,high,1\n", r"p\.csv:2: score 'high' is not a number"),
    ("p", "image,score,label\na.png,0.5\n", r"p\.csv:2: 2 field\(s\), but the header has 3"),
    ("p", "image,score,label\na.png,0.5,1,extra\n", r"p\.csv:2: 4 fields, but the header has 3"),
    ("p", "image,score,label\n,0.5,1\n", r"p\.csv:2: empty image name"),
    ("p", "image,score,label\na.png,0.5,1\n\nsub/a.png,0.7,0\n",
     r"p\.csv:4: prediction for 'sub/a\.png' has the id 'a' of line 2 \('a\.png'\)"),
    ("l", "image,label\na.png,1\nb.png,0\na.png,1\n", r"l\.csv:4: label of 'a\.png' has the id 'a' of line 2"),
    ("l", "image,label\na.png,1\na.jpg,0\n", r"l\.csv:3: label of 'a\.jpg' has the id 'a' of line 2"),
    ("l", "image,label\na.png,maybe\n", r"l\.csv:2: label 'maybe' is not 0/1"),
    ("l", "image\na.png\n", r"l\.csv: missing column\(s\) label \(has image\)"),
    ("l", "image,label\n", r"l\.csv: no rows"),
])
def test_bad_tables_are_refused_with_the_line(tmp_path, which, text, message):
    files = {"p": _csv(tmp_path / "p.csv", "image,score,label\na.png,0.9,1\nb.png,0.1,0\n"),
             "l": _csv(tmp_path / "l.csv", "image,label\na.png,1\nb.png,0\n")}
    _csv(files[which], text)
    with pytest.raises(FpindexError, match=message):
        evaluate_files(files["p"], files["l"])


def test_table_not_utf8_is_refused(tmp_path):
    p = _csv(tmp_path / "p.csv", "image,score,label\nä.png,0.5,1\n", "latin-1")
    with pytest.raises(FpindexError, match=rf"^{T(str(p))}: not a readable CSV"):
        evaluate_files(p, p)


# ---- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,values,message", [
    ("embed", {"seed": -1}, r"^--seed must be from 0 to 4294967295, not -1$"),
    ("embed", {"seed": 2**32}, r"^--seed must be from 0 to 4294967295, not 4294967296$"),
    ("embed", {"image_size": 8}, r"^--image-size must be from 32 to 1024, not 8$"),
    ("embed", {"seed": 1.5}, r"^--seed must be a whole number, not 1\.5$"),
    ("decide", {"threshold": float("nan")}, r"^--threshold must be a finite number, not nan$"),
    ("decide", {"threshold": float("inf")}, r"^--threshold must be a finite number, not inf$"),
    ("decide", {"alpha": 1.5}, r"^--alpha must be between 0 and 1, not 1\.5$"),
    ("index", {"seed": -3}, r"^--seed must be from 0"),
    ("evidence", {"k": 0}, r"^--k must be at least 1$"),
])
def test_settings_out_of_range_are_refused(section, values, message):
    with pytest.raises(FpindexError, match=message):
        AuditConfig().override(**{section: values})
    with pytest.raises(FpindexError, match=message):
        AuditConfig.from_dict({section: values})                  # a saved manifest or summary is checked too


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], r"Invalid value for '--seed'"),
    (["--image-size", "100000"], r"Invalid value for '--image-size'"),
    (["--threshold", "nan"], r"--threshold must be a finite number, not nan$"),
])
def test_bad_options_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, helpers, args, message):
    gen = images(tmp_path / "gen", helpers, n=2)
    code, lines = helpers.run_main(monkeypatch, capsys, "audit", "-g", gen, "-r", gen, "-o", tmp_path / "out", *args)
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
    assert lines[0].startswith("fpindex: error: ") and not (tmp_path / "out").exists()


def test_unusual_file_names_in_errors_stay_one_line(monkeypatch, capsys, tmp_path, helpers):
    for name in ["two\nlines", os.fsdecode(b"not-utf8-\xff")]:
        code, lines = helpers.run_main(monkeypatch, capsys, "build", tmp_path / name, "--index", tmp_path / "idx")
        assert code == 2 and len(lines) == 1 and lines[0].endswith("does not exist"), lines


def test_add_with_other_embedding_settings_is_refused(monkeypatch, capsys, tmp_path, helpers):
    gen = images(tmp_path / "gen", helpers)
    build_index(gen, tmp_path / "idx", helpers.CFG)
    code, lines = helpers.run_main(monkeypatch, capsys, "build", gen, "--index", tmp_path / "idx", "--add", "--model",
                           "pixels", "-q")
    assert code == 2 and lines == [f"fpindex: error: index {tmp_path / 'idx'} was built with model='cnn'; --add "
                                   "embeds with the index's own settings, so --model 'pixels' is refused: drop it "
                                   "or build a new index"]
    with pytest.raises(FpindexError, match=r"built with image_size=64; .* --image-size 128 is refused"):
        build_index(gen, tmp_path / "idx", helpers.CFG, add=True, expect={"image_size": 128})
    again = build_index(gen, tmp_path / "idx", helpers.CFG, add=True, expect={"model": "cnn", "image_size": 64})
    assert again.build_summary["skipped_known"] == 4


# ---- fpindex's own cache ---------------------------------------------------------------------------

def test_cache_folder_that_is_a_file_is_named(monkeypatch, capsys, tmp_path, helpers):
    gen = images(tmp_path / "gen", helpers, n=2)
    (tmp_path / "cache").write_text("not a folder")
    cfg = helpers.CFG.override(embed={"cache_dir": str(tmp_path / "cache" / "sub")})
    with pytest.raises(FpindexError, match=rf"^cache folder {T(str(tmp_path / 'cache' / 'sub'))}: "
                                           rf"{T(str(tmp_path / 'cache'))} is a file, not a folder; pass --cache-dir"):
        build_index(gen, config=cfg)
    code, lines = helpers.run_main(monkeypatch, capsys, "build", gen, "--index", tmp_path / "idx", "--cache-dir",
                           tmp_path / "cache", "--weights", "random")
    assert code == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0]
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow
def test_damaged_cached_weights_are_a_miss_rewritten_with_a_warning(tmp_path, helpers):
    import torch

    from fpindex.cache import write_blob

    gen = images(tmp_path / "gen", helpers, n=6)
    cfg = helpers.CFG.override(embed={"weights": "selfsup", "train_steps": 1, "cache_dir": str(tmp_path / "c")})
    first = build_index(gen, config=cfg)
    [blob] = (tmp_path / "c" / "selfsup").glob("*.pt")
    good = blob.read_bytes()
    blob.write_bytes(good[:100])                                                # truncated
    with pytest.warns(FpindexWarning, match=r"is damaged \(its 100 bytes do not match the recorded hash\)"):
        second = build_index(gen, config=cfg)
    assert blob.read_bytes() == good and "from_cache" not in second.manifest["embedder"]["training"]
    buf = __import__("io").BytesIO()
    torch.save({"not.a.layer": torch.zeros(2)}, buf)
    write_blob(blob, buf.getvalue(), meta={"steps": 1})                          # hash-valid, wrong network
    with pytest.warns(FpindexWarning, match=r"cached trained weights .* do not load \(RuntimeError\); training "
                                            "again and rewriting them"):
        third = build_index(gen, config=cfg)
    assert blob.read_bytes() == good
    assert third.manifest["embedder"]["weights_id"] == first.manifest["embedder"]["weights_id"]
    fourth = build_index(gen, config=cfg)
    assert fourth.manifest["embedder"]["training"]["from_cache"] is True
