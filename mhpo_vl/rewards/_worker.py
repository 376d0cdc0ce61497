"""Entry point of a reward worker process (see :mod:`mhpo_vl.rewards.workers`)."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection
from typing import Any

from mhpo_vl.rewards.targets import resolve_target


def _serve(fd: int) -> None:
    conn = Connection(fd)
    cache: dict[str, Any] = {}
    conn.send("ready")
    while True:
        try:
            target, args = conn.recv()
        except EOFError:
            return
        try:
            if target not in cache:
                cache[target] = resolve_target(target)
            conn.send(("ok", cache[target](*args)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # incl. math-verify's TimeoutException: report, go on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
