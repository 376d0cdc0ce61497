"""Bounded-time calls in persistent worker processes.

A thread cannot stop a hung sympy call and ``signal.alarm`` only works on the main
thread, so verifiers that may hang run here when called off the main thread (and user
reward functions always): each worker is a plain ``python -m mhpo_vl.rewards._worker``
process talking over a socket pair. A call that exceeds its bound kills its worker,
which is restarted on the next call; the caller gets ``default``. Targets are named
``"package.module:function"`` or ``"/abs/path/file.py:function"`` and resolved inside the
worker; only our own pickled messages cross the pipe, model text is never executed.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import subprocess
import sys
import threading
from multiprocessing.connection import Pipe
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 120.0  # seconds for a fresh worker to import and say ready


class _Worker:
    def __init__(self) -> None:
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
        self.conn = parent
        try:
            ready = parent.poll(STARTUP_TIMEOUT) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError("reward worker did not start")

    def call(self, target: str, args: tuple, timeout: float) -> tuple[str, Any]:
        self.conn.send((target, args))
        if not self.conn.poll(timeout):
            return "timeout", None
        return self.conn.recv()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class WorkerPool:
    """Up to ``size`` persistent workers shared by all threads of this process.

    ``stats`` counts ``calls``, ``timeouts`` and ``errors`` (exceptions raised by the
    target, returned as ``default``) so callers can log them.
    """

    def __init__(self, size: int = 2) -> None:
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
        ``("error" | "crash", message)`` for an exception in the target or a worker
        that died or did not start."""
        worker = self._idle.get()
        status, value = "crash", "worker failed"
        try:
            if worker is None:
                worker = _Worker()
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
        with self._lock:
            self.stats["calls"] += 1
            if status == "timeout":
                self.stats["timeouts"] += 1
            elif status in ("error", "crash"):
                self.stats["errors"] += 1
                self.last_error = str(value)
        return status, value

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


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> WorkerPool:
    """The process-wide pool (two workers), created on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool(size=2)
            atexit.register(_POOL.close)
        return _POOL
