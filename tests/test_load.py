"""Stage 1 — listing and decoding images into the canonical float32 [0, 1] square."""

from __future__ import annotations

import errno
import os
import re

import cv2
import numpy as np
import pytest

from fpindex.errors import FpindexError
from fpindex.load import BadFile, decode, fit_size, list_images, load_image

LOSSLESS = [".png", ".tif", ".tiff", ".bmp"]


def gray8(h=40, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# ---- formats, depths, channels -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", LOSSLESS)
def test_lossless_8bit_gray_is_exact(tmp_path, suffix):
    raw = gray8()
    p = tmp_path / f"a{suffix}"
    assert cv2.imwrite(str(p), raw)
    img, data = load_image(p, 40)
    assert img.dtype == np.float32 and img.shape == (40, 40)
    np.testing.assert_array_equal(img, raw.astype(np.float32) / 255.0)
    assert data == p.read_bytes()


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_8bit_gray_close(tmp_path, suffix):
    raw = cv2.GaussianBlur(gray8(), (7, 7), 0)   # smooth, so JPEG loses little
    p = tmp_path / f"a{suffix}"
    assert cv2.imwrite(str(p), raw, [cv2.IMWRITE_JPEG_QUALITY, 98])
    img, _ = load_image(p, 40)
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    assert np.abs(img - raw / 255.0).max() < 0.05


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_divided_by_65535(tmp_path, suffix):
    raw = np.random.default_rng(1).integers(0, 65536, (40, 40), dtype=np.uint16)
    raw[0, 0], raw[0, 1] = 0, 65535
    p = tmp_path / f"a{suffix}"
    assert cv2.imwrite(str(p), raw)
    img, _ = load_image(p, 40)
    np.testing.assert_allclose(img, raw.astype(np.float64) / 65535.0, atol=1e-6)
    assert img.min() == 0.0 and img.max() == 1.0
    # 16-bit precision survives (an 8-bit read would quantise to 1/255 steps).
    assert len(np.unique(img)) > 256


def _colour_bars(dtype, top):
    """Left third pure blue, middle pure green, right pure red (BGR order, as OpenCV stores it)."""
    img = np.zeros((30, 30, 3), dtype)
    img[:, :10, 0] = top   # B
    img[:, 10:20, 1] = top  # G
    img[:, 20:, 2] = top   # R
    return img


@pytest.mark.parametrize("suffix,dtype,top,tol", [(".png", np.uint8, 255, 1 / 255 + 1e-6),
                                                  (".bmp", np.uint8, 255, 1 / 255 + 1e-6),
                                                  (".jpg", np.uint8, 255, 0.03),
                                                  (".png", np.uint16, 65535, 1e-4),
                                                  (".tif", np.uint16, 65535, 1e-4)])
def test_colour_uses_bt601_luma_on_bgr(tmp_path, suffix, dtype, top, tol):
    p = tmp_path / f"c{suffix}"
    assert cv2.imwrite(str(p), _colour_bars(dtype, top))
    img, _ = load_image(p, 30)
    # Inner columns of each bar, away from JPEG ringing at the edges.
    blue, green, red = img[:, 3:7].mean(), img[:, 13:17].mean(), img[:, 23:27].mean()
    assert blue == pytest.approx(0.114, abs=tol)
    assert green == pytest.approx(0.587, abs=tol)
    assert red == pytest.approx(0.299, abs=tol)


def test_alpha_channel_is_dropped(tmp_path):
    bgr = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    bgra = np.dstack([bgr, np.zeros((32, 32), np.uint8)])  # fully transparent: must not matter
    assert cv2.imwrite(str(tmp_path / "a.png"), bgra)
    assert cv2.imwrite(str(tmp_path / "b.png"), bgr)
    a, _ = load_image(tmp_path / "a.png", 32)
    b, _ = load_image(tmp_path / "b.png", 32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(b, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) / 255.0, atol=1e-6)


def test_float_tiff_is_clipped(tmp_path):
    f = np.linspace(-0.5, 1.5, 32 * 32, dtype=np.float32).reshape(32, 32)
    f[3, 3] = np.nan
    assert cv2.imwrite(str(tmp_path / "f.tif"), f)
    img, _ = load_image(tmp_path / "f.tif", 32)
    assert img.dtype == np.float32 and img.min() == 0.0 and img.max() == 1.0
    assert np.isfinite(img).all()
    inside = (f >= 0) & (f <= 1)
    np.testing.assert_allclose(img[inside], f[inside])


def test_signed_16bit_tiff_stays_in_unit_range(tmp_path):
    raw = np.tile(np.array([[-1000, 0], [1000, 32767]], np.int16), (16, 16))
    assert cv2.imwrite(str(tmp_path / "ct.tif"), raw)
    img, _ = load_image(tmp_path / "ct.tif", 32)
    assert img.min() >= 0.0 and img.max() <= 1.0


# ---- size: shorter side to `size`, then centre crop ----------------------------------------------------

def test_landscape_resize_then_centre_crop():
    # 64 × 128: the left and right quarters are bright, the centre half dark with a centred disc.
    img = np.zeros((64, 128), np.float32)
    img[:, :32] = 1.0
    img[:, 96:] = 1.0
    cv2.circle(img, (64, 32), 20, 0.8, -1)
    out = fit_size(img, 32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    # shorter side 64 → 32 (scale 1/2), width 128 → 64, centre 32 columns kept: the bright bands are cut off.
    assert out[:, 0].max() < 0.05 and out[:, -1].max() < 0.05
    # The disc stays round (aspect ratio kept) and centred: radius 20 → 10.
    mask = out > 0.4
    rows, cols = np.nonzero(mask)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    assert abs(rows.mean() - 15.5) < 0.6 and abs(cols.mean() - 15.5) < 0.6
    assert 18 <= rows.max() - rows.min() + 1 <= 22


def test_portrait_crops_top_and_bottom():
    img = np.full((128, 64), 0.5, np.float32)
    img[:32] = 1.0      # top quarter
    img[96:] = 0.0      # bottom quarter
    out = fit_size(img, 32)
    assert out.shape == (32, 32)
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_enlarging_stays_in_range_and_exact_size_is_identity():
    checker = (np.indices((10, 20)).sum(0) % 2).astype(np.float32)   # bicubic overshoots on this
    out = fit_size(checker, 48)
    assert out.shape == (48, 48) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    same = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    np.testing.assert_array_equal(fit_size(same, 32), same)


def test_load_image_resizes_non_square_file(tmp_path):
    raw = np.zeros((30, 90), np.uint8)
    raw[:, 30:60] = 200    # the centre third survives the crop, the rest is cut off
    cv2.imwrite(str(tmp_path / "wide.png"), raw)
    img, _ = load_image(tmp_path / "wide.png", 30)
    assert img.shape == (30, 30)
    np.testing.assert_allclose(img, 200 / 255, atol=1e-6)


# ---- bad files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3,
                                     np.random.default_rng(0).bytes(500)])
