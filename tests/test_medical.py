"""DICOM, NIfTI and 16-bit inputs: decoding rules, multi-image files, and audits across formats.

Every file is written here (pydicom, nibabel, OpenCV) from seeded arrays: no fixtures on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpindex import audit
from fpindex.load import ReadOptions, list_images, load_image, parse_window
from fpindex.errors import FpindexError

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid  # noqa: E402


def write_dicom(path: Path, pixels: np.ndarray, *, slope=None, intercept=None, center=None, width=None,
                photometric="MONOCHROME2", syntax=ExplicitVRLittleEndian, raw: bytes | None = None) -> Path:
    """An uncompressed (unless `syntax` says otherwise) DICOM of `pixels` (rows × cols, or frames × rows × cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    signed = pixels.dtype.kind == "i"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, int(signed)
    for tag, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept), ("WindowCenter", center),
                       ("WindowWidth", width)):
        if value is not None:
            setattr(ds, tag, value)
    if raw is not None:
        ds.PixelData = raw
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_values(seed: int, size: int = 64) -> np.ndarray:
    """A seeded int16 'CT slice' in stored units (HU = stored − 1024)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2000, (size, size)).astype(np.int16)


# ---- (1) decoding ------------------------------------------------------------------------------------

def test_rescale_then_tag_window_by_hand(tmp_path):
    stored = np.array([[0, 424, 1024], [1624, 2024, 3000]], np.int16)
    f = write_dicom(tmp_path / "a.dcm", np.tile(stored, (33, 22)), slope=1, intercept=-1024,
                    center=-600, width=1500)
    img, data = load_image(f, 66)
    assert data == f.read_bytes()
    # HU = stored − 1024: −1024, −600, 0, 600, 1000, 1976; window [−1350, 150].
    hu = stored.astype(float) - 1024
    want = np.clip((hu - (-1350)) / 1500, 0, 1)
    np.testing.assert_allclose(img[:2, :3], want, atol=1e-6)
    assert img[0, 1] == pytest.approx(750 / 1500)


def test_option_window_wins_over_tags_and_slope_applies(tmp_path):
    stored = np.array([[0, 100], [200, 400]], np.uint16)
    f = write_dicom(tmp_path / "a.dcm", np.tile(stored, (8, 8)), slope=2, intercept=-100, center=0, width=10)
    img = load_image(f, 16, ReadOptions(window=parse_window("mediastinum")))[0]
    # values −100, 100, 300, 700 in window [−160, 240]
    np.testing.assert_allclose(img[:2, :2], [[60 / 400, 260 / 400], [1.0, 1.0]], atol=1e-6)


def test_no_window_uses_the_stored_range_and_monochrome1_inverts(tmp_path):
    stored = np.array([[0, 1000], [32767, -32768]], np.int16)
    f = write_dicom(tmp_path / "a.dcm", np.tile(stored, (8, 8)))
    img = load_image(f, 16)[0]
    np.testing.assert_allclose(img[:2, :2], [[32768 / 65535, 33768 / 65535], [1.0, 0.0]], atol=1e-6)
    g = write_dicom(tmp_path / "b.dcm", np.tile(stored, (8, 8)), photometric="MONOCHROME1")
    np.testing.assert_allclose(load_image(g, 16)[0], 1 - img, atol=1e-6)


def test_window_spec_errors():
    assert parse_window("lung") == (-600.0, 1500.0)
    assert parse_window("40,400") == (40.0, 400.0)
    with pytest.raises(FpindexError, match=r"^--window 'wide': expected CENTRE,WIDTH \(e\.g\. -600,1500\) or one of lung"):
        parse_window("wide")
    with pytest.raises(FpindexError, match=r"^--window '40,0': the centre must be finite and the width positive$"):
        parse_window("40,0")


def test_multi_frame_gives_one_image_per_frame(tmp_path):
    frames = np.stack([ct_values(s, 32) for s in range(3)])
    f = write_dicom(tmp_path / "scan.dcm", frames, intercept=-1024, center=40, width=400)
    write_dicom(tmp_path / "single.dcm", ct_values(9, 32))
    listed = list_images(tmp_path)
    assert [p.name for p in listed] == ["scan.dcm#0", "scan.dcm#1", "scan.dcm#2", "single.dcm"]
    for k in range(3):
        want = np.clip((frames[k].astype(float) - 1024 - (40 - 200)) / 400, 0, 1)
        np.testing.assert_allclose(load_image(listed[k], 32)[0], want, atol=1e-6)
    assert load_image(listed[3], 32)[1] == (tmp_path / "single.dcm").read_bytes()
    assert f.is_file()


def test_suffixless_dicom_is_recognised_by_its_magic(tmp_path):
    f = write_dicom(tmp_path / "x.dcm", ct_values(1, 16))
    f.rename(tmp_path / "IM0001")
    (tmp_path / "README").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["IM0001"]


# ---- (6) NIfTI ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_slices_along_each_axis(tmp_path, axis):
    vol = np.random.default_rng(3).normal(0, 100, (20, 24, 28)).astype(np.float32)
    f = tmp_path / "vol.nii.gz"
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), f)
    read = ReadOptions(axis=axis)
    listed = list_images(tmp_path, read=read)
    assert [p.name for p in listed] == [f"vol.nii.gz#{k}" for k in range(vol.shape[axis])]
    from fpindex.load import Reader

    reader = Reader(read)
    imgs = [reader.image(p) for p in listed]
    assert {im.shape for im in imgs} == {tuple(np.delete(vol.shape, axis))}
    lo, hi = np.percentile(vol, [0.5, 99.5])
    k = 5
    want = np.clip((np.take(vol, k, axis=axis).astype(float) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(imgs[k], want, atol=1e-5)
    shas = {reader.content(p)[0] for p in listed}
    assert len(shas) == len(listed)                       # one content id per slice


def test_nifti_window_and_missing_nibabel_reason(tmp_path, monkeypatch):
    vol = np.linspace(-1000, 1000, 8 * 8 * 2, dtype=np.float32).reshape(8, 8, 2)
    f = tmp_path / "v.nii"
    nibabel.save(nibabel.Nifti1Image(vol, np.eye(4)), f)
    img = load_image(f"{f}#1", 8, ReadOptions(window=(0.0, 1000.0)))[0]
    np.testing.assert_allclose(img, np.clip((vol[:, :, 1] + 500) / 1000, 0, 1), atol=1e-6)
    from fpindex.load import medical

    monkeypatch.setattr(medical, "_has", lambda m: m != "nibabel")
    with pytest.raises(ValueError, match=r"^NIfTI needs nibabel: pip install 'fpindex\[nifti\]'"):
        load_image(f"{f}#1", 8)


# ---- audits across formats ------------------------------------------------------------------------

def _png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values)


def _sets(tmp_path, helpers, n_gen=12, n_real=6):
    gen, real_png = tmp_path / "gen", tmp_path / "real_png"
    for i in range(n_gen):
        helpers.write_png(gen / f"g{i:02d}.png", helpers.smooth_image(100 + i))
    raw = [np.rint(helpers.smooth_image(200 + i) * 60000).astype(np.uint16) for i in range(n_real)]
    for i, v in enumerate(raw):
        _png16(real_png / f"r{i}.png", v)
    return gen, real_png, raw


@pytest.mark.slow
def test_dicom_audit_matches_16bit_png_and_dicom_copy_ranks_first(tmp_path, helpers):
    gen, real_png, raw = _sets(tmp_path, helpers)
    real_dcm = tmp_path / "real_dcm"
    for i, v in enumerate(raw):              # same stored values: no rescale, no window → v / 65535, like the PNG
        write_dicom(real_dcm / f"r{i}.dcm", v)
    # (3) a DICOM copy of real image r2 among the generated PNGs
    shutil.copyfile(real_dcm / "r2.dcm", gen / "copy_of_r2.dcm")
    cfg = helpers.CFG.override(decide={"method": "fixed"})
    # (2) + (4)
    by_png = audit(gen, real_png, config=cfg)
    by_dcm = audit(gen, real_dcm, config=cfg)
    p, d = by_png.predictions.set_index("image"), by_dcm.predictions.set_index("image")
    assert list(d.index) == [f"r{i}.dcm" for i in range(len(raw))]
    diff = np.abs(p["score"].to_numpy() - d["score"].to_numpy()).max()
    print(f"max |score(PNG16) - score(DICOM)| = {diff:.3g}")
    assert diff <= 1e-6, diff
    nb = by_dcm.neighbours
    top = nb[(nb["image"] == "r2.dcm") & (nb["rank"] == nb["rank"].min())]
    assert top["generated"].iloc[0].endswith("copy_of_r2.dcm")
    assert top["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_multi_frame_items_and_identity(tmp_path, helpers):
    gen, real = tmp_path / "gen", tmp_path / "real"
    for i in range(8):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(300 + i))
    frames = np.stack([np.rint(helpers.smooth_image(400 + k) * 2000).astype(np.int16) - 1024 for k in range(4)])
    write_dicom(real / "scan.dcm", frames, intercept=0)
    cfg = helpers.CFG.override(decide={"method": "fixed"}, embed={"window": "lung"})
    result = audit(gen, real, config=cfg, out=tmp_path / "out")
    assert list(result.predictions["image"]) == [f"scan.dcm#{k}" for k in range(4)]
    manifest = result.summary["settings"]["embedder"]
    assert manifest["window"] == [-600.0, 1500.0] and "axis" not in manifest
    plain = audit(gen, gen, config=helpers.CFG.override(decide={"method": "fixed"}))
    assert "window" not in plain.summary["settings"]["embedder"]


# ---- (5) bad files --------------------------------------------------------------------------------

def test_compressed_and_corrupt_dicom_are_bad_files(tmp_path, helpers):
    gen, real = tmp_path / "gen", tmp_path / "real"
    for i in range(6):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(500 + i))
        helpers.write_png(real / f"r{i}.png", helpers.smooth_image(600 + i))
    from pydicom.encaps import encapsulate

    write_dicom(real / "jpegls.dcm", ct_values(1, 16), syntax=JPEGLSLossless,
                raw=encapsulate([b"\xff\xd8 not really jpeg-ls \xff\xd9"]))
    (real / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x13" * 40)
    result = audit(gen, real, config=helpers.CFG.override(decide={"method": "fixed"}))
    bad = {Path(b["path"]).name: b["reason"] for b in result.summary["bad_files"]["real"]}
    assert set(bad) == {"jpegls.dcm", "corrupt.dcm"}
    import importlib.util

    if importlib.util.find_spec("pylibjpeg") is None:
        assert bad["jpegls.dcm"] == ("compressed transfer syntax JPEG-LS Lossless Image Compression needs "
                                     "pylibjpeg: pip install pylibjpeg pylibjpeg-libjpeg")
    else:
        assert "JPEG-LS Lossless" in bad["jpegls.dcm"]
    assert bad["corrupt.dcm"].startswith(("not a readable DICOM file (", "a DICOM file without pixel data"))
    assert len(result.predictions) == 6
