"""Answer forms the evaluation path (``eval score mathvista``) reads, one rule each.

Responses here are written for these tests (not taken from the MathVista files): each
group pins one rule of :mod:`mhpo_vl.eval.reading` or :mod:`mhpo_vl.eval.mathvista`,
with a near miss that the rule must leave alone.
"""

from __future__ import annotations

import json

import pytest

from mhpo_vl.cli import main
from mhpo_vl.eval.mathvista import score_file, score_item
from mhpo_vl.eval.reading import _restated_choice, extract_for_eval

MC = {
    "question": "What is the length of segment AB?",
    "choices": ["3", "4", "5", "6"],
    "answer": "3",
    "question_type": "multi_choice",
    "answer_type": "text",
    "precision": None,
}
FREE = {
    "question": "How many birds are on the wire?",
    "choices": None,
    "answer": "0",
    "question_type": "free_form",
    "answer_type": "integer",
    "precision": None,
}

# --- 1. refusals: scored wrong, never mapped onto an option, counted -------------------

REFUSALS = [
    "The length of AB cannot be determined from the figure.",
    "There is not enough information to answer this question.",
    "I cannot answer this question without a clearer image.",
    "It is impossible to tell how long the segment is.",
    "Sorry, I am unable to determine the answer from the image.",
]


@pytest.mark.parametrize("row", [MC, FREE], ids=["multi_choice", "free_form"])
@pytest.mark.parametrize("response", REFUSALS)
def test_a_refusal_scores_zero_and_maps_onto_no_option(row, response):
    scored = score_item({**row, "response": response}, False, "official")
    assert scored["refusal"] is True
    assert scored["prediction"] is None and scored["true_false"] is False
    assert scored["extraction"] == ""


@pytest.mark.parametrize(
    "response",
    [
        "The figure is not clear, but the answer is (A).",
        "I cannot measure it exactly; it is approximately 3 units, so the answer is A.",
    ],
)
def test_an_answer_after_a_doubt_is_not_a_refusal(response):
    scored = score_item({**MC, "response": response}, False, "official")
    assert scored["refusal"] is False and scored["true_false"] is True


def test_a_refusal_to_a_question_whose_option_says_so_is_an_answer():
    row = {**MC, "choices": ["3", "4", "Cannot be determined"], "answer": "Cannot be determined"}
    scored = score_item({**row, "response": "The answer is (C)."}, False, "official")
    assert scored["refusal"] is False and scored["true_false"] is True


def test_scores_file_counts_refusals(tmp_path):
    items = {
        "1": {**MC, "response": "The answer is A."},
        "2": {**MC, "response": REFUSALS[0]},
        "3": {**FREE, "response": REFUSALS[1]},
        "4": {**FREE, "response": "There are 0 birds."},
    }
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(items))
    scores, _ = score_file(path, tmp_path / "out")
    expected = {"count": 2, "total": 4, "fraction": 0.5, "pids": ["2", "3"]}
    assert scores["refusals"] == expected
    written = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert written["refusals"] == expected and written["average"]["correct"] == 2


def test_a_guess_between_options_is_a_hedge_not_a_refusal():
    scored = score_item({**MC, "response": "Either B or C, I am not sure."}, False, "official")
    assert scored["refusal"] is False and scored["prediction"] is not None


# --- 2. an option letter after a prefix or a colon ----------------------------------------

YES_NO = {**MC, "question": "Is the line straight?", "choices": ["Yes", "No"], "answer": "No"}


@pytest.mark.parametrize(
    "row, response, expected",
    [
        (YES_NO, "A: No, because the line bends near the middle.", "Yes"),
        (YES_NO, "B: No, because the line bends near the middle.", "No"),
        (MC, "The solution is B: 5", "4"),  # the letter names the option, not "5"
        (MC, "After measuring the segment, the solution is C: 6.", "5"),
        (MC, "Answer: (C)", "5"),
        (MC, "Looking at the ruler carefully.\nAnswer: (D)", "6"),
        (MC, "Final answer: B: 4", "4"),
        (MC, "AB spans two grid squares of 2 each.\nSolution: B", "4"),
        (MC, "Result: (D) because AB is the longest side.", "6"),
    ],
)
def test_an_option_letter_after_a_prefix_or_colon(row, response, expected):
    assert score_item({**row, "response": response}, False, "official")["prediction"] == expected


def test_a_capital_word_with_a_colon_is_not_an_option_letter():
    """ "I: ..." is the pronoun in a transcript, not option I (there are only four)."""
    scored = score_item({**MC, "response": "Note: I think so."}, False, "official")
    assert scored["extraction"] != "I"


# --- 3. where our extraction and the file's own extraction disagree ----------------------


