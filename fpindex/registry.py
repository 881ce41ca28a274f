"""A tiny name → implementation registry; the CLI's choices are read from these.

An entry can be declared before its implementation is imported (`declare`): its name, help and metadata are
known at once, and the module that registers it is imported on first `get`. That is what lets the command
line list every model without importing torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import FpindexError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._module: dict[str, str] = {}        # declared, implemented in this module (imported on first get)

    def declare(self, name: str, module: str, help: str, **meta: Any) -> None:
        """A built-in whose implementation, in `module`, is imported only when it is used."""
        if name in self._help:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._module[name], self._help[name], self._meta[name] = module, help, meta

    def register(self, name: str, help: str = "", **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items or (name in self._help and name not in self._module):
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            if name not in self._module:   # a declared entry keeps its declared help and metadata
                self._help[name] = help or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]
                self._meta[name] = meta
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """For plug-ins registered for a while (a test's toy feature); unknown names are refused."""
        self.get(name)
        del self._items[name], self._help[name], self._meta[name]
        self._module.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items and name in self._module:
            importlib.import_module(self._module[name])
        try:
            return self._items[name]
        except KeyError:
            raise FpindexError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._help)

    def help(self, name: str) -> str:
        return self._help[name]

    def meta(self, name: str) -> dict[str, Any]:
        """What was declared beside the help (e.g. a model's default size); read without importing it."""
        self.check(name)
        return self._meta[name]

    def check(self, name: str) -> str:
        if name not in self._help:
            raise FpindexError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._help

    def __iter__(self) -> Iterator[str]:
        return iter(self._help)
