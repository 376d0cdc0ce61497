"""Load rewards by name or from a user file, and score a batch with weighted parts.

A reward spec is a registered name (``accuracy``, ``math_answer``, ...) or a user
function ``path/to/file.py:function`` with the verifier signature
``fn(response: str, row: Mapping) -> float``. User functions run in a worker process
with a time bound (``isolate=True``, the default; the row travels without its images)
or in-process (``isolate=False``); either way an exception, a timeout or a value that
is not a finite number (NaN, inf, None, a string, a tensor of more than a number)
scores 0.0 and is counted: in :func:`reward_stats` (cumulative, logged by the trainer)
and per call of :func:`score_rewards` (the trainer stops a run whose rewards fail too
often). A 0-d tensor or a numpy scalar counts as its number (:mod:`.values`).

Training scores each step under one deadline (:func:`score_rewards` with
``step_timeout``); its docstring says which rewards run where, and why.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
from mhpo_vl.rewards.extract import unread_answer
from mhpo_vl.rewards.targets import resolve_target
from mhpo_vl.rewards.values import plain, to_score
from mhpo_vl.rewards.verifiers import CHEAP_REWARDS, READS_ANSWER, REWARDS, RewardFn
from mhpo_vl.rewards.workers import CUT_OFF, Call, default_pool, step_pool

USER_TIMEOUT = 10.0  # seconds per call of an isolated user reward
# seconds per call of a built-in reward in a step's worker: generous, since math-verify
# already stops each of its checks at 5 s and a response gets a few checks at most
BUILTIN_TIMEOUT = 30.0
MAX_IDS_LOGGED = 20  # prompt ids named in the warning about a step's cut-off calls
CUT_OFF_WHY = "cut off at the step deadline"

log = logging.getLogger(__name__)
_STATS: dict[str, dict[str, int]] = {}
_STATS_LOCK = threading.Lock()
_LOADED: dict[str, RewardFn] = {}
Verdict = tuple[float | None, str]  # (score, "") or (None, why the call failed)


def reward_stats() -> dict[str, dict[str, int]]:
    """Per reward name: ``calls``, ``failures`` (exceptions, timeouts, bad values and
    calls cut off at a step's deadline), ``cut_off`` (those last ones) and ``refused``
    (responses scored 0 because their answer lies outside what is read, see
    :func:`~mhpo_vl.rewards.extract.unread_answer`: a verdict, not a failure)."""
    with _STATS_LOCK:
        return {name: dict(s) for name, s in _STATS.items()}


def _stats(name: str) -> dict[str, int]:
    return _STATS.setdefault(name, {"calls": 0, "failures": 0, "cut_off": 0, "refused": 0})


def _count(name: str, failed: bool, why: str = "", cut_off: bool = False) -> None:
    with _STATS_LOCK:
        stats = _stats(name)
        stats["calls"] += 1
        stats["cut_off"] += cut_off
        if failed:
            stats["failures"] += 1
            if not cut_off and (stats["failures"] <= 5 or stats["failures"] % 1000 == 0):
                log.warning("reward %s failed (%d so far): %s", name, stats["failures"], why)


def _count_refusal(name: str, response: str, score: float | None) -> None:
    """Count a 0 from a reward that reads answers when the response's answer was not
    read (:func:`~mhpo_vl.rewards.extract.unread_answer`), saying why in the log."""
    if score != 0.0 or name not in READS_ANSWER:
        return
    why = unread_answer(response)
    if why is None:
        return
    with _STATS_LOCK:
        stats = _stats(name)
        stats["refused"] += 1
        if stats["refused"] <= 5 or stats["refused"] % 1000 == 0:
            log.warning("reward %s refused a response (%d so far): %s", name, stats["refused"], why)


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

    def judge(self, response: str, row: Mapping[str, Any]) -> Verdict:
        """``(score, "")``, or ``(None, why)`` when the call failed."""
        if not self.isolate:
            try:
                return to_score(self._fn(response, row))
            except Exception as exc:  # the user's bug scores 0, counted and logged
                return None, f"{type(exc).__name__}: {exc}"
        status, value = default_pool().call_status(
            self.target, (response, sendable(row)), self.timeout
        )
        return to_score(value) if status == "ok" else (None, self.why(status, value))

    def why(self, status: str, value: Any) -> str:
        """The description of a worker call that returned no value."""
        return f"took over {self.timeout:g} s (killed)" if status == "timeout" else str(value)


def sendable(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's plain fields (no images): what a worker receives."""
    return {k: v for k, v in row.items() if plain(v)}


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
    step_timeout: float | None = None,
    workers: int = 2,
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total reward per response and each named part (unweighted).

    ``specs`` are ``(name or path:function, weight)``; response ``i`` is scored against
    ``rows[i]`` (repeat a row G times for a group). Returns ``(total_B, parts)`` with
    ``parts[name]`` a list of B floats. A failed call scores 0.0; if ``failures`` is
    given it receives, per reward that failed, ``(count, first failure's description)``.

    Without ``step_timeout`` every call is made here, one after the other (a user
    reward each in a worker with its own bound): for tools and tests. With it (the
    trainer's ``trainer.reward_step_timeout``) all calls share one deadline,
    ``step_timeout`` seconds from now (:func:`_score_step`).
    """
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses but {len(rows)} rows")
    loaded: dict[str, RewardFn] = {}
    for spec, _ in specs:
        name = reward_name(spec)
        if name in loaded:
            raise UserError(f"reward {name!r} is listed twice")
        loaded[name] = load_reward(spec)
    if step_timeout is None:
        verdicts = {
            name: [_call_safely(fn, r, row) for r, row in zip(responses, rows, strict=True)]
            for name, fn in loaded.items()
        }
    else:
        verdicts = _score_step(loaded, responses, rows, step_timeout, workers)
    total = [0.0] * len(responses)
    parts: dict[str, list[float]] = {}
    for spec, weight in specs:
        name = reward_name(spec)
        parts[name] = _record(name, verdicts[name], responses, rows, failures)
        total = [t + float(weight) * v for t, v in zip(total, parts[name], strict=True)]
    return total, parts


def _record(
    name: str,
    found: list[Verdict],
    responses: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    failures: dict[str, tuple[int, str]] | None,
) -> list[float]:
    """Count one reward's verdicts (failures, cut-offs, refusals); its scores, 0.0 for
    a failed call."""
    whys = []
    for i, (score, why) in enumerate(found):
        _count(name, score is None, why, cut_off=why.startswith(CUT_OFF_WHY))
        _count_refusal(name, responses[i], score)
        if score is None:
            whys.append(f"row {rows[i].get('id', i)!r}: {why}")
    if whys and failures is not None:
        failures[name] = (len(whys), whys[0])
    return [0.0 if score is None else score for score, _ in found]


def _call_safely(fn: RewardFn, response: str, row: Mapping[str, Any]) -> Verdict:
    """One call in this process (a user reward's own worker aside), never raising."""
    try:
        if isinstance(fn, UserReward):
            return fn.judge(response, row)
        return to_score(fn(response, row))
    except Exception as exc:  # a built-in raising means it cannot judge (VerifierUnavailable)
        return None, f"{type(exc).__name__}: {exc}"


def _score_step(
    loaded: Mapping[str, RewardFn],
    responses: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    step_timeout: float,
    workers: int,
) -> dict[str, list[Verdict]]:
    """Every reward's verdicts under one deadline, ``step_timeout`` seconds from now.

    Where each call runs (:func:`_worker_target`): a reward that may hang (math-verify,
    any user code) in the ``workers`` processes of a step pool, all calls at once,
    killed at the deadline, so the step's reward time is bounded whatever a response
    holds; a call still running then is cut off: it scores 0, is counted and its
    prompt is named in the log. Only rewards that cannot hang run here: the cheap
    built-ins (:data:`~mhpo_vl.rewards.verifiers.CHEAP_REWARDS`, linear string checks)
    and a user reward loaded with ``isolate=False`` (its author's choice, unbounded).
    """
    deadline = time.monotonic() + step_timeout
    verdicts: dict[str, list[Verdict]] = {}
    calls: list[Call] = []
    owners: list[tuple[str, int]] = []
    sent = _sendable_rows(rows)
    for name, fn in loaded.items():
        target = _worker_target(fn)
        if target is None:
            verdicts[name] = [
                _call_safely(fn, r, row) for r, row in zip(responses, rows, strict=True)
            ]
            continue
        verdicts[name] = [(None, "")] * len(responses)
        timeout = fn.timeout if isinstance(fn, UserReward) else BUILTIN_TIMEOUT
        calls += [Call(target, (r, s), timeout) for r, s in zip(responses, sent, strict=True)]
        owners += [(name, i) for i in range(len(responses))]
    if not calls:
        return verdicts
    results = step_pool(workers).run(calls, deadline)
    for (name, i), call, (status, value) in zip(owners, calls, results, strict=True):
        verdicts[name][i] = _from_worker(status, value, call.timeout, step_timeout)
    _log_cut_offs(owners, results, rows, step_timeout)
    return verdicts


def _sendable_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`sendable` of each row, one dict per distinct row object (a group's G
    responses share theirs, so it is pickled once per message)."""
    made: dict[int, dict[str, Any]] = {}
    return [made.setdefault(id(row), sendable(row)) for row in rows]


def _from_worker(status: str, value: Any, timeout: float, step_timeout: float) -> Verdict:
    if status == "ok":
        return to_score(value)
    if status == "timeout":
        return None, f"took over {timeout:g} s (killed)"
    if status == CUT_OFF:
        return None, f"{CUT_OFF_WHY} (trainer.reward_step_timeout={step_timeout:g} s)"
    return None, str(value)


def _log_cut_offs(
    owners: list[tuple[str, int]],
    results: list[tuple[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    step_timeout: float,
) -> None:
    """One warning per step with cut-off calls, naming their prompts by id."""
    cut = [i for (_, i), (status, _) in zip(owners, results, strict=True) if status == CUT_OFF]
    if not cut:
        return
    ids = list(dict.fromkeys(repr(rows[i].get("id", f"row {i}")) for i in cut))
    more = f" and {len(ids) - MAX_IDS_LOGGED} more" if len(ids) > MAX_IDS_LOGGED else ""
    log.warning(
        "rewards: %d of %d calls cut off at the step deadline (trainer.reward_step_timeout="
        "%g s), scored 0; prompts %s%s",
        len(cut), len(results), step_timeout, ", ".join(ids[:MAX_IDS_LOGGED]), more,
    )  # fmt: skip


def _worker_target(fn: RewardFn) -> str | None:
    """The ``module:function`` a step's workers call for ``fn``, or None to call it in
    this process (see :func:`_score_step`)."""
    if isinstance(fn, UserReward):
        return fn.target if fn.isolate else None
    return _registered_target(fn)


@functools.cache
def _registered_target(fn: RewardFn) -> str | None:
    """``module:qualname`` of a registered reward that a worker can import (every
    built-in but the cheap ones); None for a cheap one or one defined where a worker
    cannot find it (a closure, ``__main__``): those run in this process."""
    if any(REWARDS.get(name) is fn for name in CHEAP_REWARDS if name in REWARDS):
        return None
    target = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    try:
        found = resolve_target(target)
    except Exception:  # not importable by name
        return None
    return target if found is fn and "<" not in target and "__main__" not in target else None


def check_section(rewards: Sequence[Any]) -> None:
    """Check the recipe's ``rewards`` list: each name loads (registered or ``file.py:fn``)."""
    for i, spec in enumerate(rewards):
        try:
            load_reward(spec.name)
        except UserError as exc:
            raise UserError(f"rewards[{i}].name: {exc}") from None
