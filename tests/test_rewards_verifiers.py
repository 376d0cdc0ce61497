"""Verifiers, user rewards, batch scoring, time bounds and DAPO overlong shaping."""

from __future__ import annotations

import threading
import time

import pytest

from mhpo_vl.errors import UserError
from mhpo_vl.rewards import (
    REWARDS,
    judge,
    load_reward,
    math_equal,
    mathcheck,
    overlong_penalty,
    reward_stats,
    score_rewards,
)

MC = {"answer": "36", "choices": ["30", "36", "72", "24"], "question_type": "multi_choice"}
FREE = {"answer": "\\frac{1}{2}", "choices": None}
INT = {"answer": "4", "choices": None, "answer_type": "integer", "question_type": "free_form"}
FLOAT = {"answer": "1.2", "choices": None, "answer_type": "float", "precision": 1}
# sympy spins on 9^(9^(9^9)); math-verify has no way out without a timer
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"


def test_registered_names():
    assert {
        "accuracy",
        "math_answer",
        "multiple_choice",
        "think_answer_format",
        "answer_format",
        "choice_letters",
    } <= set(REWARDS.names())
    with pytest.raises(UserError, match="valid names: .*accuracy"):
        REWARDS.get("acuracy")


@pytest.mark.parametrize(
    "response, row, expected",
    [
        ("<answer>B</answer>", MC, 1.0),
        ("<answer>36</answer>", MC, 1.0),
        ("The answer is (A) 30.", MC, 0.0),
        ("I cannot tell.", MC, 0.0),  # no edit-distance luck
        ("\\boxed{0.5}", FREE, 1.0),  # math-verify: 0.5 == 1/2
        ("The answer is 1/2", FREE, 1.0),
        ("\\boxed{2}", FREE, 0.0),
        ("Final value: 4", INT, 1.0),
        ("4.7", INT, 1.0),  # the official integer rule truncates
        ("<answer>1.23</answer>", FLOAT, 1.0),  # rounded to precision 1
        ("<answer>1.3</answer>", FLOAT, 0.0),
        ("", INT, 0.0),
    ],
)
def test_accuracy(response, row, expected):
    assert REWARDS.get("accuracy")(response, row) == expected


def test_multiple_choice_and_math_answer_split_by_row_kind():
    assert REWARDS.get("multiple_choice")("B", MC) == 1.0
    assert REWARDS.get("multiple_choice")("\\boxed{0.5}", FREE) == 0.0  # no choices
    assert REWARDS.get("math_answer")("\\boxed{36}", MC) == 1.0  # choices ignored
    assert REWARDS.get("math_answer")("<answer>B</answer>", MC) == 0.0
    letter_gold = {"answer": "B", "choices": ["x", "y"]}  # MathVision-style letter gold
    assert REWARDS.get("accuracy")("<answer>y</answer>", letter_gold) == 1.0
    no_choices = {"answer": "B", "choices": None}  # a letter gold whose options were not parsed
    assert REWARDS.get("accuracy")("So the answer is (B).", no_choices) == 1.0
    assert REWARDS.get("accuracy")("<answer>A</answer>", no_choices) == 0.0


def test_math_answer_is_gold_first(monkeypatch):
    import math_verify

    assert math_equal("\\frac{1}{2}", "0.5") is True
    seen = []
    real = math_verify.verify

    def spy(gold, target, **kwargs):
        seen.append((gold[-1], target[-1]))
        return real(gold, target, **kwargs)

    monkeypatch.setattr(math_verify, "verify", spy)
    assert REWARDS.get("math_answer")("\\boxed{3}", {"answer": "\\sqrt{9}"}) == 1.0
    assert seen == [("\\sqrt{9}", "3")]  # parse(gold) goes first


def test_judge_reports_extraction_and_prediction():
    verdict = judge("So the answer is B.", MC)
    assert (verdict.extraction, verdict.prediction, verdict.correct) == ("B", "36", True)
    assert judge(None, MC).correct is False


@pytest.mark.parametrize(
    "response, fmt, ans",
    [
        ("<think>a</think><answer>1</answer>", 1.0, 1.0),
        ("  <think>\na\n</think>\n<answer> 1 </answer>\n", 1.0, 1.0),
        ("<think>a</think>", 0.0, 0.0),
        ("<answer>1</answer>", 0.0, 1.0),
        ("<think>a</think><answer> </answer>", 0.0, 0.0),
        ("<think>a</think><answer>1</answer> extra", 0.0, 1.0),
        ("<think>a<think>b</think><answer>1</answer>", 0.0, 1.0),
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0, 1.0),
    ],
)
def test_format_rewards(response, fmt, ans):
    assert REWARDS.get("think_answer_format")(response, MC) == fmt
    assert REWARDS.get("answer_format")(response, MC) == ans


def test_format_reward_is_linear_on_long_unclosed_input():
    start = time.monotonic()
    assert REWARDS.get("think_answer_format")("<think>" + "x" * 200_000, MC) == 0.0
    assert time.monotonic() - start < 2.0


def test_choice_letters():
    fn = REWARDS.get("choice_letters")
    assert fn("<answer>A, C</answer>", {"answer": "A, C"}) == 1.0
    assert fn("The answer is (C) and (A).", {"answer": "AC"}) == 1.0
    assert fn("<answer>A</answer>", {"answer": "A, C"}) == 0.0


def test_pathological_input_is_bounded_on_main_thread(monkeypatch):
    monkeypatch.setattr(mathcheck, "MATH_TIMEOUT", 1.0)
    start = time.monotonic()
    assert REWARDS.get("math_answer")(PATHOLOGICAL, {"answer": "2", "choices": None}) == 0.0
    assert time.monotonic() - start < 3.0
    assert REWARDS.get("math_answer")("\\boxed{2}", {"answer": "2", "choices": None}) == 1.0


