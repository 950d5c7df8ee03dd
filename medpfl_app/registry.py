"""A tiny name → factory registry shared by networks, attacks, defenses and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medpfl_app.errors import MedPFLError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes or factories) so configuration can refer to them by name.

    Args:
        kind: What is registered ("network", "attack", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, key: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``key``; a duplicate key is a programming error."""

        def decorator(target: T) -> T:
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = target
            return target

        return decorator

    def get(self, key: str) -> T:
        """Look up ``key``; an unknown name raises a `MedPFLError` listing the known ones."""
        try:
            return self._entries[key]
        except KeyError:
            raise MedPFLError(
                f"unknown {self.kind} {key!r}",
                fix=f"use one of: {', '.join(sorted(self._entries))}",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
