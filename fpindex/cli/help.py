"""How `--help` reads: the common path on one screen, the rest behind `--help-all`.

Typer's renderer is adjusted in one place, for every command: flags show no `<bool>` value (`--small true`
is an error), arguments appear in the usage line as `REAL`, not `{real}`, and help texts are shown as written
(rich markup would swallow `[ray]` in `pip install 'fpindex[ray]'`)."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import typer
from typer.core import TyperCommand

from ..embed.base import model_choices
from ..enhance import ENHANCERS

HELP_ALL = "--help-all"

# Options most audits never set: listed by --help-all only. Everything else stays on the first screen.
ADVANCED = {"weights", "image_size", "factory", "max_memory", "nprobe", "ef_search", "target_recall",
            "save_embeddings", "seed", "batch_size", "device", "precision", "workers", "no_cache", "cache_dir",
            "train_steps", "finetune", "axis", "max_pixels", "preset", "engine", "address", "verify", "k", "screen", "score",
            "threshold", "alpha", "canaries", "canary_kinds", "report_top", "window", "fail_on", "groups"}
ADVANCED_IN = {"audit": {"index", "overwrite"},       # common elsewhere (build, query), rare here
               "query": {"model", "enhance"}}          # query only asserts them: the index decides
# Options whose full help lists every choice with its meaning: one line on the first screen, all of it with
# --help-all (the choices themselves are in the type column either way).
SHORT = {
    "model": f"Embedder: {', '.join(model_choices())}. Default cnn: a compact CNN trained on the generated "
             "images at build time. torchscript runs the graph in --weights FILE: use only files you trust.",
    "enhance": f"Enhancement filter(s): {', '.join(ENHANCERS.names())}; stacked as channels, repeat the option "
               "or use commas. Default: none.",
    "decision": "How labels are set. auto: calibrated with --used and --not-used, else pu with --reference "
                "(or --not-used), else fixed.",
}


def _markup(command: "Command") -> bool:
    """Whether this help goes through rich's markup (typer with rich installed, markup mode "rich")."""
    return bool(getattr(typer.core, "HAS_RICH", False)) and command.rich_markup_mode == "rich"


@contextlib.contextmanager
def _shown(command: "Command", ctx: Any, everything: bool) -> Iterator[int]:
    """Set the attributes the renderer reads for this one rendering; yields how many options it hides."""
    saved = []
    hidden = 0
    if _markup(command):
        from rich.markup import escape

        def _escape(text: Any) -> Any:
            return escape(text) if isinstance(text, str) else text
    else:
        def _escape(text: Any) -> Any:
            return text

    def put(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    for p in command.get_params(ctx):
        if getattr(p, "is_flag", False) and p.metavar is None:
            put(p, "metavar", "")                              # a flag takes no value: show none
        if isinstance(p, typer.core.TyperArgument) and p.metavar is None:
            put(p, "metavar", p.name.upper())
        if (p.name in ADVANCED or p.name in ADVANCED_IN.get(command.name, ())) and not p.hidden and not everything:
            put(p, "hidden", True)
            hidden += 1
        short = SHORT.get(p.name) if not everything and isinstance(p, typer.core.TyperOption) else None
        put(p, "help", _escape(short or p.help))
    put(command, "help", _escape(command.help))
    epilog = command.epilog or ""
    if hidden:
        epilog += f"\n\n{hidden} more options, and every choice explained: {ctx.command_path} {HELP_ALL}"
    put(command, "epilog", _escape(epilog) or None)
    try:
        yield hidden
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


class Command(TyperCommand):
    """Every fpindex command: the help adjustments of this module, and `--help-all`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        if HELP_ALL in args[:cut]:
            ctx.meta[HELP_ALL] = True
            args = [a for a in args[:cut] if a != HELP_ALL] + ["--help"] + args[cut:]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _shown(self, ctx, bool(ctx.meta.get(HELP_ALL))):
            super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """Required arguments as `NAME`, not `{name}`: the braces read like a placeholder syntax to type."""
        return [re.sub(r"^\{(.*)\}$", r"\1", p) for p in super().collect_usage_pieces(ctx)]


class App(typer.Typer):
    """A Typer app whose commands are `Command`s."""

    def command(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
