"""What the package says about itself: its licence file, its test options (skip reasons shown, the slow marker)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:             # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_declared_licence_ships_as_a_file():
    """pyproject declares MIT; the licence text must exist and be shipped with the package (it did not exist)."""
    meta = project()["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_pytest_shows_skip_reasons_and_knows_the_slow_marker():
    """`make test` runs plain pytest: -rs in addopts says why a test skipped (no browser, no Ray), and `slow` is
    registered so `pytest -m "not slow"` selects the quick loop without a warning."""
    opts = project()["tool"]["pytest"]["ini_options"]
    assert "-rs" in opts["addopts"].split()
    assert any(m.startswith("slow:") for m in opts["markers"])
