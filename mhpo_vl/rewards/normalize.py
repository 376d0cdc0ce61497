"""MathVista's official normalization of an extracted answer (``calculate_score.py``).

- multi_choice: strip; ``(x)`` -> the letter uppercased; a letter in range -> that choice's
  text; anything else -> the choice with the smallest Levenshtein distance (first on ties).
- integer: ``str(int(float(x)))`` (truncates); float: ``str(round(float(x), precision))``;
  list: ``str(x)``; a failure is None.
- correct iff the normalized string equals the gold ``answer``.

``official=True`` reproduces the scorer exactly, including its fallback that maps an
empty or refusing extraction onto the nearest choice (an empty one lands on the shortest
choice). Our rule-based path uses ``official=False``: a multiple-choice extraction that is
neither a letter in range nor a choice text is None (wrong), not a lucky guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")  # "(B)": the official letter pattern
# The edit distance below is exact for strings up to these lengths (the shorter one, the
# longer one): official extractions are under 1,000 characters, and a paragraph of up to
# 100,000 still gets the official scorer's choice. Past them both are cut to these many
# leading characters, so a megabyte of junk costs well under a second per choice.
MAX_EDIT_SHORT = 2_000
MAX_EDIT_LONG = 100_000


def choice_letter_index(gold: str) -> int | None:
    """The choice a one-character gold names by letter: ``"A"``/``"a"`` -> 0 ... ``"Z"``/
    ``"z"`` -> 25; None for anything else.

    Only ASCII letters are letters here. ``str.upper`` maps some characters to several
    (``"ß"`` -> ``"SS"``) or to an ASCII letter (``"ı"`` -> ``"I"``, ``"ſ"`` -> ``"S"``),
    so ``ord(gold.upper()) - 65`` either raised or named a choice the data never meant.
    Shared by the loader's row check and the verifiers, so the two cannot disagree."""
    if len(gold) == 1 and gold.isascii() and gold.isalpha():
        return ord(gold.upper()) - ord("A")
    return None


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1), as python-Levenshtein's
    ``distance`` that MathVista's scorer calls, exact within :data:`MAX_EDIT_SHORT` /
    :data:`MAX_EDIT_LONG` characters.

    Myers' bit-vector algorithm (Hyyro's form for the global distance): one column of
    the dynamic-programming table per character of the longer string, its vertical
    differences packed into the bits of two integers (one bit per character of the
    shorter string), so the cost is linear in the longer string."""
    if len(a) < len(b):
        a, b = b, a
    a, b = a[:MAX_EDIT_LONG], b[:MAX_EDIT_SHORT]
    if a == b:
        return 0
    m = len(b)
    if m == 0:
        return len(a)
    match: dict[str, int] = {}  # character -> the bits of its positions in b
    for i, ch in enumerate(b):
        match[ch] = match.get(ch, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    plus, minus, dist = full, 0, m  # vertical +1 / -1 differences; D[m][0]
    for ch in a:
        eq = match.get(ch, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        h_plus = minus | (full & ~(xh | plus))
        h_minus = plus & xh
        if h_plus & top:
            dist += 1
        elif h_minus & top:
            dist -= 1
        h_plus = ((h_plus << 1) | 1) & full  # row 0 grows by one per column
        h_minus = (h_minus << 1) & full
        plus = h_minus | (full & ~(xv | h_plus))
        minus = h_plus & xv
    return dist


def most_similar(text: str, choices: Sequence[str]) -> str:
    """The choice nearest to ``text`` by edit distance; the first one on ties."""
    dists = [levenshtein(text, str(c)) for c in choices]
    return str(choices[dists.index(min(dists))])


def normalize_choice(extraction: Any, choices: Sequence[str], official: bool = False) -> str | None:
    """Map an extraction to a choice text (see the module docstring)."""
    if extraction is None and not official:
        return None
    text = extraction.strip() if isinstance(extraction, str) else str(extraction)
    letters = PAREN_LETTER.findall(text)
    if letters:
        text = letters[0].upper()
    options = [chr(ord("A") + i) for i in range(len(choices))]
    if text in options:
        return str(choices[options.index(text)])
    if official:
        return most_similar(text, choices)
    keys = [str(c).strip().lower() for c in choices]
    return str(choices[keys.index(text.lower())]) if text.lower() in keys else None


def normalize_answer(
    extraction: Any,
    choices: Sequence[str] | None,
    question_type: str | None,
    answer_type: str | None,
    precision: Any = None,
    official: bool = False,
) -> str | None:
    """The official MathVista normalization of one extraction; None means wrong."""
    if question_type == "multi_choice" or (question_type is None and choices):
        if not choices:
            return None
        return normalize_choice(extraction, choices, official)
    if extraction is None or (not official and str(extraction).strip() == ""):
        return None
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
        if answer_type == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return str(extraction).strip()


def normalize_row_answer(
    extraction: Any, row: Mapping[str, Any], official: bool = False
) -> str | None:
    """:func:`normalize_answer` with the type fields read from a problem row."""
    return normalize_answer(
        extraction,
        row.get("choices") or None,
        row.get("question_type"),
        row.get("answer_type"),
        row.get("precision"),
        official=official,
    )
