"""One deadline per step for reward time (``trainer.reward_step_timeout``).

A step's responses are scored in parallel worker processes; at the deadline the calls
still running are cut off: they score 0, are counted (``cut_off`` in reward_stats and
the step's failures) and logged with their prompt ids. Before, each call had its own
bound (10 s for a user reward, 5 s per math-verify call) on the trainer's main thread,
so a group of responses that all ran to their bound added up to tens of seconds."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from mhpo_vl.errors import UserError
from mhpo_vl.rewards import loading, workers
from mhpo_vl.rewards.loading import reward_stats, score_rewards
from mhpo_vl.validation import load_recipe

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "mhpo.yaml")
STARTUP_S = 15.0  # generous: two fresh workers import mhpo_vl on a loaded 2-core machine
MC = {"answer": "36", "choices": ["30", "36", "72", "24"], "question_type": "multi_choice"}
FREE = {"answer": "5", "choices": None}


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(loading, "_LOADED", {})
    monkeypatch.setattr(loading, "_STATS", {})
    yield
    workers.close_step_pools()


def _hanging(tmp_path) -> str:
    path = tmp_path / "slow_reward.py"
    path.write_text(
        "import time\n\n"
        "def score(response, row):\n"
        "    if response == 'hang':\n"
        "        time.sleep(600)\n"
        "    return 1.0\n"
    )
    return f"{path}:score"


def test_calls_running_at_the_deadline_are_cut_off_counted_and_logged(tmp_path, caplog):
    responses = ["fine"] * 4 + ["hang"] * 4
    rows = [{"id": f"q{i}"} for i in range(8)]
    failures: dict = {}
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    total, parts = score_rewards(
        [(_hanging(tmp_path), 1.0)], responses, rows, failures, step_timeout=2.0, workers=2
    )
    elapsed = time.monotonic() - start
    assert elapsed < 2.0 + STARTUP_S  # not 4 x the 10 s per-call bound
    assert parts["slow_reward.py:score"] == [1.0] * 4 + [0.0] * 4
    count, first = failures["slow_reward.py:score"]
    assert count == 4 and first.startswith("row 'q4': cut off at the step deadline")
    stats = reward_stats()["slow_reward.py:score"]
    assert stats["cut_off"] == 4 and stats["failures"] == 4 and stats["calls"] == 8
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "4 of 8" in said and "trainer.reward_step_timeout" in said
    assert all(f"'q{i}'" in said for i in range(4, 8))


def test_the_pool_recovers_after_a_cut_off(tmp_path):
    spec = _hanging(tmp_path)
    score_rewards([(spec, 1.0)], ["hang", "hang"], [{}, {}], step_timeout=1.0, workers=2)
    total, _ = score_rewards([(spec, 1.0)], ["a", "b", "c"], [{}] * 3, step_timeout=60.0)
    assert total == [1.0, 1.0, 1.0]


def test_math_verify_spins_are_bounded_by_the_step_not_per_call():
    # each call alone stops at math-verify's 5 s; eight of them in a row were 40 s
    spin = "\\boxed{9^{9^{9^{9^{9}}}}}"
    responses = [spin] * 8 + ["\\boxed{5}"]
    failures: dict = {}
    start = time.monotonic()
    total, parts = score_rewards(
        [("math_answer", 1.0)], responses, [FREE] * 9, failures, step_timeout=3.0, workers=2
    )
    assert time.monotonic() - start < 3.0 + STARTUP_S
    assert total[:8] == [0.0] * 8


def test_the_step_scores_what_the_serial_path_scores(tmp_path):
    path = tmp_path / "half.py"
    path.write_text("def half(response, row):\n    return 0.5\n")
    responses = ["<think>x</think><answer>36</answer>", "<answer>30</answer>", "nothing"] * 5
    specs = [("accuracy", 0.9), ("think_answer_format", 0.1), (f"{path}:half", 1.0)]
    serial = score_rewards(specs, responses, [MC] * 15)
    stepped = score_rewards(specs, responses, [MC] * 15, step_timeout=60.0, workers=2)
    assert stepped == serial


def test_cheap_built_ins_never_start_a_worker(monkeypatch):
    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started for a cheap reward")

    monkeypatch.setattr(workers, "_Worker", no_worker)
    total, _ = score_rewards(
        [("think_answer_format", 1.0), ("answer_format", 1.0)],
        ["<think>a</think><answer>1</answer>", "x"],
        [MC, MC],
        step_timeout=5.0,
    )
    assert total == [2.0, 0.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.reward_step_timeout=0", "trainer.reward_step_timeout: must be > 0"),
        ("trainer.reward_step_timeout=-1", "trainer.reward_step_timeout: must be > 0"),
        ("trainer.reward_workers=0", "trainer.reward_workers: must be"),
    ],
)
def test_the_step_timeout_and_pool_size_are_checked(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_recipe(RECIPE, [override])


def test_the_defaults():
    trainer = load_recipe(RECIPE).trainer
    assert trainer.reward_step_timeout == 120.0 and trainer.reward_workers == 2


def test_a_step_shares_one_budget_over_dynamic_sampling_tries(monkeypatch):
    """``rollout`` passes each try what is left of ``trainer.reward_step_timeout``."""
    from types import SimpleNamespace

    import torch

    from mhpo_vl.training import collect

    cfg = load_recipe(RECIPE, ["trainer.reward_step_timeout=50", "trainer.reward_workers=3"])
    G = cfg.rollout.group_size
    seen = []

    def fake_score(specs, responses, rows, failures, step_timeout, workers):
        seen.append((step_timeout, workers))
        return [0.0] * len(responses), {"accuracy": [0.0] * len(responses)}

    def generate(prompts, sampling):
        n = len(prompts) * sampling.n
        return SimpleNamespace(completions=["x"] * n, input_ids=torch.zeros(n, 2))

    monkeypatch.setattr(collect, "score_rewards", fake_score)
    run = SimpleNamespace(
        cfg=cfg,
        engine=SimpleNamespace(generate=generate),
        timings={"generate": 0.0, "reward": 0.0},
        reward_calls=0,
        reward_failures={},
    )
    row = {"id": "q", "question": "How many?", "answer": "3", "choices": None}
    collect.rollout(run, [row])
    run.timings["reward"] = 20.0  # as if the first try took 20 s
    collect.rollout(run, [row])
    assert seen[0] == (50.0, 3) and seen[1][0] == pytest.approx(30.0, abs=0.5)
    assert run.reward_calls == 2 * G


def test_cut_offs_and_refusals_are_summed_over_processes():
    from mhpo_vl.training.metrics import REDUCTIONS

    for key in ("reward_cut_off/accuracy", "reward_refused/accuracy"):
        rule = next(r for r in REDUCTIONS if r.matches(key))
        assert rule.over_processes == "sum"
