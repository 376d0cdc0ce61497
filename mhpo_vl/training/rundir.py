"""The output directory belongs to one run: a lock while it runs, the recipe it was
trained with checked on resume, and write failures reported as one line.

- **Lock** (:class:`RunLock`): ``OUTPUT_DIR/.lock`` held with ``flock`` for the run's
  life, naming the holder (pid, host, start time). A second run on the directory stops
  at once naming the holder. The kernel drops the lock when its process ends (a crash
  or ``kill -9`` included), so the lock of a killed run is stale by construction: the
  next run takes it over and says whose it was.
- **Recipe on resume** (:func:`check_resume`): every checkpoint stores the resolved
  recipe (``recipe.yaml``). A resume whose recipe differs in what shapes the training (model, data,
  rollout, rewards, algorithm, optim, seed, the update's batch shape) stops and names
  the keys; changes that cannot alter the updates (steps, saving, logging, eval, how the
  work is spread) are allowed and reported.
- **Writes** (:func:`write_failure`): a metrics, samples (their images too) or checkpoint
  write that fails (a read-only or removed directory, a full disk) stops the run with a line
  that names the path, the cause and the last good checkpoint, which stays intact.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.checkpoint import write_failure
from mhpo_vl.config import recipe_to_dict
from mhpo_vl.errors import UserError

log = logging.getLogger("mhpo_vl")

LOCK_FILE = ".lock"
RECIPE_FILE = "recipe.yaml"  # in every checkpoint: the resolved recipe that wrote it

# Keys that cannot change what the optimizer sees: allowed to differ on resume (and
# reported). Every other key, including ones added later, must match.
_HARMLESS_PREFIXES = ("eval.", "data.eval.", "parallel.", "rollout.engine_args.")
_HARMLESS_KEYS = {
    "name",
    "data.eval",
    "trainer.output_dir",
    "trainer.max_steps",
    "trainer.save_every",
    "trainer.keep_last",
    "trainer.hf_weights",
    "trainer.log_samples",
    "trainer.resume",
    "trainer.num_threads",
    "trainer.tensorboard",
    "trainer.report_to",  # experiment trackers: where the run is watched
    "trainer.tracker_project",
    "trainer.run_name",
    "trainer.progress_bar",
    "trainer.max_consecutive_skips",
    "trainer.max_reward_fail_frac",
    "trainer.collective_timeout",
    "trainer.reward_step_timeout",
    "trainer.reward_workers",
    # how a step's rollouts are cut into forwards: the same gradients up to rounding
    "trainer.micro_batch_size",
    "trainer.micro_batch_tokens",
    "trainer.shared_prefix",
}


class RunLock:
    """An exclusive ``flock`` on ``OUTPUT_DIR/.lock`` (see the module docstring)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; :class:`UserError` naming the holder when a live run has it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # held through a read-only descriptor (flock needs no write access), so the
            # run keeps no file open for writing between its writes
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_failure(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise write_failure(self.path, exc) from None
            holder = self._holder() or "holder unknown"
            raise UserError(
                f"trainer.output_dir {self.path.parent} is in use by another run ({holder}); "
                "wait for it to finish, stop it, or give this run another trainer.output_dir"
            ) from None
        self._fd = fd
        stale = self._holder()
        if stale:  # the record of a run that ended without releasing it (killed)
            log.info("took over the lock of an earlier run that is gone (%s)", stale)
        try:
            self.path.write_text(
                f"pid {os.getpid()} on host {socket.gethostname()}, since {_now()}"
            )
        except OSError as exc:
            self.release()
            raise write_failure(self.path, exc) from None

    def _holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        """Drop the lock (and its record); a no-op when not held."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # the directory may be gone or read-only
            self.path.write_text("")  # a clean end leaves no holder behind
        os.close(self._fd)
        self._fd = None


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _harmless(key: str) -> bool:
    return key in _HARMLESS_KEYS or key.startswith(_HARMLESS_PREFIXES)


def compare_recipes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list, list]:
    """``(altering, harmless)``: the differing keys as ``(key, saved, current)``, split by
    whether the difference can change the training (see the module docstring)."""
    old, new = _flatten(saved), _flatten(current)
    missing = object()
    altering, harmless = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a == b:
            continue
        item = (key, "(unset)" if a is missing else a, "(unset)" if b is missing else b)
        (harmless if _harmless(key) else altering).append(item)
    return altering, harmless


def _show(items: list, n: int = 6) -> str:
    shown = [f"{k} ({_short(a)} -> {_short(b)})" for k, a, b in items[:n]]
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(shown) + more


def _short(value: Any, n: int = 40) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_resume(ckpt: Path, cfg: Any) -> None:
    """Stop a resume from ``ckpt`` whose recipe differs from the one that wrote it in
    what shapes the training; report differences that cannot. A checkpoint from before
    recipes were stored cannot be checked (said once)."""
    stored = ckpt / RECIPE_FILE
    if not stored.is_file():
        log.warning("%s stores no recipe (an older checkpoint): resuming unchecked", ckpt)
        return
    saved = yaml.safe_load(stored.read_text())
    current = yaml.safe_load(yaml.safe_dump(recipe_to_dict(cfg), sort_keys=False))
    altering, harmless = compare_recipes(saved, current)
    if altering:
        raise UserError(
            f"{ckpt} was trained with another recipe: {_show(altering)} "
            f"{'differs' if len(altering) == 1 else 'differ'}. "
            "To train this recipe, give it a new trainer.output_dir, or set "
            "trainer.resume=false to start over in this one (its checkpoints are removed)"
        )
    if harmless:
        log.info("resuming %s with changed settings: %s", ckpt, _show(harmless, n=20))
    steps = [item for item in harmless if item[0] == "trainer.max_steps"]
    if steps and cfg.optim.scheduler != "constant":
        log.warning(
            "trainer.max_steps changed (%s -> %s) under optim.scheduler=%s: the learning "
            "rate follows the schedule over the new length from here on, so it jumps "
            "where the old one had decayed; an interrupted run resumes exactly only with "
            "its own max_steps",
            steps[0][1],
            steps[0][2],
            cfg.optim.scheduler,
        )
