"""Option declarations shared by the commands, and turning the options a user typed into an `AuditConfig`.

Every choice list and its help text come from a registry (embedders, enhancers, evidence features, decision
methods, presets)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

import typer

from ..errors import FpindexError
from ..config import MAX_IMAGE_SIZE, MAX_SEED, MIN_IMAGE_SIZE, AuditConfig, EmbedConfig, EvidenceConfig
from ..decide import DECIDERS
from ..embed.base import EMBEDDERS, RANDOM, SELFSUP, default_size, default_weights, model_choices, split_model
from ..enhance import ENHANCERS, parse_enhance
from ..evidence import FEATURES
from ..index import parse_bytes
from ..plants import PLANTS
from ..presets import PRESETS

Model = str       # a registered model, or FAMILY:NAME (timm:resnet18): checked by `_model`, not an Enum
Method = Enum("Method", {n: n for n in ["auto", *DECIDERS.names()]}, type=str)  # type: ignore[misc]
Score = Enum("Score", {n: n for n in FEATURES.names()}, type=str)  # type: ignore[misc]
PresetName = Enum("PresetName", {n: n for n in PRESETS.names()}, type=str)  # type: ignore[misc]
Kind = Enum("Kind", {n: n for n in PLANTS.names()}, type=str)  # type: ignore[misc]
Device = Enum("Device", {n: n for n in ("auto", "cpu", "cuda")}, type=str)  # type: ignore[misc]
Precision = Enum("Precision", {n: n for n in ("fp32", "bf16", "fp16")}, type=str)  # type: ignore[misc]
Engine = Enum("Engine", {n: n for n in ("local", "ray")}, type=str)  # type: ignore[misc]

ENHANCE_HELP = ("Enhancement filter(s), stacked as channels in the order given; repeat the option or use "
                "commas. Choices: " + "; ".join(f"{n} ({ENHANCERS.help(n)})" for n in ENHANCERS.names()))
MODEL_HELP = "Embedder. " + "; ".join(f"{c}: {EMBEDDERS.help(n)}" for n, c in zip(EMBEDDERS.names(), model_choices()))


def _model(value: Any) -> Any:
    """--model: a registered name, or FAMILY:NAME (timm:resnet18); checked here, without importing the model."""
    if value is None:
        return value
    try:
        split_model(value)
    except FpindexError:
        choices = ", ".join(repr(c) for c in model_choices())
        raise typer.BadParameter(f"{value!r} is not one of {choices}.") from None
    return value


def _defaults(what: Callable[[str], Any]) -> str:
    """Each model's own default, read from the registry: '64 for cnn, 128 for pixels, …'."""
    shown = [(c, what(c.replace(":NAME", ":x"))) for c in model_choices()]
    return ", ".join(f"{c}: {v if v is not None else 'required'}" for c, v in shown)


WEIGHTS_HELP = (f"{SELFSUP} (trained on the generated set at build time; cnn, resnet50, timm), {RANDOM} (seeded), "
                "imagenet (resnet50; needs the torch cache or a network), none (pixels), or a local file: a state "
                "dict (.pth/.pt, read with weights_only) or .safetensors, or for torchscript a TorchScript .pt / "
                "torch.export .pt2 (loading runs the file's graph: only files you trust). Nothing is downloaded. "
                "Default: the model's own (" + _defaults(default_weights) + ").")
DECISION_HELP = ("How labels are set. auto: calibrated if --used and --not-used are given, else pu if "
                 "--reference (or --not-used) is given, else copies. calibrated, pu and reference also test every "
                 "image for copy-level evidence on its own (the copy channel), so no fit can hide a copy. " +
                 "; ".join(f"{n}: {DECIDERS.help(n)}" for n in DECIDERS.names()))

# Typer option declarations shared by several commands.
O_MODEL = typer.Option(EmbedConfig.model, "--model", "-m", help=MODEL_HELP, callback=_model, metavar="MODEL",
                       rich_help_panel="Embedding")
O_WEIGHTS = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP, rich_help_panel="Embedding")
O_FINETUNE = typer.Option(None, "--finetune", min=1, help="Steps of the same self-supervised training as --weights "
                          f"{SELFSUP} (on the generated images, at build time), on top of the loaded weights; the "
                          "trained weights are kept in the index. Default: none.", rich_help_panel="Embedding")
