"""Checkpoint files, run logs and plots (the pieces the trainer composes)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mhpo_vl import checkpoint, rng
from mhpo_vl.errors import UserError
from mhpo_vl.plotting import plot_run
from mhpo_vl.tracking import RunLogger, read_metrics


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def test_checkpoints_are_atomic_complete_and_pruned(tmp_path, tiny_lm):
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(tmp_path, step, tiny_lm, None, {"step": step}, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-4", "checkpoint-6"]  # no temp folder left, oldest pruned
    assert (tmp_path / "checkpoint-6" / "model.safetensors").exists()
    assert checkpoint.load_state(tmp_path / "checkpoint-6") == {"step": 6}
    # A folder without its state file (a crash mid-write) is not a checkpoint.
    (tmp_path / "checkpoint-8").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert checkpoint.latest_checkpoint(tmp_path / "nothing") is None


def test_rng_state_round_trip():
    state = rng.state(torch.device("cpu"))
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    rng.restore(state, torch.device("cpu"))
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_logger_writes_jsonl_and_truncates_on_resume(tmp_path):
    logger = RunLogger(tmp_path, report_to=["tensorboard"])
    for step in range(4):
        logger.log(step, {"reward/mean": step / 4, "grad_norm": float("nan")})
        logger.samples(step, [{"response": f"r{step}", "reward": 1.0}])
    logger.truncate_after(2)
    logger.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[1]["reward/mean"] == 0.25 and records[1]["grad_norm"] == "nan"
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["response"] for s in samples] == ["r0", "r1", "r2"]
    assert any((tmp_path / "tb").iterdir())


def test_plot_writes_a_png_per_logged_panel(tmp_path):
    logger = RunLogger(tmp_path, report_to=[])
    logger.log(0, {"eval/accuracy": 0.3})
    for step in range(1, 6):
        logger.log(step, {"reward/mean": 0.1 * step, "reward/accuracy": 0.1 * step, "grad_norm": 1.0,
                          "ratio_min": 0.9, "ratio_mean": 1.0, "ratio_max": 1.1, "entropy": 0.5,
                          "response_length/mean": 2.0})  # fmt: skip
    logger.log(5, {"eval/accuracy": 0.6})
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["reward.png", "accuracy.png", "grad_norm.png", "ratio.png", "entropy.png", "length.png"]
    )
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_accuracy_panel_takes_every_eval_breakdown_and_nothing_else():
    from mhpo_vl.plotting import PANELS, _keys_for

    records = [
        {"step": 0, "eval/accuracy": 0.5, "eval/accuracy/count_all": 0.4, "time/eval": 2.0},
        {"step": 5, "eval/mathvista_testmini/accuracy": 0.3, "reward/mean": 0.1},
    ]
    assert _keys_for(records, PANELS["accuracy"][1]) == [
        "eval/accuracy",
        "eval/accuracy/count_all",
        "eval/mathvista_testmini/accuracy",
    ]


def test_plot_on_a_folder_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_run(tmp_path)


def test_tests_outside_the_gpu_tier_run_on_the_cpu():
    """conftest pins them: on a GPU machine CUDA is hidden from this process's code and
    from the processes a test starts (the torchrun and CLI tests)."""
    import os

    assert not torch.cuda.is_available()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
