"""The groups the decisions move whole in their folds and permutations: exact patients where known, the
mutual-2-NN sibling proxy elsewhere.

Real images come in series, alike whether or not they were used, so a test that treats each image as an
independent draw is too confident. When a groups CSV or DICOM tags say which patient each image is of
(load/groups.py), those groups are used; an image they leave unknown keeps the proxy, grouped by the sibling
graph among the folder's other unknown images (`search.sibling_groups`), so an unlisted series still moves
together. With no patient known anywhere the decisions get the sibling groups exactly as before (same ids, so
the same folds and numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..load.groups import FolderGroups, GroupTable, folder_groups

PROXY = "siblings (mutual 2-NN proxy)"


@dataclass(frozen=True)
class Grouping:
    """Per image of one folder, in file order: the group id the decision reads (`Evidence.groups`), and the
    group's name and where it came from ('groups CSV (patient)', 'DICOM PatientID', or PROXY)."""

    ids: np.ndarray
    names: list[str]
    sources: list[str]

    @property
    def exact(self) -> int:
        """Images whose group is a known patient (or study/series), not the proxy."""
        return sum(1 for s in self.sources if s != PROXY)

    def describe(self) -> "GroupSource":
        by: dict[str, int] = {}
        for s in self.sources:
            by[s] = by.get(s, 0) + 1
        return GroupSource(images=len(self.names), groups=len(set(self.names)), by=by)


@dataclass(frozen=True)
class GroupSource:
    """How one folder's images were grouped (summary.json's patients.grouping)."""

    images: int
    groups: int
    by: dict[str, int]          # source → images

    def to_dict(self) -> dict:
        return {"images": self.images, "groups": self.groups, "by": dict(self.by)}


@dataclass(frozen=True)
class Folder:
    """What grouping reads of one embedded folder."""

    root: Path
    paths: list[str]
    vectors: np.ndarray


def group_folders(folders: dict[str, Folder], table: GroupTable | None, proxy: bool) -> dict[str, Grouping] | None:
    """Each folder's grouping; None when no patient is known and the proxy is not wanted (a decision that does
    not read groups)."""
    from ..search import sibling_groups

    found = {name: folder_groups(f.root, f.paths, table) for name, f in folders.items()}
    if not any(g.known for g in found.values()):
        if not proxy:
            return None
        sib = sibling_groups([f.vectors for f in folders.values()])    # the call the pipeline always made
        return {name: Grouping(ids, [f"~siblings-{i}" for i in ids.tolist()], [PROXY] * len(ids))
                for name, ids in zip(folders, sib)}
    return {name: _mixed(found[name], folders[name].vectors) for name in folders}


def _mixed(found: FolderGroups, vectors: np.ndarray) -> Grouping:
    from ..search import sibling_groups

    names, sources = list(found.names), list(found.sources)
    unknown = [i for i, n in enumerate(names) if not n]
    if unknown:
        sib = sibling_groups([vectors[unknown]])[0]
        for i, g in zip(unknown, sib.tolist()):
            names[i], sources[i] = f"~siblings-{g}", PROXY
    ids = np.unique(np.array(names, dtype=str), return_inverse=True)[1].reshape(-1).astype(np.int64)
    return Grouping(ids, names, sources)