def test_disagreements_with_the_files_own_extraction_are_written(tmp_path):
    items = {
        "1": {**MC, "response": "The answer is A.", "extraction": "A"},  # same letter
        "2": {**MC, "response": "So AB = 3.", "extraction": "(A) 3"},  # same option
        "3": {**MC, "response": "The answer is B.", "extraction": "A"},  # differ
        "4": {**MC, "response": REFUSALS[0], "extraction": "It cannot be determined"},
        "5": {**FREE, "response": "There are 0 birds."},  # no own extraction: not compared
    }
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(items))
    scores, _ = score_file(path, tmp_path / "out")
    assert scores["extraction_agreement"] == {
        "compared": 4,
        "disagree": 2,
        "fraction": 0.5,
        "file": "disagreements.jsonl",
    }
    lines = (tmp_path / "out" / "disagreements.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["pid"] for r in rows] == ["3", "4"]
    first = rows[0]
    assert first["ours"] == {"extraction": "B", "prediction": "4", "true_false": False}
    assert first["theirs"] == {"extraction": "A", "prediction": "3", "true_false": True}
    assert first["response"] == "The answer is B." and first["answer"] == "3"
    assert rows[1]["ours"]["prediction"] is None and rows[1]["refusal"] is True


def test_a_long_response_is_cut_to_its_end_in_the_review_file(tmp_path):
    response = "x " * 1000 + "The answer is B."
    items = {"1": {**MC, "response": response, "extraction": "A"}}
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(items))
    score_file(path, tmp_path / "out")
    row = json.loads((tmp_path / "out" / "disagreements.jsonl").read_text())
    assert row["response"].endswith("The answer is B.") and len(row["response"]) <= 401


def test_no_review_file_without_own_extractions(tmp_path):
    path = tmp_path / "preds.json"
    path.write_text(json.dumps({"1": {**MC, "response": "The answer is A."}}))
    scores, _ = score_file(path, tmp_path / "out")
    assert "extraction_agreement" not in scores
    assert not (tmp_path / "out" / "disagreements.jsonl").exists()


def test_eval_score_prints_refusals_and_disagreements(tmp_path, capsys):
    items = {
        "1": {**MC, "response": "The answer is B.", "extraction": "A"},
        "2": {**MC, "response": REFUSALS[2], "extraction": "I cannot answer"},
    }
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(items))
    assert main(["eval", "score", "mathvista", str(path), "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "refusals (scored wrong, not mapped onto a choice): 1 of 2 (50.0%)" in out
    assert "2 of 2 differ (100.0%)" in out and "disagreements.jsonl" in out


# --- 4. an equation's right-hand side; the prompt's own instruction echoed ----------------

DOTS = {
    **FREE,
    "question": "Fill in the blank to describe the model. The model has 4 dots divided into "
    "2 equal groups. There are (_) dots in each group.",
    "answer": "2",
}
ECHO = {
    "question": "Hint: Please answer the question requiring an integer answer and provide the "
    "final value, e.g., 1, 2, 3, at the end.\nQuestion: How many birds are on the wire?",
    "choices": None,
    "answer": "3",
    "question_type": "free_form",
    "answer_type": "integer",
    "precision": None,
}


@pytest.mark.parametrize(
    "response",
    [
        "4/2 = 2 dots in each group.",
        "To find the dots in each group we divide: 4/2 = 2 dots in each group",
        "There are 4 dots in 2 groups, so 4 ÷ 2 = 2 dots in each group.",
    ],
)
def test_an_equations_right_hand_side_is_the_answer(response):
    scored = score_item({**DOTS, "response": response}, False, "official")
    assert scored["extraction"] == "2" and scored["true_false"] is True


@pytest.mark.parametrize(
    "response, expected",
    [
        ("I count 3 birds on the wire. The final answer should be an integer.", "3"),
        ("There are 3 birds. As the question asks for an integer answer, e.g., 1, 2, 3.", "3"),
        ("Three birds sit on the wire.\nThe answer requires an integer value.", "3"),
    ],
)
def test_the_prompts_instruction_echoed_is_not_the_answer(response, expected):
    scored = score_item({**ECHO, "response": response}, False, "official")
    assert scored["extraction"] == expected


def test_an_echoed_instruction_alone_is_no_answer():
    scored = score_item({**ECHO, "response": "The final answer should be an integer."}, False)
    assert scored["prediction"] is None and scored["true_false"] is False


def test_a_right_hand_side_with_a_later_value_is_not_read_as_the_answer():
    row = {**FREE, "answer": "8.5", "answer_type": "float", "precision": 1}
    response = "AB = sqrt(8^2 + 15^2) = 17, so the radius is 8.5 inches."
    assert score_item({**row, "response": response}, False, "official")["extraction"] == "8.5"


# --- 5. option text restated in a sentence: meaning-bearing words, with a margin -----------

FISH = ["Population will decrease", "Population will increase", "Population will stay the same"]
QUESTION = "What will happen to the fish population if the algae die?"


@pytest.mark.parametrize(
    "response, expected",
    [
        ("Without algae to eat, the fish population will likely decrease.", FISH[0]),
        ("The fish would have more food, so their population increases.", FISH[1]),
        ("I think the population of fish stays the same over time.", FISH[2]),
    ],
)
def test_option_text_restated_in_a_sentence(response, expected):
    assert extract_for_eval(response, FISH, "text", QUESTION) == expected


@pytest.mark.parametrize(
    "response",
    [
        "The fish will have a hard time finding food.",  # names no option
        "The population could decrease or increase depending on the season.",  # no margin
        "The population will not decrease.",  # negated
        "Population is a word that names many things.",  # shared word only
    ],
)
def test_a_sentence_that_matches_no_option_stays_unmatched(response):
    assert extract_for_eval(response, FISH, "text", QUESTION) is None


@pytest.mark.parametrize(
    "response, choices",
    [
        (
            "The samples have the same temperature.",
            ["sample A", "sample B", "neither; the samples have the same temperature"],
        ),
        ("I'd need to see the image first.", ["A", "B", "C", "D"]),
    ],
)
def test_two_options_restated_or_one_letter_words_name_none(response, choices):
    """ "sample A" and the third option are both restated; "d" of "I'd" is no option D."""
    assert _restated_choice(response, choices) is None
