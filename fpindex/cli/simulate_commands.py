"""Commands that measure what an audit can see: `simulate` (a scenario with known planted copies) and
`sensitivity` (simulate + audit over a grid of plant kinds and strengths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .options import (KINDS_HELP, O_BATCH, O_CACHE_DIR, O_DEVICE, O_ENHANCE, O_K, O_MODEL, O_NO_CACHE, O_PRESET,
                      O_QUIET, O_SIZE, O_TRAIN_STEPS, O_WEIGHTS, O_WORKERS, FIELDS, Device, Kind, Model, PresetName,
                      config_from)

O_REAL = typer.Option(..., "--real", "-r", help="Folder of real images to split into members and non-members.")
O_GEN = typer.Option(None, "--generated", "-g", help="Folder of generated images the planted copies join. "
                     "Default: images of other patients of --real stand in for a generator's fresh output.")
O_MEMBERS = typer.Option(None, "--members", min=2, help="Member images (whole patients, at least this many). "
                         "Default: a third of the real images.")
O_KINDS = typer.Option(None, "--kinds", help="Plant kinds (repeat the option). Default: all. " + KINDS_HELP)
O_STRENGTH = typer.Option(None, "--strength", help="Strengths for every kind given (repeat the option; exact "
                          "has none). Default: each kind's own grid.")
O_RATE = typer.Option(1.0, "--rate", min=0.0, max=1.0, help="Share of the member images that get a planted copy.")
O_MANIFEST = typer.Option(None, "--manifest", help="CSV with columns file,patient_id (file relative to --real): "
                          "members, non-members and train/test are split by patient. Default: image by image.")
O_PLANT_SIZE = typer.Option(128, "--plant-size", min=16, help="Side in px of the planted images.")
O_FRESH = typer.Option(None, "--fresh", min=1, help="Without --generated: how many images of other patients "
                       "stand in for the generated set. Default: three times the members.")
O_SIM_SEED = typer.Option(0, "--seed", help="Seed of every choice (split, planted members, transforms).")


def register(app: typer.Typer) -> None:
    app.command(epilog="Example (on `fpindex demo`'s data): fpindex simulate --real fpindex-demo/data/test "
                       "--out sim/ --members 10 --kinds rigid --strength 10")(simulate)
    app.command(epilog="Example (on `fpindex demo`'s data): fpindex sensitivity --real fpindex-demo/data/test "
                       "--out sens/ --members 10 --kinds rigid --strength 10 --weights random")(sensitivity)


def _kinds(kinds: Optional[list[Any]]) -> Optional[list[str]]:
    return [k.value if hasattr(k, "value") else k for k in kinds] if kinds else None


def simulate(
    real: Path = O_REAL, out: Path = typer.Option(..., "--out", "-o", help="Folder to write the scenario to (new "
                                                 "or empty)."),
    generated: Optional[Path] = O_GEN, members: Optional[int] = O_MEMBERS, kinds: Optional[list[Kind]] = O_KINDS,
    strength: Optional[list[float]] = O_STRENGTH, rate: float = O_RATE, seed: int = O_SIM_SEED,
    manifest: Optional[Path] = O_MANIFEST, plant_size: int = O_PLANT_SIZE, fresh: Optional[int] = O_FRESH,
    quiet: bool = O_QUIET,
) -> None:
    """Write an ImageCLEF-style scenario with known members and planted copies, and planted.json saying
    exactly what was planted where."""
    from ..api import simulate as run

    sim = run(real, out, generated, members=members, kinds=_kinds(kinds), strengths=strength, rate=rate, seed=seed,
              manifest=manifest, size=plant_size, fresh=fresh)
    s = sim.record["split"]
    if not quiet:
        typer.echo(f"scenario {out}: {s['train_used']} used + {s['train_not_used']} not-used labelled images, "
                   f"{s['test']} test images, {s['generated_copied']} generated + {len(sim.planted)} planted "
                   f"(split by {s['by']}); what was planted where: {out}/planted.json")


def sensitivity(
    ctx: typer.Context,
    real: Path = O_REAL, out: Path = typer.Option(..., "--out", "-o", help="Folder for the cells and the table "
                                                 "(new or empty)."),
    generated: Optional[Path] = O_GEN, members: Optional[int] = O_MEMBERS, kinds: Optional[list[Kind]] = O_KINDS,
    strength: Optional[list[float]] = O_STRENGTH, rate: float = O_RATE, seed: int = O_SIM_SEED,
    manifest: Optional[Path] = O_MANIFEST, plant_size: int = O_PLANT_SIZE, fresh: Optional[int] = O_FRESH,
    fpr: float = typer.Option(0.05, "--fpr", min=0.0, max=1.0, help="False-positive rate the recall is read at."),
    model: Model = O_MODEL, weights: Optional[str] = O_WEIGHTS, enhance: Optional[list[str]] = O_ENHANCE,
    image_size: Optional[int] = O_SIZE, train_steps: Optional[int] = O_TRAIN_STEPS, k: int = O_K,
    batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE, workers: Optional[int] = O_WORKERS,
    no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR, preset: PresetName = O_PRESET,
    quiet: bool = O_QUIET,
) -> None:
    """Simulate and audit each plant kind at each strength: recall at a fixed false-positive rate against
    strength, as OUT/sensitivity.png, .json and .csv."""
    from ..api import sensitivity as run

    params = {n: v for n, v in locals().items() if n in FIELDS}
    cfg = config_from(ctx, preset, **params).override(run={"quiet": True})
    rec = run(real, out, generated, kinds=_kinds(kinds), strengths=strength, members=members, rate=rate, seed=seed,
              manifest=manifest, size=plant_size, fresh=fresh, fpr=fpr, config=cfg)
    if not quiet:
        for r in rec["table"]:
            recall = "—" if r["recall"] is None else f"{r['recall']:.3f}"
            typer.echo(f"{r['kind']:>10} {r['strength']:>6g} {r['unit']:<18} recall at {fpr:.0%} FPR {recall}")
        typer.echo(f"wrote {out}/sensitivity.png, sensitivity.json, sensitivity.csv")
