"""Bounded-time calls in persistent worker processes.

A thread cannot stop a hung sympy call and ``signal.alarm`` only works on the main
thread, so verifiers that may hang run here when called off the main thread (and user
reward functions always): each worker is a plain ``python -m mhpo_vl.rewards._worker``
process talking over a socket pair. A call that exceeds its bound kills its worker,
which is restarted on the next call; the caller gets ``default``. Targets are named
``"package.module:function"`` or ``"/abs/path/file.py:function"`` and resolved inside the
worker; only our own pickled messages cross the pipe, model text is never executed, and
a worker sends back only plain values (:mod:`mhpo_vl.rewards.values`), so no return
value can break the pipe or cost a restart.

:meth:`WorkerPool.run` scores many calls at once under one deadline (a training step's
rewards): the calls go out in chunks (one message each, not one round trip per call),
every worker of the pool works on its own chunk, and results come back one by one, so
a worker killed at the deadline loses only the calls it had not finished.
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import and say ready
# calls sent to a worker in one message by :meth:`WorkerPool.run`: at most this many,
# and about a quarter of a worker's share, so a hung call holds up few calls behind it
MAX_CHUNK = 16
CHUNKS_PER_WORKER = 4
CUT_OFF = "cut_off"  # the status of a call not finished by the deadline of a run


class _Worker:
    def __init__(self) -> None:
        """Start the process; :meth:`wait_ready` waits for it to import."""
        parent, child = Pipe(duplex=True)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mhpo_vl.rewards._worker", str(child.fileno())],
            pass_fds=(child.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the trainer, not its workers
        )
        child.close()
        self.conn: Connection = parent
        self.ready = False

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait up to ``timeout`` seconds for the worker's "ready"; kill it and raise
        ``RuntimeError`` if it does not come."""
        if self.ready:
            return
        try:
            self.ready = self.conn.poll(max(timeout, 0.0)) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            self.ready = False
        if not self.ready:
            self.kill()
            raise RuntimeError("reward worker did not start")

    def call(self, target: str, args: tuple, timeout: float) -> tuple[str, Any]:
        self.conn.send(("one", target, args))
        if not self.conn.poll(timeout):
            return "timeout", None
        return self.conn.recv()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


@dataclass(frozen=True)
class Call:
    """One call of :meth:`WorkerPool.run`: ``target(*args)``, at most ``timeout`` s."""

    target: str
    args: tuple
    timeout: float


