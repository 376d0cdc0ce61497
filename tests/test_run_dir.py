"""One output directory, one run: a resume with another recipe is refused, two runs at
once are refused, a stale lock is taken over, and a write that fails mid-run (the
directory removed, or made read-only) is one line naming the file, the cause and the
last good checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mhpo_vl.checkpoint import write_checkpoint
from mhpo_vl.errors import RunHalted, UserError
from mhpo_vl.tracking import RunLogger
from mhpo_vl.training.rundir import RunLock, compare_recipes

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/tiny/mhpo.yaml"
QUICK = [
    "eval.at_start=false", "eval.every=0", "eval.size=8", "trainer.prompts_per_step=4",
    "rollout.group_size=4", "trainer.progress_bar=false", "trainer.report_to=[]",
]  # fmt: skip


def _train(recipe: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mhpo_vl", "train", recipe, f"trainer.output_dir={out}"]
    return subprocess.run(
        [*cmd, *QUICK, *overrides], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def _last_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ recipe on resume


def test_recipe_differences_split_into_altering_and_harmless():
    saved = {
        "name": "a", "seed": 0,
        "algorithm": {"loss": {"name": "mhpo"}}, "optim": {"lr": 1e-6},
        "trainer": {"max_steps": 10, "prompts_per_step": 8, "micro_batch_size": None},
        "eval": {"every": 5}, "data": {"train": "x", "eval": {"source": "e", "size": 10}},
        "parallel": {"strategy": "ddp"},
    }  # fmt: skip
    current = {
        "name": "b", "seed": 0,
        "algorithm": {"loss": {"name": "grpo", "eps": 0.2}}, "optim": {"lr": 1e-6},
        "trainer": {"max_steps": 20, "prompts_per_step": 16, "micro_batch_size": 4},
        "eval": {"every": 1}, "data": {"train": "x", "eval": {"source": "e", "size": 50}},
        "parallel": {"strategy": "fsdp"},
    }  # fmt: skip
    altering, harmless = compare_recipes(saved, current)
    assert altering == [
        ("algorithm.loss.eps", "(unset)", 0.2),
        ("algorithm.loss.name", "mhpo", "grpo"),
        ("trainer.prompts_per_step", 8, 16),
    ]
    assert [k for k, _, _ in harmless] == [
        "data.eval.size", "eval.every", "name", "parallel.strategy",
        "trainer.max_steps", "trainer.micro_batch_size",
    ]  # fmt: skip


@pytest.mark.parametrize("scheduler, warned", [("cosine", True), ("constant", False)])
def test_a_longer_resume_under_a_decaying_schedule_warns_of_the_lr_jump(
    tmp_path, caplog, scheduler, warned
):
    """max_steps may change on resume, but under a decaying schedule the remaining
    steps then follow the new length's learning rate: said, with the old and new length."""
    from mhpo_vl.config import recipe_to_dict
    from mhpo_vl.training.rundir import RECIPE_FILE, check_resume
    from mhpo_vl.validation import build_recipe

    over = [f"optim.scheduler={scheduler}"]
    saved = build_recipe({}, [*over, "trainer.max_steps=10"])
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(recipe_to_dict(saved)))
    with caplog.at_level("INFO", logger="mhpo_vl"):
        check_resume(tmp_path, build_recipe({}, [*over, "trainer.max_steps=20"]))
    assert "trainer.max_steps (10 -> 20)" in caplog.text  # reported as harmless
    warning = f"trainer.max_steps changed (10 -> 20) under optim.scheduler={scheduler}"
    assert (warning in caplog.text) is warned


@pytest.mark.slow
def test_resume_with_another_recipe_stops_naming_the_keys_and_the_ways_out(tmp_path):
    out = tmp_path / "run"
    assert _train(RECIPE, out, "trainer.max_steps=1").returncode == 0
    stored = yaml.safe_load((out / "checkpoint-1" / "recipe.yaml").read_text())
    assert stored["algorithm"]["loss"]["name"] == "mhpo" and stored["seed"] == 0

    other_loss = _train("recipes/tiny/grpo.yaml", out, "trainer.max_steps=2")
    assert other_loss.returncode == 2
    line = _last_line(other_loss)
    assert (
        "checkpoint-1 was trained with another recipe: algorithm.loss.name (mhpo -> grpo)" in line
    )
    assert "new trainer.output_dir" in line and "trainer.resume=false" in line
    other_seed = _train(RECIPE, out, "trainer.max_steps=2", "seed=1", "optim.lr=1e-3")
    assert other_seed.returncode == 2
    assert "optim.lr (0.0003 -> 0.001), seed (0 -> 1) differ" in _last_line(other_seed)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # untouched

    # what cannot change the updates may change: reported, and the run resumes
    longer = _train(RECIPE, out, "trainer.max_steps=2", "eval.size=4", "trainer.log_samples=1")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming" in longer.stderr and "trainer.max_steps (1 -> 2)" in longer.stderr
    assert "trainer.max_steps changed (1 -> 2) under optim.scheduler=cosine" in longer.stderr
    assert "resumed from" in longer.stderr

    # starting over on purpose removes the earlier run's checkpoints first
    over = _train("recipes/tiny/grpo.yaml", out, "trainer.max_steps=1", "trainer.resume=false")
    assert over.returncode == 0, over.stderr[-3000:]
    assert "checkpoint-2 (trainer.resume=false: starting over)" in over.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    stored = yaml.safe_load((out / "checkpoint-1" / "recipe.yaml").read_text())
    assert stored["algorithm"]["loss"]["name"] == "grpo"


