"""Package attributes imported on first use, so that `import fpindex` (and the command line's --help) does not
import torch, FAISS or pandas before a command needs them. One owner for the three packages that do it."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_attributes(package: str, where: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where` maps a name to the module defining it (relative to the
    package, e.g. ".api"); the value is imported once and kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        namespace[name] = value
        return value

    return __getattr__
