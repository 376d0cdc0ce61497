"""Entry point of a reward worker process (see :mod:`mhpo_vl.rewards.workers`).

Requests are ``("one", target, args)``, answered with one ``(status, value)``, and
``("many", target, [args, ...])``, answered with one ``(status, value)`` per call as it
finishes (so that a caller that kills this worker at a deadline keeps what finished).
Only plain values go back (:mod:`mhpo_vl.rewards.values`): a target's number as a float,
anything else as a one-line description; nothing a user returns can break the pipe.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection
from typing import Any

from mhpo_vl.rewards.targets import resolve_target
from mhpo_vl.rewards.values import to_reply, to_score


def _call(cache: dict[str, Any], target: str, args: tuple) -> tuple[str, Any]:
    """``(status, value)`` of one call: ``("ok", plain value)``, ``("bad", why)`` for a
    value that cannot be sent, ``("error", why)`` for an exception."""
    try:
        if target not in cache:
            cache[target] = resolve_target(target)
        return to_reply(cache[target](*args))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # incl. math-verify's TimeoutException: report, go on
        return "error", f"{type(exc).__name__}: {exc}"


def _score(cache: dict[str, Any], target: str, args: tuple) -> tuple[str, Any]:
    """One reward call as ``("ok", float)``, or ``("bad" | "error", why)``."""
    status, value = _call(cache, target, args)
    if status != "ok":
        return status, value
    score, why = to_score(value)
    return ("ok", score) if score is not None else ("bad", why)


def _serve(fd: int) -> None:
    conn = Connection(fd)
    cache: dict[str, Any] = {}
    conn.send("ready")
    while True:
        try:
            kind, target, payload = conn.recv()
        except EOFError:
            return
        if kind == "many":
            for args in payload:
                conn.send(_score(cache, target, args))
        else:
            conn.send(_call(cache, target, payload))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
