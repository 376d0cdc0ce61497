"""Row checks that need no image decoding: text fields and multiple-choice consistency.

Each check returns ``(reason, detail)`` for a row that cannot be used, where ``reason``
is a slug (it becomes a metric key, ``data/bad_rows/<reason>``) and ``detail`` one line
for people. Nothing is coerced silently: a bytes question is rejected rather than
decoded with a guessed encoding, ``choices`` given as the string ``"ABCD"`` is rejected
rather than read as four one-letter choices, and a gold answer that is not one of the
choices (by text, or by letter as MathVision writes it) is rejected because it could
never be scored correct.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mhpo_vl.data.templates import LETTERS
from mhpo_vl.rewards.normalize import choice_letter_index

Problem = tuple[str, str]


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _not_utf8(text: str) -> bool:
    """True for a str holding lone surrogates (``"\\udcff"`` from a JSON escape or a
    ``surrogateescape`` decode): tokenizers cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, field: str) -> Problem | None:
    """A question or answer: a non-blank str (answers may also be numbers or a
    non-empty list of those, as MathVista's list answers are)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing_{field}", f"{field} is blank"
    if isinstance(value, bytes | bytearray):
        return f"{field}_not_text", f"{field} is bytes ({_short(value)}), not text"
    if field == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if field == "answer" and isinstance(value, list | tuple):
        if not value:
            return "missing_answer", "answer is an empty list"
        for item in value:
            problem = check_text(item, field)
            if problem:
                return problem
        return None
    if not isinstance(value, str):
        return f"{field}_not_text", f"{field} is a {type(value).__name__}, not text"
    if _not_utf8(value):
        return "text_not_utf8", f"{field} is not valid UTF-8 ({_short(value)})"
    return None


def check_choices(choices: Any) -> Problem | None:
    """``choices``: None/empty (not multiple choice) or a list of non-blank texts."""
    if choices is None:
        return None
    if isinstance(choices, str | bytes | bytearray):
        return (
            "choices_not_list",
            f"choices is a {type(choices).__name__} ({_short(choices)}), not a list",
        )
    if not isinstance(choices, list | tuple):
        return "choices_not_list", f"choices is a {type(choices).__name__}, not a list"
    if len(choices) > len(LETTERS):
        return "choices_not_list", f"{len(choices)} choices (at most {len(LETTERS)})"
    for c in choices:
        if isinstance(c, int | float) and not isinstance(c, bool):
            continue
        if not isinstance(c, str) or not c.strip():
            return "choices_not_list", f"choice {_short(c)} is not a non-blank text"
        if _not_utf8(c):
            return "text_not_utf8", f"choice is not valid UTF-8 ({_short(c)})"
    return None


def gold_in_choices(answer: Any, choices: list[Any]) -> bool:
    """Whether the gold names a choice: its text, or its ASCII letter (the rule of
    :func:`mhpo_vl.rewards.verifiers.gold_choice`, through the same function)."""
    texts = [str(c) for c in choices]
    gold = str(answer).strip()
    if gold in texts:
        return True
    index = choice_letter_index(gold)
    return index is not None and index < len(texts)


def check_row(row: Mapping[str, Any]) -> Problem | None:
    """The first problem of a row's question, answer and choices, or None."""
    for field in ("question", "answer"):
        problem = check_text(row.get(field), field)
        if problem:
            return problem
    choices = row.get("choices")
    problem = check_choices(choices)
    if problem:
        return problem
    if choices and not isinstance(row.get("answer"), list | tuple):
        if not gold_in_choices(row["answer"], list(choices)):
            return (
                "answer_not_in_choices",
                f"gold answer {_short(row['answer'])} is not one of the choices "
                f"{_short(list(choices), 60)} (by text or letter)",
            )
    return None
