"""Per-op tables (DESIGN: per-op behaviour lives in tables filled by a decorator)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

__all__ = ["registrar"]

F = TypeVar("F", bound=Callable)


def registrar(table: dict) -> Callable[..., Callable[[F], F]]:
    """A decorator factory: `@reg(key1, key2)` stores the decorated function under each key of `table`."""

    def register(*keys: Hashable) -> Callable[[F], F]:
        def store(fn: F) -> F:
            for key in keys:
                table[key] = fn
            return fn

        return store

    return register
