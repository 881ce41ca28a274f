"""The `fpindex` command line. Every choice list comes from a registry; bad input → one line, exit 2."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from . import __version__
from .config import DecideConfig, EmbedConfig, IndexConfig, QueryConfig, RunConfig
from .decide import DECIDERS, FEATURES
from .embed import EMBEDDERS
from .enhance import ENHANCERS, parse_enhance
from .errors import FpindexError
from .presets import PRESETS

app = typer.Typer(
    name="fpindex",
    help="Audit synthetic medical images for training-data leakage.\n\n"
         "Index generated images, query real images against them, and say which real images were very "
         "probably used to train the generator.\n\n"
         "Quick look: fpindex demo",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Model = Enum("Model", {n: n for n in EMBEDDERS.names()}, type=str)  # type: ignore[misc]
Method = Enum("Method", {n: n for n in ["auto", *DECIDERS.names()]}, type=str)  # type: ignore[misc]
Score = Enum("Score", {n: n for n in FEATURES}, type=str)  # type: ignore[misc]
PresetName = Enum("PresetName", {n: n for n in PRESETS.names()}, type=str)  # type: ignore[misc]
Device = Enum("Device", {n: n for n in ("auto", "cpu", "cuda")}, type=str)  # type: ignore[misc]
Precision = Enum("Precision", {n: n for n in ("fp32", "bf16", "fp16")}, type=str)  # type: ignore[misc]

ENHANCE_HELP = ("Enhancement filter(s), stacked as channels in the order given; repeat the option or use "
                "commas. Choices: " + "; ".join(f"{n} ({ENHANCERS.help(n)})" for n in ENHANCERS.names()))
MODEL_HELP = "Embedder. " + "; ".join(f"{n}: {EMBEDDERS.help(n)}" for n in EMBEDDERS.names())
DECISION_HELP = ("How labels are set. auto: calibrated if --used and --not-used are given, else reference if "
                 "--reference (or --not-used) is given, else fixed. " +
                 "; ".join(f"{n}: {DECIDERS.help(n)}" for n in DECIDERS.names()))

# Typer option declarations shared by several commands.
O_MODEL = typer.Option(Model("cnn"), "--model", "-m", help=MODEL_HELP, rich_help_panel="Embedding")
O_WEIGHTS = typer.Option(None, "--weights", "-w", help="selfsup (cnn: trained on the generated set at build time), "
                         "random (seeded), imagenet (resnet50; needs the torch cache or a network), none (pixels), "
                         "or a checkpoint path. Default: the model's own (cnn: selfsup, resnet50: imagenet).",
                         rich_help_panel="Embedding")
O_ENHANCE = typer.Option(None, "--enhance", "-e", help=ENHANCE_HELP + ". Default: none.", rich_help_panel="Embedding")
O_SIZE = typer.Option(None, "--image-size", min=32, help="Side of the square model input in px. Default: the "
                      "model's (64 for cnn, 128 for pixels, 224 for resnet50).", rich_help_panel="Embedding")
O_SEED = typer.Option(0, "--seed", help="Seed for random weights and every random choice.", rich_help_panel="Embedding")
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
O_K = typer.Option(10, "--k", "-k", min=1, help="Nearest generated images retrieved per real image.",
                   rich_help_panel="Decision")
O_DECISION = typer.Option(Method("auto"), "--decision", help=DECISION_HELP, rich_help_panel="Decision")
O_SCORE = typer.Option(Score("cosine"), "--score", help="Similarity that fixed and reference decisions use: top-1 "
                       "cosine, best SSIM or best Jaccard over the k neighbours.", rich_help_panel="Decision")
O_THRESHOLD = typer.Option(None, "--threshold", help="fixed: label used when score ≥ this (default cosine 0.90, "
                           "ssim 0.50, jaccard 0.60).", rich_help_panel="Decision")
O_ALPHA = typer.Option(0.05, "--alpha", min=0.0, max=1.0, help="reference: label used when p ≤ alpha.",
                       rich_help_panel="Decision")
O_USED = typer.Option(None, "--used", help="Real images known to be used in training (labelled, for calibration).",
                      rich_help_panel="Decision")
O_NOT_USED = typer.Option(None, "--not-used", help="Real images known not to be used (labelled, for calibration).",
                          rich_help_panel="Decision")
O_REFERENCE = typer.Option(None, "--reference", help="Real images known not to be used, to model the null when "
                           "no labelled pair is given.", rich_help_panel="Decision")
O_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or report; errors only.")
O_VERBOSE = typer.Option(False, "--verbose", "-v", help="Also print per-stage timings.")


def _embed_cfg(model, weights, enhance, image_size, seed, batch_size, device, precision=Precision("fp32"),
               workers=None, no_cache=False, cache_dir=None, train_steps=None) -> EmbedConfig:
    return EmbedConfig(model=model.value if isinstance(model, Enum) else model, weights=weights,
                       enhance=parse_enhance(enhance), image_size=image_size, seed=seed, batch_size=batch_size,
                       device=device.value if isinstance(device, Enum) else device,
                       precision=precision.value if isinstance(precision, Enum) else precision, workers=workers,
                       cache=not no_cache, cache_dir=str(cache_dir) if cache_dir else None, train_steps=train_steps)


O_PRESET = typer.Option(PresetName("default"), "--preset", help="Named settings; options given explicitly "
                        "override them. " + "; ".join(f"{n}: {PRESETS.help(n)}" for n in PRESETS.names()))

# CLI parameter name for each config field a preset may set.
_PARAM = {"model": "model", "weights": "weights", "enhance": "enhance", "image_size": "image_size",
          "method": "decision", "score": "score", "threshold": "threshold"}


def _apply_preset(ctx: typer.Context, name: Enum, embed: EmbedConfig, query: QueryConfig | None = None):
    """Preset values replace defaults, never options the user typed."""
    from dataclasses import replace

    preset = PRESETS.get(name.value)

    def typed(field: str) -> bool:
        source = ctx.get_parameter_source(_PARAM[field])
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    embed = replace(embed, **{k: v for k, v in preset.embed.items() if not typed(k)})
    if query is not None:
        query = replace(query, decide=replace(query.decide, **{k: v for k, v in preset.decide.items() if not typed(k)}))
    return embed, query


def _faiss_device(device) -> str:
    """For the commands that embed, --device says where torch runs; FAISS follows onto the GPU only when it has
    GPU support (faiss-cpu is the default install), so `--device cuda` never fails on FAISS's account."""
    d = device.value if isinstance(device, Enum) else device
    return "auto" if d == "cuda" else d


