"""Per generated image: is it a copy of a real image, and of which? The answer a data steward acts on (which
synthetic images to withhold), graded exact / near copy / partial copy / not a copy.

Only pairs the audit already has are read: every real image's k generated neighbours with their pair-level
evidence (no generated → real search, no n × m matrix). A generated image is graded by its best pair.

The grades are measured on this data, never guessed. The canaries (canaries.py) plant every kind at every
default strength on known-unused images (or, with nothing known to be unused, on the real images) and score
each planted copy against its source on the copy features (SSIM after alignment, band-passed correlation:
those a copy drives to 1). A pair is a copy when each of its copy features passes what no copy scores (the
`floor`: the highest value any pair of a known-unused image with one of its neighbours reaches) and its
embedding cosine reaches what near copies reach (the LEVEL_PERCENTILE-th percentile of the planted exact and
near copies' cosine to their sources: a pair far apart in the embedding that aligns well is a look-alike, such
as two slices of one anatomy, not a copy). A copy is
`exact` when it also passes the LEVEL_PERCENTILE-th percentile of the planted exact copies on every feature;
else it takes the grade most of its KNN nearest planted copies (in copy-feature space) have: near copy or
partial copy, by their kind (`KIND_GRADE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..plants import PLANTS

if TYPE_CHECKING:
    import pandas as pd

GRADES = ("exact", "near copy", "partial copy")      # from the most to the least certain; else NOT_A_COPY
NOT_A_COPY = "not a copy"
# Which grade each plant kind's copies belong to (issue 20: near = rigid, intensity, noise, blur; partial = crop,
# patch, blend). An elastic warp deforms the whole image, as a rigid move does: a near copy.
KIND_GRADE = {"exact": "exact", "rigid": "near copy", "noise": "near copy", "blur": "near copy",
              "intensity": "near copy", "elastic": "near copy", "crop": "partial copy",
              "patch": "partial copy", "blend": "partial copy"}
LEVEL_PERCENTILE = 5.0
KNN = 5
_FLOOR_STEP = 1e-6          # the floor sits just above the highest unused value: "beyond anything unused"
COLUMNS = ("generated_id", "generated", "relative", "generated_sha256", "grade", "real", "folder", "rank", "cosine",
           "copy_margin", "n_real", "also")


@dataclass(frozen=True)
class Levels:
    """What the grades are calibrated on: the floor and exact level per copy feature, and the planted copies
    (grade index, feature values) the nearest-neighbour vote reads."""

    features: tuple[str, ...]
    floor: dict[str, float]                      # feature → just above the highest value of no copy
    exact: dict[str, float]                      # feature → the planted exact copies' percentile
    cosine: float                                # the planted exact and near copies' cosine percentile
    points: np.ndarray                           # planted copies, n × features (near and partial only)
    labels: np.ndarray                           # their grade index in GRADES
    planted: dict[str, dict[str, Any]]           # kind → {grade, n, passing the floor, per feature median, P5}
    null: str                                    # what the floor was measured on
    source: str                                  # what the planted copies' sources were

    def as_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "floor": self.floor, "exact": self.exact, "cosine": self.cosine,
                "knn": KNN,
                "percentile": LEVEL_PERCENTILE, "kind_grade": KIND_GRADE, "planted": self.planted,
                "null": self.null, "source": self.source,
                "rule": "a copy passes the floor on every copy feature and the cosine level; exact if it also passes "
                        f"the exact level on every feature, else the grade of most of its {KNN} nearest planted "
                        "copies"}

    def grade(self, values: dict[str, np.ndarray], cosine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pair: the grade's index in GRADES (len(GRADES) = not a copy), and how far it passes the floor
        (the least of its features' margins, as a share of the way from the floor to 1; for ordering)."""
        x = np.column_stack([np.nan_to_num(values[f], nan=-1.0) for f in self.features])
        floor = np.array([self.floor[f] for f in self.features])
        margin = ((x - floor) / np.maximum(1.0 - floor, 1e-6)).min(1)
        out = np.full(len(x), len(GRADES), np.int8)
        copy = (x >= floor).all(1) & (np.nan_to_num(cosine, nan=-1.0) >= self.cosine)
        if copy.any() and len(self.points):
            d = ((x[copy, None, :] - self.points[None, :, :]) ** 2).sum(-1)      # copies × planted copies
            near = np.argsort(d, axis=1, kind="stable")[:, :min(KNN, len(self.points))]
            # a tie goes to the more certain grade (both are withheld)
            out[copy] = [np.bincount(v, minlength=len(GRADES)).argmax() for v in self.labels[near]]
        elif copy.any():
            out[copy] = GRADES.index("partial copy")
        exact = copy & (x >= np.array([self.exact.get(f, 2.0) for f in self.features])).all(1)
        out[exact] = GRADES.index("exact")
        return out, margin


def calibrate(planted: Sequence[dict[str, Any]], null: dict[str, np.ndarray], features: Sequence[str],
              null_what: str, source: str) -> Levels:
    """`planted`: the canaries' rows (kind, strength, and each copy feature's value against the source, under
    "copy"); `null`: per copy feature, the values of pairs that are no copy."""
    feats = tuple(f for f in features if all(f in r.get("copy", {}) for r in planted))
    floor = {f: _down(float(np.nanmax(null[f])) + _FLOOR_STEP) if f in null and np.isfinite(null[f]).any()
             else 0.0 for f in feats}
    exact_rows = [r for r in planted if KIND_GRADE.get(r["kind"]) == "exact"]
    close = [r["cosine"] for r in planted if KIND_GRADE.get(r["kind"]) in ("exact", "near copy")]
    cosine = _down(float(np.percentile(close, LEVEL_PERCENTILE))) if close else -1.0
    exact = {f: _down(max(float(np.percentile([r["copy"][f] for r in exact_rows], LEVEL_PERCENTILE)), floor[f]))
             for f in feats} if exact_rows else {}
    rest = [r for r in planted if KIND_GRADE.get(r["kind"]) in ("near copy", "partial copy")]
    points = np.array([[r["copy"][f] for f in feats] for r in rest], np.float64).reshape(len(rest), len(feats))
    labels = np.array([GRADES.index(KIND_GRADE[r["kind"]]) for r in rest], np.int64)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in planted:
        by_kind.setdefault(r["kind"], []).append(r)
    described = {k: {"grade": KIND_GRADE.get(k, NOT_A_COPY), "n": len(rs),
                     "passing_floor": sum(all(r["copy"][f] >= floor[f] for f in feats) and r["cosine"] >= cosine
                                          for r in rs),
                     **{f: {"median": round(float(np.median([r["copy"][f] for r in rs])), 6),
                            "p5": round(float(np.percentile([r["copy"][f] for r in rs], LEVEL_PERCENTILE)), 6)}
                        for f in feats}} for k, rs in by_kind.items()}
    return Levels(feats, floor, exact, cosine, points, labels, described, null_what, source)


def _down(v: float) -> float:
    """Rounded down to 6 digits (as recorded): a copy at the level itself still passes it."""
    return float(np.floor(v * 1e6) / 1e6)


@dataclass
class Folder:
    """One audited folder's neighbour lists with their copy-feature values."""

    name: str
    images: list[str]                # paths relative to the folder, as predictions.csv writes them
    ids: np.ndarray                  # n × k generated ids (-1: none)
    cosine: np.ndarray               # n × k
    pair: dict[str, np.ndarray]      # copy feature → n × k


def answer(folders: Sequence[Folder], levels: Levels, paths, relative, sha256) -> pd.DataFrame:
    """One row per generated image among some real image's neighbours, its best pair first by grade, then
    margin, then cosine; `paths`, `relative`, `sha256`: the index's path, path in its folder and content id of
    FAISS ids. Sorted from the most certain copy down."""
    import pandas as pd

    parts = []
    for f in folders:
        valid = f.ids >= 0
        rows, ranks = np.nonzero(valid)
        if not len(rows):
            continue
        values = {name: f.pair[name][valid].astype(np.float64) for name in levels.features}
        cosine = f.cosine[valid].astype(np.float64)
        grade, margin = levels.grade(values, cosine)
        parts.append(pd.DataFrame({"generated_id": f.ids[valid].astype(np.int64), "grade_i": grade,
                                   "copy_margin": margin, "cosine": cosine,
                                   "real": np.array(f.images, dtype=object)[rows], "folder": f.name,
                                   "rank": (ranks + 1).astype(np.int32)}))
    if not parts:
        return pd.DataFrame({c: [] for c in COLUMNS})
    pairs = pd.concat(parts, ignore_index=True).sort_values(
        ["grade_i", "copy_margin", "cosine", "folder", "real"], ascending=[True, False, False, True, True],
        kind="mergesort")
    n_real = pairs.groupby("generated_id").size()
    copies = pairs[pairs["grade_i"] < len(GRADES)]
    others = copies.groupby("generated_id")["real"].agg(lambda s: ";".join(s.iloc[1:]))
    best = pairs.drop_duplicates("generated_id", keep="first").reset_index(drop=True)
    ids = best["generated_id"].to_numpy()
    best["grade"] = [GRADES[g] if g < len(GRADES) else NOT_A_COPY for g in best["grade_i"].tolist()]
    best["n_real"] = n_real.reindex(ids).to_numpy(np.int32)
    best["also"] = others.reindex(ids).fillna("").to_numpy(object)
    best["generated"], best["relative"], best["generated_sha256"] = paths(ids), relative(ids), sha256(ids)
    return best[list(COLUMNS)]


def withheld(generated: pd.DataFrame, grades: Sequence[str] = GRADES) -> pd.DataFrame:
    """The generated images to withhold: those graded one of `grades` (default: any copy)."""
    return generated[generated["grade"].isin(list(grades))]


def counts(generated: pd.DataFrame) -> dict[str, int]:
    return {g: int((generated["grade"] == g).sum()) for g in (*GRADES, NOT_A_COPY)}


def kinds_known() -> list[str]:
    """Plant kinds without a grade (a plugin's) are reported but grade nothing."""
    return [k for k in PLANTS.names() if k not in KIND_GRADE]


def assess(results: dict[str, tuple[Any, Any, dict[str, np.ndarray], Any]], null_folder: str,
           canaries: dict[str, Any] | None, plant: Callable[[], dict[str, Any]], store: Any
           ) -> tuple[pd.DataFrame, Levels] | None:
    """The per-generated-image answer from the audit's own neighbour lists (`results`: per folder its
    embedded images, neighbours, pair-level values and evidence). The planted copies are the canaries'
    when they planted every graded kind, else `plant()`'s; the floor is `null_folder`'s pairs (the
    known-unused images), or with none (`real`), the real images' pairs past their best neighbour. None when the
    audit computed no copy feature (the `fixed` decision)."""
    from ..evidence import FEATURES

    feats = [f for f in next(iter(results.values()))[2]
             if f in FEATURES and FEATURES.get(f).copy and all(np.isfinite(r[2][f]).any() for r in results.values())]
    if not feats:
        return None
    rows = (canaries or {}).get("planted") or []
    if not set(KIND_GRADE) <= {r["kind"] for r in rows} or not all(r.get("copy") for r in rows):
        got = plant()
        rows, source = got.get("planted") or [], got.get("source_folder", null_folder)
    else:
        source = canaries["source_folder"]
    nb, pair = results[null_folder][1], results[null_folder][2]
    valid = nb.ids >= 0
    if null_folder == "real":
        past = valid.copy()
        past[:, 0] = False
        null = {f: pair[f][past] for f in feats}
        what = "the real images' pairs past their best neighbour, their maximum (no known-unused images)"
    else:
        null = {f: pair[f][valid] for f in feats}
        what = f"every pair of the {null_folder.replace('_', '-')} images (known unused), their maximum"
    levels = calibrate(rows, null, feats, what, f"planted copies of {source.replace('_', '-')} images")
    folders = [Folder(name, list(r[0].paths), r[1].ids, r[1].cosine, {f: r[2][f] for f in levels.features})
               for name, r in results.items()]
    return answer(folders, levels, store.paths, store.relative, store.sha256_of), levels
