"""Adversarial responses: time bounds on huge inputs, and answers that commit to nothing.

Part 1 feeds megabyte-sized pathological responses through every public extraction and
verifier function. The bound (2 s, measured inside the test) is a complexity check, not
a benchmark: before the fix ``"answer" + 80,000 spaces + "x"`` took 25-60 s in the
phrase regex alone. Each case also puts a real answer at the end of the junk and
checks that it is still found.

Part 2 is the "one answer, one candidate" rule of :mod:`mhpo_vl.rewards.verifiers`:
hedges score 0 even when the gold is among the candidates; honest forms still score 1,
in particular everything the embedded default task trains on.
"""

from __future__ import annotations

import time

import pytest

from mhpo_vl.data.synthetic import target_text, text_problems, vision_problems
from mhpo_vl.eval.benchmarks import choices_from_options, choices_from_text
from mhpo_vl.eval.mathvista import is_well_formed, score_item
from mhpo_vl.rewards import REWARDS, extract_answer, judge, levenshtein, normalize_answer
from mhpo_vl.rewards.extract import (
    TAIL_CHARS,
    boxed_contents,
    last_boxed,
    last_list,
    last_phrase,
    last_tag_content,
    match_choice,
    numbers,
    side_value,
)

# A hang guard, not a timing claim: quadratic or backtracking work on a megabyte is
# hours; linear work is well under a second. The bound leaves room for a loaded machine.
BOUND_S = 30.0
MB = 1_000_000
MC = {"answer": "36", "choices": ["30", "36", "72", "24"], "question_type": "multi_choice"}
INT = {"answer": "5", "choices": None, "answer_type": "integer", "question_type": "free_form"}
FREE = {"answer": "5", "choices": None}

