"""Stage 1 — find and decode images into one canonical form.

Canonical form: a float32 grayscale array in [0, 1], `size` × `size`.
- Formats: whatever OpenCV decodes (PNG, JPEG, TIFF, BMP, ...), 8- or 16-bit, read unchanged; DICOM and NIfTI
  (below).
- Range: unsigned integers are divided by their type's maximum (255, 65535: a 16-bit PNG or TIFF value v gives
  v / 65535, with no window, whatever --window says); signed integers (e.g. int16 CT) are mapped from their
  type's full range; floats are clipped to [0, 1].
- Colour: alpha is dropped, then ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), OpenCV's rule.
- Size: the shorter side is resized to `size` (area interpolation when shrinking, bicubic when enlarging),
  then the centre `size` × `size` square is kept, so aspect ratio is never distorted. An image longer than
  `MAX_ASPECT` times its width (or the reverse) is first cut to its centre `MAX_ASPECT`:1 part, which the
  crop would mostly drop anyway, so a 1 × 10^6 strip cannot become a 64 × 6.4·10^7 array.
- Limits (limits.py): a file whose header claims more than `max_pixels` decoded pixels (--max-pixels) is not
  decoded; any error of a decoder (OpenCV, pydicom, nibabel), memory included, fails that file only.
Files that cannot be decoded, and files that are not images (listing.py), are reported as `BadFile`s, never
fatal.

Medical formats. Intensities are windowed: [C − W/2, C + W/2] → [0, 1], clipped (the plain linear ramp, without
DICOM's half-value offset), from `--window C,W` or a preset name (`WINDOWS`), which win over anything in a file.
- DICOM (.dcm, .dicom, and suffix-less files with 'DICM' at byte 128; those need one 132-byte read each):
  stored values × RescaleSlope + RescaleIntercept (Hounsfield units for CT), then the window: the option's,
  else the file's first WindowCenter/WindowWidth, else the full range the stored values can take (0 … 2^B − 1
  for BitsStored B unsigned, −2^(B−1) … 2^(B−1) − 1 signed, through the rescale). So a 16-bit unsigned DICOM
  without window tags or rescale gives exactly the pixels of the same values saved as a 16-bit PNG.
  MONOCHROME1 is inverted; colour DICOM is read like a colour PNG (luma, no window). Compressed transfer
  syntaxes decode through pydicom's handlers (pylibjpeg when installed); otherwise the file is a bad file.
- NIfTI (.nii, .nii.gz; needs nibabel, `pip install fpindex[nifti]`): the scaled volume is sliced along
  `--axis` (array axis 0, 1 or 2 as stored, no reorientation); without a window, the volume's 0.5–99.5
  percentile range.
A file holding several images (multi-frame DICOM, NIfTI volume) gives one item per image, named
`scan.dcm#k` (k from 0) and identified by sha256(file sha256 + "#k"); a file holding one image keeps its own
path and content hash, exactly like any PNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..config import EmbedConfig
from ..errors import FpindexError
from ..utils import sha256_bytes
from .limits import DEFAULT_MAX_PIXELS, check_header, decoder_error
from .listing import (DICOM_SUFFIXES, IMAGE_SUFFIXES, NIFTI_SUFFIXES, SUPPORTED, BadFile, check_distinct, kind,
                      list_files, printable, unsupported_reason)

MAX_ASPECT = 4

# Named windows (centre, width), in Hounsfield units for CT.
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}
AXES = (0, 1, 2)


@dataclass(frozen=True)
class ReadOptions:
    """How DICOM and NIfTI intensities become [0, 1] and how volumes are sliced; other formats ignore them."""

    window: tuple[float, float] | None = None   # (centre, width); None: the file's own (module docstring)
    axis: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS        # decoded pixels per file, at most; never part of the identity

    @classmethod
    def of(cls, cfg: EmbedConfig) -> "ReadOptions":
        return cls(parse_window(cfg.window), check_axis(cfg.axis), cfg.max_pixels)

    def identity(self) -> dict:
        """What of these settings shapes pixels, only where not the default: indexes and caches made without
        them keep their identity."""
        return ({"window": list(self.window)} if self.window is not None else {}) | \
            ({"axis": self.axis} if self.axis != 2 else {})


def parse_window(spec: str | None) -> tuple[float, float] | None:
    """'C,W' or a name from WINDOWS → (centre, width)."""
    if spec is None:
        return None
    text = str(spec).strip()
    if text.lower() in WINDOWS:
        return WINDOWS[text.lower()]
    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        raise FpindexError(f"--window {spec!r}: expected CENTRE,WIDTH (e.g. -600,1500) or one of "
                           f"{', '.join(f'{n} ({c:g},{w:g})' for n, (c, w) in WINDOWS.items())}") from None
    if not (np.isfinite(c) and np.isfinite(w) and w > 0):
        raise FpindexError(f"--window {spec!r}: the centre must be finite and the width positive")
    return c, w


def check_axis(axis: int) -> int:
    if axis not in AXES:
        raise FpindexError(f"--axis must be 0, 1 or 2, not {axis}")
    return axis


def frame_path(path: Path, k: int) -> Path:
    return path.with_name(f"{path.name}#{k}")


def split_frame(path: str | Path) -> tuple[Path, int | None]:
    """`scan.dcm#3` → (scan.dcm, 3); any other path → (path, None)."""
    p = Path(path)
    m = re.fullmatch(r"(.+)#(\d+)", p.name)
    if m and not p.exists():
        base = p.with_name(m[1])
        if kind(base) in ("dicom", "nifti"):
            return base, int(m[2])
    return p, None


def image_id(path: str | Path) -> str:
    """The ImageCLEF id of an image: its file stem (`.nii.gz` counts as one suffix), `stem#k` for image k."""
    name = Path(path).name
    m = re.fullmatch(r"(.+)(#\d+)", name)
    base, frame = (m[1], m[2]) if m else (name, "")
    stem = base[:-7] if base.lower().endswith(".nii.gz") else Path(base).stem
    return stem + frame


def source_exists(path: str | Path) -> bool:
    return split_frame(path)[0].is_file()


def frame_id(file_sha256: str, k: int) -> str:
    """Content id of image k of a multi-image file: content-addressed like a file's own hash."""
    return sha256_bytes(f"{file_sha256}#{k}".encode())


