"""What a data steward runs after an audit: the release gate's option (`--fail-on`, read by audit and query)
and `fpindex filter`, which writes the generated set without its copies into a new folder (release.py)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..decide.replication import GRADES
from ..release import EXIT_GATE, POLICIES

Policy = Enum("Policy", {p: p for p in POLICIES}, type=str)     # choices from release.POLICIES
O_FAIL_ON = typer.Option(Policy.never.value, "--fail-on",
                         help=f"Release gate: exit {EXIT_GATE} with a one-line reason (also in --json) when the "
                              "policy is violated. copies: any generated image graded a copy of a real image; "
                              "leakage: the set-level verdict shows leakage; never: always exit 0.")


def register(app: typer.Typer) -> None:
    @app.command("filter", epilog="Example (on `fpindex demo`'s data): fpindex filter fpindex-demo/data/generated "
                                  "--audit results --into released")
    def filter_command(
        generated: Path = typer.Argument(..., help="The generated-image folder that was audited (only read)."),
        audit: Path = typer.Option(..., "--audit", "-a", help="Output folder of the audit (its generated.parquet)."),
        into: Path = typer.Option(..., "--into", help="New folder for the filtered set; must not exist."),
        grade: Optional[list[str]] = typer.Option(None, "--grade", help="Grades to withhold (repeat the option). "
                                                  "Default: every copy grade: " + ", ".join(GRADES) + "."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    ) -> None:
        """Write the generated set without the images the audit graded as copies into a NEW folder (hard links
        where possible, else copies), with withheld.csv saying which and why; the original is never touched."""
        from ..release import WITHHELD, filter_generated

        withheld = filter_generated(generated, audit, into, tuple(grade) if grade else GRADES)
        if not quiet:
            typer.echo(f"withheld {len(withheld)} generated image(s) graded a copy; wrote {into} "
                       f"(see {into / WITHHELD})")