def _index_cfg(factory, max_memory, nprobe, ef_search, target_recall, device, seed) -> IndexConfig:
    from .index import parse_bytes

    return IndexConfig(factory=factory, max_memory=parse_bytes(max_memory), nprobe=nprobe, ef_search=ef_search,
                       target_recall=target_recall, device=device.value if isinstance(device, Enum) else device,
                       seed=seed)


def _query_cfg(k, decision, score, threshold, alpha, seed) -> QueryConfig:
    return QueryConfig(k=k, decide=DecideConfig(method=decision.value, score=score.value, threshold=threshold,
                                                alpha=alpha, seed=seed))


def _say(run: RunConfig, text: str = "") -> None:
    if not run.quiet:
        typer.echo(text)


def _report(run: RunConfig, out: Path, summary: dict[str, Any]) -> None:
    c, d = summary["counts"], summary["decision"]
    real = c["real"]
    _say(run, f"real images: {real['embedded']} scored, {real['bad']} unreadable; "
              f"generated images in index: {c['generated_indexed']}")
    _say(run, f"decision: {d['method']} → {c['predicted_used']} of {real['embedded']} labelled used")
    cv = d.get("cross_validation")
    if cv:
        _say(run, f"calibration ({cv['folds']}-fold CV on the labelled images): AUC {cv['auc']:.3f}, "
                  f"kappa {cv['kappa']:.3f}, F1 {cv['f1']:.3f}")
    _say(run, f"verdict: {summary['verdict']['text']}")
    for name, bad in summary.get("bad_files", {}).items():
        for b in bad[:5]:
            typer.echo(f"warning: skipped unreadable {name} image {b['path']}: {b['reason']}", err=True)
        if len(bad) > 5:
            typer.echo(f"warning: … and {len(bad) - 5} more (listed in summary.json)", err=True)
    if run.verbose:
        _say(run, "timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["timings"].items()))
    _say(run, f"wrote {out}/predictions.csv, submission.csv, neighbours.parquet, summary.json")


@app.command(epilog="Example: fpindex build data/generated --index indexes/gan-v1 --model cnn --enhance gaussian")
def build(
    ctx: typer.Context,
    generated: Path = typer.Argument(..., help="Folder of generated (synthetic) images; searched recursively."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index directory to write. "
                                         "Default: indexes/<name of GENERATED>."),
    add: bool = typer.Option(False, "--add", help="Append to an existing index (images already in it, by "
                             "content hash, are skipped; its embedding settings are reused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    model: Model = O_MODEL, weights: Optional[str] = O_WEIGHTS, enhance: Optional[list[str]] = O_ENHANCE,
    image_size: Optional[int] = O_SIZE, factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY,
    nprobe: Optional[int] = O_NPROBE, ef_search: Optional[int] = O_EF_SEARCH, target_recall: float = O_TARGET,
    save_embeddings: Optional[Path] = typer.Option(None, "--save-embeddings", help="Also write the vectors "
                                                   "embedded in this run to a .parquet (with items and embedder) "
                                                   "or .npy file, for `fpindex index-embeddings` or `fpindex shard`.",
                                                   rich_help_panel="Index"),
    seed: int = O_SEED,
    batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE, precision: Precision = O_PRECISION,
    workers: Optional[int] = O_WORKERS, no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR,
    train_steps: Optional[int] = O_TRAIN_STEPS,
    preset: PresetName = O_PRESET, quiet: bool = O_QUIET, verbose: bool = O_VERBOSE,
) -> None:
    """Embed a folder of generated images and write a FAISS index of them."""
    from .pipeline import build as run_build
    from .utils import Timings

    if add and overwrite:
        raise FpindexError("--add and --overwrite exclude each other")
    run = RunConfig(quiet=quiet, verbose=verbose)
    index = index or Path("indexes") / generated.resolve().name
    timings = Timings()
    if save_embeddings is not None:
        from .index.vectors import _kind

        _kind(save_embeddings)     # a bad file name fails now, not after embedding
    embed, _ = _apply_preset(ctx, preset, _embed_cfg(model, weights, enhance, image_size, seed, batch_size, device,
                                                     precision, workers, no_cache, cache_dir, train_steps))
    store, emb, summary = run_build(generated, index, embed,
                                    _index_cfg(factory, max_memory, nprobe, ef_search, target_recall,
                                               _faiss_device(device), seed),
                                    run, mode="add" if add else "overwrite" if overwrite else "new", timings=timings)
    if save_embeddings is not None:
        from .index import write_embeddings

        write_embeddings(save_embeddings, emb.vectors, emb.rows(), store.manifest["embedder"])
    for b in summary["bad_files"][:5]:
        typer.echo(f"warning: skipped unreadable image {b['path']}: {b['reason']}", err=True)
    e = summary["manifest"]["embedder"]
    _say(run, f"index {index}: {summary['ntotal']} vectors ({summary['added']} added, {len(summary['bad_files'])} "
              f"unreadable) · {e['model']} [{e['weights_id']}] · enhance {','.join(e['enhance'])} · "
              f"{e['dim']}-d · {summary['manifest']['factory']}")
    if verbose:
        _say(run, "timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.as_dict().items()))


@app.command(epilog="Example: fpindex query --index indexes/gan-v1 data/real --out results "
                    "--used data/train/used --not-used data/train/not_used")
def query(
    real: Path = typer.Argument(..., help="Folder of real images to test for membership."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory written by `fpindex build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    k: int = O_K, decision: Method = O_DECISION, score: Score = O_SCORE, threshold: Optional[float] = O_THRESHOLD,
    alpha: float = O_ALPHA, used: Optional[Path] = O_USED, not_used: Optional[Path] = O_NOT_USED,
    reference: Optional[Path] = O_REFERENCE,
    model: Optional[Model] = typer.Option(None, "--model", "-m", help="Only to assert the index's model; a "
                                          "different one is refused.", rich_help_panel="Embedding"),
    enhance: Optional[list[str]] = typer.Option(None, "--enhance", "-e", help="Only to assert the index's "
                                                "enhancement; a different one is refused.", rich_help_panel="Embedding"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="Override the index's stored nprobe "
                                         "for this query.", rich_help_panel="Index"),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", min=1, help="Override the index's stored "
                                            "efSearch for this query.", rich_help_panel="Index"),
    seed: int = O_SEED, batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE,
    workers: Optional[int] = O_WORKERS, no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR,
    quiet: bool = O_QUIET, verbose: bool = O_VERBOSE,
) -> None:
    """Score real images against an index: membership score and used/not-used label per image.

    The embedding settings are read from the index, so queries are always embedded like the index.
    """
    from .pipeline import query as run_query

    run = RunConfig(quiet=quiet, verbose=verbose)
    override = EmbedConfig(model=model.value if model else None, weights=None,  # type: ignore[arg-type]
                           enhance=parse_enhance(enhance) if enhance else (), batch_size=batch_size,
                           device=device.value, workers=workers, cache=not no_cache,
                           cache_dir=str(cache_dir) if cache_dir else None)
    from .index import IndexStore, faiss_device, search_overrides

    store = IndexStore.load(index, device=faiss_device(_faiss_device(device)))
    store.set_search_params(search_overrides(store.index, nprobe, ef_search), save=False)
    summary = run_query(store, real, out, _query_cfg(k, decision, score, threshold, alpha, seed), run,
                        embed_override=override, used=used, not_used=not_used, reference=reference)
    _report(run, out, summary)


@app.command(epilog="Example: fpindex audit --generated bench/generated --real bench/test --out results "
                    "--used bench/train/used --not-used bench/train/not_used")
def audit(
    ctx: typer.Context,
    generated: Path = typer.Option(..., "--generated", "-g", help="Folder of generated images."),
    real: Path = typer.Option(..., "--real", "-r", help="Folder of real images to test."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Where to write the index. Default: OUT/index."),
    used: Optional[Path] = O_USED, not_used: Optional[Path] = O_NOT_USED, reference: Optional[Path] = O_REFERENCE,
    model: Model = O_MODEL, weights: Optional[str] = O_WEIGHTS, enhance: Optional[list[str]] = O_ENHANCE,
    image_size: Optional[int] = O_SIZE, factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY,
    k: int = O_K, decision: Method = O_DECISION,
    score: Score = O_SCORE, threshold: Optional[float] = O_THRESHOLD, alpha: float = O_ALPHA, seed: int = O_SEED,
    batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE, precision: Precision = O_PRECISION,
    workers: Optional[int] = O_WORKERS, no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR,
    train_steps: Optional[int] = O_TRAIN_STEPS,
    preset: PresetName = O_PRESET, quiet: bool = O_QUIET, verbose: bool = O_VERBOSE,
) -> None:
    """Build an index of the generated images, then query it with the real ones, in one go."""
    from .pipeline import audit as run_audit

    run = RunConfig(quiet=quiet, verbose=verbose)
    embed, qcfg = _apply_preset(ctx, preset, _embed_cfg(model, weights, enhance, image_size, seed, batch_size, device,
                                                        precision, workers, no_cache, cache_dir, train_steps),
                                _query_cfg(k, decision, score, threshold, alpha, seed))
    summary = run_audit(generated, real, out, embed,
                        _index_cfg(factory, max_memory, None, None, 0.95, _faiss_device(device), seed),
                        qcfg, run,
                        index_dir=index, used=used, not_used=not_used, reference=reference)
    _report(run, out, summary)


@app.command(epilog="Example: fpindex evaluate results/predictions.csv bench/test_labels.csv")
def evaluate(
    predictions: Path = typer.Argument(..., help="predictions.csv written by query or audit."),
    labels: Path = typer.Argument(..., help="CSV with columns image,label (1 = used)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON result to this file."),
) -> None:
    """Accuracy, precision, recall, F1, kappa, ROC-AUC and TPR at 5% FPR, beside the all-used and all-not-used answers."""
    from .evaluate import evaluate_files, format_table
    from .utils import write_json_atomic

    result = evaluate_files(predictions, labels)
    if save:
        write_json_atomic(save, result)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"{result['n']} images matched ({result['positives']} used)")
    if result["unmatched_predictions"] or result["missing_predictions"]:
        typer.echo(f"warning: {len(result['unmatched_predictions'])} predictions without a label, "
                   f"{result['missing_predictions']} labels without a prediction", err=True)
    typer.echo(format_table(result))


@app.command(epilog="Example: fpindex demo --out /tmp/fpindex-demo")
def demo(
    out: Path = typer.Option(Path("fpindex-demo"), "--out", "-o", help="Folder for the demo data and results."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenario."),
    small: bool = typer.Option(False, "--small", help="A smaller scenario and fewer training steps, for a quick "
                               "check (the tests use it)."),
    quiet: bool = O_QUIET, verbose: bool = O_VERBOSE,
) -> None:
    """Make a small seeded leak scenario (no downloads), audit it with calibration, and evaluate the result."""
    from .demo import run_demo
    from .evaluate import format_table

    run = RunConfig(quiet=quiet, verbose=verbose)
    r = run_demo(out, seed=seed, small=small, run=run, on_scenario=lambda data: _say(
        run, f"demo scenario written to {data} (generated/, train/used, train/not_used, test/, test_labels.csv)"))
    _report(run, r.results, r.summary)
    _say(run, "\nevaluation on test/ (labels never seen by the audit):")
    _say(run, format_table(r.evaluation))


@app.command("index-embeddings", epilog="Example: fpindex index-embeddings emb.parquet --index indexes/big "
                                        "--index-type auto --max-memory 8G")
def index_embeddings_cmd(
    embeddings: Path = typer.Argument(..., help="A .parquet file from `fpindex build --save-embeddings` (or any "
                                      "n × d float32 .npy of L2-normalised vectors)."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    ef_search: Optional[int] = O_EF_SEARCH, target_recall: float = O_TARGET, seed: int = O_SEED,
    device: Device = O_DEVICE, quiet: bool = O_QUIET,
) -> None:
    """Index precomputed embeddings (the indexing stage alone), streaming the file batch by batch."""
    from .index import index_embeddings

    store = index_embeddings(embeddings, index, _index_cfg(factory, max_memory, nprobe, ef_search, target_recall,
                                                           device, seed), overwrite=overwrite)
    _say(RunConfig(quiet=quiet), _index_line(index, store))


def _index_line(index: Path, store) -> str:
    t = store.manifest.get("tuning") or {}
    tuned = (f" · {t['chosen']} (recall@{t['k']} {t['recall']:.3f} on {t['queries']} held-out queries)"
             if t.get("chosen") else "")
    return f"index {index}: {store.ntotal} vectors · {store.dim}-d · {store.manifest['factory']}{tuned}"


shard_app = typer.Typer(help="Build an IVF index in shards (separate processes or machines) and merge them with "
                        "on-disk inverted lists. Steps: train → add (once per part, anywhere) → merge.",
                        no_args_is_help=True)
app.add_typer(shard_app, name="shard")


@shard_app.command("train", epilog="Example: fpindex shard train emb.parquet --work shards/ --index-type auto")
def shard_train_cmd(
    embeddings: Path = typer.Argument(..., help="Embeddings file (.parquet or .npy)."),
    work: Path = typer.Option(..., "--work", help="Shared folder for the trained index, shards and plan."),
    factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    target_recall: float = O_TARGET, seed: int = O_SEED,
) -> None:
    """Train one empty IVF index on a seeded sample of the embeddings."""
    from .index import shard_train

    plan = shard_train(embeddings, work, _index_cfg(factory, max_memory, nprobe, None, target_recall, "cpu", seed))
    typer.echo(f"trained {plan['factory']} for {plan['n']:,} × {plan['dim']}-d in {work}")


@shard_app.command("add", epilog="Example: fpindex shard add --work shards/ --part 0 --parts 4")
def shard_add_cmd(
    work: Path = typer.Option(..., "--work", help="Folder written by `fpindex shard train`."),
    part: int = typer.Option(..., "--part", min=0, help="This shard's number, 0 … parts-1."),
    parts: int = typer.Option(..., "--parts", min=1, help="Number of shards."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="The embeddings file as seen from this "
                                              "machine. Default: the path recorded by `shard train`."),
) -> None:
    """Add one contiguous slice of the embeddings to a copy of the trained index."""
    from .index import shard_add

    typer.echo(f"wrote {shard_add(work, part, parts, embeddings)}")


@shard_app.command("merge", epilog="Example: fpindex shard merge --work shards/ --parts 4 --index indexes/big")
def shard_merge_cmd(
    work: Path = typer.Option(..., "--work", help="Folder with the trained index and every shard."),
    parts: int = typer.Option(..., "--parts", min=1, help="Number of shards."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
) -> None:
    """Merge the shards into one index whose inverted lists stay on disk (memory-mapped)."""
    from .index import shard_merge

    typer.echo(_index_line(index, shard_merge(work, index, parts, overwrite=overwrite)))


@app.command(epilog="Example: fpindex bench --n 1000000 --dim 256 --index-type auto --json")
def bench(
    n: int = typer.Option(100_000, "--n", min=1, help="Vectors in the database (with --embeddings: at most)."),
    dim: int = typer.Option(256, "--dim", min=2, help="Dimension of the synthetic vectors."),
    factory: str = O_FACTORY, k: int = typer.Option(10, "--k", "-k", min=1, help="Neighbours per query."),
    max_memory: Optional[str] = O_MAX_MEMORY, nprobe: Optional[int] = O_NPROBE,
    ef_search: Optional[int] = O_EF_SEARCH, target_recall: float = O_TARGET,
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Benchmark on real vectors from a "
                                              ".parquet/.npy embeddings file instead of synthetic ones."),
    queries: int = typer.Option(1000, "--queries", min=10, help="Held-out evaluation queries."),
    tune_queries: int = typer.Option(500, "--tune-queries", min=10, help="Held-out queries for tuning."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs after one warm-up; the median is kept."),
    single: int = typer.Option(200, "--single", min=1, help="Queries timed one at a time."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and samples."),
    device: Device = typer.Option(Device("cpu"), "--device", help="Where FAISS runs; auto picks a GPU when "
                                  "FAISS has GPU support and sees one."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON result to this file."),
) -> None:
    """Build an index on seeded synthetic (or real) vectors; time it and measure recall against exact search."""
    from .index import format_bytes, parse_bytes, run_bench
    from .utils import write_json_atomic

    r = run_bench(n, dim, factory, k=k, budget=parse_bytes(max_memory), n_eval=queries, n_tune=tune_queries,
                  seed=seed, embeddings=embeddings, repeats=repeats, n_single=single, device=device.value,
                  nprobe=nprobe, ef_search=ef_search, target=target_recall)
    if save:
        write_json_atomic(save, r)
    if as_json:
        typer.echo(json.dumps(r))
        return
    typer.echo(f"{r['factory']} · {r['n']:,} × {r['dim']}-d · {r['device']} · params {r['search_params']}\n"
               f"build {r['build_s']:.1f} s · index {format_bytes(r['index_bytes'])} · peak RSS "
               f"{format_bytes(r['peak_rss_bytes'])}\n"
               f"recall@1 {r['recall_at_1']:.3f} · recall@10 {r['recall_at_10']:.3f} · {r['qps']:,.0f} q/s batch, "
               f"{r['qps_single']:,.0f} q/s single · exact {r['exact_qps']:,.1f} q/s ({r['speedup_vs_exact']}×)")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpindex {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    try:
        app()
    except FpindexError as e:
        typer.echo(f"fpindex: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("fpindex: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