O_ENHANCE = typer.Option(None, "--enhance", "-e", help=ENHANCE_HELP + ". Default: none.", rich_help_panel="Embedding")
O_SIZE = typer.Option(None, "--image-size", min=MIN_IMAGE_SIZE, max=MAX_IMAGE_SIZE, help="Side of the square "
                      "model input in px. Default: the model's (" + _defaults(default_size) + ").",
                      rich_help_panel="Embedding")
O_SEED = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed for random weights and every random choice.", rich_help_panel="Embedding")
O_BATCH = typer.Option(None, "--batch-size", min=1, help="Images per forward pass. Default: 256 on a GPU, 64 on "
                       "a CPU.", rich_help_panel="Embedding")
O_PRECISION = typer.Option(Precision("fp32"), "--precision", help="Arithmetic of the forward pass: bf16/fp16 "
                           "autocast is faster on GPUs and AMX CPUs but moves vectors slightly (recorded in the "
                           "index; queries reuse it).", rich_help_panel="Embedding")
O_WORKERS = typer.Option(None, "--workers", min=0, help="Processes that decode and enhance images while the model "
                         "runs (0: in the main process). Default: one per spare core (at most 8) with more than "
                         "2 cores, else 0; 0 for small sets. Results do not depend on it.", rich_help_panel="Embedding")
O_TRAIN_STEPS = typer.Option(None, "--train-steps", min=1, help="Weights selfsup: steps of self-supervised "
                             "training on the generated images at build time (batch 64). Default: about 8 passes "
                             "over them, 10 to 250 steps. Fewer build faster and match less robustly.",
                             rich_help_panel="Embedding")
O_NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the caches of vectors and SSIM values.",
                          rich_help_panel="Embedding")
O_CACHE_DIR = typer.Option(None, "--cache-dir", help="Cache of vectors and SSIM values, by image content hash and "
                           "embedder. Default: $FPINDEX_CACHE, else ~/.cache/fpindex.", rich_help_panel="Embedding")
O_WINDOW = typer.Option(None, "--window", help="DICOM and NIfTI intensity window CENTRE,WIDTH (e.g. "
                        "--window=-600,1500) or a name: lung (-600,1500), mediastinum (40,400), bone (400,1800), "
                        "brain (40,80); [C-W/2, C+W/2] becomes [0, 1]. Default: DICOM's WindowCenter/WindowWidth "
                        "tags, else the stored bits' full range; NIfTI's 0.5-99.5 percentile range. PNG/TIFF "
                        "ignore it.", rich_help_panel="Embedding")
O_MAX_PIXELS = typer.Option(EmbedConfig.max_pixels, "--max-pixels", min=1, help="Decoded pixels per file, at "
                            "most (width × height, × frames or slices): a larger file, or one whose header "
                            "claims more, is skipped as unreadable and listed, never decoded.",
                            rich_help_panel="Embedding")
O_AXIS = typer.Option(2, "--axis", min=0, max=2, help="NIfTI volumes: the array axis they are sliced along, one "
                      "image per slice (named file.nii.gz#k).", rich_help_panel="Embedding")
O_DEVICE = typer.Option(Device("auto"), "--device", help="Where the model runs; auto picks cuda when torch sees a "
                        "GPU. The FAISS index follows onto the GPU when FAISS has GPU support (the gpu extra).",
                        rich_help_panel="Embedding")
O_FACTORY = typer.Option("auto", "--index-type", "--factory", help="auto (chosen from the number of vectors, "
                         "their dimension and --max-memory: exact Flat below 100k, else IVF with ~4·√N lists and "
                         "the most accurate codes that fit: Flat, SQ8, PQ, PCA+PQ) or any FAISS index_factory "
                         "string (inner product on L2-normalised vectors), e.g. Flat, HNSW32, IVF1024,SQ8, "
                         "OPQ32_128,IVF4096,PQ32.", rich_help_panel="Index")
O_MAX_MEMORY = typer.Option(None, "--max-memory", help="Memory budget for the index and its build, e.g. 8G, 512M. "
                            "A build that would need more is refused before it starts. Default: half the RAM.",
                            rich_help_panel="Index")
O_NPROBE = typer.Option(None, "--nprobe", min=1, help="IVF lists visited per query. Default: the smallest that "
                        "reaches --target-recall, measured at build time and stored.", rich_help_panel="Index")
O_EF_SEARCH = typer.Option(None, "--ef-search", min=1, help="HNSW search breadth (efSearch). Default: tuned "
                           "like --nprobe.", rich_help_panel="Index")
