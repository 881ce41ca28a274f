"""A small, seeded leak scenario made from nothing, laid out like ImageCLEFmed GAN.

Images are CT-like 128 × 128 slices: a body outline, two lungs, vessels and nodules, noise. Each "patient"
has its own anatomy; their slices differ a little. The "generator" replays images of member patients with
small rotations and shifts, intensity changes and noise (the fingerprints fpindex looks for; made with the
simulator's plant kinds, plants.py), and adds fresh images of patients no real set contains. Layout:

    generated/             synthetic images
    train/used/            labelled member images (calibration)
    train/not_used/        labelled non-member images (calibration)
    test/                  members and non-members, unlabelled, from other patients than train/
    test_labels.csv        image,label for test/
    groups.csv             image,patient for every real image (train/ and test/), for --groups
    planted.json           which generated images replay which member, and how (plants.py kinds)

`run_demo` writes a scenario into OUT/data, audits it with calibration into OUT/audit and evaluates the result
against the test labels; OUT/fpindex-demo.json marks the folder as the demo's, the only kind it writes again.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from ._version import __version__
from .config import AuditConfig, DecideConfig, EmbedConfig, RunConfig
from .errors import FpindexError
from .plants import write_png
from .safeio import read_json, refuse_special, shown
from .utils import atomic_dir, write_json_atomic, write_text_atomic

DEMO_MARKER = "fpindex-demo.json"      # the demo's record in its folder: only such a folder is written again


@dataclass(frozen=True)
class ScenarioSize:
    n_train_each: int = 20
    n_test_each: int = 40
    n_generated: int = 240
    replay_fraction: float = 0.6   # share of generated images that replay a member image
    slices_per_patient: int = 4
    size: int = 128


def _patient(rng: np.random.Generator) -> dict:
    return {
        "body": (rng.uniform(0.36, 0.46), rng.uniform(0.30, 0.40)),
        "lungs": [(rng.uniform(0.28, 0.36), rng.uniform(0.45, 0.55), rng.uniform(0.10, 0.14), rng.uniform(0.18, 0.24)),
                  (rng.uniform(0.64, 0.72), rng.uniform(0.45, 0.55), rng.uniform(0.10, 0.14), rng.uniform(0.18, 0.24))],
        "blobs": [(rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.75), rng.uniform(0.01, 0.04), rng.uniform(0.4, 0.9))
                  for _ in range(int(rng.integers(6, 14)))],
        "texture_seed": int(rng.integers(1 << 31)),
    }


def _slice(p: dict, z: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size), np.float32)
    bx, by = p["body"]
    img[((xx - 0.5) / bx) ** 2 + ((yy - 0.5) / by) ** 2 <= 1] = 0.55
    dz = 0.015 * z
    for cx, cy, rx, ry in p["lungs"]:
        img[((xx - cx) / (rx * (1 - dz))) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = 0.12
    for cx, cy, r, v in p["blobs"]:
        cy2 = cy + dz * (1 if cx < 0.5 else -1)
        img += (v * np.exp(-((xx - cx) ** 2 + (yy - cy2) ** 2) / (2 * r * r))).astype(np.float32)
    tex = np.random.default_rng(p["texture_seed"] + z).standard_normal((size // 8, size // 8)).astype(np.float32)
    img += 0.06 * cv2.resize(tex, (size, size), interpolation=cv2.INTER_CUBIC)
    img += 0.02 * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (3, 3), 0), 0, 1)


def _replay(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """What a memorising generator does to a training image: the simulator's plant kinds (plants.py) at small
    strengths, one after the other: a rigid move, an intensity change, noise. Returns the image and the steps."""
    from .plants import PLANTS

    steps = [("rigid", float(rng.uniform(0, 5))), ("intensity", float(rng.uniform(0, 0.1))), ("noise", 0.02)]
    out = img
    for kind, strength in steps:
        out = PLANTS.get(kind)(out, strength, rng)
    return out, [{"kind": k, "strength": round(s, 6)} for k, s in steps]


def make_scenario(root: str | Path, seed: int = 0, size: ScenarioSize = ScenarioSize()) -> Path:
    """Write a scenario under `root`; deterministic for a given seed and size."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    per = size.slices_per_patient

    patient_of: dict[int, str] = {}         # id(image) → its patient, for groups.csv (every image kept is alive)
    made = [0]

    def patients_images(n_images: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        while len(out) < n_images:
            p = _patient(rng)
            made[0] += 1
            for z in range(per):
                out.append(_slice(p, z, size.size, rng))
                patient_of[id(out[-1])] = f"patient-{made[0]:04d}"
        return out[:n_images]

    # Four disjoint patient groups: train members, train non-members, test members, test non-members.
    train_used = patients_images(size.n_train_each)
    train_not = patients_images(size.n_train_each)
    test_used = patients_images(size.n_test_each)
    test_not = patients_images(size.n_test_each)
    members = train_used + test_used
    for i, img in enumerate(train_used):
        write_png(root / "train" / "used" / f"used_{i:05d}.png", img)
    for i, img in enumerate(train_not):
        write_png(root / "train" / "not_used" / f"not_used_{i:05d}.png", img)
    test = [(img, 1) for img in test_used] + [(img, 0) for img in test_not]
    order = rng.permutation(len(test))
    rows = []
    test_name = {}
    for j, t in enumerate(order):
        img, label = test[t]
        name = f"real_{j:05d}.png"
        write_png(root / "test" / name, img)
        rows.append((name, label))
        test_name[int(t)] = name
    rows_by_member = [(test_name[i], 1) for i in range(len(test_used))]   # test members, in `members` order
    n_replay = int(round(size.replay_fraction * size.n_generated))
    fresh = patients_images(size.n_generated - n_replay)
    member_names = [f"train/used/used_{i:05d}.png" for i in range(len(train_used))]
    member_names += [f"test/{n}" for n, lab in rows_by_member]
    replays = []
    for _ in range(n_replay):
        m = int(rng.integers(len(members)))
        img, steps = _replay(members[m], rng)
        replays.append((img, {"source": member_names[m], "steps": steps}))
    gen = replays + [(img, None) for img in fresh]
    planted = []
    for j, t in enumerate(rng.permutation(len(gen))):
        write_png(root / "generated" / f"gen_{j:05d}.png", gen[t][0])
        if gen[t][1] is not None:
            planted.append({"generated": f"generated/gen_{j:05d}.png", **gen[t][1]})
    write_json_atomic(root / "planted.json", {"planted": planted, "seed": seed, "size": asdict(size)})
    lines = ["image,label"] + [f"{n},{lab}" for n, lab in rows]
    write_text_atomic(root / "test_labels.csv", "\n".join(lines) + "\n")
    patients = [(f"used_{i:05d}.png", patient_of[id(img)]) for i, img in enumerate(train_used)]
    patients += [(f"not_used_{i:05d}.png", patient_of[id(img)]) for i, img in enumerate(train_not)]
    patients += [(test_name[int(t)], patient_of[id(test[t][0])]) for t in order]
    write_text_atomic(root / "groups.csv", "image,patient\n" + "".join(f"{n},{p}\n" for n, p in patients))
    return root


# The quick demo (`fpindex demo --small`): half the patients and generated images, and fewer self-supervised
# training steps than the default (which takes about 8 passes over the generated set: 30 steps for 240 images).
SMALL_SIZE = ScenarioSize(n_train_each=10, n_test_each=20, n_generated=120)
SMALL_TRAIN_STEPS = 10


@dataclass(frozen=True)
class DemoResult:
    data: Path                   # the scenario (generated/, train/, test/, test_labels.csv)
    results: Path                # the audit's outputs, and evaluation.json
    summary: dict[str, Any]      # what the audit returned
    evaluation: dict[str, Any]   # the evaluation on test/, also written to results/evaluation.json


def check_demo_folder(out: str | Path) -> None:
    """The demo writes only into a new or empty folder, or one an earlier demo made (its fpindex-demo.json):
    it replaces data/ whole, so a file of the user's there would be overwritten or audited with the scenario."""
    out = Path(out)
    refuse_special(out, "folder")
    if not out.exists():
        return
    m = read_json(out / DEMO_MARKER)
    if isinstance(m, dict) and m.get("generator") == "fpindex demo":
        return
    found = sorted(os.listdir(out))
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise FpindexError(f"demo folder {shown(out)} holds files the demo did not write ({shown(found[0])}{more}) "
                           f"and no {DEMO_MARKER}; refusing to write into it: choose a new or empty --out")


def run_demo(out: str | Path, seed: int = 0, small: bool = False, run: Optional[RunConfig] = None,
             on_scenario: Optional[Callable[[Path], None]] = None) -> DemoResult:
    """Write a seeded scenario under out/data, audit it (calibrated on train/) into out/audit, and evaluate the
    predictions on test/ against labels the audit never saw. `on_scenario` is called once the scenario exists,
    before the audit starts. `small`: the quick version (SMALL_SIZE, SMALL_TRAIN_STEPS). `out` must be new,
    empty or an earlier demo's (check_demo_folder); data/ is built aside and swapped in whole."""
    from .api import audit
    from .evaluate import evaluate_files
    out, run = Path(out), run or RunConfig()
    check_demo_folder(out)
    write_json_atomic(out / DEMO_MARKER, {"generator": "fpindex demo", "version": __version__, "seed": seed,
                                          "small": small})
    data = out / "data"
    with atomic_dir(data) as tmp:
        make_scenario(tmp, seed=seed, size=SMALL_SIZE if small else ScenarioSize())
    if on_scenario is not None:
        on_scenario(data)
    results = out / "audit"
    config = AuditConfig(embed=EmbedConfig(seed=seed, train_steps=SMALL_TRAIN_STEPS if small else None),
                         decide=DecideConfig(seed=seed), run=run)
    summary = audit(data / "generated", data / "test", used=data / "train" / "used",
                    not_used=data / "train" / "not_used", config=config, out=results).summary
    evaluation = evaluate_files(results / "predictions.csv", data / "test_labels.csv")
    write_json_atomic(results / "evaluation.json", evaluation)
    return DemoResult(data=data, results=results, summary=summary, evaluation=evaluation)