def list_images(root: str | Path, what: str = "image folder", read: ReadOptions = ReadOptions()) -> list[Path]:
    """All image files below `root`, sorted, so ids are stable across runs and machines; a multi-image file
    (multi-frame DICOM, NIfTI volume) is listed once per image, as `file#k`."""
    return list_folder(root, what, read)[0]


def list_folder(root: str | Path, what: str = "image folder",
                read: ReadOptions = ReadOptions()) -> tuple[list[Path], list[BadFile]]:
    """`list_images`, and the files passed over (not images, broken links, ...), which a run counts as bad."""
    files, skipped = list_files(root, what)
    out: list[Path] = []
    for p in files:
        n = image_count(p, read)
        out += [p] if n == 1 else [frame_path(p, k) for k in range(n)]
    return out, skipped


def bad_file(path: str | Path, reason: str, bad: list[BadFile]) -> None:
    """Append a bad image to `bad`; image k of a multi-image file that fails as a whole (same reason as an
    earlier image of that file) is the one bad *file* it is, listed and counted once under the file's path."""
    base, k = split_frame(path)
    if k is not None and not reason.startswith(("holds ", "now holds ")):
        if any(b.path == str(base) and b.reason == reason for b in bad[-1:]):
            return
        path = base
    bad.append(BadFile(str(path), reason))


def image_count(path: Path, read: ReadOptions) -> int:
    """From the header only; a file whose header cannot be read, or claims more than `--max-pixels` or more
    images than its bytes can hold, counts once (decoding then says why): a 500-byte header declaring 10^9
    frames must not become 10^9 list entries, nor 20,000 bad-file rows."""
    k = kind(path)
    try:
        if k == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            n = max(1, int(ds.get("NumberOfFrames", 1) or 1))
            if n == 1:
                return 1
            per = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("SamplesPerPixel", 1) or 1)
            if per < 1 or per * n > read.max_pixels:
                return 1
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            compressed = syntax is not None and getattr(syntax, "is_compressed", False)
            bits = max(1, int(ds.get("BitsAllocated", 8) or 8))
            need = n if compressed else (per * n * bits + 7) // 8   # a compressed frame is still ≥ 1 byte
            return n if path.stat().st_size >= need else 1
        if k == "nifti":
            import nibabel

            img = nibabel.load(path)
            shape = _volume_shape(img.shape)
            n = shape[read.axis] if len(shape) == 3 else 1
            total = int(np.prod(shape, dtype=object))
            if n == 1 or total > read.max_pixels:
                return 1
            need = total * max(1, img.get_data_dtype().itemsize)
            if path.name.lower().endswith(".gz"):
                need //= 1100                                      # deflate inflates at most ~1032:1
            return n if path.stat().st_size >= need else 1
    except Exception:
        return 1
    return 1


def _volume_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def decode(data: bytes) -> np.ndarray:
    """Bytes → float32 grayscale in [0, 1], original size. Raises ValueError when undecodable."""
    buf = np.frombuffer(data, dtype=np.uint8)
    with decoder_error():
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH) if buf.size else None
        if img is None:
            raise ValueError("not a decodable image")
        if img.ndim == 3:
            if img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            if img.shape[2] == 3:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            elif img.shape[2] == 1:
                img = img[:, :, 0]
            else:
                raise ValueError(f"unsupported channel count {img.shape[2]}")
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"unsupported image shape {img.shape}")
    if np.issubdtype(img.dtype, np.unsignedinteger):
        # k ≤ max rounds to a float32 ≤ max's, so the correctly rounded quotient is already in [0, 1] and float32,
        # a fresh contiguous array: no clip or copy pass.
        out = img.astype(np.float32)
        out /= np.float32(np.iinfo(img.dtype).max)
        return out
    if np.issubdtype(img.dtype, np.signedinteger):
        info = np.iinfo(img.dtype)
        out = (img.astype(np.float64) - info.min) / (float(info.max) - info.min)
    else:
        out = np.nan_to_num(img.astype(np.float32))
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)   # clip made a fresh array already