# ------------------------------------------------------------------ the lock

HOLD = """
import sys, time
from mhpo_vl.training.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("holding", flush=True)
time.sleep(600)
"""


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_the_lock_names_its_holder_and_a_dead_holder_s_lock_is_taken_over(tmp_path, caplog):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(UserError) as err:
            RunLock(tmp_path).acquire()
        assert f"in use by another run (pid {holder.pid} on host " in str(err.value)
        assert str(tmp_path) in str(err.value) and "another trainer.output_dir" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    with caplog.at_level("INFO", logger="mhpo_vl"):
        lock.acquire()  # the killed holder's lock is stale: taken over, and said
    assert f"took over the lock of an earlier run that is gone (pid {holder.pid}" in caplog.text
    assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()
    lock.release()
    assert (tmp_path / ".lock").read_text() == ""  # a clean end leaves no holder
    again = RunLock(tmp_path)
    again.acquire()
    again.release()


@pytest.mark.slow
def test_a_second_run_on_a_busy_directory_stops_at_once(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)  # stands for a run in progress
    try:
        res = _train(RECIPE, out, "trainer.max_steps=1")
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2
    assert f"is in use by another run (pid {holder.pid} on host" in _last_line(res)
    assert not list(out.glob("checkpoint-*")) and not (out / "metrics.jsonl").exists()


# ------------------------------------------------------------------ writes that fail


def test_a_metrics_or_samples_write_that_fails_is_one_line_naming_the_last_checkpoint(tmp_path):
    logger = RunLogger(tmp_path, report_to=[])
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.pt").write_bytes(b"")
    (tmp_path / "samples.jsonl").mkdir()  # any OSError will do; this one even root gets
    logger.log(1, {"loss": 0.5})
    with pytest.raises(RunHalted) as err:
        logger.samples(1, [{"response": "x"}])
    text = str(err.value)
    assert text.startswith(f"cannot write {tmp_path / 'samples.jsonl'}: Is a directory")
    assert f"{tmp_path / 'checkpoint-3'} is intact, a rerun resumes from it" in text


def test_a_checkpoint_into_a_removed_directory_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_checkpoint(out, 1, lambda d: (d / "trainer_state.pt").write_bytes(b"1"), 2)
    shutil.rmtree(out)
    with pytest.raises(RunHalted) as err:
        write_checkpoint(out, 2, lambda d: (d / "trainer_state.pt").write_bytes(b"2"), 2)
    assert f"cannot write {out / 'checkpoint-2'}: No such file or directory" in str(err.value)
    assert "no checkpoint to resume from" in str(err.value)
    assert not out.exists()  # not silently recreated


FAULT = """
import os, subprocess
from pathlib import Path

OUT = Path({out!r})


def reward(response, row):
    # once the first checkpoint is on disk, the output directory goes {how}
    if (OUT / "checkpoint-1").exists() and not (OUT.parent / "done").exists():
        (OUT.parent / "done").touch()
        {action}
    return 0.0
"""
ACTIONS = {
    "read-only": "subprocess.run(['mount', '-o', 'remount,ro', str(OUT.parent)], check=True)",
    "removed": "import shutil; shutil.rmtree(OUT)",
}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "read-only"])
def test_an_output_directory_lost_mid_run_is_one_line(tmp_path, how):
    disk = tmp_path / "disk"
    disk.mkdir()
    if how == "read-only":  # root ignores file modes: a read-only mount is what stops it
        res = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(disk)], capture_output=True)
        if res.returncode:
            pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "run"
        fault = tmp_path / "fault.py"
        fault.write_text(FAULT.format(out=str(out), how=how, action=ACTIONS[how]))
        recipe = yaml.safe_load((ROOT / RECIPE).read_text())
        recipe["rewards"].append({"name": f"{fault}:reward", "weight": 0.0})
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        res = _train(str(tmp_path / "recipe.yaml"), out, "trainer.max_steps=3",
                     "trainer.save_every=1")  # fmt: skip
        assert res.returncode == 2, res.stderr[-3000:]
        line = _last_line(res)
        assert line.startswith(f"mhpo-vl: error: cannot write {out}/"), line
        if how == "read-only":
            assert "Read-only file system" in line
            assert f"{out / 'checkpoint-1'} is intact, a rerun resumes from it" in line
            assert (out / "checkpoint-1" / "trainer_state.pt").is_file()
        else:
            assert "No such file or directory" in line and "was removed" in line
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
