"""Hostile inputs, round 2 (issue 23): headers that claim more than their bytes hold, and values that would
make a result silently wrong (NaN rescale, all-NaN volumes, NaN query vectors). Every file is made here."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from fpindex import build_index
from fpindex.errors import FpindexError
from fpindex.load import ReadOptions, decode_file, list_folder

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402


def dicom(rows: int, cols: int, frames: int | None, pixel_bytes: bytes, **tags) -> bytes:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["x"])
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixel_bytes
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def nifti2_header(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A NIfTI-2 single file (.nii): 540-byte header, 4 bytes extension flag, then `data` (float32)."""
    dim = [len(shape), *shape] + [1] * (7 - len(shape))
    h = struct.pack("<i8s", 540, b"n+2\0\r\n\x1a\n") + struct.pack("<hh", 16, 32)
    h += struct.pack("<8q", *dim) + struct.pack("<3d", 0, 0, 0) + struct.pack("<8d", 1, *[1.0] * 7)
    h += struct.pack("<q", 544) + struct.pack("<2d", 1, 0) + struct.pack("<2d", 0, 0)
    h += struct.pack("<3d", 0, 0, 0) + struct.pack("<3q", 0, 0, 0)
    h += b"\0" * (540 - len(h))
    return h + b"\0\0\0\0" + data


def test_header_claims_are_bounded_before_listing_and_one_bad_file_counts_once(tmp_path, helpers):
    gen = tmp_path / "gen"
    for i in range(4):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(i))
    (gen / "billion.dcm").write_bytes(dicom(1, 1, 10**9, b"\0\0" * 4))
    (gen / "empty_frames.dcm").write_bytes(dicom(8, 8, 20_000, b"\0\0" * 64))
    (gen / "billion.nii").write_bytes(nifti2_header((1, 1, 10**9)))
    (gen / "slices.nii").write_bytes(nifti2_header((4, 4, 20_000)))
    assert max((gen / n).stat().st_size for n in ("billion.dcm", "empty_frames.dcm", "billion.nii")) < 1000
    files, _ = list_folder(gen)
    assert len(files) == 8                  # each hostile file listed once, not once per declared image
    built = build_index(gen, config=helpers.CFG)
    assert built.ntotal == 4
    bad = {b["path"].rsplit("/", 1)[-1]: b["reason"] for b in built.build_summary["bad_files"]}
    assert sorted(bad) == ["billion.dcm", "billion.nii", "empty_frames.dcm", "slices.nii"]
    assert "over the limit of 134,217,728 decoded pixels" in bad["billion.dcm"]


def test_a_frame_error_of_a_whole_file_is_listed_once(tmp_path):
    from fpindex.load import bad_file

    bad: list = []
    for k in range(3):
        bad_file(tmp_path / f"scan.dcm#{k}", "cannot decode the DICOM pixel data", bad)
    (tmp_path / "scan.dcm").write_bytes(b"")
    assert len(bad) == 1


@pytest.mark.parametrize("tag", ["RescaleSlope", "RescaleIntercept"])
def test_nan_rescale_is_a_bad_file_not_a_score(tmp_path, tag):
    data = dicom(4, 4, None, np.arange(16, dtype=np.uint16).tobytes(), **{tag: "NaN"})
    with pytest.raises(ValueError, match=f"{tag} is nan, not a finite number"):
        decode_file(tmp_path / "x.dcm", data)


@pytest.mark.parametrize("window", [None, (0.0, 1.0)])
def test_all_nan_nifti_is_a_bad_file_not_black_slices(tmp_path, window):
    pytest.importorskip("nibabel")
    data = nifti2_header((4, 4, 2), np.full(32, np.nan, np.float32).tobytes())
    with pytest.raises(ValueError, match="no finite value"):
        decode_file(tmp_path / "x.nii", data, ReadOptions(window=window))
    ok = nifti2_header((4, 4, 2), np.arange(32, dtype=np.float32).tobytes())
    assert len(decode_file(tmp_path / "y.nii", ok)) == 2


def test_index_search_refuses_nan_vectors(tmp_path, helpers):
    gen = tmp_path / "gen"
    for i in range(4):
        helpers.write_png(gen / f"g{i}.png", helpers.smooth_image(i))
    index = build_index(gen, config=helpers.CFG)
    q = np.ones((2, index.store.dim), np.float32)
    q[1, 3] = np.nan
    with pytest.raises(FpindexError, match=r"1 vector\(s\) hold NaN or infinite values \(row 1 first\)"):
        index.search(q, 2)


def test_an_image_1200_folders_deep_is_listed_without_recursion(tmp_path, helpers):
    import os

    deep = tmp_path / "gen"
    os.makedirs(deep)
    fd = os.open(deep, os.O_RDONLY)           # relative steps: the absolute path would pass PATH_MAX
    try:
        for _ in range(1200):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        ok, buf = __import__("cv2").imencode(".png", helpers.to_u8(helpers.smooth_image(1)))
        out = os.open("x.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, buf.tobytes())
        os.close(out)
    finally:
        os.close(fd)
    helpers.write_png(deep / "top.png", helpers.smooth_image(0))
    try:
        files, bad = list_folder(deep)
        assert sorted(f.name for f in files) == ["top.png", "x.png"] and not bad
        assert str(files[0]).count("/d") == 1200
    finally:                                  # shutil.rmtree (pytest's clean-up) recurses too: unchain first
        while (deep / "d").exists():
            if (deep / "d" / "d").exists():
                os.rename(deep / "d" / "d", deep / "next")
            for f in (deep / "d").iterdir():
                f.unlink()
            os.rmdir(deep / "d")
            if (deep / "next").exists():
                os.rename(deep / "next", deep / "d")
