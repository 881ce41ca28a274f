"""With --json, stdout carries the JSON document and nothing else.

Why: Ray (and any library) may write to file descriptor 1 from threads or child processes (`(raylet) …`
lines), which no Python-level redirect catches; a script reading stdout would get a broken document. So for
the command's run fd 1 points at stderr, and the document is written to the original stdout, saved aside."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import typer

_document_fd: int | None = None


@contextlib.contextmanager
def stdout_for_json(active: bool) -> Iterator[None]:
    global _document_fd
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # captured (tests) or replaced: nothing else writes to it
        fd = None
    if not active or fd != 1:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _document_fd = saved
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        _document_fd = None


def echo_json(text: str) -> None:
    """The JSON document, on the real stdout."""
    if _document_fd is None:
        typer.echo(text)
        return
    data = (text + "\n").encode()
    while data:
        data = data[os.write(_document_fd, data):]