O_TARGET = typer.Option(0.95, "--target-recall", min=0.0, max=1.0, help="Recall@10 against exact search that "
                        "the tuned search parameters must reach (on a held-out sample).", rich_help_panel="Index")
O_K = typer.Option(EvidenceConfig().k, "--k", "-k", min=1, help="Nearest generated images retrieved per real "
                   "image; the pair-level evidence is the best over them.",
                   rich_help_panel="Decision")
O_SCREEN = typer.Option(None, "--screen", min=1, help="Compute the costly evidence (" + ", ".join(
    f"{n}, screened by {FEATURES.get(n).screen}" for n in FEATURES if FEATURES.get(n).screen) + ") only for each real "
    "image's N best neighbours on its screening feature, not all --k: re-ranking several times cheaper, for very "
    "large audits. Default: all. What it changes on bench-dev: benchmarks/README.md.", rich_help_panel="Decision")
O_DECISION = typer.Option(Method("auto"), "--decision", help=DECISION_HELP, rich_help_panel="Decision")
SCORE_HELP = ("Evidence feature that fixed and reference decisions use: " +
              "; ".join(f"{n} ({FEATURES.help(n)})" for n in FEATURES.names()))
O_SCORE = typer.Option(Score("cosine"), "--score", help=SCORE_HELP, rich_help_panel="Decision")
O_THRESHOLD = typer.Option(None, "--threshold", help="fixed: label used when score ≥ this (default: " +
                           ", ".join(f"{n} {FEATURES.get(n).threshold:.2f}" for n in FEATURES.names()) + ").",
                           rich_help_panel="Decision")
O_ALPHA = typer.Option(0.05, "--alpha", min=0.0, max=1.0, help="Significance level, for every decision: "
                       "the verdict says leakage when its p ≤ alpha (else every label is 0); an image's p-value "
                       "combines the fused score (0.8 alpha) and the copy channel (0.2 alpha); reference and pu "
                       "label an image used when its p ≤ alpha; a canary counts as found when its p ≤ alpha.",
                       rich_help_panel="Decision")
O_USED = typer.Option(None, "--used", help="Real images known to be used in training (labelled, for calibration).",
                      rich_help_panel="Decision")
O_NOT_USED = typer.Option(None, "--not-used", help="Real images known not to be used (labelled, for calibration).",
                          rich_help_panel="Decision")
O_REFERENCE = typer.Option(None, "--reference", help="Real images known not to be used, to model the null when "
                           "no labelled pair is given.", rich_help_panel="Decision")
O_GROUPS = typer.Option(None, "--groups", help="CSV with columns image and patient (or patient_id, study, series, "
                        "group): which patient each image of any folder is of, matched by submission id (file stem, "
                        "#k for image k of a multi-image file). Folds and permutations then move whole patients, "
                        "and patients.csv and a patient-level verdict say which patients are exposed. Without it, "
                        "DICOM images are grouped by their PatientID tag (else StudyInstanceUID); images left "
                        "unknown keep the mutual-2-NN sibling proxy.", rich_help_panel="Decision")
KINDS_HELP = "; ".join(f"{n} ({PLANTS.help(n)}; default strengths "
                       f"{', '.join(f'{s:g}' for s in PLANTS.get(n).strengths)})" for n in PLANTS.names())
O_CANARIES = typer.Option(20, "--canaries", min=0, help="Known-unused images (from --not-used or --reference) "
                          "planted as transformed copies beside the index, to report what this audit would have "
                          "caught of each kind of copy; no other output changes. 0: none.", rich_help_panel="Decision")
O_CANARY_KINDS = typer.Option(None, "--canary-kinds", help="Plant kinds for the canaries (repeat the option). "
                              "Default: all. " + KINDS_HELP, rich_help_panel="Decision")
O_ENGINE = typer.Option(Engine("local"), "--engine", help="local: this process (and --workers). ray: embed, "
                        "index and re-rank on a Ray cluster (pip install 'fpindex[ray]'; docs/scale-out.md); the "
                        "answers are the same.", rich_help_panel="Scale-out")
O_ADDRESS = typer.Option(None, "--address", help="--engine ray: the cluster to join, auto or HOST:PORT. Default: "
                         "$RAY_ADDRESS, else a Ray cluster started on this machine.", rich_help_panel="Scale-out")
O_QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (no progress bars, no summary "
                       "lines); files, the report included, are written as usual.")
