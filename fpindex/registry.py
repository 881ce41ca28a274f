"""A tiny name → implementation registry; the CLI's choices are read from these."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import FpindexError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            self._help[name] = help or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """For plug-ins registered for a while (a test's toy feature); unknown names are refused."""
        self.get(name)
        del self._items[name], self._help[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise FpindexError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def help(self, name: str) -> str:
        return self._help[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
