"""Choosing an engine: bad choices fail in one line before any work, and without Ray it is never imported."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fpindex.cli import app
from fpindex.config import RunConfig
from fpindex.engine import LocalEngine, check_address, engine_for
from fpindex.errors import FpindexError


@pytest.mark.slow
def test_local_is_the_default_and_imports_no_ray():
    assert engine_for(RunConfig()) is LocalEngine
    code = ("import sys, fpindex.pipeline, fpindex.cli; from fpindex.engine import engine_for; "
            "from fpindex.config import RunConfig; engine_for(RunConfig()); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379", "head.example:6379", "ray://head:10001",
                                     "[::1]:6379", None])
def test_good_addresses(address):
    assert check_address(address) == address


@pytest.mark.parametrize("address", ["", "head", "head:", "head:0", "head:70000", "http://head:6379", "a b:1"])
def test_bad_addresses_are_refused(address):
    with pytest.raises(FpindexError, match="--address"):
        check_address(address)


def test_bad_choices_are_refused():
    with pytest.raises(FpindexError, match="unknown engine 'spark'"):
        engine_for(RunConfig(engine="spark"))
    with pytest.raises(FpindexError, match="--address is for --engine ray"):
        engine_for(RunConfig(address="auto"))
    with pytest.raises(FpindexError, match="--address 'nowhere'"):
        engine_for(RunConfig(engine="ray", address="nowhere"))


def test_ray_missing_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("ray") else real(name, *a))
    with pytest.raises(FpindexError) as e:
        engine_for(RunConfig(engine="ray"))
    assert str(e.value) == "Ray is not installed: pip install 'fpindex[ray]'"


def test_cli_refuses_a_bad_address_before_reading_anything(tmp_path):
    r = CliRunner().invoke(app, ["build", str(tmp_path / "missing"), "--engine", "ray", "--address", "x:y"])
    assert isinstance(r.exception, FpindexError) and "--address 'x:y'" in str(r.exception)
