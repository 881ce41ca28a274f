"""Support modules: the demo scenario generator, the registry, configs, atomic writes and timers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fpindex.demo import ScenarioSize, make_scenario
from fpindex.load.tables import read_labels
from fpindex.errors import FpindexError
from fpindex.load import list_images, load_image
from fpindex.registry import Registry
from fpindex.utils import STAGES, Timings, atomic_dir, atomic_path, sha256_bytes, sha256_file, write_json_atomic

TINY = ScenarioSize(n_train_each=4, n_test_each=4, n_generated=6, replay_fraction=0.5, slices_per_patient=2, size=48)


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_scenario_layout_and_labels(scenario, helpers):
    size = helpers.SMALL
    assert len(list_images(scenario / "generated")) == size.n_generated
    assert len(list_images(scenario / "train" / "used")) == size.n_train_each
    assert len(list_images(scenario / "train" / "not_used")) == size.n_train_each
    test = list_images(scenario / "test")
    labels = read_labels(scenario / "test_labels.csv")
    assert sorted(labels) == [p.stem for p in test]
    assert sum(labels.values()) == size.n_test_each and len(labels) == 2 * size.n_test_each
    img, _ = load_image(test[0], size.size)
    assert img.shape == (size.size, size.size) and 0 <= img.min() and img.max() <= 1 and img.std() > 0.05


def test_scenario_is_deterministic_per_seed(tmp_path):
    a = tree(make_scenario(tmp_path / "a", seed=3, size=TINY))
    b = tree(make_scenario(tmp_path / "b", seed=3, size=TINY))
    c = tree(make_scenario(tmp_path / "c", seed=4, size=TINY))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_registry():
    r: Registry[int] = Registry("thing")
    r.register("one", "the first")(1)

    @r.register("two")
    def two():
        """Second thing.

        More text."""

    assert r.names() == ["one", "two"] and list(r) == ["one", "two"] and "one" in r and "three" not in r
    assert r.get("one") == 1 and r.help("one") == "the first" and r.help("two") == "Second thing."
    with pytest.raises(FpindexError, match="unknown thing 'three'; choose one of: one, two"):
        r.get("three")
    with pytest.raises(ValueError, match="^thing 'one' registered twice$"):
        r.register("one")(2)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="^crash$"):       # the caller's own error, passed through
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    write_json_atomic(target, {"a": np.float32(1.5), "b": np.arange(2), "c": tmp_path})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1], "c": str(tmp_path)}


def test_atomic_dir_swaps_whole_or_nothing(tmp_path):
    d = tmp_path / "d"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError, match="^crash$"):
        with atomic_dir(d) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("crash")
    assert sorted(os.listdir(d)) == ["a"] and os.listdir(tmp_path) == ["d"]
    with atomic_dir(d) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(os.listdir(d)) == ["c"] and os.listdir(tmp_path) == ["d"]


def test_hashes(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"   # SHA-256("abc")
    assert sha256_bytes(b"abc") == expected == sha256_file(tmp_path / "x", chunk=2)


def test_timings_accumulate_per_stage_on_a_fake_clock(monkeypatch):
    """Stages add up, every stage is listed (in order) even when unused, total is time since creation; the
    clock is a fake one, so nothing here depends on how fast the machine is."""
    import types

    import fpindex.utils as utils

    now = [100.0]
    monkeypatch.setattr(utils, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    t = Timings()
    with t.stage("embed"):
        now[0] += 2.0
    now[0] += 1.0                                  # between stages: counted in total only
    with t.stage("embed"):
        now[0] += 0.5
    with pytest.raises(RuntimeError, match="^inside$"):
        with t.stage("write"):                     # a stage that fails still records its time
            now[0] += 0.25
            raise RuntimeError("inside")
    t.add("search", 0.5)
    t.add("search", 0.25)
    d = t.as_dict()
    assert list(d) == [*STAGES, "total"]
    assert d["embed"] == 2.5 and d["write"] == 0.25 and d["search"] == 0.75
    assert all(d[s] == 0.0 for s in STAGES if s not in ("embed", "write", "search"))
    assert d["total"] == 3.75
    # A stage inside another pauses it: each second is counted once.
    with t.stage("index"):
        now[0] += 1.0
        with t.stage("load"):
            now[0] += 0.5
        now[0] += 0.25
    d = t.as_dict()
    assert d["index"] == 1.25 and d["load"] == 0.5 and d["total"] == 5.5


def test_available_memory_falls_back_to_sysconf_without_proc(monkeypatch):
    """Where /proc/meminfo cannot be read (macOS, a sandbox), the sysconf fallback answers (it once raised
    NameError: `os` was not imported)."""
    import builtins

    from fpindex.utils import available_memory

    real_open = builtins.open

    def no_proc(path, *a, **kw):
        if str(path) == "/proc/meminfo":
            raise OSError("no /proc here")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", no_proc)
    n = available_memory()
    assert n is None or (isinstance(n, int) and n > 0)
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        assert n == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
