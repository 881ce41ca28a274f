"""Checks the command line makes around a run: refusals that must come before the work, and settings the
run could not honour, said instead of ignored."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ..report.schema import Summary


def report_target(html: bool, out: Path) -> None:
    """With --report, a report.html or report_files/ in OUT that fpindex did not write is refused before the
    audit, not after it."""
    if html:
        from ..report.html import check_target

        check_target(out)


def canaries_unplanted(ctx: typer.Context, n: int, summary: Summary) -> None:
    """--canaries N given on the command line but nothing planted (a decision without known-unused images
    to plant from, e.g. `fixed`): one warning line instead of silence."""
    source = ctx.get_parameter_source("canaries")
    given = source is not None and source.name != "DEFAULT"
    if given and n > 0 and summary.canaries is None:
        method = summary.decision.method
        typer.echo(f"fpindex: warning: --canaries {n}: no canaries planted: the {method} decision has no "
                   "known-unused images to plant them from (give --not-used or --reference)", err=True)
