"""A small named registry used for every pluggable kind (ops, op sets, spaces, genotypes, weightings...).

Registering a name twice raises (the sharpDARTS reference silently overwrote ``flood_conv_3x3`` in a dict
literal), and a lookup miss lists the known names so a typo is a one-line fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(KeyError):
    """A registry lookup missed. ``str(err)`` names the kind, the value and the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects of one kind.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"op"``, ``"search space"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Adds ``obj`` under ``name``; raises ``ValueError`` if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} name {name!r}: each {self.kind} is registered once")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Removes ``name`` (a test that registers a plug-in of its own takes it away again)."""
        self.get(name)
        del self._items[name]

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def wrap(obj: T) -> T:
            return self.register(name, obj)

        return wrap

    def get(self, name: str) -> T:
        """Returns the object named ``name``; raises ``UnknownNameError`` listing the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {sorted(self._items)}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
