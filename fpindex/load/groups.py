"""Which patient (or study, or series) each image comes from: a groups CSV, else the DICOM tags, else unknown.

A patient contributes many slices, alike whether or not they were used, so the decision's folds and
permutations must move whole patients, and a data steward asks which *patients* are exposed. The CSV
(`--groups`, columns image and one of GROUP_COLUMNS) is read by the one table reader (tables.py) and joined on
the submission id, like the label tables; a DICOM image the CSV does not list takes its PatientID tag, else its
StudyInstanceUID. What is still unknown is said (counted per folder) and left to the decision's proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import FpindexError
from . import image_id, split_frame
from .listing import kind
from .medical import dicom_group
from .tables import MATCHED_BY, claim, read_csv_columns

# The group column, coarsest first: with several present the first is used (a patient may have several studies).
GROUP_COLUMNS = ("patient", "patient_id", "study", "series", "group")


@dataclass(frozen=True)
class GroupTable:
    """A groups CSV: submission id → group name, and which column gave it."""

    path: str
    column: str
    group: dict[str, str]


def read_groups(path: str | Path) -> GroupTable:
    """Every row checked: an empty group, a file listed twice (by id) or no group column is refused, naming
    the file and line."""
    rows = read_csv_columns(path, ("image",))
    fields = [c for c in rows[0] if c != "_line"]
    column = next((c for c in GROUP_COLUMNS if c in fields), None)
    if column is None:
        raise FpindexError(f"{path}: no group column: give one of {', '.join(GROUP_COLUMNS)} beside image "
                           f"(has {', '.join(fields)})")
    seen: dict[str, tuple[int, str]] = {}
    group: dict[str, str] = {}
    for r in rows:
        key, value = image_id(r["image"].strip()), r[column].strip()
        claim(seen, key, path, r["_line"], r["image"], "group of")
        if not value:
            raise FpindexError(f"{path}:{r['_line']}: empty {column} for {r['image']!r}")
        group[key] = value
    return GroupTable(str(path), column, group)


@dataclass(frozen=True)
class FolderGroups:
    """Per image of one folder, in file order: its group name ('' unknown) and where the name came from
    ('groups CSV (<column>)', 'DICOM <tag>', or '')."""

    names: list[str]
    sources: list[str]

    @property
    def known(self) -> int:
        return sum(1 for n in self.names if n)


def folder_groups(root: Path, paths: list[str], table: GroupTable | None) -> FolderGroups:
    """`paths`: the folder's images relative to `root` (frames as `file#k`). The CSV wins over the tags; a
    multi-image DICOM file's tags are read once."""
    names, sources = [], []
    tags: dict[Path, tuple[str, str] | None] = {}
    for rel in paths:
        key = image_id(rel)
        if table is not None and key in table.group:
            names.append(table.group[key])
            sources.append(f"groups CSV ({table.column})")
            continue
        base = split_frame(root / rel)[0]
        if kind(base) == "dicom":
            if base not in tags:
                tags[base] = dicom_group(base)
            found = tags[base]
            if found is not None:
                names.append(found[1])
                sources.append(f"DICOM {found[0]}")
                continue
        names.append("")
        sources.append("")
    return FolderGroups(names, sources)


def check_listed(table: GroupTable, images: list[str], folder: str) -> None:
    """A groups CSV that lists none of the real images was written for other files or other names: refused
    before any work, since every image would silently fall back to the proxy."""
    if images and not any(image_id(i) in table.group for i in images):
        example = image_id(images[0])
        raise FpindexError(f"{table.path}: lists none of the {len(images)} images of the {folder} folder (e.g. "
                           f"{example!r}); {MATCHED_BY}")
