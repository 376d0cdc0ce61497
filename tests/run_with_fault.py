"""``mhpo-vl`` as one process of a group, with a fault that strikes one rank, for the
multi-process fault tests (``tests/test_faults.py``):

    RANK=r WORLD_SIZE=n ... python tests/run_with_fault.py FAULT RANK STEP train RECIPE ...

FAULT is a name in :data:`FAULTS` (``none``: no fault); it strikes process RANK at
training step STEP. The rest is the ``mhpo-vl`` command line.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

STEP = {"now": 0}


def _track_steps() -> None:
    from mhpo_vl import trainer

    real = trainer.train_step

    def train_step(run, step):
        STEP["now"] = step
        return real(run, step)

    trainer.train_step = train_step


def nan(at: int) -> None:
    """The policy loss is NaN on this rank from step ``at`` on."""
    from mhpo_vl import algorithms

    real = algorithms.policy_loss

    def policy_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        if STEP["now"] >= at:
            out.loss.data.fill_(float("nan"))
        return out

    algorithms.policy_loss = policy_loss


def _at_step(at: int, act) -> None:
    from mhpo_vl import trainer

    real = trainer.train_step

    def train_step(run, step):
        if step == at:
            act()
        return real(run, step)

    trainer.train_step = train_step


def kill(at: int) -> None:
    """This process is killed (SIGKILL: no word, no clean-up) as step ``at`` begins."""
    _at_step(at, lambda: os.kill(os.getpid(), signal.SIGKILL))


def hang(at: int) -> None:
    """This process stops answering as step ``at`` begins (it sleeps; the test ends it)."""

    def sleep() -> None:
        Path(os.environ["FAULT_MARK"]).write_text(str(time.time()))
        time.sleep(3600)

    _at_step(at, sleep)


def disk_full(at: int) -> None:
    """This process's part of ``checkpoint-<at>`` fails for want of space, where the
    files are written (inside torch.distributed.checkpoint's collective save)."""
    from torch.distributed.checkpoint import filesystem

    real = filesystem.FileSystemWriter.write_data

    def write_data(self, plan, planner):
        if STEP["now"] == at:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real(self, plan, planner)

    filesystem.FileSystemWriter.write_data = write_data


FAULTS = {"none": None, "nan": nan, "kill": kill, "hang": hang, "disk_full": disk_full}

if __name__ == "__main__":
    fault, rank, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    _track_steps()
    if FAULTS[fault] is not None and int(os.environ["RANK"]) == rank:
        FAULTS[fault](at)
    from mhpo_vl.cli import entry

    sys.argv = [sys.argv[0], *sys.argv[4:]]
    entry()
