"""Verifiers: ``fn(response, row) -> float in [0, 1]``, registered by name in ``REWARDS``.

Training rewards and reported accuracy share :func:`judge`, so the two cannot disagree:

- rows with ``choices``: the extraction is mapped to a choice (letter or text, never by
  edit distance) and compared with the gold choice text;
- rows typed ``integer`` / ``float`` / ``list`` (MathVista's schema): the official
  normalization (truncate, round to ``precision``, ``str(list)``) then string equality;
- every other row: math-verify, gold first (``verify(parse(gold), parse(pred))``), after a
  cheap exact-text check, with a hard time bound (:mod:`mhpo_vl.rewards.mathcheck`).

Verifiers never raise: an internal failure scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mhpo_vl.registry import Registry
from mhpo_vl.rewards.extract import clean, extract_answer, last_boxed, last_phrase, last_tag_content
from mhpo_vl.rewards.mathcheck import math_equal
from mhpo_vl.rewards.normalize import normalize_answer, normalize_choice

RewardFn = Callable[[str, Mapping[str, Any]], float]
REWARDS: Registry[RewardFn] = Registry("reward")

TYPED = ("integer", "float", "list")

_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"  # any text without a think/answer tag
_THINK_ANSWER = re.compile(
    rf"\s*<think>{_NO_TAG}</think>\s*<answer>({_NO_TAG})</answer>\s*", re.DOTALL
)


@dataclass(frozen=True)
class Judgement:
    """One response judged against one row: what was extracted, its normalized form
    (MathVista's ``prediction``) and the verdict."""

    extraction: str | None
    prediction: str | None
    correct: bool


def gold_choice(row: Mapping[str, Any]) -> str:
    """The gold choice text; a gold given as a letter (MathVision style) is mapped."""
    choices = [str(c) for c in row["choices"]]
    gold = str(row["answer"]).strip()
    if gold not in choices and len(gold) == 1 and 0 <= ord(gold.upper()) - 65 < len(choices):
        return choices[ord(gold.upper()) - 65]
    return gold


def answer_span(response: str) -> str | None:
    """The raw marked answer: last ``<answer>`` tag, else last ``\\boxed{}``, else the
    last "answer is" phrase; None when the response marks none."""
    for source in (last_tag_content, last_boxed, last_phrase):
        span = source(response)
        if span is not None:
            return span
    return None


_LETTER_TOKEN = re.compile(r"(?<![A-Za-z])\(?([A-H])\)?(?![A-Za-z])")


def letter_set(text: str) -> frozenset[str]:
    """The standalone capital letters A-H in ``text`` ("A, C", "(B) and (D)", "AC" is
    read letter by letter only when it is nothing but letters)."""
    text = clean(text)
    if re.fullmatch(r"[A-H]{1,8}", text):
        return frozenset(text)
    return frozenset(_LETTER_TOKEN.findall(text))


def _same_text(a: str, b: str) -> bool:
    return clean(a).lower() == clean(b).lower() != ""


def judge(response: str | None, row: Mapping[str, Any]) -> Judgement:
    """Extract, normalize and verify one response (see the module docstring)."""
    if not response or not str(response).strip():
        return Judgement(None, None, False)
    response = str(response)
    gold = str(row["answer"]).strip()
    answer_type = row.get("answer_type")
    if row.get("choices"):
        choices = [str(c) for c in row["choices"]]
        extraction = extract_answer(response, choices, answer_type)
        prediction = None if extraction is None else normalize_choice(extraction, choices)
        return Judgement(extraction, prediction, prediction == gold_choice(row))
    if answer_type in TYPED:
        extraction = extract_answer(response, None, answer_type)
        prediction = normalize_answer(
            extraction, None, "free_form", answer_type, row.get("precision")
        )
        return Judgement(extraction, prediction, prediction is not None and prediction == gold)
    span = answer_span(response)
    extraction = clean(span) if span is not None else None
    if span is not None and _same_text(span, gold):
        return Judgement(extraction, extraction, True)
    if re.fullmatch(r"[A-H]", gold):  # a letter gold whose choices were not given
        said = letter_set(span if span is not None else response.strip().splitlines()[-1])
        return Judgement(extraction, "".join(sorted(said)) or None, said == {gold})
    correct = math_equal(gold, span if span is not None else response, marked=span is not None)
    return Judgement(extraction, extraction, correct)


def _safe(fn: Callable[[], bool]) -> float:
    try:
        return 1.0 if fn() else 0.0
    except Exception:  # a verifier scores 0 rather than stop training
        return 0.0


@REWARDS.register("accuracy")
def accuracy(response: str, row: Mapping[str, Any]) -> float:
    """The default reward: :func:`multiple_choice` if the row has choices, else
    :func:`math_answer`; equal to the evaluation verdict."""
    return _safe(lambda: judge(response, row).correct)


@REWARDS.register("multiple_choice")
def multiple_choice(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the response names the gold choice (by letter or text); 0 for rows
    without choices."""
    return _safe(lambda: bool(row.get("choices")) and judge(response, row).correct)


@REWARDS.register("math_answer")
def math_answer(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the answer equals the gold by math-verify (gold first), or by the official
    MathVista normalization on rows typed integer/float/list. Ignores choices."""
    return _safe(lambda: judge(response, {**row, "choices": None}).correct)


@REWARDS.register("choice_letters")
def choice_letters(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the letters the response answers with are exactly the gold letters (for
    multiple-answer questions whose gold is letters, e.g. LogicVista's "A, C")."""

    def check() -> bool:
        span = answer_span(str(response or ""))
        if span is None:
            lines = str(response or "").strip().splitlines()
            span = lines[-1] if lines else ""
        got = letter_set(span)
        return bool(got) and got == letter_set(str(row["answer"]))

    return _safe(check)


@REWARDS.register("think_answer_format")
def think_answer_format(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the response is exactly ``<think>...</think>`` then a non-empty
    ``<answer>...</answer>`` (whitespace around allowed, no stray tags)."""

    def check() -> bool:
        m = _THINK_ANSWER.fullmatch(str(response or ""))
        return m is not None and m.group(1).strip() != ""

    return _safe(check)


@REWARDS.register("answer_format")
def answer_format(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the response has a non-empty ``<answer>...</answer>`` tag."""
    return _safe(lambda: bool(last_tag_content(str(response or ""))))