def test_undecodable_bytes_raise_value_error(tmp_path, content):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="^not a decodable image$"):
        decode(content)
    with pytest.raises(ValueError, match="^not a decodable image$"):
        load_image(p, 32)


def test_unreadable_path_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match=f"^cannot read: {re.escape(os.strerror(errno.ENOENT))}$"):
        load_image(tmp_path / "missing.png", 32)


def test_badfile_is_a_plain_record():
    b = BadFile("a/x.png", "not a decodable image")
    assert b.__dict__ == {"path": "a/x.png", "reason": "not a decodable image"}


# ---- listing ---------------------------------------------------------------------------------------

def test_list_images_sorted_recursive_filtered(tmp_path):
    for rel in ["b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.bmp", "notes.txt", ".hidden.png",
                ".cache/e.png", "f.jpeg", "g.TIFF"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == sorted(got)
    assert set(got) == {"b.png", "a.JPG", "sub/c.tif", "sub/deeper/d.bmp", "f.jpeg", "g.TIFF"}


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FpindexError, match=f"^real-image folder {re.escape(str(tmp_path / 'nope'))} does not exist$"):
        list_images(tmp_path / "nope", "real-image folder")


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FpindexError, match=rf"^image folder {re.escape(str(tmp_path))} holds no images \(\.png, "):
        list_images(tmp_path)


def test_list_images_file_instead_of_folder(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"x")
    with pytest.raises(FpindexError, match=f"^image folder {re.escape(str(p))} is a file, expected a folder of images$"):
        list_images(p)


# ---- conversions without redundant passes: outputs unchanged ----

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unsigned_decode_needs_no_clip(tmp_path, dtype):
    """Every value of the type, through a PNG: bit-identical to the former divide-clip-cast, float32, fresh and
    contiguous, exactly 0 and 1 at the ends."""
    top = np.iinfo(dtype).max
    raw = np.arange(top + 1, dtype=np.int64).astype(dtype).reshape(-1, 256)
    p = tmp_path / "all.png"
    assert cv2.imwrite(str(p), raw)
    img = decode(p.read_bytes())
    former = np.clip(raw.astype(np.float32) / float(top), 0.0, 1.0).astype(np.float32)
    assert img.dtype == np.float32 and img.flags.c_contiguous and img.flags.writeable
    assert np.array_equal(img, former)
    assert img.min() == 0.0 and img.max() == 1.0


def test_area_shrink_can_round_above_one_so_fit_size_keeps_its_clip():
    """INTER_AREA is a convex combination only up to float rounding: an all-white 70 × 70 image shrunk to
    32 px comes out a few ulps above 1, hence the clip in fit_size even when shrinking."""
    white = np.ones((70, 70), np.float32)
    assert cv2.resize(white, (32, 32), interpolation=cv2.INTER_AREA).max() > 1.0
    out = fit_size(white, 32)
    assert out.max() == 1.0 and out.dtype == np.float32 and out.flags.c_contiguous
