"""Verifiers: ``fn(response, row) -> float in [0, 1]``, registered by name in ``REWARDS``.

Training rewards and reported accuracy share :func:`judge`, so the two cannot disagree:

- rows with ``choices``: the extraction is mapped to a choice (letter or text, never by
  edit distance) and compared with the gold choice text;
- rows typed ``integer`` / ``float`` / ``list`` (MathVista's schema): the official
  normalization (truncate, round to ``precision``, ``str(list)``) then string equality;
- every other row: math-verify, gold first (``verify(parse(gold), parse(pred))``), after a
  cheap exact-text check, with a hard time bound (:mod:`mhpo_vl.rewards.mathcheck`).

One answer, one candidate. A response scores only if it commits to a single answer,
whatever the gold; otherwise it scores 0 even when the gold is among what it names:

- all its answers of the kind read (every ``<answer>`` tag, else every ``\\boxed{}``,
  else every "the answer is X" phrase; unmarked: every line that is only a letter or a
  number, and every "(X)" letter) must name the same candidate, so listing one per
  option loses;
- a tag or box must name one candidate: one choice (by letter or text), one number
  (units, exponents and a label such as ``x =`` allowed), or one expression; "A or B",
  "A/B", "5 and 6" and ``5 + <code>`` lose. A phrase or an unmarked last line is prose,
  so there only candidates side by side ("either A or B", "5, 6") lose, and an unmarked
  last line that says it is guessing or cannot tell ("maybe 2?", "I cannot count them,
  possibly 3") loses;
- an equation names the value of its last side, and every other side must equal it or
  be a name: ``x = 5`` and ``3 + 2 = 5`` state 5; ``6 = 5`` states nothing true.
  ``5 = 5`` scores: it names only 5 and is true, so refusing it would stop no hedge.
  A side that lists things (split at ``,`` ``;`` "and" "or" outside brackets, a
  thousands separator such as ``1,000`` aside) must have each of them equal the value
  or be a name: ``x = 3, y = 5`` names 3 and 5, so it loses for gold 5 (it used to be
  read as "the value after the last ``=``");
- a free-form answer to a gold that is one value (no ``,`` ``;`` "and" "or" anywhere in
  it) must not list several different things: ``3, 5`` and ``x = 3, y = 5`` lose. A
  gold that holds several values (``3, 5``, ``(3, 5)``, ``\\{1, 2\\}``) is matched as
  a whole, by text or by math-verify: ``3, 5`` scores for gold ``(3, 5)``.

Long answers: only the last :data:`~mhpo_vl.rewards.extract.TAIL_CHARS` characters are
read, and within them every answer in full. A response whose last answer tag (else box)
opens before them is refused: it scores 0, and :func:`~mhpo_vl.rewards.loading.
score_rewards` counts it (``refused``, :func:`~mhpo_vl.rewards.extract.unread_answer`
says why); it is never read from its cut end. A correct 100,001-digit answer is refused.

Verifiers never raise, except when math-verify cannot run at all
(:class:`~mhpo_vl.rewards.mathcheck.VerifierUnavailable`): an answer the checker cannot
judge scores 0, a checker that cannot judge anything is a failure, not a zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mhpo_vl.registry import Registry
from mhpo_vl.rewards.extract import (
    HEDGE_WORD,
    LIST_SEP,
    PAREN_LETTER,
    Mention,
    answer_marks,
    choice_mentions,
    clean,
    extract_answer,
    first_sentence,
    last_boxed,
    last_list,
    last_phrase,
    last_tag_content,
    lines,
    listed_parts,
    match_choice,
    number_mentions,
    resolve,
    same_value,
    side_by_side,
    side_value,
    split_equation,
    tail,
    unread_answer,
)
from mhpo_vl.rewards.mathcheck import VerifierUnavailable, math_equal
from mhpo_vl.rewards.normalize import choice_letter_index, normalize_answer, normalize_choice

RewardFn = Callable[[str, Mapping[str, Any]], float]
REWARDS: Registry[RewardFn] = Registry("reward")
# linear string checks that call no math-verify and cannot hang: training calls them in
# its own process; every other reward runs in a worker under the step's deadline
CHEAP_REWARDS = frozenset({"answer_format", "think_answer_format"})
# rewards that read the answer: a 0 from one of them for a response whose answer lies
# outside what is read is counted as a refusal (extract.unread_answer)
READS_ANSWER = frozenset({"accuracy", "multiple_choice", "math_answer", "choice_letters"})

TYPED = ("integer", "float", "list")
MAX_CHECKED_ANSWERS = 3  # distinct free-form answers verified one by one; more lose
MAX_SIDES = 3  # a free-form equation with more sides loses (each side costs a math-verify call)
OPERATORS = frozenset("+*/^×÷·")  # a number beside one of these is an operand, not a value
UNIT_SYMBOLS = frozenset("°%'′″.,$€£¥/·^{}~")  # what may follow a number in a tag or box

_LONE = re.compile(r"\(?[A-Za-z]\)?|[-+]?[\d.,]+%?")
_LETTER = re.compile(r"\(?[A-Za-z]\)?")
_LABEL_GAP = re.compile(r"[\s.:)]*")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_JUNK = re.compile(r"__|[\"`@#?;]|[A-Za-z]\.[A-Za-z]|[-+*/^]\s*\\(?:text|mathrm|textbf)\s*\{")
# an expression that ends in one of these is cut short ("5 +"): math-verify reads the "5"
TRAILING_OPS = (*"-+*/^_=<>,([{", "\\cdot", "\\times", "\\div", "\\pm", "\\frac", "\\sqrt")
_SUBSCRIPT = re.compile(r"_(?:\{[^{}]*\}|\w)")
# an unmarked response that says it is guessing commits to nothing ("maybe 2?")
UNSURE = re.compile(
    r"\b(?:maybe|perhaps|possibly|not\s+sure|unsure|i\s+guess|cannot|can\s*not|unable)\b"
    r"|\bcan[’']t\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Judgement:
    """One response judged against one row: what was extracted, its normalized form
    (MathVista's ``prediction``) and the verdict."""

    extraction: str | None
    prediction: str | None
    correct: bool


def gold_choice(row: Mapping[str, Any]) -> str:
    """The gold choice text; a gold given as an ASCII letter (MathVision style) is mapped
    (:func:`~mhpo_vl.rewards.normalize.choice_letter_index`)."""
    choices = [str(c) for c in row["choices"]]
    gold = str(row["answer"]).strip()
    index = choice_letter_index(gold)
    if gold not in choices and index is not None and index < len(choices):
        return choices[index]
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


# --- one answer, one candidate (see the module docstring) -----------------------------


def _agree(values: Sequence[Hashable | None]) -> bool:
    """Whether the answers that could be read (not None) all name the same thing."""
    return len({v for v in values if v is not None}) <= 1


def _value_like(span: str, choices: Sequence[str] | None = None) -> bool:
    """Whether a phrase's sentence reads as an answer rather than prose: a choice text,
    or no word of three letters or more (LaTeX commands aside)."""
    if choices and match_choice(span, choices, contained=False) is not None:
        return True
    return _PROSE_WORD.search(clean(span)) is None


def _marks(response: str, choices: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """The answers of the kind read, phrases that read as prose left out (the last one,
    the answer extracted, always kept)."""
    kind, spans = answer_marks(response)
    if kind == "phrase":
        spans = [s for s in spans[:-1] if _value_like(s, choices)] + spans[-1:]
    return kind, spans


def _lone_lines(response: str) -> list[str]:
    """The lines that are only a letter or a number ("B", "(B)", "B.", "5"): answers."""
    return [line for line in lines(response) if _LONE.fullmatch(clean(line))]


def _choice_index(found: str | None, choices: Sequence[str]) -> int | None:
    """The index a :func:`match_choice` result stands for (a letter first, as
    :func:`normalize_choice` reads it)."""
    if found is None:
        return None
    if len(found) == 1 and 0 <= ord(found) - 65 < len(choices):
        return ord(found) - 65
    return list(choices).index(found) if found in choices else None


def _paren_letters(response: str, choices: Sequence[str]) -> list[float]:
    """The choices named by "(X)" letters anywhere in ``response`` (not inside a choice
    text)."""
    text, found = choice_mentions(response, choices)
    return [m.value for m in found if PAREN_LETTER.fullmatch(text[m.start : m.end])]


def names_one_choice(span: str, choices: Sequence[str], strict: bool) -> bool:
    """Whether ``span`` names at most one choice: any two different ones (``strict``, a
    tag or box) or two side by side (prose) lose."""
    text, found = choice_mentions(span, choices)
    found = _labels_read_as_letters(text, found)
    if strict:
        return len({m.value for m in found}) <= 1
    return not side_by_side(text, found)


def _is_letter(text: str, m: Mention) -> bool:
    return _LETTER.fullmatch(text[m.start : m.end]) is not None


def _labels_read_as_letters(text: str, found: list[Mention]) -> list[Mention]:
    """``found`` with each choice text that directly follows a letter ("(C) 5:30") read
    as that letter: as in the official scorer, the letter is the answer and the text its
    label, even when copied from another option."""
    out: list[Mention] = []
    for m in found:
        prev = out[-1] if out else None
        if (
            prev is not None
            and _is_letter(text, prev)
            and not _is_letter(text, m)
            and _LABEL_GAP.fullmatch(text[prev.end : m.start])
        ):
            m = m._replace(value=prev.value)
        out.append(m)
    return out


def commits_to_choice(response: str, choices: Sequence[str]) -> bool:
    """The rule of the module docstring for a multiple-choice row."""
    kind, spans = _marks(response, choices)
    if kind == "none":
        body = lines(response)
        if body and UNSURE.search(body[-1]):
            return False
        letters: list[Hashable | None] = list(_paren_letters(response, choices))
        lone = [
            _choice_index(match_choice(s, choices, False), choices) for s in _lone_lines(response)
        ]
        ends = body[:1] + body[-1:]
        return _agree(letters + lone) and all(names_one_choice(s, choices, False) for s in ends)
    picked = [_choice_index(resolve(s, choices, None), choices) for s in spans]
    strict = kind in ("tag", "box")
    inner = [last_boxed(s) or s for s in spans]
    return _agree(picked) and all(names_one_choice(s, choices, strict) for s in inner)


def _unit_like(text: str) -> bool:
    return all(ch.isalnum() or ch.isspace() or ch in UNIT_SYMBOLS for ch in text)


def states_one_number(span: str, strict: bool, last: bool = False) -> bool:
    """Whether ``span`` states one number: its last ``=`` side names one value (strict:
    nothing but that value and units; prose: no other value side by side, and the value
    is no operand, as in ``5 + x``) and every other side equals it or is a name. The
    value is the side's first number, or its last with ``last`` (an unmarked line)."""
    sides = split_equation(clean(span).replace("\\ ", " "))
    final = sides[-1]
    found = number_mentions(final)
    if not found:
        return True  # nothing stated here; the extraction reads none from it either
    named = found[-1] if last else found[0]
    if strict:
        cuts = [0, *(x for m in found for x in (m.start, m.end)), len(final)]
        rest = "".join(final[cuts[i] : cuts[i + 1]] for i in range(0, len(cuts), 2))
        if not all(same_value(m.value, named.value) for m in found) or not _unit_like(rest):
            return False
    elif side_by_side(final, found) or _is_operand(final, named):
        return False
    return all(_side_agrees(side, named.value) for side in sides[:-1])


def _is_operand(text: str, m: Mention) -> bool:
    """Whether the number at ``m`` is an operand (``5 + x``, ``2 * 5``), not a value; a
    dash is read as punctuation."""
    after, before = text[m.end :].lstrip()[:1], text[: m.start].rstrip()[-1:]
    return bool(after and after in OPERATORS) or bool(before and before in OPERATORS)


def _side_agrees(side: str, value: float) -> bool:
    """Each thing a side lists is a name or equals ``value`` (``"3, y"`` names 3)."""
    for part in listed_parts(side):
        stated = side_value(part)
        if stated is not None and not same_value(stated, value):
            return False
    return True


def commits_to_number(response: str, answer_type: str) -> bool:
    """The rule of the module docstring for a row typed integer / float / list."""
    kind, spans = _marks(response)
    if kind == "none":
        body = lines(response)
        if body and UNSURE.search(body[-1]):
            return False
        lone = [_number_key(s, answer_type) for s in _lone_lines(response)]
        return _agree(lone) and (
            not body or _names_one_number(body[-1], answer_type, False, last=True)
        )
    picked = [_number_key(s, answer_type) for s in spans]
    strict = kind in ("tag", "box")
    inner = [last_boxed(s) or s for s in spans]
    return _agree(picked) and all(_names_one_number(s, answer_type, strict) for s in inner)


def _number_key(span: str, answer_type: str) -> Hashable | None:
    found = resolve(span, None, answer_type)
    if found is None or answer_type == "list":
        return found
    return round(float(found), 9)


def _names_one_number(span: str, answer_type: str, strict: bool, last: bool = False) -> bool:
    if answer_type != "list":
        return states_one_number(span, strict, last)
    lists = {last_list(f"[{body}]") for body in re.findall(r"\[([^\[\]]*)\]", span)}
    return len(lists - {None}) <= 1


def is_one_expression(span: str, gold: str) -> bool:
    """Whether a free-form answer reads as one expression: balanced brackets, no
    trailing operator, no code-like junk (``__``, quotes, ``;``, ``a.b``, ``+ \\text{}``)
    and no "or" / "either" (unless the gold has one). math-verify alone would read the
    ``5`` out of ``5 + __import__(...)`` and call it equal."""
    text = span.replace("\\{", "(").replace("\\}", ")")
    if _JUNK.search(text) or clean(text).endswith(TRAILING_OPS):
        return False
    if HEDGE_WORD.search(text) and not HEDGE_WORD.search(gold):
        return False
    depth = {"(": 0, "{": 0}
    for ch in text:
        if ch in "([":
            depth["("] += 1
        elif ch in ")]":
            depth["("] -= 1
        elif ch in "{}":
            depth["{"] += 1 if ch == "{" else -1
        if min(depth.values()) < 0:
            return False
    return depth == {"(": 0, "{": 0}


def _is_name(side: str) -> bool:
    """An equation side without a digit of its own (subscripts aside): ``x``, ``f(x)``,
    ``\\angle ABC``."""
    return not any(ch.isdigit() for ch in _SUBSCRIPT.sub("", side))


def free_answer_equals(span: str, gold: str) -> bool:
    """Whether the free-form answer ``span`` is one expression equal to ``gold``: every
    side of an equation is a name or equal to the gold (math-verify, time-bounded)."""
    if _same_text(span, gold):
        return True
    if not is_one_expression(span, gold) or lists_several(span, gold):
        return False
    sides = split_equation(span)
    if len(sides) > MAX_SIDES:
        return False
    others = [s for s in sides[:-1] if not _is_name(s) and not _same_text(s, gold)]
    return all(_side_equals(s, gold) for s in others) and math_equal(gold, span)


def lists_several(span: str, gold: str) -> bool:
    """Whether ``span`` lists different things (:func:`~mhpo_vl.rewards.extract.
    listed_parts`) where the gold is one value: a gold with a separator anywhere
    ("3, 5", "(3, 5)") holds several and is matched as a whole instead."""
    if LIST_SEP.search(gold):
        return False
    return len({_free_key(part) for part in listed_parts(clean(span))}) > 1


def _side_equals(side: str, gold: str) -> bool:
    """An equation side equals the gold: by arithmetic when both are plain numbers
    ("3 + 2" against "5", no math-verify call), else by math-verify."""
    stated = side_value(clean(side))
    try:
        value = float(gold.replace(",", ""))
    except ValueError:
        value = None
    if stated is not None and value is not None:
        return same_value(stated, value)
    return math_equal(gold, side)


def _free_key(span: str) -> str:
    return re.sub(r"\s+", "", clean(last_boxed(span) or span))


def _judge_free(response: str, gold: str) -> Judgement:
    span = answer_span(response)
    extraction = clean(span) if span is not None else None
    kind, spans = _marks(response)
    if re.fullmatch(r"[A-H]", gold):  # a letter gold whose choices were not given
        said = letter_set(span if span is not None else (lines(response) or [""])[-1])
        agree = _agree([letter_set(s) or None for s in spans])
        return Judgement(extraction, "".join(sorted(said)) or None, agree and said == {gold})
    if span is None:
        body = lines(response)
        one = _agree([_free_key(s) for s in _lone_lines(response)]) and (
            not body or states_one_number(body[-1], strict=False, last=True)
        )
        return Judgement(None, None, one and math_equal(gold, response, marked=False))
    check = free_answer_equals if kind in ("tag", "box") else _prose_answer_equals
    others = {_free_key(s) for s in spans} - {_free_key(spans[-1])}
    if len(others) >= MAX_CHECKED_ANSWERS:
        return Judgement(extraction, extraction, False)
    correct = check(span, gold) and all(check(s, gold) for s in spans if _free_key(s) in others)
    return Judgement(extraction, extraction, correct)


def _prose_answer_equals(span: str, gold: str) -> bool:
    """A phrase's answer equals the gold (math-verify) and its first sentence states one
    value (:func:`states_one_number`, prose rules)."""
    if _same_text(span, gold):
        return True
    return states_one_number(first_sentence(span), strict=False) and math_equal(gold, span)


def judge(response: str | None, row: Mapping[str, Any]) -> Judgement:
    """Extract, normalize and verify one response (see the module docstring).

    Only the last :data:`~mhpo_vl.rewards.extract.TAIL_CHARS` characters are read; a
    response whose answer opens before them is wrong (:func:`unread_answer`)."""
    if not response or not str(response).strip() or unread_answer(str(response)):
        return Judgement(None, None, False)
    response = tail(str(response))
    gold = str(row["answer"]).strip()
    answer_type = row.get("answer_type")
    if row.get("choices"):
        choices = [str(c) for c in row["choices"]]
        extraction = extract_answer(response, choices, answer_type)
        prediction = None if extraction is None else normalize_choice(extraction, choices)
        correct = prediction == gold_choice(row) and commits_to_choice(response, choices)
        return Judgement(extraction, prediction, correct)
    if answer_type in TYPED:
        extraction = extract_answer(response, None, answer_type)
        prediction = normalize_answer(
            extraction, None, "free_form", answer_type, row.get("precision")
        )
        correct = prediction is not None and prediction == gold
        return Judgement(
            extraction, prediction, correct and commits_to_number(response, answer_type)
        )
    return _judge_free(response, gold)


def _safe(fn: Callable[[], bool]) -> float:
    try:
        return 1.0 if fn() else 0.0
    except VerifierUnavailable:  # the checker cannot run at all: a failure, not a zero
        raise
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
    multiple-answer questions whose gold is letters, e.g. LogicVista's "A, C"); every
    answer the response marks must give the same letters."""

    def check() -> bool:
        if unread_answer(str(response or "")):
            return False
        text = tail(str(response or ""))
        span = answer_span(text)
        if span is None:
            body = lines(text)
            span = body[-1] if body else ""
        got = letter_set(span)
        _, spans = _marks(text)
        agree = _agree([letter_set(s) or None for s in spans])
        return agree and bool(got) and got == letter_set(str(row["answer"]))

    return _safe(check)


def is_think_answer(response: str) -> bool:
    """Whether ``response`` is exactly ``<think>...</think>`` then a non-empty
    ``<answer>...</answer>``, whitespace around allowed, no other think/answer tag.

    Read tag by tag with ``str.find`` (linear on any input, where a regex with a
    tempered dot backtracks over long unclosed text)."""
    text = response.strip()
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    if any(text.count(t) != 1 for t in tags):
        return False
    think, think_end, answer, answer_end = (text.find(t) for t in tags)
    if not (think == 0 < think_end < answer < answer_end) or not text.endswith(tags[-1]):
        return False
    between = text[think_end + len(tags[1]) : answer]
    return between.strip() == "" and text[answer + len(tags[2]) : answer_end].strip() != ""


@REWARDS.register("think_answer_format")
def think_answer_format(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the response is exactly ``<think>...</think>`` then a non-empty
    ``<answer>...</answer>`` (whitespace around allowed, no stray tags)."""
    return _safe(lambda: is_think_answer(str(response or "")))


@REWARDS.register("answer_format")
def answer_format(response: str, row: Mapping[str, Any]) -> float:
    """1.0 if the response has a non-empty ``<answer>...</answer>`` tag."""
    return _safe(lambda: bool(last_tag_content(str(response or ""))))