class WorkerPool:
    """Up to ``size`` persistent workers shared by all threads of this process.

    ``stats`` counts ``calls``, ``timeouts`` and ``errors`` (exceptions raised by the
    target and values that cannot be sent, returned as ``default``) so callers can log
    them.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._idle.put(None)  # a slot; the worker starts on first use
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0}
        self.last_error = ""

    def call(self, target: str, args: tuple, timeout: float, default: Any = None) -> Any:
        """``target(*args)`` in a worker, at most ``timeout`` seconds; ``default`` on a
        timeout, a crash or an exception in the target."""
        status, value = self.call_status(target, args, timeout)
        return value if status == "ok" else default

    def call_status(self, target: str, args: tuple, timeout: float) -> tuple[str, Any]:
        """``(status, value)``: ``("ok", result)``, ``("timeout", None)``, or
        ``("error" | "bad" | "crash", message)`` for an exception in the target, a
        returned value that is not plain data (its type named), or a worker that died
        or did not start."""
        worker = self._idle.get()
        status, value = "crash", "worker failed"
        try:
            if worker is None:
                worker = _Worker()
                worker.wait_ready()
            status, value = worker.call(target, args, timeout)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # args not picklable
            status, value = "error", f"cannot send arguments: {exc}"
        except (OSError, EOFError, RuntimeError) as exc:  # the worker died or did not start
            status, value = "crash", f"worker failed: {exc}"
        finally:
            if worker is not None and status in ("timeout", "crash"):
                worker.kill()
                worker = None
            self._idle.put(worker)
        self._note(status, value)
        return status, value

    def _note(self, status: str, value: Any) -> None:
        with self._lock:
            self.stats["calls"] += 1
            if status == "timeout":
                self.stats["timeouts"] += 1
            elif status in ("error", "bad", "crash"):
                self.stats["errors"] += 1
                self.last_error = str(value)

    def run(self, calls: Sequence[Call], deadline: float) -> list[tuple[str, Any]]:
        """``(status, value)`` per call, run in all of this pool's workers until
        ``deadline`` (a :func:`time.monotonic` time).

        Statuses as :meth:`call_status`, plus :data:`CUT_OFF` for a call not finished
        by the deadline: the workers still busy then are killed (and restart on the
        next use). A call over its own ``timeout`` kills its worker; the rest of its
        chunk goes to a fresh one."""
        slots = self._take_all(deadline)
        batch = _Batch(calls, slots, deadline)
        try:
            batch.run()
        finally:
            batch.stop()
            for worker in batch.slots:
                self._idle.put(worker)
        for status, value in batch.results:
            self._note(status, value)
        return batch.results

    def _take_all(self, deadline: float) -> list[_Worker | None]:
        """Every slot of the pool (waiting for calls of other threads to end), at
        least one."""
        taken = [self._idle.get()]
        for _ in range(self.size - 1):
            try:
                taken.append(self._idle.get(timeout=max(deadline - time.monotonic(), 0.0)))
            except queue.Empty:
                break
        return taken

    def close(self) -> None:
        """Kill every started worker (they restart on the next call)."""
        drained = []
        while True:
            try:
                drained.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in drained:
            if worker is not None:
                worker.kill()
            self._idle.put(None)


@dataclass
class _Busy:
    """A worker's chunk: the call indices, how many are answered, since when it waits."""

    chunk: list[int]
    done: int = 0
    since: float = field(default_factory=time.monotonic)


