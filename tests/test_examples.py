"""Every example a user is shown runs as written on the demo's output: the `Example:` of each command's
--help (the demo's first), the README's command blocks marked `<!-- example -->`, and docs/api.md's Python
blocks, in order, in one folder where `fpindex demo --small --out fpindex-demo` ran. Minutes: marked slow."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _examples() -> dict[str, str]:
    """command path → its help example (without the leading `fpindex`)."""
    import typer

    from fpindex.cli import app

    found = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        m = re.search(r"Example[^:]*: fpindex (.+)$", cmd.epilog or "", re.S)
        if m:
            found[path] = " ".join(m[1].split())
    walk(typer.main.get_command(app), "")
    return found


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fpindex.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])


@pytest.fixture(scope="module")
def demo_once(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("examples")
    example = _examples()["demo"]
    assert example == "demo --small --out fpindex-demo"
    _run(shlex.split(example), work)
    return work / "fpindex-demo"


@pytest.fixture
def demo(demo_once, tmp_path) -> Path:
    """A folder holding a fresh copy of the demo's output, as if the user had just run it there."""
    import shutil

    shutil.copytree(demo_once, tmp_path / "fpindex-demo", symlinks=True)
    return tmp_path


def test_every_help_example_runs_on_the_demo_output(demo):
    examples = _examples()
    order = ["build", "query", "audit", "filter", "evaluate", "report", "index-embeddings", "shard train",
             "shard add", "shard merge", "simulate", "sensitivity", "bench"]
    assert sorted(examples) == sorted(order + ["demo"])        # a new command's example joins this list
    for name in order:
        args = shlex.split(examples[name])
        _run(args, demo)
        if name == "shard add":                                   # "once per part": the other part too
            _run([("1" if a == "0" else a) for a in args], demo)
    assert (demo / "results" / "report.html").is_file() and (demo / "indexes" / "merged").is_dir()


def test_the_readme_command_examples_run_on_the_demo_output(demo, tmp_path_factory):
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```bash\n", 1)[1].split("```", 1)[0] for b in text.split("<!-- example -->")[1:]]
    assert len(blocks) == 2
    shims = tmp_path_factory.mktemp("bin")
    for name, target in {"fpindex": f'"{sys.executable}" -m fpindex.cli', "python": f'"{sys.executable}"'}.items():
        (shims / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (shims / name).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{shims}:{os.environ['PATH']}"}
    for block in blocks:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=demo, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (block, proc.stderr[-2000:])
    assert "leakage" in proc.stdout                                # the verdict read back from audit.json


def test_the_api_doc_examples_run_on_the_demo_output(demo):
    text = (ROOT / "docs" / "api.md").read_text()
    code = "\n".join(b.split("```", 1)[0] for b in text.split("```python\n")[1:])
    proc = subprocess.run([sys.executable, "-c", code], cwd=demo, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (demo / "sens-py" / "sensitivity.json").is_file() and (demo / "fpindex-demo" / "audit" / "report.html").is_file()
