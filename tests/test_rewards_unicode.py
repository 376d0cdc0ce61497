"""A one-character gold names a choice by letter only when it is an ASCII letter.

``"ß".upper()`` is ``"SS"`` (and ``"ﬀ".upper()`` is ``"FF"``), so reading a gold letter
as ``ord(gold.upper()) - 65`` stopped every run at load (``data/validate.py``) and in
evaluation (``rewards/verifiers.py``) with ``TypeError: ord() expected a character``;
``"ı".upper()`` is ``"I"``, which named choice I. Checked over every code point."""

from __future__ import annotations

import string
import sys

from mhpo_vl.data.validate import check_row, gold_in_choices
from mhpo_vl.rewards import judge
from mhpo_vl.rewards.verifiers import choice_letter_index, gold_choice

CHOICES = [f"option {i}" for i in range(26)]  # every ASCII letter names one
ASCII = {c: i for i, c in enumerate(string.ascii_uppercase)} | {
    c: i for i, c in enumerate(string.ascii_lowercase)
}


def test_every_code_point():
    for point in range(sys.maxunicode + 1):
        char = chr(point)
        index = ASCII.get(char)
        assert choice_letter_index(char) == index, hex(point)
        assert gold_in_choices(char, CHOICES) is (index is not None), hex(point)
        expected = CHOICES[index] if index is not None else char.strip()
        assert gold_choice({"answer": char, "choices": CHOICES}) == expected, hex(point)


def test_letters_out_of_range_and_longer_golds_name_no_choice():
    assert gold_in_choices("E", ["a", "b", "c", "d"]) is False
    assert gold_in_choices("d", ["a", "b", "c", "d"]) is True
    assert choice_letter_index("AB") is None and choice_letter_index("") is None


def test_letters_whose_upper_case_is_longer_load_and_score():
    multi = [chr(p) for p in range(sys.maxunicode + 1) if len(chr(p).upper()) > 1]
    assert "ß" in multi and "ﬀ" in multi and len(multi) > 50
    for char in multi:
        row = {"id": "r", "question": "q", "answer": char, "choices": ["a", char]}
        assert check_row(row) is None
        assert judge("<answer>(B)</answer>", row).correct is True
        assert check_row({**row, "choices": ["a", "b"]})[0] == "answer_not_in_choices"
        assert judge("<answer>(B)</answer>", {**row, "choices": ["a", "b"]}).correct is False


def test_dotless_i_and_long_s_are_not_letters_i_and_s():
    choices = [f"c{i}" for i in range(20)]
    for char in ("\u0131", "\u017f", "\u212a"):  # ı, ſ upper to I, S; the Kelvin sign K
        assert gold_in_choices(char, choices) is False
        assert gold_choice({"answer": char, "choices": choices}) == char