O_VERIFY = typer.Option(False, "--verify", help="Hash every file of the index against its manifest's checksums "
                        "before using it. Default: only files whose size or modification time changed.",
                        rich_help_panel="Index")
O_VERBOSE = typer.Option(False, "--verbose", "-v", help="Also print per-stage timings.")

O_PRESET = typer.Option(PresetName("default"), "--preset", help="Named settings; options given explicitly "
                        "override them. " + "; ".join(f"{n}: {PRESETS.help(n)}" for n in PRESETS.names()))

O_JSON = typer.Option(False, "--json", help="Print the summary (summary.json) as one JSON document on stdout, "
                      "or {\"error\": …} on failure; progress and warnings stay on stderr.")
O_HTML = typer.Option(False, "--report", help="Also write OUT/report.html (see `fpindex report`).")
O_TOP = typer.Option(50, "--report-top", min=0, help="Real images, by score, shown beside their neighbours in "
                     "the HTML report.")


def _value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


def _cuda_means_auto(device: Any) -> str:
    """For the commands that embed, --device says where torch runs; FAISS follows onto the GPU only when it has
    GPU support (faiss-cpu is the default install), so `--device cuda` never fails on FAISS's account."""
    d = _value(device)
    return "auto" if d == "cuda" else d


# Each CLI parameter → the config fields it sets, with a conversion.
FIELDS: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {
    "model": [("embed", "model", _value)],
    "weights": [("embed", "weights", _value)],
    "enhance": [("embed", "enhance", parse_enhance)],
    "image_size": [("embed", "image_size", _value)],
    "seed": [("embed", "seed", _value), ("index", "seed", _value), ("decide", "seed", _value),
             ("canaries", "seed", _value)],
    "batch_size": [("embed", "batch_size", _value)],
    "device": [("embed", "device", _value), ("index", "device", _cuda_means_auto)],
    "precision": [("embed", "precision", _value)],
    "workers": [("embed", "workers", _value)],
    "no_cache": [("embed", "cache", lambda v: not v)],
    "cache_dir": [("embed", "cache_dir", lambda v: str(v) if v else None)],
    "train_steps": [("embed", "train_steps", _value)],
    "finetune": [("embed", "finetune", _value)],
    "window": [("embed", "window", _value)],
    "axis": [("embed", "axis", _value)],
    "max_pixels": [("embed", "max_pixels", _value)],
    "factory": [("index", "factory", _value)],
    "max_memory": [("index", "max_memory", parse_bytes)],
    "nprobe": [("index", "nprobe", _value)],
    "ef_search": [("index", "ef_search", _value)],
    "target_recall": [("index", "target_recall", _value)],
    "k": [("evidence", "k", _value)],
    "screen": [("evidence", "screen", _value)],
    "decision": [("decide", "method", _value)],
    "score": [("decide", "score", _value)],
    "threshold": [("decide", "threshold", _value)],
    "alpha": [("decide", "alpha", _value)],
    "groups": [("decide", "groups", lambda v: str(v) if v else None)],
    "canaries": [("canaries", "n", _value)],
    "canary_kinds": [("canaries", "kinds", lambda v: tuple(_value(k) for k in v) if v else None)],
    "engine": [("run", "engine", _value)],
    "address": [("run", "address", _value)],
    "quiet": [("run", "quiet", _value)],
    "verbose": [("run", "verbose", _value)],
    "verify": [("run", "verify", _value)],
}


def _typed(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def typed_embedding(ctx: typer.Context, **params: Any) -> dict[str, Any]:
    """The embedding settings (not how to run) that the user typed, as config values: what `build --add`
    must find in the index it appends to."""
    out = {}
    for name, value in params.items():
        for section, field, convert in FIELDS.get(name, []):
            if section == "embed" and field not in EmbedConfig.RUNTIME and _typed(ctx, name):
                out[field] = convert(value)
    return out


def config_from(ctx: typer.Context, preset: Any = None, **params: Any) -> AuditConfig:
    """The preset's config (default: fpindex's defaults) with every option the user typed applied on top;
    options left at their defaults never override a preset. (Each option's default is the config's.)"""
    cfg = PRESETS.get(_value(preset)) if preset is not None else AuditConfig()
    sections: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        if _typed(ctx, name):
            for section, field, convert in FIELDS[name]:
                sections.setdefault(section, {})[field] = convert(value)
    return cfg.override(**sections)