def fit_size(img: np.ndarray, size: int) -> np.ndarray:
    """Shorter side → `size`, then centre crop to `size` × `size` (see module docstring)."""
    h, w = img.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(img, dtype=np.float32)
    if max(h, w) > MAX_ASPECT * min(h, w):          # centre MAX_ASPECT:1 part first (module docstring)
        keep = MAX_ASPECT * min(h, w)
        top, left = max(0, (h - keep) // 2), max(0, (w - keep) // 2)
        img = img[top:top + keep, left:left + keep]
        h, w = img.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    with decoder_error():
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    out = img[top:top + size, left:left + size]
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _read(path: Path) -> bytes:
    if not kind(path):                  # before reading: an unsupported file may be any size
        raise ValueError(unsupported_reason(path))
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None


def decode_file(path: Path, data: bytes, read: ReadOptions = ReadOptions(),
                plain: Callable[[bytes], np.ndarray] | None = None) -> list[np.ndarray]:
    """A file's bytes → its images, float32 in [0, 1], original size. Raises ValueError with the reason.
    `plain`: the decoder for ordinary images (default `decode`; each stage passes the one it imports)."""
    k = kind(path)
    if not k:
        raise ValueError(unsupported_reason(path))
    with decoder_error():
        if k == "dicom":
            from .medical import dicom_images

            return dicom_images(data, read.window, read.max_pixels)
        if k == "nifti":
            from .medical import nifti_images

            return nifti_images(data, read.window, read.axis, read.max_pixels)
        check_header(data, read.max_pixels)
        return [(plain or decode)(data)]


class Reader:
    """Reads images by path (`scan.dcm#3`: image 3 of scan.dcm). It keeps the last multi-image file, so its
    images, read in order, cost one read, one hash and one decode between them."""

    def __init__(self, read: ReadOptions = ReadOptions()) -> None:
        self.read = read
        self._key: tuple | None = None
        self._data, self._sha = b"", ""
        self._images: list[np.ndarray] | ValueError | None = None

    def _open(self, base: Path) -> None:
        try:
            st = base.stat()
        except OSError as e:
            raise ValueError(f"cannot read: {e.strerror or e}") from None
        key = (str(base), st.st_mtime_ns, st.st_size)
        if key != self._key:
            data = _read(base)
            self._key, self._data, self._sha, self._images = key, data, sha256_bytes(data), None

    @property
    def data(self) -> bytes:
        """The bytes of the multi-image file read last (b"" before any)."""
        return self._data

    def content(self, path: str | Path) -> tuple[str, int, bytes | None]:
        """(content id, file size, the bytes for a single-image file). Raises ValueError."""
        base, k = split_frame(path)
        if k is None:
            data = _read(base)
            return sha256_bytes(data), len(data), data
        self._open(base)
        return frame_id(self._sha, k), len(self._data), None

    def image(self, path: str | Path, data: bytes | None = None,
              plain: Callable[[bytes], np.ndarray] | None = None) -> np.ndarray:
        """The image at `path`, original size; `data`: the file's bytes when already read."""
        base, k = split_frame(path)
        if k is None:
            images = decode_file(base, _read(base) if data is None else data, self.read, plain)
            if len(images) != 1:
                raise ValueError(f"now holds {len(images)} images, not 1; it changed during the run")
            return images[0]
        self._open(base)
        if self._images is None:
            try:
                self._images = decode_file(base, self._data, self.read)
            except ValueError as e:
                self._images = e
        if isinstance(self._images, ValueError):
            raise ValueError(str(self._images))
        if k >= len(self._images):
            raise ValueError(f"holds {len(self._images)} images, so no image {k}; it changed during the run")
        return self._images[k]


def load_image(path: str | Path, size: int, read: ReadOptions = ReadOptions(),
               reader: Reader | None = None) -> tuple[np.ndarray, bytes]:
    """Read one image (`file#k` for image k of a multi-image file); returns (canonical image, the file's raw
    bytes). Raises ValueError with the reason. `reader`: one kept across calls (its `read` then applies)."""
    reader = reader or Reader(read)
    base, k = split_frame(path)
    if k is None:
        data = _read(base)
        return fit_size(reader.image(base, data), size), data
    img = reader.image(path)
    return fit_size(img, size), reader.data