JUNK = {
    "spaces": " " * MB,
    "answer_spaces": "answer" + " " * MB + "x",
    "answer_repeats": "answer " * (MB // 7),
    "answer_is_repeats": "the answer is: " * (MB // 15),
    "nested_braces": "\\boxed{" + "{" * MB,
    "boxed_repeats": "\\boxed{" * (MB // 7),
    "answer_tags": "<answer>" * (MB // 8),
    "closed_tags": "<answer>5</answer>" * (MB // 18),  # the same answer many times
    "digits": "1" * MB,
    "digit_runs": "12 " * (MB // 3),
    "options": "(A) " * (MB // 4),
    "newlines": "\n" * MB,
    "text_wraps": "\\text{" * (MB // 6),
    "frac": "\\frac{1}{" * (MB // 9),
    "decimals": "1." * (MB // 2),
}


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{getattr(fn, '__name__', fn)} took {elapsed:.2f} s"
    return out


def test_the_old_quadratic_phrase_case_is_fast():
    text = "answer" + " " * 80_000 + "x"
    assert _timed(last_phrase, text) is None
    assert _timed(last_phrase, text + "\nThe answer is 7") == "7"


@pytest.mark.parametrize("name", sorted(JUNK))
def test_extraction_is_bounded_and_still_finds_the_final_answer(name):
    junk = JUNK[name]
    # no answer after the junk: nothing is found, quickly
    _timed(extract_answer, junk, None, "integer")
    _timed(extract_answer, junk, MC["choices"], "text")
    _timed(last_boxed, junk)
    _timed(last_phrase, junk)
    _timed(last_tag_content, junk)
    _timed(numbers, junk)
    _timed(last_list, junk)
    _timed(match_choice, junk, MC["choices"])
    # a real answer at the end is still the answer
    assert _timed(extract_answer, junk + "\n<answer>5</answer>", None, "integer") == "5"
    assert _timed(extract_answer, junk + "\n<answer>(B)</answer>", MC["choices"], "text") == "B"
    assert _timed(last_boxed, junk + "\n\\boxed{5}") == "5"
    assert _timed(last_phrase, junk + "\nThe answer is 5") == "5"
    assert _timed(last_tag_content, junk + "<answer>5</answer>") == "5"
    assert _timed(numbers, junk + " 42.5")[-1] == "42.5"
    assert _timed(last_list, junk + " [1, 2]") == "[1, 2]"
    first = "A" if name == "options" else "B"  # a span is read by its first "(X)"
    assert _timed(match_choice, junk + "\n(B)", MC["choices"]) == first


@pytest.mark.parametrize("name", sorted(JUNK))
def test_verifiers_are_bounded_and_score_the_final_answer(name):
    junk = JUNK[name]
    for fn_name in ("accuracy", "math_answer", "multiple_choice", "choice_letters"):
        fn = REWARDS.get(fn_name)
        _timed(fn, junk, MC)
        _timed(fn, junk, INT)
    _timed(REWARDS.get("think_answer_format"), junk, MC)
    _timed(REWARDS.get("answer_format"), junk, MC)
    assert _timed(judge, junk + "\n<answer>5</answer>", INT).correct is True
    assert _timed(judge, junk + "\n<answer>B</answer>", MC).correct is True
    assert _timed(REWARDS.get("answer_format"), junk + "<answer>5</answer>", MC) == 1.0
    assert _timed(REWARDS.get("choice_letters"), junk + "<answer>B</answer>", {"answer": "B"})


@pytest.mark.parametrize("name", ["answer_spaces", "nested_braces", "options", "digits"])
def test_math_verify_path_is_bounded_outside_math_verify(name, monkeypatch):
    from mhpo_vl.rewards import verifiers

    seen: list[int] = []
    monkeypatch.setattr(
        verifiers, "math_equal", lambda gold, pred, marked=True: seen.append(len(pred)) or True
    )
    verdict = _timed(judge, JUNK[name] + "\n\\boxed{5}", FREE)
    assert verdict.correct is True
    assert all(n <= TAIL_CHARS for n in seen)  # math-verify sees the tail only


@pytest.mark.parametrize("name", sorted(JUNK))
def test_mathvista_scoring_is_bounded(name):
    item = {**MC, "answer_type": "text", "response": JUNK[name] + "\n<answer>(B)</answer>"}
    assert _timed(score_item, item, False)["true_false"] is True
    _timed(score_item, {**item, "extraction": JUNK[name]}, True)  # official edit distance
    _timed(is_well_formed, JUNK[name], item)


def test_edit_distance_and_normalization_are_bounded():
    assert _timed(levenshtein, "a" * MB, "b" * MB) > 0
    assert _timed(normalize_answer, "x" * MB, ["6.5", "13"], "multi_choice", "text", None, True)


@pytest.mark.parametrize(
    "question",
    [
        "Choices:" + "\n" * MB + "x",
        "Choices:\nA: x" + " " * MB + "y\nB: z",
        "Choices: (A) x" + " " * MB + "y (B) z",
    ],
)
def test_benchmark_choice_parsing_is_linear(question):
    found = _timed(choices_from_text, question)
    assert found is None or found[-1] == "z"


def test_option_string_parsing_is_linear():
    assert _timed(choices_from_options, "A. x" + " " * MB + "y; B. z")[-1] == "z"


def test_boxes_nested_deeply_are_bounded():
    text = "\\boxed{" * 5000 + "5" + "}" * 5000
    assert _timed(last_boxed, text) == "5"
    assert len(_timed(boxed_contents, text)) > 0
    assert _timed(judge, text, INT).correct is True  # the same 5 in every box


# --- part 2: one answer, one candidate -------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        "36",
        "B",
        "(B)",
        "B.",
        "The answer is B.",
        "The answer is (B) 36.",
        "<answer>B</answer>",
        "<answer>(B) 36</answer>",
        "\\boxed{B}",
        "\\boxed{B} ... so \\boxed{B}",
        "<answer>B</answer> check: <answer>(B)</answer>",
        "The answer is B. A is wrong since it is 30.",
        "Option (A) is 30, too small.\nThe answer is (B).",
    ],
)
def test_honest_choice_answers_score(response):
    assert REWARDS.get("accuracy")(response, MC) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "A B C D",
        "B C",
        "A/B",
        "B/A",
        "A, B",
        "either A or B",
        "either B or A",
        "B or A",
        "A or B",
        "(A) (B)",
        "(B) (A)",
        "A\nB",
        "B\nA",
        "<answer>A</answer><answer>B</answer>",
        "<answer>B</answer><answer>A</answer>",
        "<answer>B or A</answer>",
        "\\boxed{A}\\boxed{B}",
        "\\boxed{B}\\boxed{A}",
        "\\boxed{A} \\boxed{B} \\boxed{C} \\boxed{D}",
        "The answer is B or A",
        "Answer: A\nAnswer: B",
        "36 or 30",
        "30, 36",
        "<answer>36 or 30</answer>",
        "<answer>36</answer><answer>30</answer>",
        "The answer is 36 or 72.",
        "(B) 36 (A) 30",
    ],
)
def test_choice_hedges_score_zero(response):
    assert REWARDS.get("accuracy")(response, MC) == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "5",
        "\\boxed{5}",
        "x = 5",
        "\\boxed{x = 5}",
        "<answer>5</answer>",
        "<answer>x = 5</answer>",
        "\\boxed{5} ... so \\boxed{5}",
        "<answer>5</answer> <answer>5.0</answer>",
        "3 + 2 = 5, so the answer is 5",
        "The answer is 5 because 3 + 2 = 5",
        "The answer is 5.",
        "Answer: 5",
        "\\boxed{3 + 2 = 5}",
        "\\boxed{5 = 5}",  # names only 5, and is true
        "\\boxed{5 \\text{ cm}}",
        "\\boxed{\\frac{10}{2}}",
        "<answer>\\boxed{5}</answer>",
        "First 12, then 7, and the answer is 5",
    ],
)
@pytest.mark.parametrize("row", [INT, FREE], ids=["integer", "math_verify"])
def test_honest_number_answers_score(response, row):
    assert REWARDS.get("accuracy")(response, row) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "5 or 6",
        "6 or 5",
        "5 and 6",
        "\\boxed{5 or 6}",
        "\\boxed{5 and 6}",
        "\\boxed{5, 6}",
        "\\boxed{5 \\text{ or } 6}",
        "The answer is 6 or 5",
        "5 6",
        "6 5",
        "6\n5",
        "\\boxed{6}\\boxed{5}",
        "\\boxed{5}\\boxed{6}",
        "<answer>6</answer><answer>5</answer>",
        "<answer>4</answer><answer>6</answer><answer>5</answer>",
        "\\boxed{6 = 5}",
        "6 = 5",
        "The answer is 6 = 5",
        "\\boxed{4 + 3 = 5}",
        "\\boxed{5 + __import__('os').system('ls')}",
        "5 + __import__('os').system('ls')",
        "\\boxed{5 + os.system}",
        "\\boxed{5 ;; rm -rf}",
        "\\boxed{5 + (}",
        "\\boxed{5 +}",
        "\\boxed{5 + \\text{junk}}",
        '\\boxed{5 "junk"}',
        "\\boxed{5 \\text{ apples and } 6}",
    ],
)
@pytest.mark.parametrize("row", [INT, FREE], ids=["integer", "math_verify"])
def test_number_hedges_false_equations_and_junk_score_zero(response, row):
    assert REWARDS.get("accuracy")(response, row) == 0.0


def test_a_letter_with_a_miscopied_label_is_read_as_the_letter():
    # the official scorer takes the letter; its text from another option is a label
    assert judge("The clock shows the time (B) 30.", MC).correct is True
    assert judge("A red blue", {"answer": "red", "choices": ["red", "blue"]}).correct is False


def test_letter_golds_and_choice_letters_need_agreeing_answers():
    no_choices = {"answer": "B", "choices": None}
    assert REWARDS.get("accuracy")("<answer>B</answer>", no_choices) == 1.0
    assert REWARDS.get("accuracy")("<answer>A</answer><answer>B</answer>", no_choices) == 0.0
    letters = REWARDS.get("choice_letters")
    assert letters("<answer>A, C</answer>", {"answer": "A, C"}) == 1.0
    assert letters("<answer>A</answer><answer>A, C</answer>", {"answer": "A, C"}) == 0.0


@pytest.mark.parametrize(
    "side, value",
    [
        ("6", 6.0),
        ("3 + 2", 5.0),
        ("13 * -10", -130.0),
        ("so 2^{3}", 8.0),
        ("\\frac{10}{4}", 2.5),
        ("x", None),
        ("2x", None),
        ("∠1", None),
        ("AB + 3", None),
    ],
)
def test_equation_sides(side, value):
    assert side_value(side) == value


def test_a_side_that_is_not_arithmetic_is_never_equal():
    assert side_value("6 +") != side_value("6 +")  # nan: equal to nothing


def test_embedded_default_targets_all_score_one():
    """Everything the warm start teaches (the bare target of each synthetic row, as the
    tiny models produce it: no trailing text, or a newline / full stop) scores 1.0."""
    rows = [row for _, row in vision_problems("train", 90)] + list(text_problems("train", 60))
    assert {row["task"] for row in rows} >= {"count_all", "most_color", "same_color", "add"}
    for row in rows:
        row = {k: v for k, v in row.items() if k != "image"}
        for form in ("{}", "{}\n", " {}", "{}."):
            response = form.format(target_text(row))
            assert REWARDS.get("accuracy")(response, row) == 1.0, (response, row)
        if row["choices"]:  # the choice text itself is an answer too
            assert REWARDS.get("accuracy")(row["answer"], row) == 1.0


YES_NO = {
    "question": "Is Periwinkle the maximum?",
    "answer": "no",
    "choices": ["yes", "no"],
    "question_type": "multi_choice",
    "answer_type": "text",
}
SENTENCE_JUNK = {  # shapes the sentence rules of the evaluation path read
    "is_spaces": "it is B" + " " * MB + "x",
    "answer_is_spaces": "the answer is" + " " * MB + "no",
    "or_spaces": "1" + " " * MB + "or 2",
    "not_digits": "not " + "1" * MB,
    "cannot_words": "cannot " * (MB // 7),
    "number_words": "there are two " * (MB // 14),
    "letters_is": "A is the correct " * (MB // 17),
    "echo": "(A) 30 (B) 36 " * (MB // 14),
}


@pytest.mark.parametrize("name", sorted({**JUNK, **SENTENCE_JUNK}))
def test_eval_path_sentence_rules_are_bounded(name):
    """The evaluation path reads statements when no answer is marked: every rule runs
    on the tail only and stays linear (no answer mark here, so all of them run)."""
    junk = {**JUNK, **SENTENCE_JUNK}[name]
    for row in (MC, YES_NO, INT, {**INT, "answer_type": "float", "precision": 1}):
        _timed(
            score_item,
            {**row, "answer_type": row.get("answer_type", "text"), "response": junk},
            False,
        )
    item = {**YES_NO, "response": junk + "\nPeriwinkle is not the maximum."}
    marked = name in ("answer_is_repeats", "closed_tags", "options")  # junk that answers
    assert _timed(score_item, item, False)["true_false"] is not marked
