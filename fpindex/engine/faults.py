"""A test-only fault: a Ray worker that dies once, so the tests see Ray retry it (tests/test_ray.py)."""

from __future__ import annotations

import os

CRASH_ENV = "FPINDEX_TEST_CRASH_ONCE"   # tests only: a worker that finds this file removes it and dies once


def crash_once_for_tests() -> None:
    """Kill this worker process the first time a test asks for it, so Ray's retry is what the test sees."""
    path = os.environ.get(CRASH_ENV)
    if not path:
        return
    try:
        os.rename(path, path + ".done")      # atomic: only one worker wins
    except OSError:
        return
    os._exit(1)


__all__ = ["CRASH_ENV", "crash_once_for_tests"]
