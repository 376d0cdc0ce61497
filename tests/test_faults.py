"""One process of a 2-process run fails; the other stops too, and the line says which
rank and why. Then a rerun resumes bit-exactly from the last checkpoint.

The processes are started one by one, as on separate nodes (no ``torchrun`` agent
that would kill the survivors for us), over real gloo. Each fault strikes rank 1 at
step 3 of 3, after ``checkpoint-2``:

- its reward worker dies on every call (``kill -9`` from inside): the failing reward
  stops every rank at the same step (``trainer.max_reward_fail_frac``);
- its loss is NaN: every rank skips the update and stops (``max_consecutive_skips``);
- its part of the sharded checkpoint finds the disk full (FSDP2, inside
  torch.distributed.checkpoint's collective save);
- it is killed (SIGKILL): rank 0's next collective fails at once, and rank 0 finds
  that rank 1's process is gone;
- it hangs: rank 0 gives up after ``trainer.collective_timeout`` seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20  # trainer.collective_timeout in these runs
RUN = [
    "trainer.prompts_per_step=4", "rollout.group_size=4", "trainer.minibatches=2",
    "eval.size=4", "eval.at_start=false", "eval.every=0", "trainer.max_steps=3",
    "trainer.save_every=1", "trainer.keep_last=3", "trainer.progress_bar=false",
    "trainer.report_to=[]", "trainer.num_threads=1",
    f"trainer.collective_timeout={TIMEOUT}",
]  # fmt: skip

REWARD = """
import os
from pathlib import Path


