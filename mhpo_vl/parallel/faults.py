"""When one process of a run fails, the others stop too, and say which one and why.

Without this, a process that dies leaves the others blocked in their next collective:
for NCCL's 10 minutes, or for gloo's 30. Here:

- Every collective has a deadline, ``trainer.collective_timeout`` seconds (the process
  group's timeout).
- Every process records in the group's key-value store (the ``TCPStore`` that
  ``torchrun`` or rank 0 hosts) its pid and host (:func:`register`) and the last step it
  finished (:func:`note_step`).
- A process that stops with an error records the error first (:func:`boundary`), then
  exits; its connections close, so the others' pending collective fails at once.
- A process whose collective fails (a peer's connection closed, or no answer by the
  deadline) reads the records and stops with one line naming the rank and the cause:
  the rank's own error when it recorded one; "gone without a word" for a rank on this
  host whose process no longer exists (``kill -9``, the out-of-memory killer); else
  the ranks that did not answer, with the last step they finished (the processes
  that were waiting, like this one, say so in the store and are not blamed).

Everything here is best effort: a store that cannot be reached (rank 0 itself gone,
under a plain ``env://`` launch) leaves the line less specific, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.errors import RunHalted, UserError

_KEY = "mhpo_vl"
# how long a survivor waits for a failed peer's own record before describing it itself
REPORT_GRACE_S = 3.0
# what a collective that failed because of another process says (gloo, NCCL, c10d)
_COLLECTIVE_FAILURE = re.compile(
    r"gloo|nccl|c10d|Connection (reset|closed)|Timed out waiting|Broken pipe|"
    r"timed out after|Socket Timeout|ProcessGroup",
    re.IGNORECASE,
)


def _store() -> Any:
    """The process group's store, or None (no group, or a backend without one)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):
        return None


def _set(key: str, value: str) -> None:
    store = _store()
    if store is None:
        return
    with contextlib.suppress(Exception):  # best effort: the store's host may be gone
        store.set(f"{_KEY}/{key}", value)


def _get(key: str) -> str | None:
    store = _store()
    if store is None:
        return None
    try:
        if not store.check([f"{_KEY}/{key}"]):
            return None
        return store.get(f"{_KEY}/{key}").decode(errors="replace")
    except Exception:  # best effort, as above
        return None


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    return dist.get_rank(), dist.get_world_size()


def register() -> None:
    """Record this process's pid and host (read by the others if it vanishes)."""
    if _store() is not None:
        rank, _ = _rank_world()
        _set(f"proc/{rank}", json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def note_step(step: int) -> None:
    """Record the last step this process finished."""
    if _store() is not None:
        _set(f"step/{_rank_world()[0]}", str(step))


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because of another process (its
    connection closed, or no answer in time), rather than an error of this one."""
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and bool(_COLLECTIVE_FAILURE.search(str(exc)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gone(rank: int) -> str | None:
    """What is known of a rank that recorded no error: gone from this host, or None."""
    proc = _get(f"proc/{rank}")
    if proc is None:
        return None
    info = json.loads(proc)
    if info["host"] != socket.gethostname() or _alive(info["pid"]):
        return None
    step = _get(f"step/{rank}")
    after = f"after step {step}" if step is not None else "before its first step"
    return (
        f"rank {rank} (pid {info['pid']}) is gone without a word {after}: killed "
        "(kill -9, or the out-of-memory killer)"
    )


def _silent(rank: int, timed_out: bool, timeout: float) -> str:
    step = _get(f"step/{rank}")
    last = f" (it last finished step {step})" if step is not None else ""
    if timed_out:
        return f"rank {rank} did not answer within trainer.collective_timeout={timeout:g} s{last}"
    return f"rank {rank} closed its connection without a word{last}"


def explain(exc: BaseException, timeout: float, output_dir: str | Path | None) -> str:
    """The line a process stops with when its collective failed (see the module doc).

    The causes, most telling first: the errors other ranks recorded; ranks of this host
    whose process is gone; else the ranks that neither recorded an error nor, like this
    one, a failed collective (a short grace lets both arrive): the ones that hung."""
    from mhpo_vl import checkpoint

    rank, world = _rank_world()
    _set(f"lost/{rank}", "1")  # this one is waiting on the others, not the one at fault
    others = [r for r in range(world) if r != rank]
    deadline = time.monotonic() + REPORT_GRACE_S
    while True:  # a failing process records its error before its connections close
        faults = {r: text for r in others if (text := _get(f"fault/{r}")) is not None}
        gone = [text for r in others if (text := _gone(r)) is not None]
        if faults or gone or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    causes = [f"rank {r} stopped: {text}" for r, text in faults.items()] or gone
    if not causes:
        timed_out = "timed out" in str(exc).lower() or "timeout" in str(exc).lower()
        silent = [r for r in others if _get(f"lost/{r}") is None]
        causes = [_silent(r, timed_out, timeout) for r in silent]
    if not causes:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        causes = [f"a collective failed ({first}); see the other ranks' logs"]
    last = checkpoint.latest_checkpoint(output_dir) if output_dir else None
    resume = f"; a rerun resumes from {last}" if last else ""
    return f"rank {rank}: stopped because {'; '.join(causes)}{resume}"


@contextlib.contextmanager
def boundary(timeout: float, output_dir: str | Path | None = None) -> Iterator[None]:
    """Around a run of a process group: an error of this process is recorded (for the
    others) and names this rank; a collective that failed because of another process
    becomes a :class:`RunHalted` naming that process and its cause. One process: no-op."""
    try:
        yield
    except Exception as exc:
        if _store() is None or _rank_world()[1] == 1:  # (the group may come up inside)
            raise
        rank = _rank_world()[0]
        if is_collective_failure(exc):
            raise RunHalted(explain(exc, timeout, output_dir)) from None
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        _set(f"fault/{rank}", text.splitlines()[0][:500] if text else type(exc).__name__)
        if isinstance(exc, UserError):
            exc.args = (f"rank {rank}: {exc}",)
        raise
