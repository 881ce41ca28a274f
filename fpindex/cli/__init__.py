"""The `fpindex` command line: argument parsing and printing around the public API (fpindex/api.py).

Every choice list comes from a registry; bad input → one line `fpindex: error: …`, exit 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from .._version import __version__
from ..errors import FpindexError, FpindexWarning
from ..release import check_policy
from ..safeio import shown
from . import index_commands, release_commands, simulate_commands
from .checks import canaries_unplanted, report_target
from .release_commands import O_FAIL_ON, Policy
from .summary_lines import finish, write_html, print_summary, say, warn_skipped
from .streams import echo_json, stdout_for_json
from .help import App
from .options import (FIELDS, O_ALPHA, O_AXIS, O_BATCH, O_CACHE_DIR, O_DECISION, O_DEVICE, O_EF_SEARCH,
                      O_ENHANCE, O_FACTORY, O_K, O_MAX_MEMORY, O_SCREEN, O_MODEL, O_NO_CACHE, O_NOT_USED, O_NPROBE,
                      O_PRECISION, O_PRESET, O_QUIET, O_REFERENCE, O_SCORE, O_SEED, O_SIZE, O_TARGET, O_THRESHOLD,
                      O_TRAIN_STEPS, O_USED, O_VERBOSE, O_VERIFY, O_WEIGHTS, O_WINDOW, O_WORKERS, Device, Method,
                      Model, O_ADDRESS, O_ENGINE, O_HTML, O_JSON, O_MAX_PIXELS, O_TOP, Engine, PresetName, Precision,
                      Score, config_from, typed_embedding, O_CANARIES, O_CANARY_KINDS, O_GROUPS, Kind)
from .options import O_FINETUNE

app = App(
    name="fpindex",
    help="Audit synthetic medical images for training-data leakage.\n\n"
         "Index generated images, query real images against them, and say which real images were very "
         "probably used to train the generator.\n\n"
         "Quick look: fpindex demo",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _params(local: dict[str, Any]) -> dict[str, Any]:
    """A command's option values that map onto config fields."""
    return {k: v for k, v in local.items() if k in FIELDS}


def _unmatched(result: dict[str, Any]) -> None:
    """What evaluate and report --labels say when names in the two files do not all meet (a typo, a folder)."""
    if result["unmatched_predictions"] or result["missing_predictions"]:
        typer.echo(f"warning: {len(result['unmatched_predictions'])} predictions without a label, "
                   f"{result['missing_predictions']} labels without a prediction", err=True)


@app.command(epilog="Example (on `fpindex demo`'s data): fpindex build fpindex-demo/data/generated --index indexes/demo-gan "
                    "--save-embeddings emb.parquet")
