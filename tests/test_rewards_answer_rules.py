"""Two answer rules (stated in docs/evaluation.md, *Answers must commit*, and the verifiers'
docstring):

- a response that names more than one candidate value is not paid, an equation's other
  sides included: ``x = 3, y = 5`` names 3 and 5 (it was paid for gold 5, the value
  after the last ``=``). A gold that itself holds several values ("3, 5", "(3, 5)") is
  matched as a whole.
- only the last ``TAIL_CHARS`` characters of a response are read. An answer that opens
  within them is read in full (a phrase's line too, and a list of any length); one that
  opens before them (an answer over that length, or one followed by that much text) is
  refused: it scores 0 and is counted (``refused`` in reward_stats), never read from
  its cut end.
"""

from __future__ import annotations

import pytest

from mhpo_vl.rewards import REWARDS, judge, loading
from mhpo_vl.rewards.extract import TAIL_CHARS, unread_answer
from mhpo_vl.rewards.loading import reward_stats, score_rewards

INT = {"answer": "5", "choices": None, "answer_type": "integer", "question_type": "free_form"}
FLOAT = {"answer": "5.0", "choices": None, "answer_type": "float", "precision": 1}
FREE = {"answer": "5", "choices": None}
ROWS = [INT, FLOAT, FREE]
accuracy = REWARDS.get("accuracy")


@pytest.mark.parametrize(
    "response",
    [
        "<answer>x = 3, y = 5</answer>",
        "<answer>x = 3; y = 5</answer>",
        "<answer>x=3 and y=5</answer>",
        "<answer>x = 3 \\text{ and } y = 5</answer>",
        "<answer>x = 3,\\ y = 5</answer>",
        "<answer>3, y = 5</answer>",
        "<answer>3 or y = 5</answer>",
        "\\boxed{x = 3, y = 5}",
        "The answer is x = 3, y = 5.",
        "The answer is x = 3 or x = 5.",
        "<answer>3 or 5</answer>",
        "<answer>3, 5</answer>",
        "<answer>5, 3</answer>",
        "<answer>5; 3</answer>",
    ],
)
@pytest.mark.parametrize("row", ROWS, ids=["integer", "float", "math_verify"])
def test_answers_naming_several_values_are_not_paid(response, row):
    assert accuracy(response, row) == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "<answer>5</answer>",
        "<answer>x = 5</answer>",
        "<answer>y = 3 + 2 = 5</answer>",
        "<answer>5, 5</answer>",
        "The answer is x = 5.",
        "The answer is 5, since 3 + 2 = 5.",  # the sentence after the comma is prose
    ],
)
@pytest.mark.parametrize("row", ROWS, ids=["integer", "float", "math_verify"])
def test_one_value_is_paid(response, row):
    assert accuracy(response, row) == 1.0


@pytest.mark.parametrize(
    ("response", "gold", "paid"),
    [
        ("<answer>3, 5</answer>", "3, 5", 1.0),
        ("<answer>(3, 5)</answer>", "(3, 5)", 1.0),
        ("<answer>3, 5</answer>", "(3, 5)", 1.0),
        ("<answer>(3, 5)</answer>", "3", 0.0),
        ("<answer>x = 3, y = 5</answer>", "(3, 5)", 0.0),  # not matched as a whole
        ("<answer>1,000</answer>", "1000", 1.0),  # a thousands separator lists nothing
    ],
)
def test_golds_with_several_values_match_as_a_whole(response, gold, paid):
    assert accuracy(response, {"answer": gold, "choices": None}) == paid


def _long(n: int) -> str:
    return "1" + "0" * (n - 1)


@pytest.mark.parametrize("row_type", [None, "integer"])
def test_an_answer_within_the_window_is_read_in_full(row_type):
    gold = _long(TAIL_CHARS - 100)
    row = {"answer": gold, "choices": None, "answer_type": row_type}
    verdict = judge(f"reasoning\n<answer>{gold}</answer>", row)
    assert verdict.extraction == gold
    assert verdict.correct is (row_type is None)  # integer rows compare as MathVista does


@pytest.mark.parametrize(
    "response",
    [
        f"<answer>{_long(100_001)}</answer>",  # the 100,001-digit answer
        f"\\boxed{{{_long(100_001)}}}",
        "<answer>5</answer>" + " and so on" * TAIL_CHARS,  # the answer before the window
    ],
)
def test_an_answer_before_the_window_is_refused_and_counted(response, monkeypatch):
    monkeypatch.setattr(loading, "_STATS", {})
    assert "last" in unread_answer(response) and f"{TAIL_CHARS:,}" in unread_answer(response)
    gold = _long(100_001) if "1000" in response else "5"
    for row in ({"answer": gold, "choices": None}, {**INT, "answer": gold}):
        assert judge(response, row).correct is False
        total, _ = score_rewards([("accuracy", 1.0)], [response], [row])
        assert total == [0.0]
    assert reward_stats()["accuracy"]["refused"] == 2
    assert reward_stats()["accuracy"]["failures"] == 0  # a verdict, not a failure


def test_responses_within_the_window_and_late_answers_are_never_refused():
    assert unread_answer("<answer>5</answer>") is None
    assert unread_answer("x" * 10 * TAIL_CHARS + "<answer>5</answer>") is None
    assert unread_answer("<answer>4</answer>" + "x" * TAIL_CHARS + "<answer>5</answer>") is None
    assert unread_answer("x" * 10 * TAIL_CHARS + " so 3") is None  # no answer marked


def test_a_phrase_line_is_read_to_its_end():
    # the rest of the line used to be cut at 300 characters: "5" was read
    response = "The answer is 5" + " " * 400 + "+ 1"
    assert judge(response, FREE).correct is False
    assert judge("The answer is " + _long(500), {"answer": _long(500), "choices": None}).correct


def test_a_long_list_is_read_in_full():
    values = list(range(1, 800))
    row = {"answer": str(values), "choices": None, "answer_type": "list"}
    assert judge(f"The answer is {values}", row).correct is True
