"""The tables a user gives fpindex (labels, predictions), read one way everywhere.

Rows are joined on the image's submission id (`image_id`: the file stem, `scan#3` for image 3 of `scan.dcm`,
`vol#2` for slice 2 of `vol.nii.gz`), the id submission.csv writes; so `evaluate`, the HTML report, the
sensitivity sweep and the demo read one label file alike, whatever the folder or format of the images.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import FpindexError
from . import image_id

MATCHED_BY = "images are matched by submission id: the file stem, with #k for image k of a multi-image file"
USED_WORDS = ("1", "used", "true", "yes")
NOT_USED_WORDS = ("0", "not_used", "not used", "unused", "false", "no")


def read_csv_columns(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV with at least the `required` columns. Excel's byte-order mark and CRLF line ends are
    read like plain UTF-8; a row with fewer or more fields than the header is refused with its line number."""
    p = Path(path)
    if not p.is_file():
        raise FpindexError(f"{p}: no such file")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, lines = [], []
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
            fields = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise FpindexError(f"{p}: not a readable CSV ({e})") from None
    except OSError as e:
        raise FpindexError(f"{p}: cannot read ({e.strerror or e})") from None
    if not rows:
        raise FpindexError(f"{p}: no rows")
    fields = [f.strip() for f in fields]
    missing = [c for c in required if c not in fields]
    if missing:
        raise FpindexError(f"{p}: missing column(s) {', '.join(missing)} (has {', '.join(fields)})")
    out = []
    for row, line in zip(rows, lines):
        if None in row:
            raise FpindexError(f"{p}:{line}: {len(fields) + len(row[None])} fields, but the header has "
                               f"{len(fields)}")
        if any(v is None for v in row.values()):
            have = sum(v is not None for v in row.values())
            raise FpindexError(f"{p}:{line}: {have} field(s), but the header has {len(fields)}")
        clean = {k.strip(): v for k, v in row.items()}
        if "image" in clean and not clean["image"].strip():
            raise FpindexError(f"{p}:{line}: empty image name")
        out.append(clean | {"_line": line})
    return out


def as_label(value: str, path: str | Path, line: int) -> int:
    """1 (used) or 0 (not used) from the words people write; anything else refused with its line."""
    v = value.strip().lower()
    if v in USED_WORDS:
        return 1
    if v in NOT_USED_WORDS:
        return 0
    raise FpindexError(f"{path}:{line}: label {value!r} is not 0/1 (or used/not_used)")


def claim(seen: dict[str, tuple[int, str]], key: str, path: str | Path, line: int, image: str, what: str) -> None:
    """Two rows with one id would make a join keep whichever came last; refused, naming both rows."""
    if key in seen:
        first_line, first_image = seen[key]
        raise FpindexError(f"{path}:{line}: {what} {image!r} has the id {key!r} of line {first_line} "
                           f"({first_image!r}); {MATCHED_BY}, so each needs its own")
    seen[key] = (line, image)


def read_labels(path: str | Path) -> dict[str, int]:
    """A label table (columns image,label; 1/used or 0/not_used) as submission id → 0/1, every row checked."""
    truth: dict[str, int] = {}
    seen: dict[str, tuple[int, str]] = {}
    for r in read_csv_columns(path, ("image", "label")):
        key = image_id(r["image"])
        claim(seen, key, path, r["_line"], r["image"], "label of")
        truth[key] = as_label(r["label"], path, r["_line"])
    return truth
