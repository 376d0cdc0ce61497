"""Answer extraction and MathVista's official normalization, on hand-written cases."""

from __future__ import annotations

import random

import pytest

from mhpo_vl.rewards import extract_answer, levenshtein, normalize_answer
from mhpo_vl.rewards.extract import last_boxed, last_tag_content, numbers

CHOICES = ["30", "36", "72", "24"]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>so B</think><answer>B</answer>", "B"),
        ("<answer>(B) 36</answer>", "B"),
        ("<answer>36</answer>", "36"),
        ("<answer>\\boxed{36}</answer>", "36"),
        ("Therefore, the answer is $\\boxed{\\text{(D) } 24}$.", "D"),
        ("So the correct option is (B) 36.", "B"),
        ("Answer: C", "C"),
        ("**Answer:** b", "B"),
        ("(B)", "B"),
        ("B. 36", "B"),
        ("I compute 36.", "36"),  # a numeric choice named by its value
        ("因此，CD的长为5，选项A正确。", "A"),
        ("Between A and B, I choose neither.", None),
        ("The question does not provide enough information.", None),
        ("", None),
    ],
)
def test_multiple_choice_extraction(response, expected):
    assert extract_answer(response, CHOICES, "text") == expected


def test_choice_text_and_letter_only_choices():
    choices = ["plants decrease", "plants increase", "nothing happens"]
    assert extract_answer("The answer is plants increase.", choices) == "plants increase"
    # single-letter choice texts never match a stray word "a"
    letters = ["A", "B", "C", "D"]
    assert extract_answer("The question is incomplete, a sequence is missing.", letters) is None


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<answer>x = 5</answer>", "5"),
        ("The volume is 1,000 mL, so the answer is 1,000.", "1000"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("the answer is -2.5.", "-2.5"),
        ("The answer is 13 * -10 = -130", "-130"),  # after the last '='
        ("First 12, then 7. Final value: 3", "3"),
        ("it is 4 then 9", "9"),  # no marked answer: the last number
        ("T is about 1.2 x 10^4 s", "12000"),
        ("no numbers here", None),
    ],
)
def test_numeric_extraction(response, expected):
    assert extract_answer(response, None, "float") == expected


def test_list_extraction_formats_like_python():
    assert extract_answer("so [1,2, 3] it is", None, "list") == "[1, 2, 3]"
    assert extract_answer("\\boxed{[2014, 2016]}", None, "list") == "[2014, 2016]"
    assert extract_answer("[a, b]", None, "list") is None


def test_helpers():
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_tag_content("<answer>1</answer> <answer> 2 </answer>") == "2"
    assert numbers("from -3 to 4.5, 1/2 and 2,000") == ["-3", "4.5", "0.5", "2000"]
    assert numbers("range 1-2") == ["1", "2"]  # a hyphen between numbers is no minus sign


def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0
    assert levenshtein("flaw", "lawn") == 2 and levenshtein("lawn", "flaw") == 2
    assert levenshtein("a" * 70, "b" * 70) == 70  # past one 64-bit word


def table_distance(a: str, b: str) -> int:
    """The textbook dynamic-programming edit distance, the reference for the fast one."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_levenshtein_equals_the_table_on_random_strings():
    rng = random.Random(7)
    for _ in range(400):
        alphabet = rng.choice(["ab", "abc ", "xyz0123456789", "aé中(B) "])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 160)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 160)))
        assert levenshtein(a, b) == table_distance(a, b), (a, b)


def test_a_long_paragraph_goes_to_the_official_scorers_choice():
    """An extraction that is a whole paragraph (no answer in it) is mapped onto the
    nearest choice by its full edit distance, as the official scorer does: cutting it to
    its first 500 characters (as we once did) picked another choice."""
    text = "The bar for Tuesday reaches 2 units and the bar for Friday reaches 7 units. "
    text += "Each bar is drawn in its own colour and the axis has no other labels. " * 7
    text += "The remaining bars reach 4 and 5 units."
    choices = ["45", "27"]
    assert 500 < text.index("4") and len(text) == 605
    full = [table_distance(text, c) for c in choices]
    cut = [table_distance(text[:500], c) for c in choices]
    assert full == [603, 603] and cut == [500, 498]  # a tie goes to the first choice
    assert normalize_answer(text, choices, "multi_choice", "text", official=True) == "45"
    assert normalize_answer(text[:500], choices, "multi_choice", "text", official=True) == "27"


def test_official_normalization():
    ch = ["6.5", "13", "26", "52"]
    # multi_choice: letter -> text; "(c) text" -> letter C; anything else -> nearest choice
    assert normalize_answer("B", ch, "multi_choice", "text", official=True) == "13"
    assert normalize_answer("(c) 26", ch, "multi_choice", "text", official=True) == "26"
    assert normalize_answer("", ch, "multi_choice", "text", official=True) == "13"  # shortest
    assert normalize_answer("N/A", ch, "multi_choice", "text", official=True) == "6.5"
    # ours: no edit-distance luck
    assert normalize_answer("N/A", ch, "multi_choice", "text") is None
    assert normalize_answer("26", ch, "multi_choice", "text") == "26"
    # integer truncates, float rounds to precision, list is str()
    assert normalize_answer("2.9", None, "free_form", "integer") == "2"
    assert normalize_answer("1.25", None, "free_form", "float", 1) == "1.2"  # banker's round
    assert normalize_answer("0.0115", None, "free_form", "float", 2) == "0.01"
    assert normalize_answer("[1, 2]", None, "free_form", "list") == "[1, 2]"
    assert normalize_answer("N/A", None, "free_form", "integer") is None
    assert normalize_answer(None, None, "free_form", "float", 1) is None


def test_every_mark_of_a_kind_in_order():
    from mhpo_vl.rewards.extract import answer_marks, boxed_contents, first_sentence, tag_contents

    assert tag_contents("<answer>1</answer> x <ANSWER> 2 </answer>") == ["1", "2"]
    assert tag_contents("<answer>a<answer>b</answer>") == ["b"]  # the last opening pairs
    assert boxed_contents("\\boxed{1} \\boxed{\\frac{a}{b}} \\boxed{open") == ["1", "\\frac{a}{b}"]
    assert first_sentence("(C) 40°. Since the angles add up") == "(C) 40°"
    assert first_sentence("3.5 cm") == "3.5 cm"  # a decimal point ends no sentence
    assert answer_marks("\\boxed{1} <answer>2</answer>") == ("tag", ["2"])
    assert answer_marks("Answer: 4.\nThe answer is 5") == ("phrase", ["4", "5"])
    assert answer_marks("选项 (A) 30\n选项 (B) 36") == ("none", [])  # an option listing
    assert answer_marks("no answer here") == ("none", [])


def test_extraction_reads_the_tail_only():
    from mhpo_vl.rewards.extract import TAIL_CHARS

    early = "\\boxed{7}" + " " * TAIL_CHARS
    assert last_boxed(early) is None  # out of the window
    assert last_boxed(early + "\\boxed{8}") == "8"
    assert extract_answer("x" * 10 * TAIL_CHARS + " so 3", None, "integer") == "3"