def test_off_main_thread_uses_a_killable_worker(monkeypatch):
    monkeypatch.setattr(mathcheck, "MATH_TIMEOUT", 1.0)
    out: dict[str, float] = {}

    def work() -> None:
        out["warm"] = REWARDS.get("math_answer")("\\boxed{0.5}", FREE)  # starts the worker
        start = time.monotonic()
        out["slow"] = REWARDS.get("math_answer")(PATHOLOGICAL, {"answer": "2", "choices": None})
        out["slow_s"] = time.monotonic() - start
        out["after"] = REWARDS.get("math_answer")("\\boxed{0.5}", FREE)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert out["warm"] == 1.0 and out["slow"] == 0.0 and out["after"] == 1.0
    assert out["slow_s"] < 4.0  # timeout 1 s + grace 1 s, never the sympy spin


def _write(tmp_path, body: str):
    path = tmp_path / "my_reward.py"
    path.write_text(body)
    return path


def test_user_reward_loading_errors(tmp_path):
    with pytest.raises(UserError, match="reward file not found: .*nope.py"):
        load_reward(str(tmp_path / "nope.py") + ":f")
    path = _write(tmp_path, "def good(response, row):\n    return 1.0\n")
    with pytest.raises(UserError, match="'bad' not found in .*my_reward.py"):
        load_reward(f"{path}:bad")
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        load_reward("nope")


def test_user_reward_exceptions_score_zero_and_are_counted(tmp_path):
    path = _write(
        tmp_path,
        "def flaky(response, row):\n"
        "    if response == 'boom':\n"
        "        raise RuntimeError('boom')\n"
        "    return len(response) / 10\n",
    )
    fn = load_reward(f"{path}:flaky", isolate=False)
    assert fn("abc", {}) == pytest.approx(0.3)
    assert fn("boom", {}) == 0.0
    stats = reward_stats()["my_reward.py:flaky"]
    assert stats["failures"] == 1 and stats["calls"] == 2


def test_isolated_user_reward_that_hangs_returns_zero_within_bound(tmp_path):
    path = _write(
        tmp_path,
        "import time\n"
        "def slow(response, row):\n"
        "    if response == 'hang':\n"
        "        time.sleep(60)\n"
        "    return 0.5 + row.get('bonus', 0)\n",
    )
    fn = load_reward(f"{path}:slow", isolate=True, timeout=1.0)
    assert fn("fine", {"bonus": 0.25, "image": object()}) == 0.75  # image not sent
    start = time.monotonic()
    assert fn("hang", {}) == 0.0
    assert time.monotonic() - start < 3.0
    assert fn("fine", {}) == 0.5  # a fresh worker took over


def test_score_rewards_weights_and_parts(tmp_path):
    path = _write(tmp_path, "def half(response, row):\n    return 0.5\n")
    responses = ["<think>x</think><answer>36</answer>", "<answer>30</answer>", "nothing"]
    total, parts = score_rewards(
        [("accuracy", 0.9), ("think_answer_format", 0.1), (f"{path}:half", 1.0)],
        responses,
        [MC] * 3,
    )
    assert parts["accuracy"] == [1.0, 0.0, 0.0]
    assert parts["think_answer_format"] == [1.0, 0.0, 0.0]
    assert parts["my_reward.py:half"] == [0.5, 0.5, 0.5]
    assert total == pytest.approx([0.9 + 0.1 + 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="2 responses but 1 rows"):
        score_rewards([("accuracy", 1.0)], ["a", "b"], [MC])
    with pytest.raises(UserError, match="listed twice"):
        score_rewards([("accuracy", 1.0), ("accuracy", 1.0)], ["a"], [MC])


@pytest.mark.parametrize(
    "length, expected",
    [
        (70, 0.0),  # max_len 100, buffer 20: free up to 80
        (80, 0.0),
        (85, -0.25),  # -(85 - 80) / 20
        (90, -0.5),
        (100, -1.0),
        (130, -1.0),  # past max_len: DAPO's -1
    ],
)
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, 100, 20) == pytest.approx(expected)
    assert overlong_penalty(length, 100, 20, factor=0.5) == pytest.approx(expected * 0.5)


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(10, 100, 0)


def test_format_reward_on_megabyte_inputs():
    fn = REWARDS.get("think_answer_format")
    start = time.perf_counter()
    assert fn("<think>" + "x" * 1_000_000 + "</think><answer>1</answer>", MC) == 1.0
    assert fn("<think>" + "<answer>" * 100_000, MC) == 0.0
    assert fn("<think>a</think>" + " " * 1_000_000 + "<answer>1</answer>", MC) == 1.0
    assert time.perf_counter() - start < 30.0  # a hang guard (backtracking would be hours)


@pytest.mark.parametrize(
    "response, row, expected",
    [
        ("<answer>36</answer><answer>30</answer>", MC, 0.0),  # one answer per option
        ("\\boxed{4} or \\boxed{5}", INT, 0.0),
        ("\\boxed{x = 4}", INT, 1.0),
        ("\\boxed{5 = 4}", INT, 0.0),  # a false equation states nothing
        ("\\boxed{0.5 = \\frac{1}{2}}", FREE, 1.0),
        ("\\boxed{2 = \\frac{1}{2}}", FREE, 0.0),
        ("\\boxed{\\frac{1}{2} + __import__('os')}", FREE, 0.0),
    ],
)
def test_one_answer_one_candidate(response, row, expected):
    assert REWARDS.get("accuracy")(response, row) == expected
