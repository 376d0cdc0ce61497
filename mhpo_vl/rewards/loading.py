"""Load rewards by name or from a user file, and score a batch with weighted parts.

A reward spec is a registered name (``accuracy``, ``math_answer``, ...) or a user
function ``path/to/file.py:function`` with the verifier signature
``fn(response: str, row: Mapping) -> float``. User functions run in a worker process
with a time bound (``isolate=True``, the default; the row travels without its images)
or in-process (``isolate=False``); either way an exception, a timeout or a value that
is not a finite number (NaN, inf, None, a string) scores 0.0 and is counted: in
:func:`reward_stats` (cumulative, logged by the trainer) and per call of
:func:`score_rewards` (the trainer stops a run whose rewards fail too often).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
from mhpo_vl.rewards.targets import resolve_target
from mhpo_vl.rewards.verifiers import REWARDS, RewardFn

USER_TIMEOUT = 10.0  # seconds per call of an isolated user reward

log = logging.getLogger(__name__)
_STATS: dict[str, dict[str, int]] = {}
_STATS_LOCK = threading.Lock()
_LOADED: dict[str, RewardFn] = {}


def reward_stats() -> dict[str, dict[str, int]]:
    """Per reward name: ``calls`` and ``failures`` (exceptions, timeouts, bad values)."""
    with _STATS_LOCK:
        return {name: dict(s) for name, s in _STATS.items()}


def _count(name: str, failed: bool, why: str = "") -> None:
    with _STATS_LOCK:
        stats = _STATS.setdefault(name, {"calls": 0, "failures": 0})
        stats["calls"] += 1
        if failed:
            stats["failures"] += 1
            if stats["failures"] <= 5 or stats["failures"] % 1000 == 0:
                log.warning("reward %s failed (%d so far): %s", name, stats["failures"], why)


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if depth > 3:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _as_score(value: Any) -> float | None:
    """A finite real number as a float; None for anything else (strings included: a
    reward that returns "1.0" has a bug worth seeing)."""
    if not isinstance(value, numbers.Real):
        return None
    score = float(value)
    return score if math.isfinite(score) else None


class UserReward:
    """A user reward function wrapped so that it never raises and never hangs."""

    def __init__(self, name: str, target: str, fn: RewardFn, isolate: bool, timeout: float):
        self.name = name
        self.target = target  # "/abs/path/file.py:function", resolved again in the worker
        self._fn = fn
        self.isolate = isolate
        self.timeout = timeout

    def __call__(self, response: str, row: Mapping[str, Any]) -> float:
        """The score, or 0.0 for a failed call (counted in :func:`reward_stats`)."""
        score, why = self.judge(response, row)
        _count(self.name, score is None, why)
        return 0.0 if score is None else score

    def judge(self, response: str, row: Mapping[str, Any]) -> tuple[float | None, str]:
        """``(score, "")``, or ``(None, why)`` when the call failed."""
        if self.isolate:
            from mhpo_vl.rewards.workers import default_pool

            sent = {k: v for k, v in row.items() if _plain(v)}
            status, value = default_pool().call_status(self.target, (response, sent), self.timeout)
            why = {
                "ok": "",
                "timeout": f"took over {self.timeout:g} s (killed)",
            }.get(status, str(value))
            if status != "ok":
                value = None
        else:
            try:
                value, why = self._fn(response, row), ""
            except Exception as exc:  # the user's bug scores 0, counted and logged
                value, why = None, f"{type(exc).__name__}: {exc}"
        score = _as_score(value)
        return score, "" if score is not None else (why or f"returned {value!r:.200}")


def _load_user(spec: str, isolate: bool, timeout: float) -> UserReward:
    file, _, function = spec.rpartition(":")
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"reward file not found: {file} (from reward {spec!r})")
    target = f"{path}:{function}"
    try:
        fn = resolve_target(target) if function else None
    except AttributeError:
        fn = None
    except Exception as exc:  # the user's module failed to import: say which and why
        raise UserError(f"cannot import reward file {file}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise UserError(f"reward function {function!r} not found in {file} (from reward {spec!r})")
    return UserReward(reward_name(spec), target, fn, isolate, timeout)


def load_reward(spec: str, isolate: bool = True, timeout: float = USER_TIMEOUT) -> RewardFn:
    """A reward function from a registered name or ``path/to/file.py:function``.

    Unknown names and missing files or functions raise :class:`UserError` naming them.
    """
    spec = str(spec).strip()
    key = f"{spec}|{isolate}|{timeout}"
    if key not in _LOADED:
        file = spec.rpartition(":")[0]
        if file.endswith(".py") or "/" in spec:
            _LOADED[key] = _load_user(spec, isolate, timeout)
        else:
            _LOADED[key] = REWARDS.get(spec)
    return _LOADED[key]


def reward_name(spec: str) -> str:
    """The name a reward's part is logged under: the registered name, or
    ``file.py:function`` for a user function."""
    spec = str(spec).strip()
    return Path(spec).name if ("/" in spec or ".py:" in spec) else spec


def score_rewards(
    specs: Sequence[tuple[str, float]],
    responses: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    failures: dict[str, tuple[int, str]] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total reward per response and each named part (unweighted).

    ``specs`` are ``(name or path:function, weight)``; response ``i`` is scored against
    ``rows[i]`` (repeat a row G times for a group). Returns ``(total_B, parts)`` with
    ``parts[name]`` a list of B floats. A failed call scores 0.0; if ``failures`` is
    given it receives, per reward that failed, ``(count, first failure's description)``.
    """
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses but {len(rows)} rows")
    total = [0.0] * len(responses)
    parts: dict[str, list[float]] = {}
    for spec, weight in specs:
        name = reward_name(spec)
        if name in parts:
            raise UserError(f"reward {name!r} is listed twice")
        fn = load_reward(spec)
        values, whys = [], []
        for i, (response, row) in enumerate(zip(responses, rows, strict=True)):
            value, why = _call_safely(name, fn, response, row)
            values.append(value)
            if why is not None:
                whys.append(f"row {row.get('id', i)!r}: {why}")
        if whys and failures is not None:
            failures[name] = (len(whys), whys[0])
        parts[name] = values
        total = [t + float(weight) * v for t, v in zip(total, values, strict=True)]
    return total, parts


def _call_safely(
    name: str, fn: RewardFn, response: str, row: Mapping[str, Any]
) -> tuple[float, str | None]:
    """``(score, None)``, or ``(0.0, why)`` for a call that failed (counted and logged)."""
    score: float | None = None
    try:
        if isinstance(fn, UserReward):
            score, why = fn.judge(response, row)
        else:
            value = fn(response, row)
            score = _as_score(value)
            why = "" if score is not None else f"returned {value!r:.200}"
    except Exception as exc:  # a built-in raising means it cannot judge (VerifierUnavailable)
        why = f"{type(exc).__name__}: {exc}"
    _count(name, score is None, why)
    return (0.0, why) if score is None else (score, None)


def check_section(rewards: Sequence[Any]) -> None:
    """Check the recipe's ``rewards`` list: each name loads (registered or ``file.py:fn``)."""
    for i, spec in enumerate(rewards):
        try:
            load_reward(spec.name)
        except UserError as exc:
            raise UserError(f"rewards[{i}].name: {exc}") from None
