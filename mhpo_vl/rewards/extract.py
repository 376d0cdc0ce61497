"""Rule-based answer extraction from free model text.

MathVista's official scorer asks GPT-4 to pull the answer out of a response; we do it
with rules so training rewards and evaluation share one deterministic, offline path.
The order of sources, first found wins:

1. the last ``<answer>...</answer>`` tag,
2. the last ``\\boxed{...}`` (nested braces),
3. the last explicit phrase ("the answer is X", "Answer: X", "correct option is (B)",
   "Final value: X"),
4. the whole response: a leading or lone choice letter ("(B)", "B.", "B"), a choice text,
   for numeric types the last number, for lists the last bracketed list.

The result is the *extraction* in MathVista's sense: a choice letter or choice text, a
number, a list, or a short string. :mod:`mhpo_vl.rewards.normalize` then maps it the
official way.

Two users, two strictness levels. Training rewards (:mod:`mhpo_vl.rewards.verifiers`)
use :func:`extract_answer` and pay only for answers that commit to one candidate. The
MathVista evaluation path (:mod:`mhpo_vl.eval.mathvista`, ``fallback="official"``) uses
:func:`mhpo_vl.eval.reading.extract_for_eval`, which also reads what plain sentences commit to, as the
official GPT-4 extraction does: a letter in any common form, an option text restated in
a sentence (a negated option left out), a yes/no statement (negations and comparisons
in the other direction answer "no"), the number a sentence states as its answer (after
"=", a copula or a conclusion word, not a number copied from the question); it abstains
on refusals and hedges, and the caller applies the official edit-distance fallback.

Time bounds. Model output is only matched with regular expressions, never executed, and
every public function here first cuts its input to the last :data:`TAIL_CHARS`
characters (answers come last), so a response of any size costs the same as one of
that size. The patterns are linear besides: no two adjacent quantifiers can share a
character, no optional group sits between two whitespace runs, and what can be found
with ``str.find`` (tags) or one pass (braces) is.

Long answers. Within those characters nothing is cut: a phrase's answer is read to the
end of its line and a list at any length. An answer that opens before them (one longer
than :data:`TAIL_CHARS`, or one followed by that much text) would be read from its cut
end, or missed for something earlier; :func:`unread_answer` names such a response, and
the verifiers refuse it (score 0, counted by the caller) rather than misread it.

The second half of the module describes what a span *names* (choices, numbers, the
sides of an equation); :mod:`mhpo_vl.rewards.verifiers` uses it to refuse answers that
name more than one candidate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from mhpo_vl.rewards.normalize import PAREN_LETTER

TAIL_CHARS = 8_000  # every extraction reads only this many last characters: answers come last
MAX_MARKS = 16  # answer_marks returns at most this many (the last ones): bounded work each
MAX_ARITH_TOKENS = 64  # longer arithmetic is not evaluated (and so not trusted)
MAX_POWER = 64.0  # |exponent| and ...
MAX_POWER_BASE = 1e6  # ... |base| allowed in ``a^b`` when checking an equation

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE_WORDS = (
    r"(?:final\s+answer|correct\s+answers?|the\s+answer|answer|correct\s+option|"
    r"correct\s+choice|final\s+value|final\s+result|答案|选项)"
)
# "answer" then a connective. Each alternative starts with a different first token and
# "is" is attached to what follows it, so a whitespace run is read by one quantifier only
# (the old ``\s*(?:is)?\s*`` split a run between two and was quadratic in its length).
_PHRASE = re.compile(
    _PHRASE_WORDS
    + r"(?:\s+(?:is|are|would\s+be|should\s+be|will\s+be)|\s*(?:is\s*)?[:：=]|\s*[是为])"
    + r"\s*(?:\\?\$\s*)?(?P<rest>[^\n]*)",  # the rest of the line, however long
    re.IGNORECASE,
)
_CN_OPTION = re.compile(r"选项\s*(?P<rest>\(?[A-Z]\)?)(?![A-Za-z])")
LEAD_LETTER = re.compile(r"^\s*\**\(?([A-Za-z])(?:\)|\.|:|\s*$|\s)")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|operatorname)\s*\{([^{}]*)\}")
_NUMBER = re.compile(
    r"\\[dt]?frac\s*\{\s*(?P<fn>-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(?P<fd>-?\d+(?:\.\d+)?)\s*\}"
    r"|(?<![\w.])(?P<sn>-?\d+(?:\.\d+)?)\s*/\s*(?P<sd>\d+(?:\.\d+)?)(?![\w.])"
    r"|(?P<num>(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+)"
    r"(?:\s*(?:[eE]|[x×*]\s*10\s*\^)\s*\{?(?P<exp>[-+]?\d+)\}?)?"
)
_LIST = re.compile(r"\[([^\[\]]*)\]")  # linear: a body cannot hold the next "["
DASHES = str.maketrans({"−": "-", "–": "-", "—": "-", "＄": "$", "，": ","})
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)|[。！？；]")


def tail(text: str) -> str:
    """The last :data:`TAIL_CHARS` characters of ``text``: all that extraction reads."""
    return text[-TAIL_CHARS:]


_TAG_OPEN = re.compile(r"<answer>", re.IGNORECASE)


def unread_answer(text: str) -> str | None:
    """Why the answer of ``text`` cannot be read, or None when it can.

    Extraction reads the last :data:`TAIL_CHARS` characters. If they hold a complete
    ``<answer>`` tag, it is the last one and is read in full; if not and a tag opens
    before them, the last answer was cut (or lies wholly before them), so the response
    is refused. Without tags the same goes for ``\\boxed{}``. Phrases ("the answer
    is") are prose and never refuse. Linear: two searches of the text before the window.
    """
    cut = len(text) - TAIL_CHARS
    if cut <= 0:
        return None
    window = text[cut:]
    for what, opener, found in (
        ("<answer>", _TAG_OPEN, tag_contents),
        ("\\boxed{}", _BOXED, boxed_contents),
    ):
        if found(window):
            return None
        early = opener.search(text, 0, cut + 16)  # one that straddles the cut counts
        if early is not None and early.start() < cut:
            return (
                f"its last {what} answer opens before the last {TAIL_CHARS:,} characters, "
                "all that is read (an answer that long, or that much text after it)"
            )
    return None


def tag_contents(text: str, tag: str = "answer") -> list[str]:
    """Contents of every ``<tag>...</tag>`` pair in the tail (case-insensitive), in order;
    an opening tag pairs with the next closing one (the last opening before it wins).

    Found with ``str.find`` rather than a regex so that many unclosed tags stay linear."""
    text = tail(text)
    low = text.lower()
    opener, closer = f"<{tag}>", f"</{tag}>"
    out: list[str] = []
    pos = 0
    while (close := low.find(closer, pos)) >= 0:
        open_ = low.rfind(opener, pos, close)
        if open_ >= 0:
            out.append(text[open_ + len(opener) : close].strip())
        pos = close + len(closer)
    return out


def last_tag_content(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>`` pair (case-insensitive), or None."""
    found = tag_contents(text, tag)
    return found[-1] if found else None


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` in the tail with balanced (nested) braces, in
    order of their opening."""
    text = tail(text)
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return []
    closing: dict[int, int] = {}  # position after an opening brace -> its closing brace
    stack: list[int] = []
    for i, ch in enumerate(text):  # one pass, so many unclosed boxes stay linear
        if ch == "{":
            stack.append(i + 1)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    return [text[s : closing[s]].strip() for s in starts if s in closing]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced (nested) braces, or None."""
    found = boxed_contents(text)
    return found[-1] if found else None


def phrase_spans(text: str, options: bool = True) -> list[str]:
    """What follows each "answer is" / "Answer:" style phrase on its line, in order
    (empty ones dropped). ``options=False`` leaves out "选项 X" (Chinese "option X"),
    which also introduces the options when a response lists them."""
    text = tail(text)
    found = [(m.start(), m.group("rest").strip()) for m in _PHRASE.finditer(text)]
    if options:
        found += [(m.start(), m.group("rest").strip()) for m in _CN_OPTION.finditer(text)]
    return [rest for _, rest in sorted(found, key=lambda f: f[0]) if rest]


def last_phrase(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" style phrase on its line, or None."""
    found = phrase_spans(text)
    return found[-1] if found else None


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end ("5. Since..." -> "5"): the answer part of
    a phrase's line, without the explanation that may follow it."""
    m = _SENTENCE_END.search(text)
    return text[: m.start()] if m else text


def clean(text: str) -> str:
    """Strip LaTeX text wrappers, ``$``, markdown bold and trailing punctuation."""
    text = tail(text)
    for _ in range(8):  # unwrap nested \text{\textbf{...}}; deeper nesting is left as is
        text, n = _LATEX_WRAP.subn(r"\1", text)
        if not n:
            break
    text = text.replace("\\$", "").replace("$", "").replace("**", "").replace("\\%", "%")
    text = (
        text.replace("\\!", "").replace("\\,", "").replace("^\\circ", "°").replace("^{\\circ}", "°")
    )
    return text.strip().strip(" .。,;:!").strip()


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


class Mention(NamedTuple):
    """Something a span names, at ``start:end`` of the text it was found in: a choice
    index or a number's value."""

    start: int
    end: int
    value: float


def number_matches(text: str) -> Iterator[tuple[re.Match[str], str]]:
    """Each number match with its plain decimal string (fractions evaluated, commas
    dropped, ``1.2 x 10^4`` expanded); ``text`` must have its dashes translated."""
    for m in _NUMBER.finditer(text):
        try:
            if m.group("fn") is not None or m.group("sn") is not None:
                num = float(m.group("fn") or m.group("sn"))
                den = float(m.group("fd") or m.group("sd"))
                yield m, (_fmt(num / den) if den else m.group(0))
                continue
            raw = m.group("num").replace(",", "")
            if m.group("exp") is not None:
                yield m, _fmt(float(raw) * 10.0 ** int(m.group("exp")))
            else:
                yield m, raw
        except (OverflowError, ValueError):
            continue


def numbers(text: str) -> list[str]:
    """Every number in the tail of ``text`` as a plain decimal string (fractions
    evaluated, commas dropped, ``1.2 x 10^4`` expanded), in order."""
    return [value for _, value in number_matches(tail(text).translate(DASHES))]


def last_list(text: str) -> str | None:
    """The last ``[...]`` of numbers, formatted like Python's ``str(list)``, or None."""
    for body in reversed(_LIST.findall(tail(text))):
        parts = [p.strip() for p in body.split(",")]
        vals = [numbers(p) for p in parts]
        if parts and all(len(v) == 1 for v in vals):
            return "[" + ", ".join(v[0] for v in vals) + "]"
    return None


def choice_key(s: str) -> str:
    return re.sub(r"\s+", " ", clean(str(s))).lower()


def match_choice(text: str, choices: Sequence[str], contained: bool = True) -> str | None:
    """A choice letter (``"B"``) or the choice text that ``text`` names, else None.

    Accepts "(B)", "(B) text", "B", "B.", "B) text", the exact choice text (case and
    LaTeX wrappers ignored), a number equal to a numeric choice, or a text containing
    exactly one choice text.
    """
    text = clean(text)
    n = len(choices)
    letters = [m.upper() for m in PAREN_LETTER.findall(text)]
    in_range = [c for c in letters if ord(c) - 65 < n]
    if in_range:
        return in_range[0]
    m = LEAD_LETTER.match(text)
    if m and ord(m.group(1).upper()) - 65 < n and (len(text) <= 3 or not text[1:2].isalpha()):
        return m.group(1).upper()
    key = choice_key(text)
    keys = [choice_key(c) for c in choices]
    if key in keys:
        return str(choices[keys.index(key)])
    nums = numbers(text)
    if len(nums) == 1:
        hits = [c for c in choices if numbers(str(c)) == nums and is_numeric_choice(str(c))]
        if len(hits) == 1:
            return str(hits[0])
    if not contained:
        return None
    found = [c for c, k in zip(choices, keys, strict=True) if len(k) > 1 and _contains_word(key, k)]
    return str(found[0]) if len(found) == 1 else None


def is_numeric_choice(choice: str) -> bool:
    return re.fullmatch(r"[-+]?[\d.,]+\s*(?:°|%|cm|m|mm|km|units?)?", choice.strip()) is not None


def _word_bounded(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or after.isalnum())


def _contains_word(text: str, phrase: str) -> bool:
    idx = text.find(phrase)
    while idx >= 0:
        if _word_bounded(text, idx, idx + len(phrase)):
            return True
        idx = text.find(phrase, idx + 1)
    return False


def resolve(candidate: str, choices: Sequence[str] | None, answer_type: str | None) -> str | None:
    """Turn one candidate span into an extraction of the row's type, or None."""
    inner = last_boxed(candidate)
    if inner is not None:  # "<answer>\\boxed{5}</answer>"
        candidate = inner
    if choices:
        return match_choice(candidate, choices)
    if answer_type == "list":
        return last_list(clean(candidate))
    if answer_type in ("integer", "float"):
        nums = numbers(clean(candidate))
        if not nums:
            return None
        eq = clean(candidate).rsplit("=", 1)
        return numbers(eq[-1])[0] if len(eq) == 2 and numbers(eq[-1]) else nums[0]
    out = clean(candidate)
    return out or None


def _whole_response(
    text: str, choices: Sequence[str] | None, answer_type: str | None
) -> str | None:
    if choices:
        m = LEAD_LETTER.match(clean(text))
        if m and ord(m.group(1).upper()) - 65 < len(choices):
            return m.group(1).upper()
        letters = [
            c.upper() for c in PAREN_LETTER.findall(text) if ord(c.upper()) - 65 < len(choices)
        ]
        if letters:
            return letters[-1]
        return match_choice(text.strip().splitlines()[-1] if text.strip() else "", choices, False)
    if answer_type == "list":
        return last_list(text)
    if answer_type in ("integer", "float"):
        nums = numbers(text)
        return nums[-1] if nums else None
    return None


def extract_answer(
    text: str | None,
    choices: Sequence[str] | None = None,
    answer_type: str | None = None,
) -> str | None:
    """The answer a response gives, as a MathVista-style extraction, or None.

    ``choices`` (multiple choice) makes the result a choice letter or choice text;
    ``answer_type`` "integer"/"float" makes it a number, "list" a ``[a, b]`` string;
    otherwise it is the cleaned span from a tag, box or phrase (None if the response has
    none of those: free text without a marked answer is not guessed at).
    """
    if not text:
        return None
    text = tail(text)
    for source in (last_tag_content, last_boxed):
        span = source(text)
        if span is not None:
            return resolve(span, choices, answer_type)
    span = last_phrase(text)
    if span is not None:
        found = resolve(span, choices, answer_type)
        if found is not None:
            return found
    return _whole_response(text, choices, answer_type)


# --- what a span names -------------------------------------------------------------
# Used by the verifiers to refuse answers that commit to nothing: several candidates
# side by side ("A or B", "5, 6"), or an equation one side of which is false ("6 = 5").


def answer_marks(text: str) -> tuple[str, list[str]]:
    """``(kind, spans)``: every answer of the kind extraction reads first, in order:
    ``"tag"`` (``<answer>`` contents), ``"box"`` (``\\boxed{}`` contents) or ``"phrase"``
    (each phrase's first sentence; option listings "选项 (A) ..." left out); else
    ``("none", [])``. Only the last :data:`MAX_MARKS` of them."""
    for kind, source in (("tag", tag_contents), ("box", boxed_contents)):
        found = source(text)
        if found:
            return kind, found[-MAX_MARKS:]
    phrases = [first_sentence(s).strip() for s in phrase_spans(text, options=False)]
    phrases = [p for p in phrases if p]
    return ("phrase", phrases[-MAX_MARKS:]) if phrases else ("none", [])


def lines(text: str) -> list[str]:
    """The non-empty lines of the tail, stripped."""
    return [line.strip() for line in tail(text).splitlines() if line.strip()]


_LETTER_REF = re.compile(r"\(([A-Za-z])\)|(?<![\w'’^_\\])([A-Z])(?![\w'’])")


def choice_mentions(text: str, choices: Sequence[str]) -> tuple[str, list[Mention]]:
    """The cleaned text and every choice it names, in order: choice texts (whole words,
    longest first, case-insensitive) and, outside them, choice letters in range ("(b)",
    a standalone capital "B"). A letter inside a choice text ("sample A") is no letter."""
    norm = re.sub(r"\s+", " ", clean(text))
    low = norm.lower()
    taken = bytearray(len(norm))
    found: list[Mention] = []
    keys = sorted(((choice_key(c), i) for i, c in enumerate(choices)), key=lambda k: -len(k[0]))
    for key, index in keys:
        if not key or (len(key) == 1 and key.isalpha()):  # a one-letter text reads as a letter
            continue
        pos = low.find(key)
        while pos >= 0:
            end = pos + len(key)
            if _word_bounded(low, pos, end) and not any(taken[pos:end]) and not raised(low, pos):
                taken[pos:end] = b"\x01" * (end - pos)
                found.append(Mention(pos, end, index))
            pos = low.find(key, pos + 1)
    for m in _LETTER_REF.finditer(norm):
        letter = (m.group(1) or m.group(2)).upper()
        if ord(letter) - 65 < len(choices) and not any(taken[m.start() : m.end()]):
            found.append(Mention(m.start(), m.end(), ord(letter) - 65))
    return norm, sorted(found)


def raised(text: str, pos: int) -> bool:
    """Whether ``pos`` starts an exponent or subscript (``^2``, ``_{1}``)."""
    before = text[max(0, pos - 2) : pos].replace("{", "")
    return before.endswith(("^", "_"))


def number_mentions(text: str) -> list[Mention]:
    """Every number in ``text`` (already cleaned) with its position, exponents and
    subscripts (``cm^2``, ``x_1``) left out."""
    text = text.translate(DASHES)
    return [
        Mention(m.start(), m.end(), float(value))
        for m, value in number_matches(text)
        if not raised(text, m.start()) and is_float(value)
    ]


def is_float(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


# Between two candidates, nothing but punctuation and words that join alternatives.
_CONNECTIVE = re.compile(
    r"(?:[\s,;/|&.:()\[\]*+、，；]|\b(?:or|and|either|nor|vs|versus)\b|或者|或|还是|和)*",
    re.IGNORECASE,
)
HEDGE_WORD = re.compile(r"\b(?:or|either|nor|vs|versus)\b|或者|还是", re.IGNORECASE)


def side_by_side(text: str, mentions: Sequence[Mention]) -> bool:
    """Whether two different candidates stand next to each other with only punctuation
    or "or" / "and" between them ("A B", "A/B", "either A or B", "5, 6", "5 and 6")."""
    return any(
        a.value != b.value and _CONNECTIVE.fullmatch(text[a.end : b.start]) is not None
        for a, b in zip(mentions, mentions[1:], strict=False)
    )


# What separates listed values: ";", "," (not a thousands separator: "1,000"), "and", "or".
LIST_SEP = re.compile(r"[;；，、]|,(?!\d{3}(?!\d))|\b(?:and|or)\b|或者|或|还是|和", re.IGNORECASE)


def listed_parts(text: str) -> list[str]:
    """``text`` split at each :data:`LIST_SEP` outside brackets, blank parts dropped:
    the things it lists (``"x = 3, y = 5"`` -> ``["x = 3", " y = 5"]``; ``"(3, 5)"`` and
    ``"\\{3, 5\\}"`` are one part each)."""
    levels, depth = [], 0
    for ch in text:
        if ch in ")]}":
            depth = max(depth - 1, 0)
        levels.append(depth)
        if ch in "([{":
            depth += 1
    parts, start = [], 0
    for m in LIST_SEP.finditer(text):
        if levels[m.start()] == 0:
            parts.append(text[start : m.start()])
            start = m.end()
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def same_value(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


# --- equations: "x = 5" and "3 + 2 = 5" name 5; "6 = 5" is false ----------------------

_LATEX_OPS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("\\left", ""), ("\\right", ""))
_OPS = {"×": "*", "·": "*", "÷": "/", "−": "-", "[": "(", "]": ")", "{": "(", "}": ")"}


def split_equation(text: str) -> list[str]:
    """``text`` split at each ``=`` outside braces and brackets (``\\{x | x = 1\\}`` is
    one side)."""
    sides, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[(":
            depth += 1
        elif ch in "}])" and depth:
            depth -= 1
        elif ch == "=" and depth == 0:
            sides.append(text[start:i])
            start = i + 1
    return [*sides, text[start:]]


def _arith_tokens(side: str) -> list[tuple[str, float | str]]:
    """``side`` as tokens: ``("num", value)``, ``("op", "+-*/^()")``, ``("ws", " ")`` and
    ``("other", char)`` for anything else (letters, symbols)."""
    for latex, op in _LATEX_OPS:
        side = side.replace(latex, f" {op} " if op else " ")
    side = side.translate(DASHES)
    tokens: list[tuple[str, float | str]] = []
    pos = 0
    for m, value in number_matches(side):
        tokens += _symbol_tokens(side[pos : m.start()])
        tokens.append(("num", float(value)) if is_float(value) else ("other", value))
        pos = m.end()
    return tokens + _symbol_tokens(side[pos:])


def _symbol_tokens(text: str) -> list[tuple[str, float | str]]:
    out: list[tuple[str, float | str]] = []
    for ch in text:
        ch = _OPS.get(ch, ch)
        if ch.isspace():
            out.append(("ws", " "))
        elif ch in "+-*/^()":
            out.append(("op", ch))
        else:
            out.append(("other", ch))
    return out


class _NotArithmetic(Exception):
    pass


def side_value(side: str) -> float | None:
    """The value a (non-final) side of an equation states, if it states one.

    The side's trailing arithmetic ("so 3 + 2" -> 5, "13 * -10" -> -130) is evaluated
    by a small parser (numbers, ``+ - * / ^``, parentheses; nothing is executed). None
    when the side states no number of its own: a name or an expression in unknowns
    ("x", "AB", "2x", "∠1", "AB + 3"). ``nan`` when it has a standalone number but no
    arithmetic the parser can read ("6 +"): such a side is never equal to anything."""
    tokens = _arith_tokens(side)
    cut = len(tokens)
    while cut and tokens[cut - 1][0] != "other":
        cut -= 1
    suffix = tokens[cut:]
    if not any(kind == "num" for kind, _ in suffix):
        return None
    if cut and suffix[0][0] != "ws":
        return None  # glued to a name: "∠1", "x_1", "f(3)"
    body = [t for t in suffix if t[0] != "ws"]
    if body[0][0] == "op" and body[0][1] in "+*/^)" and cut:
        return None  # continues an expression in unknowns: "AB + 3"
    if len(body) > MAX_ARITH_TOKENS:
        return math.nan
    try:
        value, end = _expr(body, 0)
        if end != len(body):
            raise _NotArithmetic
        return value
    except (_NotArithmetic, ZeroDivisionError, OverflowError):
        return math.nan


def _expr(tokens: list[tuple[str, float | str]], i: int) -> tuple[float, int]:
    value, i = _term(tokens, i)
    while i < len(tokens) and tokens[i] in (("op", "+"), ("op", "-")):
        rhs, j = _term(tokens, i + 1)
        value, i = (value + rhs if tokens[i][1] == "+" else value - rhs), j
    return value, i


def _term(tokens: list[tuple[str, float | str]], i: int) -> tuple[float, int]:
    value, i = _unary(tokens, i)
    while i < len(tokens) and tokens[i] in (("op", "*"), ("op", "/")):
        rhs, j = _unary(tokens, i + 1)
        value, i = (value * rhs if tokens[i][1] == "*" else value / rhs), j
    return value, i


def _unary(tokens: list[tuple[str, float | str]], i: int) -> tuple[float, int]:
    if i < len(tokens) and tokens[i] in (("op", "-"), ("op", "+")):
        value, j = _unary(tokens, i + 1)
        return (-value if tokens[i][1] == "-" else value), j
    base, i = _atom(tokens, i)
    if i < len(tokens) and tokens[i] == ("op", "^"):
        exponent, i = _unary(tokens, i + 1)
        if abs(exponent) > MAX_POWER or abs(base) > MAX_POWER_BASE:
            raise _NotArithmetic
        if base < 0 and exponent != int(exponent):  # a complex root: not a stated value
            raise _NotArithmetic
        return float(base**exponent), i
    return base, i


def _atom(tokens: list[tuple[str, float | str]], i: int) -> tuple[float, int]:
    if i < len(tokens) and tokens[i][0] == "num":
        return float(tokens[i][1]), i + 1
    if i < len(tokens) and tokens[i] == ("op", "("):
        value, j = _expr(tokens, i + 1)
        if j < len(tokens) and tokens[j] == ("op", ")"):
            return value, j + 1
    raise _NotArithmetic
