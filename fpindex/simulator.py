"""A leak simulator: a scenario with known members, laid out like ImageCLEFmed GAN, from real images.

Real images are split into members and non-members (by patient when a manifest CSV file,patient_id says
which images belong together, else image by image), each split again by patient into a labelled train half
and a test half. Transformed or partial copies of members (plants.py) are planted into a copy of the
generated set at a chosen rate; without a generated set, images of a third group of patients stand in for
a generator's fresh output. Written, all at once (the folder appears only when complete):

    generated/           the generated images, copied, plus the planted ones (sim_XXXXX.png)
    train/used/          labelled members            train/not_used/   labelled non-members
    test/                members and non-members, unlabelled (real_XXXXX.*)
    test_labels.csv      image,label for test/
    groups.csv           image,patient for every real image written (train/ and test/), with a manifest only
    planted.json         exactly what was planted where (kind, strength, source, what was mixed in), the
                         split, the parameters and versions

The real and generated files are read, never modified; exact copies are byte-for-byte copies of the file.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import FpindexError
from .load import list_images, load_image, split_frame
from .plants import PLANTS, grid, write_png
from .utils import atomic_dir, versions, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class Simulated:
    root: Path
    planted: list[dict[str, Any]]
    record: dict[str, Any]          # what planted.json holds


def read_manifest(path: str | Path) -> dict[str, str]:
    """file (relative to the real folder, POSIX) → patient id; read like the label tables (BOM, CRLF, line
    numbers), an empty field or a file listed twice refused naming the lines."""
    from .load.tables import read_csv_columns

    path = Path(path)
    if path.is_dir():
        raise FpindexError(f"manifest {path} is a folder, expected a CSV file with columns file,patient_id")
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    for r in read_csv_columns(path, ("file", "patient_id")):
        f, pid, line = r["file"].strip().replace("\\", "/"), r["patient_id"].strip(), r["_line"]
        if not f or not pid:
            raise FpindexError(f"{path}:{line}: empty {'file' if not f else 'patient_id'}")
        if f in out:
            how = "another patient" if out[f] != pid else "the same patient again"
            raise FpindexError(f"{path}:{line}: {f!r} is listed on line {lines[f]} already ({how}); list each "
                               "file once")
        out[f], lines[f] = pid, line
    return out


MAX_PLANT_SIZE = 1024          # like --image-size: a planted image is held several times in memory


def check_arguments(real: str | Path, out: str | Path, generated: str | Path | None, *, members: Any, rate: Any,
                    seed: Any, size: Any, fresh: Any) -> None:
    """Every argument of a simulation checked before any work, one line each (simulate and sensitivity)."""
    def whole(name: str, v: Any, lo: int, hi: int | None = None) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
            span = f"from {lo:,} to {hi:,}" if hi is not None else f"at least {lo:,}"
            raise FpindexError(f"{name} must be a whole number {span}, got {v!r}")

    try:
        ok = 0.0 <= float(rate) <= 1.0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise FpindexError(f"--rate must be between 0 and 1, got {rate!r}")
    whole("--seed", seed, 0, 2**32 - 1)
    whole("--plant-size", size, 16, MAX_PLANT_SIZE)
    if members is not None:
        whole("--members", members, 2)
    if fresh is not None:
        whole("--fresh", fresh, 1)
    o = Path(out).absolute()
    for name, p in (("--real", real), ("--generated", generated)):
        if p is None:
            continue
        q = Path(p).absolute()
        if o.is_relative_to(q) or q.is_relative_to(o):
            raise FpindexError(f"--out {out} overlaps {name} {p}: what one run writes would be read as input by "
                               "the next (or by a later cell); choose an --out outside it")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise FpindexError(f"output folder {out} exists and is not empty; choose another --out")


def _groups(root: Path, files: list[Path], manifest: dict[str, str] | None, where: str) -> list[list[Path]]:
    if manifest is None:
        return [[f] for f in files]
    by: dict[str, list[Path]] = {}
    for f in files:
        rel = f.relative_to(root).as_posix()
        key = manifest.get(rel, manifest.get(split_frame(rel)[0].as_posix()))
        if key is None:
            raise FpindexError(f"manifest {where}: no patient_id for {rel}; list every image of the real folder")
        by.setdefault(key, []).append(f)
    return [by[k] for k in sorted(by)]


def _csv_field(value: str) -> str:
    """A patient id as one CSV field (quoted when it holds a comma, quote or line end)."""
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\r\n') else value


def _take(groups: list[list[Path]], n: int) -> tuple[list[list[Path]], list[list[Path]]]:
    """Whole groups, in order, until at least n images."""
    got, count = 0, 0
    while got < len(groups) and count < n:
        count += len(groups[got])
        got += 1
    return groups[:got], groups[got:]


def _halves(groups: list[list[Path]]) -> tuple[list[Path], list[Path]]:
    """Train and test halves by group, alternating so both get about as many images."""
    a, b = [], []
    for g in groups:
        (a if len(a) <= len(b) else b).extend(g)
    return a, b


def _copy(src: Path, dst_stem: Path, size: int) -> Path:
    """Byte copy of a plain file (same suffix); a frame of a multi-image file as a PNG of its pixels."""
    base, k = split_frame(src)
    dst_stem.parent.mkdir(parents=True, exist_ok=True)
    if k is None:
        dst = dst_stem.with_suffix("".join(base.suffixes[-2:]) if base.name.endswith(".nii.gz") else base.suffix)
        shutil.copyfile(base, dst)
    else:
        dst = dst_stem.with_suffix(".png")
        write_png(dst, _pixels(src, size))
    return dst


def _pixels(path: Path, size: int) -> np.ndarray:
    try:
        return load_image(path, size)[0]
    except ValueError as e:
        raise FpindexError(f"image {path}: {e}") from None


def simulate(real: str | Path, out: str | Path, generated: str | Path | None = None, *,
             members: int | None = None, kinds: Sequence[str] | None = None,
             strengths: Sequence[float] | None = None, rate: float = 1.0, seed: int = 0,
             manifest: str | Path | None = None, size: int = 128, fresh: int | None = None) -> Simulated:
    """Write a simulated scenario to `out` (which must not exist or be empty). `members`: member images
    (whole patients, at least this many; default a third of the real images); `rate`: the share of members
    that get a planted copy; kinds and strengths as in plants.grid (each planted copy takes the next
    (kind, strength) in turn); `size`: the side of planted images; `fresh`: without a generated set, how many
    images of other patients stand in for it (default three times the members)."""
    check_arguments(real, out, generated, members=members, rate=rate, seed=seed, size=size, fresh=fresh)
    real, out = Path(real), Path(out)
    cells = grid(kinds, strengths)
    files = list_images(real, "real-image folder")
    gen_files = list_images(generated, "generated-image folder") if generated is not None else []
    table = read_manifest(manifest) if manifest is not None else None
    rng = np.random.default_rng([seed, 7])
    groups = _groups(real, files, table, str(manifest))
    patient = {f: table.get(f.relative_to(real).as_posix(), table.get(split_frame(f.relative_to(real).as_posix())[0]
                                                                      .as_posix())) for g in groups for f in g} \
        if table is not None else {}
    groups = [groups[i] for i in rng.permutation(len(groups))]
    n_members = len(files) // 3 if members is None else members
    if n_members < 2:               # only the default can get here (a third of the images)
        raise FpindexError(f"real-image folder {real}: {len(files)} images are too few to simulate (a third of "
                           "them become members, and train and test each need one; at least 6 images)")
    member_groups, rest = _take(groups, n_members)
    non_groups, rest = _take(rest, sum(map(len, member_groups)))
    background: list[list[Path]] = []
    if generated is None:
        background = _take(rest, 3 * sum(map(len, member_groups)) if fresh is None else fresh)[0]
        if not background:
            cut = max(1, len(non_groups) * 2 // 3)       # no patient left over: some non-members stand in
            non_groups, background = non_groups[:cut], non_groups[cut:]
    if len(member_groups) < 2 or len(non_groups) < 2 or (generated is None and not background):
        parts = "members, non-members" + (" and a generated stand-in" if generated is None else "")
        raise FpindexError(f"real-image folder {real}: {len(groups)} {'patients' if table else 'images'} are too "
                           f"few to split into {parts}; give more images"
                           + (" or fewer --members" if members is not None else ""))
    used_tr, used_te = _halves(member_groups)
    not_tr, not_te = _halves(non_groups)
    gen_sources = gen_files or [f for g in background for f in g]
    with atomic_dir(out) as tmp:
        def rel(p: Path) -> str:
            return p.relative_to(tmp).as_posix()

        origin: dict[Path, str] = {}
        written: list[tuple[Path, Path]] = []       # (real source, its copy) for groups.csv
        for i, f in enumerate(used_tr):
            written.append((f, _copy(f, tmp / "train" / "used" / f"used_{i:05d}", size)))
            origin[f] = rel(written[-1][1])
        for i, f in enumerate(not_tr):
            written.append((f, _copy(f, tmp / "train" / "not_used" / f"not_used_{i:05d}", size)))
        test = [(f, 1) for f in used_te] + [(f, 0) for f in not_te]
        labels = []
        for j, t in enumerate(rng.permutation(len(test)).tolist()):
            f, label = test[t]
            dst = _copy(f, tmp / "test" / f"real_{j:05d}", size)
            written.append((f, dst))
            if label:
                origin[f] = rel(dst)
            labels.append((dst.name, label))
        write_text_atomic(tmp / "test_labels.csv", "image,label\n" + "".join(f"{n},{lab}\n" for n, lab in labels))
        if table is not None:           # each real image written, with its patient, for `--groups`
            write_text_atomic(tmp / "groups.csv", "image,patient\n" + "".join(
                f"{Path(dst).name},{_csv_field(patient[src])}\n" for src, dst in written))
        gen_names = []
        for i, f in enumerate(gen_sources):
            name = (f.relative_to(generated).as_posix() if generated is not None else f"fresh_{i:05d}")
            gen_names.append(rel(_copy(f, tmp / "generated" / (Path(name).with_suffix("") if generated is not None
                                                                else Path(name)), size)))
        member_files = used_tr + used_te
        chosen = sorted(rng.choice(len(member_files), int(round(rate * len(member_files))), replace=False).tolist())
        planted = []
        for j, m in enumerate(chosen):
            src = member_files[m]
            kind, strength = cells[j % len(cells)]
            p = PLANTS.get(kind)
            want = p.others(strength)
            mix = sorted(rng.choice(len(gen_sources), min(want, len(gen_sources)), replace=False).tolist())
            if len(mix) < want:
                raise FpindexError(f"plant kind {kind} at {strength:g} mixes in {want} generated images, "
                                   f"only {len(gen_sources)} exist")
            dst = tmp / "generated" / f"sim_{j:05d}.png"
            if dst.exists():
                raise FpindexError(f"generated-image folder {generated} already holds {dst.name}, the name of a "
                                   "planted image; rename it")
            if kind == "exact" and split_frame(src)[1] is None and src.suffix.lower() == ".png":
                shutil.copyfile(src, dst)
            else:
                others = [_pixels(gen_sources[t], size) for t in mix]
                write_png(dst, p(_pixels(src, size), strength, np.random.default_rng([seed, 11, j]), others))
            planted.append({"generated": rel(dst), "source": origin[src], "original": str(src), "kind": kind,
                            "strength": strength, "description": p.describe(strength), "rng": [seed, 11, j],
                            "mixed_in": [gen_names[t] for t in mix]})
        record = {"planted": planted, "groups": "groups.csv" if table is not None else None,
                  "split": {"by": "patient (manifest)" if table else "image", "members": len(member_files),
                            "non_members": len(not_tr) + len(not_te), "train_used": len(used_tr),
                            "train_not_used": len(not_tr), "test": len(test), "generated_copied": len(gen_sources),
                            "generated_from": str(generated) if generated is not None else "real images of other "
                                                                                          "patients (stand-in)"},
                  "parameters": {"real": str(real), "generated": str(generated) if generated else None,
                                 "manifest": str(manifest) if manifest else None, "members": members,
                                 "kinds": [k for k in dict.fromkeys(k for k, _ in cells)],
                                 "strengths": list(strengths) if strengths is not None else None,
                                 "rate": rate, "seed": seed, "size": size},
                  "versions": versions()}
        write_json_atomic(tmp / "planted.json", record)
    return Simulated(out, planted, record)