class _Batch:
    """One :meth:`WorkerPool.run`: chunks of calls over the pool's slots."""

    def __init__(self, calls: Sequence[Call], slots: list[_Worker | None], deadline: float):
        self.calls, self.slots, self.deadline = calls, slots, deadline
        self.results: list[tuple[str, Any]] = [(CUT_OFF, None)] * len(calls)
        self.todo: deque[list[int]] = deque(_chunks(calls, len(slots)))
        self.busy: dict[int, _Busy] = {}  # slot -> its chunk

    def run(self) -> None:
        while (self.todo or self.busy) and time.monotonic() < self.deadline:
            self._dispatch()
            if not self.busy:
                return  # no worker could start: the rest stays cut off
            self._collect()

    def _dispatch(self) -> None:
        """Send a chunk to every free slot, starting the workers it needs first (all
        at once: they import in parallel)."""
        free = [i for i in range(len(self.slots)) if i not in self.busy][: len(self.todo)]
        for i in free:
            if self.slots[i] is None:
                try:
                    self.slots[i] = _Worker()
                except OSError as exc:  # cannot start a process at all
                    self._failed_start(f"worker failed: {exc}")
        for i in free:
            worker = self.slots[i]
            if worker is None:
                continue
            try:
                worker.wait_ready(min(STARTUP_TIMEOUT, self.deadline - time.monotonic()))
            except RuntimeError as exc:  # did not start in time
                self.slots[i] = None
                self._failed_start(f"worker failed: {exc}")
                continue
            chunk = self.todo.popleft()
            try:
                worker.conn.send(("many", self.calls[chunk[0]].target, self._args(chunk)))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                for j in chunk:
                    self.results[j] = ("error", f"cannot send arguments: {exc}")
                continue
            except OSError:  # died while idle: the chunk goes to a fresh one
                self._drop(i, chunk)
                continue
            self.busy[i] = _Busy(chunk)

    def _args(self, chunk: list[int]) -> list[tuple]:
        return [self.calls[j].args for j in chunk]

    def _collect(self) -> None:
        """Read the answers that arrive before the next bound, then kill the workers
        whose current call is over its own timeout."""
        now = time.monotonic()
        until = min(
            [self.deadline]
            + [b.since + self.calls[b.chunk[b.done]].timeout for b in self.busy.values()]
        )
        by_conn = {w.conn: i for i in self.busy if (w := self.slots[i]) is not None}
        for conn in wait(list(by_conn), timeout=max(until - now, 0.0)):
            self._read(by_conn[conn])
        now = time.monotonic()
        for i, b in list(self.busy.items()):
            call = b.chunk[b.done]
            if now - b.since > self.calls[call].timeout:
                self.results[call] = ("timeout", None)
                self._drop(i, b.chunk[b.done + 1 :])

    def _read(self, i: int) -> None:
        """Every answer waiting on slot ``i``'s pipe."""
        b, worker = self.busy[i], self.slots[i]
        assert worker is not None
        try:
            while worker.conn.poll(0):
                self.results[b.chunk[b.done]] = worker.conn.recv()
                b.done, b.since = b.done + 1, time.monotonic()
                if b.done == len(b.chunk):
                    del self.busy[i]
                    return
        except (EOFError, OSError) as exc:  # the worker died: its call fails, not the rest
            self.results[b.chunk[b.done]] = ("crash", f"worker failed: {exc!r}")
            self._drop(i, b.chunk[b.done + 1 :])

    def _drop(self, i: int, rest: list[int]) -> None:
        """Kill slot ``i``'s worker; ``rest`` of its chunk goes first to the next one."""
        worker = self.slots[i]
        if worker is not None:
            worker.kill()
        self.slots[i] = None
        self.busy.pop(i, None)
        if rest:
            self.todo.appendleft(rest)

    def _failed_start(self, why: str) -> None:
        """With no worker left to run them, the calls waiting fail (or, past the
        deadline, stay cut off)."""
        alive = self.busy or any(w is not None for w in self.slots)
        if alive or time.monotonic() >= self.deadline:
            return
        for chunk in self.todo:
            for j in chunk:
                self.results[j] = ("crash", why)
        self.todo.clear()

    def stop(self) -> None:
        """Kill the workers still busy: their unfinished calls stay cut off."""
        for i in list(self.busy):
            self._drop(i, [])


def _chunks(calls: Sequence[Call], workers: int) -> list[list[int]]:
    """Runs of call indices with one target each: :data:`CHUNKS_PER_WORKER` per worker
    (at most :data:`MAX_CHUNK` calls each), so every worker gets work and a call that
    hangs until its own timeout holds up only the rest of its chunk."""
    size = len(calls) / (max(workers, 1) * CHUNKS_PER_WORKER)
    size = max(1, min(MAX_CHUNK, math.ceil(size)))
    out: list[list[int]] = []
    for j, call in enumerate(calls):
        if out and len(out[-1]) < size and calls[out[-1][0]].target == call.target:
            out[-1].append(j)
        else:
            out.append([j])
    return out


_POOL: WorkerPool | None = None
_STEP_POOLS: dict[int, WorkerPool] = {}
_POOL_LOCK = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool (two workers), created on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool(size=2)
            atexit.register(_POOL.close)
        return _POOL


def step_pool(size: int) -> WorkerPool:
    """The pool of ``size`` workers that scores training steps (kept apart from
    :func:`default_pool`, whose workers other threads borrow one call at a time)."""
    with _POOL_LOCK:
        if size not in _STEP_POOLS:
            _STEP_POOLS[size] = WorkerPool(size=size)
        return _STEP_POOLS[size]


def close_step_pools() -> None:
    """Kill the workers of every step pool (they restart on the next use)."""
    with _POOL_LOCK:
        for pool in _STEP_POOLS.values():
            pool.close()


atexit.register(close_step_pools)
