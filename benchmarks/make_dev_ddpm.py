"""Build the dev-ddpm scenario: a real (small) diffusion model trained on LIDC crops, in bench-dev's layout.

Why: every other dev scenario is a replay, a PCA mixture or an under-trained GAN. A DDPM trained long on
few images memorises some of them (Carlini et al. 2023), which is the case an audit exists for: some
members are copied, most are not, and nobody says which. This script trains one (benchmarks/generators/
ddpm.py), writes the scenario, and measures how much it copied, so the benchmark knows its own ceiling.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/make_dev_ddpm.py --train-size 200 --seed 0
    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/make_dev_ddpm.py --train-size 450 --seed 0

Output (outside the repo): --out, default /tmp/fpindex-bench/dev-ddpm-{size}; checkpoints and the raw
48-px samples in --work, default {out}-work (a re-run resumes from there). Layout as ../shared/bench-dev:
generated/gen_NNNNN.png (2,000, 128 px), train/used/used_NNNN.png, train/not_used/not_used_NNNN.png,
test/real_NNNNN.png, test_labels.csv (image,label), test_usage.csv (image,near_copies,min_ratio),
scenario.json. Patients are split four ways (train/used, test used, train/not_used, test not used; plus
extra member patients when the training set is larger than the labelled members), so no patient is on two
sides of a split.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generators.ddpm import load_images, load_ema, nearest_ratios, sample, to_uint8, train  # noqa: E402

DATA = Path("/work/shared/data/lidc-ct128")
THRESHOLD = 1 / 3


def label_counts(size: int) -> dict:
    """train/used : test used = 1 : 3 as in bench-dev (100 : 250 at most); what is left is unlabelled extra."""
    tu = min(100, size // 4)
    teu = min(250, size - tu)
    return {"train_used": tu, "test_used": teu, "extra": size - tu - teu, "train_not_used": tu,
            "test_not_used": teu}


def split(manifest: Path, pool: str, counts: dict, seed: int) -> dict:
    """Whole patients go to one group each, in a seeded order; each group then draws exactly its count."""
    by_patient: dict[str, list[str]] = {}
    with open(manifest) as f:
        for row in csv.DictReader(f):
            if row["pool"] == pool:
                by_patient.setdefault(row["patient_id"], []).append(row["file"])
    rng = np.random.default_rng(seed)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    groups, pos = {}, 0
    for name in ["train_used", "test_used", "extra", "train_not_used", "test_not_used"]:
        need, files, pats = counts[name], [], []
        while len(files) < need:
            if pos >= len(patients):
                raise SystemExit(f"pool {pool!r} has too few patients for {counts}")
            pats.append(patients[pos])
            files += sorted(by_patient[patients[pos]])
            pos += 1
        pick = sorted(rng.choice(len(files), need, replace=False)) if need else []
        groups[name] = {"files": [files[i] for i in pick], "patients": pats}
    return groups


def write_png(path: Path, im: np.ndarray) -> None:
    if not cv2.imwrite(str(path), im):
        raise OSError(f"cannot write {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-size", type=int, default=200, help="images the DDPM trains on (about 200 or 450)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default /tmp/fpindex-bench/dev-ddpm-{size}")
    ap.add_argument("--work", default=None, help="checkpoints and raw samples; default {out}-work")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--pool", default="dev")
    ap.add_argument("--res", type=int, default=48, help="training resolution")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="lower --steps (not below --min-steps) so training ends within this many minutes")
    ap.add_argument("--min-steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-gen", type=int, default=2000)
    ap.add_argument("--ddim-steps", type=int, default=50)
    a = ap.parse_args(argv)
    out = Path(a.out or f"/tmp/fpindex-bench/dev-ddpm-{a.train_size}")
    work = Path(a.work or f"{out}-work")
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    def log(m):
        print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)

    data = Path(a.data)
    counts = label_counts(a.train_size)
    groups = split(data / "manifest.csv", a.pool, counts, a.seed)
    members = groups["train_used"]["files"] + groups["test_used"]["files"] + groups["extra"]["files"]
    roles = (["train_used"] * counts["train_used"] + ["test_used"] * counts["test_used"]
             + ["extra"] * counts["extra"])
    log(f"split {counts}; {len(members)} training images from "
        f"{sum(len(groups[g]['patients']) for g in ['train_used', 'test_used', 'extra'])} patients")
    x = load_images([data / f for f in members], a.res)

    r = train(x, work, steps=a.steps, seed=a.seed, batch=a.batch, log=log,
              time_budget_s=None if a.train_minutes is None else a.train_minutes * 60, min_steps=a.min_steps)
    samples_path = work / f"samples-{r['steps']}.npy"
    t = time.perf_counter()
    if samples_path.exists():
        gen = np.load(samples_path)
        log(f"reusing {samples_path}")
    else:
        gen = sample(load_ema(work), a.n_gen, a.res, seed=a.seed + 1, ddim_steps=a.ddim_steps, log=log)
        np.save(samples_path, gen)
    sample_s = time.perf_counter() - t

    # memorisation, in pixel space at the training resolution
    m = nearest_ratios(gen, x)
    copy = m["ratio2"] < THRESHOLD
    copied = np.zeros(len(x), int)
    np.add.at(copied, m["nearest"][copy], 1)
    min_ratio = np.full(len(x), np.inf)
    np.minimum.at(min_ratio, m["nearest"], m["ratio2"])
    roles_a = np.array(roles)
    memo = {
        "definition": ("generated image g is a near-copy of its nearest training image x when "
                       "L2(g, x) / L2(g, second-nearest training image) < 1/3 (Carlini et al. 2023 use the mean "
                       "over the n nearest; that variant is ratio_mean below, n = 50), pixels at "
                       f"{a.res} px in [-1, 1], distances as RMS per pixel"),
        "threshold": THRESHOLD,
        "generated_near_copies": int(copy.sum()),
        "generated": len(gen),
        "generated_near_copy_share": round(float(copy.mean()), 4),
        "generated_near_copies_ratio_mean_50": int((m["ratio_mean"] < THRESHOLD).sum()),
        "ratio2_quantiles": {q: round(float(np.quantile(m["ratio2"], float(q))), 4)
                             for q in ["0.05", "0.25", "0.5", "0.75", "0.95"]},
        "d1_median_rms": round(float(np.median(m["d1"])), 4),
        "members_with_near_copy": int((copied > 0).sum()),
        "members": len(x),
        "by_role": {role: {"images": int((roles_a == role).sum()),
                           "with_near_copy": int(((copied > 0) & (roles_a == role)).sum())}
                    for role in ["train_used", "test_used", "extra"] if (roles_a == role).any()},
        "max_copies_of_one_member": int(copied.max()),
    }
    log(f"memorisation: {memo['generated_near_copies']}/{len(gen)} generated are near-copies; "
        f"members with one: {memo['members_with_near_copy']}/{len(x)} {memo['by_role']}")

    # the scenario
    if out.exists():
        shutil.rmtree(out)
    for d in ["generated", "train/used", "train/not_used", "test"]:
        (out / d).mkdir(parents=True)
    for i, im in enumerate(to_uint8(gen, 128)):
        write_png(out / "generated" / f"gen_{i:05d}.png", im)
    for role, folder, stem in [("train_used", "train/used", "used"), ("train_not_used", "train/not_used", "not_used")]:
        for i, f in enumerate(groups[role]["files"]):
            shutil.copyfile(data / f, out / folder / f"{stem}_{i:04d}.png")
    rng = np.random.default_rng([a.seed, 7])
    test = ([(f, 1, j) for j, f in enumerate(groups["test_used"]["files"])]
            + [(f, 0, None) for f in groups["test_not_used"]["files"]])
    order = rng.permutation(len(test))
    offset = counts["train_used"]
    with open(out / "test_labels.csv", "w", newline="") as fl, open(out / "test_usage.csv", "w", newline="") as fu:
        wl, wu = csv.writer(fl), csv.writer(fu)
        wl.writerow(["image", "label"])
        wu.writerow(["image", "near_copies", "min_ratio"])
        for k, i in enumerate(order):
            f, label, j = test[i]
            name = f"real_{k:05d}.png"
            shutil.copyfile(data / f, out / "test" / name)
            wl.writerow([name, label])
            if j is None:
                wu.writerow([name, 0, ""])
            else:
                mr = min_ratio[offset + j]  # inf: no generated image has this member as its nearest
                wu.writerow([name, int(copied[offset + j]), round(float(mr), 4) if np.isfinite(mr) else ""])
    scenario = {
        "pool": a.pool, "generator": "ddpm", "seed": a.seed,
        "params": {"n_gen": a.n_gen, "n_train_each": counts["train_used"], "n_test_each": counts["test_used"],
                   "extra_images": counts["extra"], "train_res": a.res, "out_res": 128, "upscale": "cv2 INTER_CUBIC",
                   "unet_channels": r["chs"], "unet_params": r["params"], "batch": r["batch"], "lr": r["lr"],
                   "ema_decay": r["ema_decay"], "schedule": "cosine, T=1000", "objective": "epsilon",
                   "sampler": f"DDIM eta 0, {a.ddim_steps} steps", "sample_seed": a.seed + 1,
                   "steps_requested": a.steps, "train_minutes": a.train_minutes, "min_steps": a.min_steps},
        "steps": r["steps"],
        "train_images": len(members),
        "member_patients": sum(len(groups[g]["patients"]) for g in ["train_used", "test_used", "extra"]),
        "memorisation": memo,
        "timings_s": {"train_this_process": r["train_s"], "resumed_from_step": r["resumed_from"],
                      "sample": round(sample_s, 1), "total_this_process": round(time.perf_counter() - t_all, 1)},
        "final_loss": r["losses"][-1][1] if r["losses"] else None,
        "command": " ".join(["python", "benchmarks/make_dev_ddpm.py"] + (argv if argv is not None else sys.argv[1:])),
        "pool_root": str(data),
        "training_set": members,
    }
    (out / "scenario.json").write_text(json.dumps(scenario, indent=1))
    (work / "losses.json").write_text(json.dumps(r["losses"]))
    log(f"wrote {out} in {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