def reward(response, row):
    # rank 1's reward worker dies on every call once checkpoint-2 exists
    if os.environ.get("RANK") == "1" and os.environ.get("FAULT_AFTER"):
        if Path(os.environ["FAULT_AFTER"]).exists():
            os.kill(os.getpid(), 9)
    return 0.0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """Two processes of one group, each started by hand; their ends timed."""

    def __init__(self, fault: str, out: Path, *overrides: str, env: dict | None = None):
        port = _free_port()
        self.procs = []
        for rank in range(2):
            penv = {
                **os.environ, **(env or {}), "RANK": str(rank), "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }  # fmt: skip
            cmd = [
                sys.executable, "tests/run_with_fault.py", fault, "1", "3", "train",
                "recipes/tiny/mhpo.yaml", f"trainer.output_dir={out}", *RUN, *overrides,
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=penv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )

    def wait(self, rank: int, timeout: float = 600) -> tuple[int, str, float]:
        """``(exit code, stderr, when it ended)`` of ``rank``."""
        _, err = self.procs[rank].communicate(timeout=timeout)
        return self.procs[rank].returncode, err, time.time()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


def _last_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _resume_is_exact(out: Path, clean: Path, *overrides: str) -> None:
    """A rerun without the fault resumes from checkpoint-2 to clean's weights exactly."""
    assert sorted(p.name for p in out.glob("checkpoint-*"))[-1] == "checkpoint-2"
    pair = Pair("none", out, *overrides)
    try:
        ends = [pair.wait(rank) for rank in range(2)]
        assert all(code == 0 for code, _, _ in ends), [err[-3000:] for _, err, _ in ends]
        assert f"resumed from {out / 'checkpoint-2'}" in ends[0][1]  # the main process logs
    finally:
        pair.kill()
    a, b = _weights(out / "checkpoint-3"), _weights(clean / "checkpoint-3")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Uninterrupted 2-process runs, DDP and FSDP2: what every rerun must reproduce."""
    root = tmp_path_factory.mktemp("clean")
    for name, strategy in (("ddp", []), ("fsdp", ["parallel.strategy=fsdp"])):
        pair = Pair("none", root / name, *strategy)
        for rank in range(2):
            code, err, _ = pair.wait(rank)
            assert code == 0, err[-3000:]
    return root


def _both_stop(pair: Pair) -> list[tuple[int, str]]:
    """``(rank, last line)`` of both processes, which must both stop with exit code 2."""
    try:
        (c0, e0, _), (c1, e1, _) = pair.wait(0), pair.wait(1)
    finally:
        pair.kill()
    assert c0 == 2 and c1 == 2, (e0[-2000:], e1[-2000:])
    return [(0, _last_line(e0)), (1, _last_line(e1))]


@pytest.mark.slow
def test_a_reward_worker_that_dies_on_one_rank_stops_both(tmp_path, clean):
    out = tmp_path / "run"
    (tmp_path / "fault.py").write_text(REWARD)
    reward = [
        f"rewards=[{{name: accuracy, weight: 1.0}}, {{name: '{tmp_path}/fault.py:reward', "
        "weight: 0.0}]",
        "trainer.max_reward_fail_frac=0.4",
    ]
    faulty = Pair("none", out, *reward, env={"FAULT_AFTER": str(out / "checkpoint-2")})
    for rank, line in _both_stop(faulty):
        assert line.startswith(
            f"mhpo-vl: error: rank {rank}: step 3: reward 'fault.py:reward' failed"
        )
        assert "first: rank 1: " in line
    # the rerun, with the same recipe and a healthy worker, resumes exactly (the fault
    # reward weighs 0, so the clean run's weights are the target)
    _resume_is_exact(out, clean / "ddp", *reward)


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_naming_it(tmp_path, clean):
    out = tmp_path / "run"
    for rank, line in _both_stop(Pair("nan", out, "trainer.max_consecutive_skips=1")):
        assert line.startswith(f"mhpo-vl: error: rank {rank}: step 3: 2 optimizer updates")
        assert "in a row skipped for a non-finite loss on rank 1 (" in line
    _resume_is_exact(out, clean / "ddp")


@pytest.mark.slow
def test_a_full_disk_on_one_rank_stops_both_naming_it(tmp_path, clean):
    out = tmp_path / "run"
    faulty = Pair("disk_full", out, "parallel.strategy=fsdp", "trainer.keep_last=1")
    for rank, line in _both_stop(faulty):
        assert line.startswith(f"mhpo-vl: error: rank {rank}: no space left on device in {out}")
        assert "(rank 1: No space left on device" in line
        assert f"{out / 'checkpoint-2'} is intact" in line
    _resume_is_exact(out, clean / "fsdp", "parallel.strategy=fsdp")


@pytest.mark.slow
def test_a_killed_rank_is_named_by_the_survivor_at_once(tmp_path, clean):
    out = tmp_path / "run"
    pair = Pair("kill", out)
    try:
        code1, _, killed_at = pair.wait(1)
        code0, err0, ended_at = pair.wait(0)
    finally:
        pair.kill()
    assert code1 == -9 and code0 == 2
    line = _last_line(err0)
    pid = pair.procs[1].pid
    assert line.startswith(
        f"mhpo-vl: error: rank 0: stopped because rank 1 (pid {pid}) is gone without a word "
        "after step 2: killed"
    ), line
    assert f"a rerun resumes from {out / 'checkpoint-2'}" in line
    assert ended_at - killed_at < TIMEOUT
    _resume_is_exact(out, clean / "ddp")


@pytest.mark.slow
def test_a_hung_rank_is_given_up_on_after_the_collective_timeout(tmp_path, clean):
    out, mark = tmp_path / "run", tmp_path / "hung_at"
    pair = Pair("hang", out, env={"FAULT_MARK": str(mark)})
    try:
        code0, err0, ended_at = pair.wait(0)
        hung_at = float(mark.read_text())
    finally:
        pair.kill()
    assert code0 == 2
    line = _last_line(err0)
    assert line.startswith("mhpo-vl: error: rank 0: stopped because rank 1 did not answer"), line
    assert f"trainer.collective_timeout={TIMEOUT} s" in line and "last finished step 2" in line
    assert TIMEOUT - 2 < ended_at - hung_at < TIMEOUT + 30
    _resume_is_exact(out, clean / "ddp")
