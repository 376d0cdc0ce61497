"""One small name -> object registry, shared by losses, advantages, rewards,
engines, datasets and benchmarks.

Names are short and stable (they appear in recipes); registering a name twice is
a programming error, and looking up an unknown name is a user error that lists
the valid names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mhpo_vl.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from short names to objects of one kind (``kind`` names it in errors)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(item: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ``UserError`` (a ``ValueError``) listing
        the valid names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UserError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._items))}"
            ) from None

    def check(self, key: str, name: object) -> None:
        """A ``UserError`` naming the recipe ``key`` unless ``name`` is registered."""
        if name not in self._items:
            raise UserError(f"{key}: unknown name {name!r}; valid: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


def call_with(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` it accepts (used for optional context args)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
