"""math-verify with a hard time bound, on any thread.

math-verify's own timeouts use ``signal.alarm`` (fails off the main thread) and raise a
``TimeoutException`` that derives from ``BaseException``. We always call it with its
timeouts off and bound the time ourselves:

- on the main thread (with no interval timer already running): one ``setitimer`` for the
  whole parse + parse + verify, raising our own ``BaseException`` so that math-verify's
  ``except Exception`` blocks cannot swallow it;
- on any other thread: in a persistent worker process (:mod:`mhpo_vl.rewards.workers`),
  killed and restarted when it overruns.

Either way a pathological input (``9^{9^{9^{9}}}`` makes sympy spin) costs at most the
bound and scores 0.

A checker that cannot run is not an answer that is wrong. math-verify imports its LaTeX
parser, which needs an antlr4 runtime of a version it knows (4.9.3, 4.11 or 4.13.2);
without one, ``import math_verify`` fails, and a checker that caught that would score
every answer 0 (``\\frac{1}{2}`` against ``0.5`` included) while training went on. So
math-verify is checked once per process on known-equal pairs, and a failure there, or a
worker that cannot run the check, raises :class:`VerifierUnavailable` naming the cause.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from importlib import metadata
from typing import Any

MATH_TIMEOUT = 5.0  # seconds per check, parse and verify together
_GRACE = 1.0  # the worker bounds itself; the parent kills it only this much later


# Pairs math-verify must call equal; a checker that cannot is broken, not strict.
KNOWN_EQUAL = (("\\frac{1}{2}", "0.5"), ("2", "2"), ("\\sqrt{4}", "2"))
_PACKAGES = ("math-verify", "latex2sympy2_extended", "antlr4-python3-runtime", "sympy")


class VerifierUnavailable(RuntimeError):
    """math-verify cannot run in this environment; the message says why."""


class _Deadline(BaseException):
    """Raised by our timer; a BaseException so library ``except Exception`` lets it pass."""


class _DropNoTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _math_verify() -> Any:
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoTimeoutWarning) for f in logger.filters):
            logger.addFilter(_DropNoTimeoutWarning())
    return math_verify


def gold_text(gold: str) -> str:
    """Gold as math-verify should read it: ``\\boxed{gold}`` unless already marked up."""
    gold = str(gold).strip()
    return gold if ("\\boxed" in gold or "$" in gold) else f"\\boxed{{{gold}}}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> Any:
    return _math_verify().parse(gold_text(gold), parsing_timeout=None)


def _parse_pred(pred: str, marked: bool) -> Any:
    mv = _math_verify()
    if marked:  # an extracted span: read it as one LaTeX expression first
        found = mv.parse(f"${pred.replace('$', '')}$", parsing_timeout=None)
        if found:
            return found
    return mv.parse(pred, parsing_timeout=None)


def verify_unbounded(gold: str, pred: str, marked: bool = True) -> bool:
    """``verify(parse(gold), parse(pred))`` (gold first) with math-verify's timeouts off.

    ``marked`` says ``pred`` is an extracted answer span rather than a whole response.
    Only call this where something else bounds the time.
    """
    g = _parse_gold(gold)
    p = _parse_pred(pred, marked)
    if not g or not p:
        return False
    return bool(_math_verify().verify(g, p, timeout_seconds=None))


def verify_with_deadline(gold: str, pred: str, marked: bool, timeout: float) -> bool:
    """:func:`verify_unbounded` under one ``setitimer`` deadline (main thread only)."""
    old = signal.signal(signal.SIGALRM, _raise_deadline)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            return verify_unbounded(gold, pred, marked)
        finally:  # a deadline firing in here is still caught below
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        return False
    except Exception:  # sympy and latex2sympy raise freely on odd input
        return False
    finally:
        signal.signal(signal.SIGALRM, old)


def _raise_deadline(signum: int, frame: Any) -> None:
    raise _Deadline()


def _can_use_timer() -> bool:
    return (
        threading.current_thread() is threading.main_thread()
        and hasattr(signal, "setitimer")
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def _versions() -> str:
    found = []
    for name in _PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


@functools.cache
def math_verify_problem() -> str | None:
    """None when math-verify works in this process, else one line saying why not."""
    try:
        _math_verify()
    except Exception as exc:  # ImportError mostly: an antlr4 runtime it cannot use
        return f"cannot import math_verify: {type(exc).__name__}: {exc} ({_versions()})"
    for gold, pred in KNOWN_EQUAL:
        if not verify_with_deadline(gold, pred, True, MATH_TIMEOUT):
            return f"math-verify calls {pred!r} unequal to {gold!r} ({_versions()})"
    return None


def require_math_verify() -> None:
    """Raise :class:`VerifierUnavailable` unless math-verify works in this process."""
    problem = math_verify_problem()
    if problem is not None:
        raise VerifierUnavailable(problem)


def verify_checked(gold: str, pred: str, marked: bool, timeout: float) -> bool:
    """:func:`verify_with_deadline` after :func:`require_math_verify` (the worker's target)."""
    require_math_verify()
    return verify_with_deadline(gold, pred, marked, timeout)


def math_equal(gold: str, pred: str, marked: bool = True, timeout: float | None = None) -> bool:
    """Whether ``pred`` equals ``gold`` by math-verify; False for an answer it cannot
    parse or that takes over ``timeout`` seconds (default :data:`MATH_TIMEOUT`; plus a
    second of grace off the main thread). Raises :class:`VerifierUnavailable` when
    math-verify itself cannot run (here, or in the worker used off the main thread)."""
    timeout = MATH_TIMEOUT if timeout is None else timeout
    if _can_use_timer():
        return verify_checked(gold, pred, marked, timeout)
    from mhpo_vl.rewards.workers import default_pool

    status, value = default_pool().call_status(
        "mhpo_vl.rewards.mathcheck:verify_checked",
        (gold, pred, marked, timeout),
        timeout=timeout + _GRACE,
    )
    if status in ("error", "crash"):  # the check raises nothing for a bad answer
        raise VerifierUnavailable(f"math-verify worker failed: {value}")
    return status == "ok" and bool(value)
