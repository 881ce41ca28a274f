"""Hangs and stray output (issue 23): an address nothing answers on is refused in seconds, naming it, and
with --json stdout holds the JSON document only, whatever else writes to file descriptor 1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fpindex.engine.ray_engine import probe
from fpindex.errors import FpindexError


def test_an_address_nothing_answers_on_is_refused_in_seconds():
    t0 = time.monotonic()
    with pytest.raises(FpindexError, match=r"^cannot reach the Ray cluster at 127\.0\.0\.1:1 within 2 s: "):
        probe("127.0.0.1:1", timeout=2)
    with pytest.raises(FpindexError, match=r"at ray://127\.0\.0\.1:1 within"):
        probe("ray://127.0.0.1:1", timeout=2)
    assert time.monotonic() - t0 < 5
    with socket.socket() as s:                    # something listening: probed, then left to Ray
        s.bind(("127.0.0.1", 0))
        s.listen()
        probe(f"127.0.0.1:{s.getsockname()[1]}", timeout=2)
    probe("auto") and probe(None)


def test_json_stdout_is_the_document_only(tmp_path):
    (tmp_path / "p.csv").write_text("image,score,label\na.png,0.9,1\nb.png,0.1,0\n")
    (tmp_path / "l.csv").write_text("image,label\na.png,1\nb.png,0\n")
    script = (
        "import os, sys\n"
        "import fpindex.evaluate as ev\n"
        "orig = ev.evaluate_files\n"
        "def noisy(*a, **k):\n"
        "    os.write(1, b'(raylet) a line from another process\\n')\n"
        "    print('(raylet) printed')\n"
        "    return orig(*a, **k)\n"
        "ev.evaluate_files = noisy\n"
        "from fpindex.cli import main\n"
        f"sys.argv = ['fpindex', 'evaluate', {str(tmp_path / 'p.csv')!r}, {str(tmp_path / 'l.csv')!r}, '--json']\n"
        "main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 2
    assert "(raylet) a line from another process" in r.stderr and "(raylet) printed" in r.stderr