def build(
    ctx: typer.Context,
    generated: Path = typer.Argument(..., help="Folder of generated (synthetic) images; searched recursively."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Index directory to write. "
                                         "Default: indexes/<name of GENERATED>."),
    add: bool = typer.Option(False, "--add", help="Append to an existing index (images already in it, by "
                             "content hash, are skipped; its embedding settings are reused; what was fitted on "
                             "the generated set and the search parameters are refitted on the whole index)."),
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
    train_steps: Optional[int] = O_TRAIN_STEPS, finetune: Optional[int] = O_FINETUNE,
    window: Optional[str] = O_WINDOW, axis: int = O_AXIS,
    max_pixels: int = O_MAX_PIXELS, preset: PresetName = O_PRESET, engine: Engine = O_ENGINE,
    address: Optional[str] = O_ADDRESS, quiet: bool = O_QUIET, verbose: bool = O_VERBOSE, verify: bool = O_VERIFY,
) -> None:
    """Embed a folder of generated images and write a FAISS index of them."""
    from ..api import build_index
    from ..index.vectors import embeddings_kind, write_embeddings

    index = index or Path("indexes") / generated.resolve().name
    if save_embeddings is not None:
        embeddings_kind(save_embeddings)     # a bad file name fails now, not after embedding
    params = _params(locals())
    built = build_index(generated, index, config_from(ctx, preset, **params), add=add, overwrite=overwrite,
                        expect=typed_embedding(ctx, **params) if add else None)
    summary = built.build_summary
    if save_embeddings is not None:
        emb = built.embedded
        write_embeddings(save_embeddings, emb.vectors, emb.rows(), built.manifest["embedder"])
    for b in summary["bad_files"][:5]:
        warn_skipped(b)
    e = built.manifest["embedder"]
    say(quiet, f"index {index}: {summary['ntotal']} vectors ({summary['added']} added, "
                f"{len(summary['bad_files'])} unreadable) · {e['model']} [{e['weights_id']}] · enhance "
                f"{','.join(e['enhance'])} · {e['dim']}-d · {built.manifest['factory']}")
    if verbose:
        say(quiet, "timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in built.timings.as_dict().items()))


@app.command(epilog="Example (on `fpindex demo`'s data): fpindex query fpindex-demo/data/test --index indexes/demo-gan "
                    "--out results-query --used fpindex-demo/data/train/used --not-used fpindex-demo/data/train/not_used")
def query(
    ctx: typer.Context,
    real: Path = typer.Argument(..., help="Folder of real images to test for membership."),
    index: Path = typer.Option(..., "--index", "-i", help="Index directory written by `fpindex build`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    k: int = O_K, screen: Optional[int] = O_SCREEN, decision: Method = O_DECISION, score: Score = O_SCORE,
    threshold: Optional[float] = O_THRESHOLD,
    alpha: float = O_ALPHA, used: Optional[Path] = O_USED, not_used: Optional[Path] = O_NOT_USED,
    reference: Optional[Path] = O_REFERENCE, groups: Optional[Path] = O_GROUPS, canaries: int = O_CANARIES,
    canary_kinds: Optional[list[Kind]] = O_CANARY_KINDS,
    model: Optional[Model] = typer.Option(None, "--model", "-m", help="Only to assert the index's model; a "
                                          "different one is refused.", callback=O_MODEL.callback,
                                          metavar=O_MODEL.metavar, rich_help_panel="Embedding"),
    enhance: Optional[list[str]] = typer.Option(None, "--enhance", "-e", help="Only to assert the index's "
                                                "enhancement; a different one is refused.", rich_help_panel="Embedding"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="Override the index's stored nprobe "
                                         "for this query.", rich_help_panel="Index"),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", min=1, help="Override the index's stored "
                                            "efSearch for this query.", rich_help_panel="Index"),
    seed: int = O_SEED, batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE,
    workers: Optional[int] = O_WORKERS, no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR,
    max_pixels: int = O_MAX_PIXELS, engine: Engine = O_ENGINE, address: Optional[str] = O_ADDRESS,
    quiet: bool = O_QUIET, verbose: bool = O_VERBOSE, as_json: bool = O_JSON,
    html: bool = O_HTML, report_top: int = O_TOP, verify: bool = O_VERIFY, fail_on: Policy = O_FAIL_ON,
) -> None:
    """Score real images against an index: membership score and used/not-used label per image.

    The embedding settings are read from the index, so queries are always embedded like the index.
    """
    from ..api import open_index
    from ..enhance import parse_enhance

    params = {n: v for n, v in _params(locals()).items() if n not in ("model", "enhance", "nprobe", "ef_search")}
    expect = {"model": model or None, "enhance": list(parse_enhance(enhance)) if enhance else None}
    report_target(html, out)
    check_policy(Policy(fail_on).value, decision.value if decision else None)
    idx = open_index(index, config_from(ctx, **params), nprobe=nprobe, ef_search=ef_search, expect=expect)
    result = idx.query(real, used=used, not_used=not_used, reference=reference, out=out)
    canaries_unplanted(ctx, canaries, result.summary)
    finish(quiet, verbose, as_json, html, report_top, out, result.summary, Policy(fail_on).value)


@app.command(epilog="Example (on `fpindex demo`'s data): fpindex audit --generated fpindex-demo/data/generated --real "
                    "fpindex-demo/data/test --out results --used fpindex-demo/data/train/used --not-used fpindex-demo/data/train/not_used")
def audit(
    ctx: typer.Context,
    generated: Path = typer.Option(..., "--generated", "-g", help="Folder of generated images."),
    real: Path = typer.Option(..., "--real", "-r", help="Folder of real images to test."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    index: Optional[Path] = typer.Option(None, "--index", "-i", help="Where to write the index. Default: "
                                         "OUT/index. An existing index elsewhere is replaced only with --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the index given with --index if it exists."),
    used: Optional[Path] = O_USED, not_used: Optional[Path] = O_NOT_USED, reference: Optional[Path] = O_REFERENCE,
    groups: Optional[Path] = O_GROUPS, model: Model = O_MODEL, weights: Optional[str] = O_WEIGHTS,
    enhance: Optional[list[str]] = O_ENHANCE,
    image_size: Optional[int] = O_SIZE, factory: str = O_FACTORY, max_memory: Optional[str] = O_MAX_MEMORY,
    k: int = O_K, screen: Optional[int] = O_SCREEN, decision: Method = O_DECISION,
    score: Score = O_SCORE, threshold: Optional[float] = O_THRESHOLD, alpha: float = O_ALPHA,
    canaries: int = O_CANARIES, canary_kinds: Optional[list[Kind]] = O_CANARY_KINDS, seed: int = O_SEED,
    batch_size: Optional[int] = O_BATCH, device: Device = O_DEVICE, precision: Precision = O_PRECISION,
    workers: Optional[int] = O_WORKERS, no_cache: bool = O_NO_CACHE, cache_dir: Optional[Path] = O_CACHE_DIR,
    train_steps: Optional[int] = O_TRAIN_STEPS, finetune: Optional[int] = O_FINETUNE,
    window: Optional[str] = O_WINDOW, axis: int = O_AXIS,
    max_pixels: int = O_MAX_PIXELS, preset: PresetName = O_PRESET, engine: Engine = O_ENGINE,
    address: Optional[str] = O_ADDRESS, quiet: bool = O_QUIET, verbose: bool = O_VERBOSE, as_json: bool = O_JSON,
    html: bool = O_HTML, report_top: int = O_TOP, fail_on: Policy = O_FAIL_ON,
) -> None:
    """Build an index of the generated images, then query it with the real ones, in one go."""
    from ..api import audit as run_audit

    report_target(html, out)
    check_policy(Policy(fail_on).value, decision.value if decision else None)
    result = run_audit(generated, real, used=used, not_used=not_used, reference=reference,
                       config=config_from(ctx, preset, **_params(locals())), out=out, index_dir=index,
                       overwrite=overwrite)
    canaries_unplanted(ctx, canaries, result.summary)
    finish(quiet, verbose, as_json, html, report_top, out, result.summary, Policy(fail_on).value)


@app.command(epilog="Example: fpindex evaluate results/predictions.csv fpindex-demo/data/test_labels.csv")
def evaluate(
    predictions: Path = typer.Argument(..., help="predictions.csv written by query or audit."),
    labels: Path = typer.Argument(..., help="CSV with columns image,label (1 = used)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON result to this file."),
) -> None:
    """Accuracy, precision, recall, F1, kappa, ROC-AUC and TPR at 5% FPR, beside the all-used and all-not-used answers."""
    from ..evaluate import evaluate_files, format_table
    from ..safeio import same_json_keys, write_json_atomic

    result = evaluate_files(predictions, labels)
    if save:        # replaces only an earlier evaluation: a file of the same shape
        write_json_atomic(save, result, owned=same_json_keys(result))
    if as_json:
        echo_json(json.dumps(result, indent=2))
        return
    typer.echo(f"{result['n']} images matched ({result['positives']} used)")
    _unmatched(result)
    typer.echo(format_table(result))


@app.command(epilog="Example: fpindex demo --small --out fpindex-demo")
def demo(
    out: Path = typer.Option(Path("fpindex-demo"), "--out", "-o", help="Folder for the demo data and results."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenario."),
    small: bool = typer.Option(False, "--small", help="A smaller scenario and fewer training steps, for a quick "
                               "check (the tests use it)."),
    report_top: int = O_TOP, quiet: bool = O_QUIET, verbose: bool = O_VERBOSE,
) -> None:
    """Make a small seeded leak scenario (no downloads), audit it with calibration, and evaluate the result."""
    from ..config import RunConfig
    from ..demo import run_demo
    from ..evaluate import format_table

    r = run_demo(out, seed=seed, small=small, run=RunConfig(quiet=quiet, verbose=verbose), on_scenario=lambda data: say(
        quiet, f"demo scenario written to {data} (generated/, train/used, train/not_used, test/, test_labels.csv)"))
    print_summary(quiet, verbose, r.results, r.summary)
    page = write_html(r.results, report_top, labels=r.data / "test_labels.csv", evaluation=r.evaluation)
    say(quiet, f"report: {page}")
    say(quiet, "\nevaluation on test/ (labels never seen by the audit):")
    say(quiet, format_table(r.evaluation))


@app.command(epilog="Example: fpindex report results --labels fpindex-demo/data/test_labels.csv")
def report(
    out: Path = typer.Argument(..., help="Output folder of `fpindex audit` or `fpindex query`."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV image,label (1 = used): evaluate the "
                                          "predictions against it, split the score plot and draw the ROC curve."),
    report_top: int = O_TOP,
    quiet: bool = O_QUIET,
) -> None:
    """Write OUT/report.html: verdict, score plots, the most suspicious images beside their neighbours with
    every evidence score, weights, settings, and a sortable table of all real images. Needs no network."""
    evaluation = None
    if labels is not None:
        from ..evaluate import evaluate_files
        from ..report.html import read_outputs

        read_outputs(out)                 # a missing or damaged OUT is named before the labels are read
        evaluation = evaluate_files(out / "predictions.csv", labels)
        _unmatched(evaluation)
    page = write_html(out, report_top, labels=labels, evaluation=evaluation)
    say(quiet, f"wrote {page}")


index_commands.register(app)
simulate_commands.register(app)
release_commands.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpindex {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fpindex's own warnings as one line, like its errors; others keep Python's format."""
    if issubclass(category, FpindexWarning):
        typer.echo(shown(f"fpindex: warning: {message}"), err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main() -> None:
    """Every failure ends in one line on stderr and a non-zero exit: fpindex's own errors, click's usage errors
    (which it would otherwise draw as a box), and errors of the system (a disk full, a file that vanished)."""
    click = sys.modules[typer.BadParameter.__module__]   # click's exceptions, whether typer vendors click or not
    no_args = getattr(click, "NoArgsIsHelpError", ())

    with warnings.catch_warnings():          # restores Python's hook on the way out (tests call main() in-process)
        warnings.showwarning = _warning
        with stdout_for_json(_wants_json(sys.argv[1:])):
            _run(click, no_args)


def _run(click, no_args) -> None:
    as_json = _wants_json(sys.argv[1:])
    try:
        code = app(standalone_mode=False)
    except no_args as e:
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        where = f" (see {e.ctx.command_path} --help)" if isinstance(e, click.UsageError) and e.ctx else ""
        _fail(f"{e.format_message()}{where}", 2, as_json)
    except FpindexError as e:
        _fail(str(e), 2, as_json)
    except OSError as e:
        what = f"{e.filename}: " if e.filename else ""
        _fail(f"{what}{e.strerror or e}", 2, as_json)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("fpindex: interrupted", err=True)
        if as_json:
            echo_json(json.dumps({"error": "interrupted", "exit_code": 130}))
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _wants_json(args: list[str]) -> bool:
    return "--json" in args[: args.index("--") if "--" in args else len(args)]


def _fail(message: str, code: int, as_json: bool) -> None:
    """One line on stderr; with --json also `{"error": …, "exit_code": …}` on stdout, so a script reading
    stdout learns why there is no result."""
    typer.echo(shown(f"fpindex: error: {message}"), err=True)
    if as_json:
        echo_json(json.dumps({"error": shown(message), "exit_code": code}))
    sys.exit(code)


if __name__ == "__main__":
    main()
