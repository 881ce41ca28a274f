"""DICOM and NIfTI decoding into [0, 1] grayscale images (the rules are in the load module's docstring).

Both read from bytes already in memory, so a file is read and hashed once however many images it holds."""

from __future__ import annotations

import gzip
import importlib.util
import io

import numpy as np

from .limits import DEFAULT_MAX_PIXELS, over_limit

Window = tuple[float, float] | None
LIBJPEG_HINT = "pip install pylibjpeg pylibjpeg-libjpeg"


def windowed(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[lo, hi] → [0, 1], clipped, computed in float64 (one rounding to float32, as for PNGs)."""
    if not hi > lo:
        return (values > lo).astype(np.float32)
    out = (np.asarray(values, np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _bounds(window: tuple[float, float]) -> tuple[float, float]:
    c, w = window
    return c - w / 2, c + w / 2


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): its first number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def dicom_images(data: bytes, window: Window, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in ds
    except Exception as e:
        raise ValueError(f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if not has_pixels:
        raise ValueError("a DICOM file without pixel data")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a DICOM file with an unreadable image size ({e})") from None
    if rows * cols * frames * samples > max_pixels:
        raise over_limit(rows * cols * frames * samples, max_pixels,
                         f"Rows × Columns × frames × samples = {rows} × {cols} × {frames} × {samples}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as e:
        if syntax is not None and syntax.is_compressed and not _has("pylibjpeg"):
            raise ValueError(f"compressed transfer syntax {syntax.name} needs pylibjpeg: {LIBJPEG_HINT}") from None
        what = f" ({syntax.name})" if syntax is not None else ""
        raise ValueError(f"cannot decode the DICOM pixel data{what}: {e}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None]
    if int(ds.get("SamplesPerPixel", 1)) > 1:          # colour: like a colour PNG, luma of the type's range
        if arr.ndim != 4 or arr.shape[-1] < 3:
            raise ValueError(f"unsupported DICOM colour pixel array of shape {arr.shape}")
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        luma = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return list(windowed(luma, 0.0, top))
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"unsupported DICOM pixel array of shape {arr.shape}")
    try:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a DICOM file with an unreadable RescaleSlope/RescaleIntercept ({e})") from None
    for tag, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if not np.isfinite(v):            # NaN would make every pixel NaN: scored as garbage, never flagged
            raise ValueError(f"a DICOM file whose {tag} is {v}, not a finite number")
    values = arr.astype(np.float64) * slope + intercept
    if window is not None:
        lo, hi = _bounds(window)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        lo, hi = _bounds((_first(ds.WindowCenter), _first(ds.WindowWidth)))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("a DICOM file whose WindowCenter/WindowWidth is not finite; give --window")
    else:                                              # every value the stored bits can hold, rescaled
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        s_lo, s_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
    out = windowed(values, lo, hi)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = (1.0 - out.astype(np.float64)).astype(np.float32)
    return list(out)


def nifti_images(data: bytes, window: Window, axis: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    if not _has("nibabel"):
        raise ValueError("NIfTI needs nibabel: pip install 'fpindex[nifti]' (or pip install nibabel)")
    import nibabel

    raw = _gunzip(data, 16 * max_pixels + (1 << 20)) if data[:2] == b"\x1f\x8b" else data
    vol = None
    for cls in (nibabel.Nifti1Image, nibabel.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            continue
        n = int(np.prod(img.shape, dtype=np.int64))
        if n > max_pixels:
            raise over_limit(n, max_pixels, f"a volume of shape {' × '.join(map(str, img.shape))}")
        try:
            vol = np.asarray(img.get_fdata(dtype=np.float32))
            break
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
    if vol is None:
        raise ValueError(f"not a readable NIfTI file ({reason})")
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim not in (2, 3) or min(vol.shape) < 1:
        raise ValueError(f"a NIfTI volume of shape {vol.shape}: only 2-D and 3-D ones are read")
    if not np.isfinite(vol).any():        # all NaN/inf: not a black volume, no image at all
        raise ValueError("a NIfTI volume with no finite value (all NaN or infinite)")
    if window is not None:
        lo, hi = _bounds(window)
    else:
        finite = vol[np.isfinite(vol)]
        lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    out = windowed(np.nan_to_num(vol, nan=lo), lo, hi)
    if out.ndim == 2:
        return [out]
    return [np.ascontiguousarray(np.take(out, k, axis=axis)) for k in range(out.shape[axis])]


def _gunzip(data: bytes, cap: int) -> bytes:
    """At most `cap` bytes of a gzip stream (16 per allowed voxel, the widest NIfTI type, plus the header):
    a gzip bomb stops there instead of filling memory."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        raw = f.read(cap + 1)
    if len(raw) > cap:
        raise ValueError(f"decompresses to more than {cap:,} bytes, more than a volume within the limit of "
                         f"decoded pixels per file (--max-pixels) can hold")
    return raw


GROUP_TAGS = ("PatientID", "StudyInstanceUID")      # the coarsest first: one patient may have several studies


def dicom_group(path) -> tuple[str, str] | None:
    """(tag, value) of the first of GROUP_TAGS a DICOM file carries non-empty, from its header only (no pixel
    data read); None when it has neither or cannot be read (decoding then says why, if it matters)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(GROUP_TAGS))
    except Exception:
        return None
    for tag in GROUP_TAGS:
        value = str(ds.get(tag, "") or "").strip()
        if value:
            return tag, value
    return None
