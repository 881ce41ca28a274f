"""SIGKILL a `build` and an `audit` at chosen moments, including inside the swap, and check that what is at the
path is the complete old or the complete new state, and that the next run cleans up after the killed one.

The moments are chosen with the test-only hook FPINDEX_TEST_PAUSE=<point> (safeio.py `pause_for_tests`):
the process prints `fpindex-test-pause <point>` and sleeps there, and the test kills it. One more kill comes
at a seeded random delay, wherever the process happens to be.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fpindex import audit, build_index
from fpindex.config import AuditConfig, EvidenceConfig
from fpindex.index import IndexStore
from fpindex.report.html import read_outputs
from fpindex.safeio import exchange_supported

pytestmark = pytest.mark.slow      # SIGKILLed subprocesses: minutes, run by make test and CI

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image-size", "64", "--device", "cpu", "--no-cache", "-q", "--model", "cnn", "--weights", "random",
        "--factory", "Flat"]
OLD, NEW = 5, 7                      # generated images in the old and in the new state


@pytest.fixture(scope="module")
def data(tmp_path_factory, helpers):
    root = tmp_path_factory.mktemp("kill")
    for name, n in (("old", OLD), ("new", NEW)):
        for i in range(n):
            helpers.write_png(root / name / f"g{i}.png", helpers.smooth_image(i))
    for i in range(3):
        helpers.write_png(root / "real" / f"r{i}.png", helpers.smooth_image(100 + i))
    return root


def cfg(helpers) -> AuditConfig:
    """The in-process equivalent of FAST (the CLI's run replaces what this one wrote)."""
    return helpers.CFG.override(embed={"cache": False}, evidence={"k": 2})


def killed(args: list[str], pause: str | None, delay: float | None = None) -> str:
    """Run the CLI; SIGKILL it at the pause point (or after `delay` seconds). Returns its stderr so far."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("FPINDEX_TEST_PAUSE", None)
    if pause:
        env["FPINDEX_TEST_PAUSE"] = pause
    proc = subprocess.Popen([sys.executable, "-m", "fpindex.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(180, proc.kill)              # never hang the suite if the point is not reached
    guard.start()
    seen = []
    try:
        if delay is not None:
            time.sleep(delay)
        else:
            for line in proc.stderr:
                seen.append(line)
                if line.strip() == f"fpindex-test-pause {pause}":
                    break
            else:
                pytest.fail(f"exited ({proc.wait()}) without reaching {pause}: {''.join(seen)[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        guard.cancel()
        proc.stderr.close()
    return "".join(seen)


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("pause, expect", [("staged", OLD), ("swap", NEW), (None, None)])
def test_killed_build_leaves_a_complete_index(data, helpers, tmp_path, pause, expect):
    if pause == "swap" and not exchange_supported(tmp_path):
        expect = OLD                                     # renamed aside, then put back by the next run
    idx = tmp_path / "idx"
    build_index(data / "old", idx, cfg(helpers))
    delay = random.Random(0).uniform(1.0, 4.0) if pause is None else None
    killed(["build", str(data / "new"), "--index", str(idx), "--overwrite", *FAST], pause, delay)
    if pause is not None:
        assert leftovers(tmp_path, "idx"), "the kill left the temporary it was working on"
    store = IndexStore.load(idx)                        # the next run: finishes or undoes the swap, cleans up
    assert store.ntotal == expect if expect else store.ntotal in (OLD, NEW)
    assert len(store.search(store.reconstruct([0]), 1)[1]) == 1
    assert leftovers(tmp_path, "idx") == []
    assert build_index(data / "new", idx, cfg(helpers), overwrite=True).ntotal == NEW


@pytest.mark.parametrize("pause, expect", [("outputs-staged", OLD), ("rename", NEW), ("swap", OLD)])
def test_killed_audit_leaves_complete_outputs(data, helpers, tmp_path, pause, expect):
    out = tmp_path / "out"
    audit(data / "old", data / "real", config=cfg(helpers), out=out)
    killed(["audit", "-g", str(data / "new"), "-r", str(data / "real"), "--out", str(out), "--k", "2", *FAST], pause)
    o = read_outputs(out)                                # the next reader: finishes a commit cut short
    assert o.summary["counts"]["generated_indexed"] == expect
    assert len(o.predictions) == 3 and len(o.neighbours) == 3 * 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".fpindex-tmp")]
    index = IndexStore.load(out / "index")               # the index was replaced whole before the outputs
    assert index.ntotal == (NEW if pause != "swap" or exchange_supported(tmp_path) else OLD)
    again = audit(data / "new", data / "real", config=cfg(helpers), out=out)
    assert read_outputs(out).summary["run_id"] == again.summary["run_id"]
