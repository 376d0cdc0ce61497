"""The trainer drives the vLLM engine through the protocol: built from the recipe's
``engine_args``, woken for rollouts and put to sleep for the update, weights pushed
after every optimizer step, woken and put to sleep again for eval (no sync in between:
at sleep level 2 the next wake restores the weights itself); its approximate log-probs
make the trainer recompute the old ones, log the mismatch, and weight tokens by the
truncated importance ratio.

vLLM itself is the in-process stand-in of ``tests/vllm_standin.py`` (same API)."""

from __future__ import annotations

import json
import logging

import pytest
import vllm_standin

from mhpo_vl.trainer import train
from mhpo_vl.validation import load_recipe


@pytest.fixture()
def standin(monkeypatch):
    return vllm_standin.install(monkeypatch)


@pytest.mark.slow
def test_two_steps_with_the_vllm_engine(tmp_path, standin, monkeypatch):
    calls: list[str] = []
    for name in ("sleep", "wake_up", "collective_rpc"):
        original = getattr(standin.LLM, name)

        def spy(self, *a, _name=name, _original=original, **kw):
            calls.append(_name if _name != "sleep" else f"sleep {kw.get('level', a[:1])}")
            return _original(self, *a, **kw)

        monkeypatch.setattr(standin.LLM, name, spy)
    out = tmp_path / "run"
    cfg = load_recipe(
        "recipes/tiny/mhpo.yaml",
        [
            f"trainer.output_dir={out}", "trainer.max_steps=2", "rollout.engine=vllm",
            "rollout.engine_args={gpu_memory_utilization: 0.3, max_model_len: 1024, "
            "sleep_level: 2}", "trainer.prompts_per_step=4",
            "rollout.group_size=4", "algorithm.rollout_correction={level: token, cap: 2.0}",
            "eval.at_start=false", "eval.every=1", "eval.size=4", "trainer.progress_bar=false",
            "trainer.report_to=[]",
        ],
    )  # fmt: skip
    logging.getLogger("mhpo_vl").setLevel(logging.WARNING)
    metrics = train(cfg)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:  # the mismatch is logged every step, and it is small here
        assert 0 <= r["rollout/logprob_abs_diff_mean"] < 1e-3
        assert r["rollout/is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["eval/accuracy"] >= 0
    # per step: woken for rollouts, asleep for the update, weights pushed after it; then
    # woken for eval and asleep again (level 2: the next step's wake re-syncs)
    assert calls.count("sleep 2") == 4 and "sleep 1" not in calls
    assert calls.count("collective_rpc") >= 2 + 3  # the start (load + check), every step
    assert calls.count("wake_up") >= 4


def test_without_vllm_a_recipe_naming_it_exits_2_naming_the_package(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "train", "recipes/tiny/mhpo.yaml",
         "rollout.engine=vllm", "rollout.engine_args={max_model_len: 1024}",
         f"trainer.output_dir={tmp_path}", "eval.at_start=false"],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "needs the vllm package" in res.stderr.strip().splitlines()[-1]
