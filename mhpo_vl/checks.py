"""Valid values as data: small check objects a table can hold.

Each check has ``describe()`` (the valid values in words) and ``problem(value)`` (None,
or the second half of a one-line error: ``must be > 0, got -1``). The recipe's table of
them is :data:`mhpo_vl.config.CHECKS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """A finite number within ``low``/``high`` (closed ends unless ``*_open``); with
    ``none_ok``, ``None`` (the field's "off" or "automatic" value) is valid too."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False

    def bounds(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_fmt(lo)}, {_fmt(hi)}{right}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {_fmt(hi)}"
        return ""

    def describe(self) -> str:
        text = self.bounds() or "a finite number"
        return f"None or {text}" if self.none_ok else text

    def _within(self, x: float) -> bool:
        lo, hi = self.low, self.high
        above = lo is None or (x > lo if self.low_open else x >= lo)
        below = hi is None or (x < hi if self.high_open else x <= hi)
        return above and below

    def problem(self, value: Any) -> str | None:
        if value is None and self.none_ok:
            return None
        if not is_number(value) or not math.isfinite(value):
            return f"must be a finite number {self.bounds()}".rstrip() + f", got {value!r}"
        if not self._within(value):
            return f"must be {self.describe()}, got {value!r}"
        return None


@dataclass(frozen=True)
class OneOf:
    """One of a few names; ``choices`` may be a function (a lazy import)."""

    choices: tuple[str, ...] | Callable[[], Iterable[str]]

    def describe(self) -> str:
        return "one of " + ", ".join(self.names())

    def names(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> str | None:
        names = self.names()
        return None if value in names else f"unknown {value!r}; valid: {', '.join(names)}"


@dataclass(frozen=True)
class Length:
    """A list with at least ``low`` (and at most ``high``) items."""

    low: int
    high: int | None = None

    def describe(self) -> str:
        if self.high == self.low:
            return f"exactly {self.low} values"
        return f"at least {self.low} entr{'y' if self.low == 1 else 'ies'}" + (
            f" and at most {self.high}" if self.high is not None else ""
        )

    def problem(self, value: Any) -> str | None:
        n = len(value)
        if n < self.low or (self.high is not None and n > self.high):
            return f"must list {self.describe()}, got {value!r}"
        return None


Check = Range | OneOf | Length


def at_least(low: float, *, none_ok: bool = False) -> Range:
    return Range(low=low, none_ok=none_ok)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


SEED = Range(0, 2**32 - 1)
FRACTION = Range(0, 1)
COUNT = at_least(1)
OPTIONAL_COUNT = at_least(1, none_ok=True)
