"""Checkpoints under faults: a full disk (a real size-limited tmpfs), a kill while pruning
or saving; a rerun always finds the last good checkpoint and nothing half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from test_train_e2e import _train

from mhpo_vl import checkpoint

RECIPE = "recipes/tiny/mhpo.yaml"
QUICK = ["eval.at_start=false", "eval.every=0", "eval.size=8", "trainer.report_to=[]"]
CKPT_MB = 17  # one checkpoint of the tiny model: weights, optimizer state, processor


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size in MiB (needs root and mount rights; skipped otherwise)."""
    mounted = []

    def make(size_mb: int):
        path = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.slow
def test_full_disk_makes_room_with_checkpoints_it_would_prune(small_disk):
    disk = small_disk(int(CKPT_MB * 2.4))  # two checkpoints fit, a third does not
    out = disk / "run"
    _train(RECIPE, out, "trainer.save_every=1", "trainer.keep_last=2", "trainer.max_steps=4",
           *QUICK)  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-3",
        "checkpoint-4",
    ]


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_rerun_resumes(small_disk):
    disk = small_disk(int(CKPT_MB * 1.5))  # one checkpoint fits, never two
    out = disk / "run"
    args = ["trainer.save_every=1", "trainer.keep_last=2", "trainer.max_steps=3", *QUICK]
    res = _train(RECIPE, out, *args, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "no space left on device" in last and "while writing checkpoint-2" in last
    assert "checkpoint-1 is intact" in last and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    again = _train(RECIPE, out, *args, check=False)
    assert "resumed from" in again.stderr and "checkpoint-1 is intact" in again.stderr


class _Killed(BaseException):
    pass


def _fake_checkpoint(root, step):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"w" * 100)
    (path / checkpoint.STATE_FILE).write_bytes(b"s")
    return path


def test_a_kill_while_pruning_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        _fake_checkpoint(tmp_path, step)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if ".deleting-" in str(path) and os.path.exists(path):
            os.remove(os.path.join(path, "model.safetensors"))  # half deleted, then killed
            raise _Killed()
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(_Killed):
        checkpoint.prune(tmp_path, keep_last=2)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 3]
    assert (tmp_path / ".deleting-checkpoint-1").exists()
    (tmp_path / ".checkpoint-4.tmp").mkdir()  # a save killed before its rename
    assert checkpoint.clean_leftovers(tmp_path) == [".checkpoint-4.tmp", ".deleting-checkpoint-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_prune_to_make_room_never_removes_the_last_good_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path, 1)
    assert not checkpoint.prune(tmp_path, keep_last=1, room_for_one=True)
    assert not checkpoint.prune(tmp_path, keep_last=3, room_for_one=True)
    _fake_checkpoint(tmp_path, 2)
    assert not checkpoint.prune(tmp_path, keep_last=3, room_for_one=True)  # a save keeps 3
    assert checkpoint.prune(tmp_path, keep_last=2, room_for_one=True)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path)] == [2]
    assert not checkpoint.prune(tmp_path, keep_last=0, room_for_one=True)  # keep all
