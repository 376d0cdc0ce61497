"""A reward call that fails is counted per call of score_rewards, with a description the
trainer can stop on: exceptions, timeouts and every value that is not a finite number."""

from __future__ import annotations

import pytest

from mhpo_vl.rewards.loading import score_rewards

BAD_VALUES = [
    ("float('nan')", "returned nan"),
    ("float('inf')", "returned inf"),
    ("-float('inf')", "returned -inf"),
    ("None", "returned None"),
    ("'1.0'", "returned '1.0'"),
    ("[1.0]", "returned [1.0]"),
    ("1 / 0", "ZeroDivisionError: division by zero"),
]
GOOD_VALUES = [("1", 1.0), ("0.25", 0.25), ("True", 1.0), ("-2", -2.0)]


def _reward(tmp_path, body: str) -> str:
    path = tmp_path / "my_reward.py"
    path.write_text(f"def score(response, row):\n    return {body}\n")
    return f"{path}:score"


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "worker"])
@pytest.mark.parametrize(("body", "why"), BAD_VALUES, ids=[b for b, _ in BAD_VALUES])
def test_bad_values_score_zero_and_are_reported(tmp_path, monkeypatch, isolate, body, why):
    from mhpo_vl.rewards import loading

    spec = _reward(tmp_path, body)
    monkeypatch.setattr(loading, "_LOADED", {})
    if not isolate:
        real = loading.load_reward
        monkeypatch.setattr(loading, "load_reward", lambda s: real(s, isolate=False))
    failures: dict = {}
    total, parts = score_rewards([(spec, 2.0)], ["a", "b"], [{"id": "r1"}, {"id": "r2"}], failures)
    assert total == [0.0, 0.0] and parts["my_reward.py:score"] == [0.0, 0.0]
    count, first = failures["my_reward.py:score"]
    assert count == 2 and first == f"row 'r1': {why}"


@pytest.mark.parametrize(("body", "score"), GOOD_VALUES, ids=[b for b, _ in GOOD_VALUES])
def test_numbers_are_scores_and_nothing_is_reported(tmp_path, body, score):
    failures: dict = {}
    total, _ = score_rewards([(_reward(tmp_path, body), 1.0)], ["a"], [{"id": "r"}], failures)
    assert total == [score] and failures == {}
