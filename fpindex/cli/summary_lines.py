"""What audit, query and demo print: the summary's lines for a person, or one JSON document, then the report
and the release gate's answer (release.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .streams import echo_json

if TYPE_CHECKING:
    from ..report.schema import Summary


def say(quiet: bool, text: str = "") -> None:
    if not quiet:
        typer.echo(text)


def warn_skipped(bad: dict[str, str], folder: str = "") -> None:
    """One warning per skipped file, saying whether it is not an image at all or an image that failed."""
    what = "file (not an image)" if bad["reason"].startswith("unsupported file type") else "unreadable image"
    typer.echo(f"warning: skipped {folder}{what} {bad['path']}: {bad['reason']}", err=True)


def write_html(out: Path, top: int, labels: Optional[Path] = None, evaluation: Optional[dict] = None) -> Path:
    from ..report.html import write_report

    return write_report(out, top=top, labels=labels, evaluation=evaluation)


def finish(quiet: bool, verbose: bool, as_json: bool, html: bool, top: int, out: Path,
            summary: Summary, fail_on: str = "never") -> None:
    """What audit and query print: the human lines, or one JSON document (with the gate's answer); then the
    report when asked; then the release gate: a violated policy exits 3 with one line saying why."""
    from ..release import EXIT_GATE, release_gate
    from ..utils import json_default

    gate = release_gate(summary, fail_on)
    print_summary(quiet or as_json, verbose, out, summary)
    if html:
        page = write_html(out, top)
        if not quiet:
            typer.echo(f"report: {page}", err=as_json)
    if as_json:
        echo_json(json.dumps(summary.to_dict() | {"gate": gate.as_dict()}, indent=2, default=json_default))
    if not gate.passed:
        typer.echo(f"fpindex: release gate (--fail-on {fail_on}) failed: {gate.reason}", err=True)
        raise typer.Exit(EXIT_GATE)


def print_summary(quiet: bool, verbose: bool, out: Path, summary: Summary) -> None:
    c, d = summary.counts, summary.decision.details
    real = c.real
    say(quiet, f"real images: {real.embedded} scored, {real.bad} unreadable; "
                f"generated images in index: {c.generated_indexed}")
    say(quiet, f"decision: {summary.decision.method} → {c.predicted_used} of {real.embedded} labelled used")
    cv = d.get("cross_validation")
    if cv:
        say(quiet, f"calibration ({cv['folds']}-fold CV on the labelled images): AUC {cv['auc']:.3f}, "
                    f"kappa {cv['kappa']:.3f}, F1 {cv['f1']:.3f}")
    say(quiet, f"verdict: {summary.verdict.text}")
    g = summary.generated
    if g is not None:
        grades = ", ".join(f"{n} {grade}" for grade, n in g.grades.items() if n)
        say(quiet, f"generated images: {g.graded} among the real images' neighbours ({grades or 'none graded'}); "
                    f"{g.withhold} to withhold (generated.parquet)")
    copy = d.get("copy_channel")
    if copy and "labelled_by" in copy:
        by = copy["labelled_by"]
        say(quiet, f"labelled by: the fused score {by['fused']}, the copy channel ({', '.join(copy['features'])}) "
                    f"{by['copy']}, both {by['both']}")
    patients = summary.patients or {}
    if patients.get("known"):
        say(quiet, f"patients: {patients['verdict']['text']}")
    _canaries(quiet, summary.canaries)
    for name, bad in summary.bad_files.items():
        for b in bad[:5]:
            warn_skipped(b, f"{name} ")
        if len(bad) > 5:
            typer.echo(f"warning: … and {len(bad) - 5} more (listed in summary.json)", err=True)
    if verbose:
        say(quiet, "timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary.timings.items()))
    from ..report.outputs import OUTPUTS       # imported here: `fpindex --help` loads no report

    say(quiet, f"wrote {out}/" + ", ".join(OUTPUTS))


def _canaries(quiet: bool, c: Optional[dict[str, Any]]) -> None:
    """One line per plant kind: how many of its canaries the audit would have flagged, per strength."""
    if not c or not c.get("table"):
        return
    folder = c["source_folder"].replace("_", "-")
    say(quiet, f"canaries ({c['n_sources']} {folder} images; found = {c['criterion']}):")
    by: dict[str, list[str]] = {}
    for t in c["table"]:
        at = "" if t["kind"] == "exact" else f"{t['strength']:g}: "
        by.setdefault(t["kind"], []).append(f"{at}{t['found']}/{t['planted']}")
    for kind, cells in by.items():
        unit = c["kinds"][kind]["unit"]
        say(quiet, f"  would have flagged {kind}{'' if kind == 'exact' else f' ({unit})'}: {', '.join(cells)}")
