"""Limits on what one file may cost to decode, checked from its header before any pixel is decoded.

Why: a few hundred bytes of PNG can claim 100000 × 100000 pixels, and a 380 KiB one really holds 20000 × 20000
(2.8 GB of memory once decoded); one such file must fail alone, named, not take the whole run down.
The default, 2^27 pixels (a 512 × 512 × 512 CT volume, or an 11585² image), is several times the largest
ordinary medical image (mammograms ~ 30 Mpx); `--max-pixels` raises it. OpenCV keeps its own ceiling of 2^30.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator

from ..config import EmbedConfig

DEFAULT_MAX_PIXELS = EmbedConfig.max_pixels


def over_limit(pixels: int, limit: int, what: str) -> ValueError:
    return ValueError(f"{what} = {pixels:,} pixels, over the limit of {limit:,} decoded pixels per file "
                      f"(--max-pixels)")


def check_header(data: bytes, limit: int) -> None:
    """Refuse an ordinary image whose header claims more than `limit` pixels; read by Pillow, which parses
    headers lazily. A header Pillow cannot parse is left to OpenCV, whose errors are caught like any other."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Image.DecompressionBombError:      # Pillow's own ceiling: more than 2 × its MAX_IMAGE_PIXELS
            floor = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            if floor >= limit:
                raise ValueError(f"the header claims more than {floor:,} pixels, over the limit of {limit:,} "
                                 f"decoded pixels per file (--max-pixels)") from None
            return
        except Exception:
            return
    if w * h > limit:
        raise over_limit(w * h, limit, f"the header claims {w} × {h}")


@contextlib.contextmanager
def decoder_error() -> Iterator[None]:
    """Any failure inside a decoder becomes the ValueError that marks one bad file (memory included)."""
    try:
        yield
    except ValueError:
        raise
    except MemoryError:
        raise ValueError("not enough memory to decode it") from None
    except Exception as e:                            # cv2.error, struct.error, zlib.error, ...
        text = str(e).strip().splitlines()
        raise ValueError(f"cannot decode ({type(e).__name__}: {text[-1] if text else ''})") from None
