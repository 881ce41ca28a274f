"""Memory sizes as the user writes them (--max-memory 8G) and as fpindex prints them; no FAISS import, so the
command line can check a size before anything heavy is loaded."""

from __future__ import annotations

import re

from ..errors import FpindexError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str | int | None) -> int | None:
    """'8G', '512M', '1.5GiB', 1234 → bytes (binary units); None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise FpindexError(f"cannot read the memory size {text!r}; write it like 8G, 512M or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError
