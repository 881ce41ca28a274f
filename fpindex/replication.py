"""Per generated image: is it a copy of a real image, and of which? The answer a data steward acts on (which
synthetic images to withhold), graded exact / near copy / partial copy / not a copy.

Only pairs the audit already has are read: every real image's k generated neighbours with their pair-level
evidence (no generated → real search, no n × m matrix). A generated image is graded by its best pair.

The grades' levels are measured on this data, never guessed. Each grade has its plant kinds (`KIND_GRADE`);
the canaries (canaries.py) plant every kind at every default strength on known-unused images (or, with
nothing known to be unused, on the real images) and score each planted copy against its source. A grade's
level on a copy feature (SSIM after alignment, band-passed correlation: those a copy drives to 1) is the
LEVEL_PERCENTILE-th percentile of its kinds' planted copies — but never below what no copy scores (`floor`):
the value that a pair of a known-unused image with one of its neighbours exceeds with probability at most
α / (number of pairs graded), read from their tail as the copy channel reads it (decide/copies.tail_p: the
Student-t predictive tail beyond the largest value seen), so that over every pair of the audit an image that
is no copy is graded one with probability ≤ α on each feature. A pair takes the highest grade whose level it
passes on AGREE copy features (as the `copies` decision asks two features to agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .plants import PLANTS
from .summary import GeneratedSummary

if TYPE_CHECKING:
    import pandas as pd

GRADES = ("exact", "near copy", "partial copy")      # from the most to the least certain; else NOT_A_COPY
NOT_A_COPY = "not a copy"
# Which grade each plant kind's copies belong to (issue 20: near = rigid, intensity, noise, blur; partial = crop,
# patch, blend). An elastic warp moves parts of the image against each other: a partial copy.
KIND_GRADE = {"exact": "exact", "rigid": "near copy", "noise": "near copy", "blur": "near copy",
              "intensity": "near copy", "elastic": "partial copy", "crop": "partial copy",
              "patch": "partial copy", "blend": "partial copy"}
LEVEL_PERCENTILE = 5.0
AGREE = 2
_FLOOR_STEP = 1e-6          # a level sits just above the highest unused value: "beyond anything unused"
COLUMNS = ("generated_id", "generated", "relative", "generated_sha256", "grade", "real", "folder", "rank", "cosine",
           "copy_margin", "n_real", "also")


@dataclass(frozen=True)
class Levels:
    """The grades' calibrated levels per copy feature, and what they were measured on."""

    features: tuple[str, ...]
    levels: dict[str, dict[str, float]]          # grade → feature → level
    floor: dict[str, float]                      # feature → highest value of no copy
    planted: dict[str, dict[str, Any]]           # kind → {grade, n, per feature median and P5}
    null: str                                    # what the floor was measured on
    source: str                                  # what the planted copies' sources were
    agree: int

    def as_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "levels": self.levels, "floor": self.floor, "agree": self.agree,
                "percentile": LEVEL_PERCENTILE, "kind_grade": KIND_GRADE, "planted": self.planted,
                "null": self.null, "source": self.source}

    def grade(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per pair: the grade's index in GRADES (len(GRADES) = not a copy), and the margin by which the AGREE-th
        copy feature passes the near-copy level, as a share of the way to 1 (for ordering)."""
        n = len(next(iter(values.values()))) if values else 0
        need = min(self.agree, len(self.features))
        out = np.full(n, len(GRADES), np.int8)
        for g in reversed(range(len(GRADES))):
            lv = self.levels.get(GRADES[g])
            if not lv:
                continue
            passed = np.column_stack([np.nan_to_num(values[f], nan=-np.inf) >= lv[f] for f in self.features])
            out[passed.sum(1) >= need] = g
        near = self.levels.get("near copy") or {f: 0.0 for f in self.features}
        m = np.column_stack([(np.nan_to_num(values[f], nan=-1.0) - near[f]) / max(1.0 - near[f], 1e-6)
                             for f in self.features])
        return out, np.sort(m, axis=1)[:, -need]


def tail_floor(null: np.ndarray, p: float) -> float:
    """The smallest value at or beyond the null's maximum whose tail p-value (copies.tail_p) is ≤ p."""
    from .decide.copies import tail_p

    null = np.asarray(null, np.float64)
    null = null[np.isfinite(null)]
    if not len(null):
        return 0.0
    grid = np.linspace(float(null.max()), 1.0, 4001)
    ok = np.nonzero(tail_p(grid, null) <= p)[0]
    return float(grid[ok[0]]) if len(ok) else 1.0


def calibrate(planted: Sequence[dict[str, Any]], null: dict[str, np.ndarray], features: Sequence[str],
              null_what: str, source: str, p: float) -> Levels:
    """`planted`: the canaries' rows (kind, strength, and each copy feature's value against the source, under
    "copy"); `null`: per copy feature, the values of pairs that are no copy; `p`: the tail probability of the
    floor (α over the pairs graded)."""
    feats = tuple(f for f in features if all(f in r.get("copy", {}) for r in planted))
    floor = {f: tail_floor(null.get(f, np.zeros(0)), p) for f in feats}
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in planted:
        by_kind.setdefault(r["kind"], []).append(r)
    levels: dict[str, dict[str, float]] = {}
    for grade in GRADES:
        rows = [r for k, rs in by_kind.items() if KIND_GRADE.get(k) == grade for r in rs]
        if rows:
            levels[grade] = {f: _down(max(float(np.percentile([r["copy"][f] for r in rows], LEVEL_PERCENTILE)),
                                          floor[f] + _FLOOR_STEP)) for f in feats}
    for hi, lo in zip(GRADES, GRADES[1:]):        # a higher grade never asks less than a lower one
        if hi in levels and lo in levels:
            levels[hi] = {f: max(levels[hi][f], levels[lo][f]) for f in feats}
    described = {k: {"grade": KIND_GRADE.get(k, NOT_A_COPY), "n": len(rs),
                     **{f: {"median": round(float(np.median([r["copy"][f] for r in rs])), 6),
                            "p5": round(float(np.percentile([r["copy"][f] for r in rs], LEVEL_PERCENTILE)), 6)}
                        for f in feats}} for k, rs in by_kind.items()}
    return Levels(feats, levels, {f: _down(v) for f, v in floor.items()}, described, null_what, source,
                  AGREE)


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
        grade, margin = levels.grade(values)
        parts.append(pd.DataFrame({"generated_id": f.ids[valid].astype(np.int64), "grade_i": grade,
                                   "copy_margin": margin, "cosine": f.cosine[valid].astype(np.float64),
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
           canaries: dict[str, Any] | None, plant: Callable[[], dict[str, Any]], store: Any, alpha: float
           ) -> tuple[pd.DataFrame, GeneratedSummary] | None:
    """The per-generated-image answer from the audit's own neighbour lists (`results`: per folder its
    embedded images, neighbours, pair-level values and evidence). The planted copies are the canaries'
    when they planted every graded kind, else `plant()`'s; the floor is `null_folder`'s pairs (the
    known-unused images), or with none (`real`), the real images' pairs past their best neighbour. None when the
    audit computed no copy feature (the `fixed` decision)."""
    from .evidence import FEATURES

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
        what = "the real images' pairs past their best neighbour (no known-unused images)"
    else:
        null = {f: pair[f][valid] for f in feats}
        what = f"every pair of the {null_folder.replace('_', '-')} images (known unused)"
    m = sum(int((r[1].ids >= 0).sum()) for r in results.values())
    what += f"; floor at tail p ≤ α / {m} pairs = {alpha / max(m, 1):.3g}"
    levels = calibrate(rows, null, feats, what, f"planted copies of {source.replace('_', '-')} images",
                       alpha / max(m, 1))
    folders = [Folder(name, list(r[0].paths), r[1].ids, r[1].cosine, {f: r[2][f] for f in levels.features})
               for name, r in results.items()]
    table = answer(folders, levels, store.paths, store.relative, store.sha256_of)
    n = counts(table)
    return table, GeneratedSummary(graded=len(table), grades=n, withhold=len(withheld(table)),
                                   levels=levels.as_dict())
