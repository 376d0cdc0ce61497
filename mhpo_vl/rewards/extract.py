"""Rule-based answer extraction from free model text.

MathVista's official scorer asks GPT-4 to pull the answer out of a response; we do it
with rules so training rewards and evaluation share one deterministic, offline path
(EVALUATION.md). The order of sources, first found wins:

1. the last ``<answer>...</answer>`` tag,
2. the last ``\\boxed{...}`` (nested braces),
3. the last explicit phrase ("the answer is X", "Answer: X", "correct option is (B)",
   "Final value: X"),
4. the whole response: a leading or lone choice letter ("(B)", "B.", "B"), a choice text,
   for numeric types the last number, for lists the last bracketed list.

The result is the *extraction* in MathVista's sense: a choice letter or choice text, a
number, a list, or a short string. :mod:`mhpo_vl.rewards.normalize` then maps it the
official way. Model output is only matched with regular expressions (linear patterns,
bounded input length), never executed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_CHARS = 50_000  # longer responses are scanned from the end: answers come last

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(
    r"(?:final\s+answer|correct\s+answers?|the\s+answer|answer|correct\s+option|"
    r"correct\s+choice|final\s+value|final\s+result|答案|选项)"
    r"(?:\s+(?:is|are|would\s+be|should\s+be|will\s+be)|\s*(?:is)?\s*[:：=]|\s*是|\s*为)\s*"
    r"(?:\\?\$\s*)?(?P<rest>[^\n]{0,300})",
    re.IGNORECASE,
)
_CN_OPTION = re.compile(r"选项\s*(?P<rest>\(?[A-Z]\)?)(?![A-Za-z])")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_LEAD_LETTER = re.compile(r"^\s*\**\(?([A-Za-z])(?:\)|\.|:|\s*$|\s)")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|operatorname)\s*\{([^{}]*)\}")
_NUMBER = re.compile(
    r"\\[dt]?frac\s*\{\s*(?P<fn>-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(?P<fd>-?\d+(?:\.\d+)?)\s*\}"
    r"|(?<![\w.])(?P<sn>-?\d+(?:\.\d+)?)\s*/\s*(?P<sd>\d+(?:\.\d+)?)(?![\w.])"
    r"|(?P<num>(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+)"
    r"(?:\s*(?:[eE]|[x×*]\s*10\s*\^)\s*\{?(?P<exp>[-+]?\d+)\}?)?"
)
_LIST = re.compile(r"\[([^\[\]]{0,2000})\]")
_DASHES = str.maketrans({"−": "-", "–": "-", "—": "-", "＄": "$", "，": ","})


def last_tag_content(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>`` pair (case-insensitive), or None.

    Found with ``rfind`` rather than a regex so that many unclosed tags stay linear."""
    low = text.lower()
    close = low.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_ = low.rfind(f"<{tag}>", 0, close)
    return text[open_ + len(tag) + 2 : close].strip() if open_ >= 0 else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced (nested) braces, or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    closing: dict[int, int] = {}  # position after an opening brace -> its closing brace
    stack: list[int] = []
    for i, ch in enumerate(text):  # one pass, so many unclosed boxes stay linear
        if ch == "{":
            stack.append(i + 1)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for start in reversed(starts):
        if start in closing:
            return text[start : closing[start]].strip()
    return None


def last_phrase(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" style phrase on its line, or None."""
    found = list(_PHRASE.finditer(text)) + list(_CN_OPTION.finditer(text))
    for m in sorted(found, key=lambda m: m.start(), reverse=True):
        rest = m.group("rest").strip()
        if rest:
            return rest
    return None


def clean(text: str) -> str:
    """Strip LaTeX text wrappers, ``$``, markdown bold and trailing punctuation."""
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


def numbers(text: str) -> list[str]:
    """Every number in ``text`` as a plain decimal string (fractions evaluated, commas
    dropped, ``1.2 x 10^4`` expanded), in order."""
    out: list[str] = []
    for m in _NUMBER.finditer(text.translate(_DASHES)):
        try:
            if m.group("fn") is not None or m.group("sn") is not None:
                num = float(m.group("fn") or m.group("sn"))
                den = float(m.group("fd") or m.group("sd"))
                out.append(_fmt(num / den) if den else m.group(0))
                continue
            raw = m.group("num").replace(",", "")
            if m.group("exp") is not None:
                out.append(_fmt(float(raw) * 10.0 ** int(m.group("exp"))))
            else:
                out.append(raw)
        except (OverflowError, ValueError):
            continue
    return out


def last_list(text: str) -> str | None:
    """The last ``[...]`` of numbers, formatted like Python's ``str(list)``, or None."""
    for body in reversed(_LIST.findall(text)):
        parts = [p.strip() for p in body.split(",")]
        vals = [numbers(p) for p in parts]
        if parts and all(len(v) == 1 for v in vals):
            return "[" + ", ".join(v[0] for v in vals) + "]"
    return None


def _choice_key(s: str) -> str:
    return re.sub(r"\s+", " ", clean(str(s))).lower()


def match_choice(text: str, choices: Sequence[str], contained: bool = True) -> str | None:
    """A choice letter (``"B"``) or the choice text that ``text`` names, else None.

    Accepts "(B)", "(B) text", "B", "B.", "B) text", the exact choice text (case and
    LaTeX wrappers ignored), a number equal to a numeric choice, or a text containing
    exactly one choice text.
    """
    text = clean(text)
    n = len(choices)
    letters = [m.upper() for m in _PAREN_LETTER.findall(text)]
    in_range = [c for c in letters if ord(c) - 65 < n]
    if in_range:
        return in_range[0]
    m = _LEAD_LETTER.match(text)
    if m and ord(m.group(1).upper()) - 65 < n and (len(text) <= 3 or not text[1:2].isalpha()):
        return m.group(1).upper()
    key = _choice_key(text)
    keys = [_choice_key(c) for c in choices]
    if key in keys:
        return str(choices[keys.index(key)])
    nums = numbers(text)
    if len(nums) == 1:
        hits = [c for c in choices if numbers(str(c)) == nums and _is_numeric_choice(str(c))]
        if len(hits) == 1:
            return str(hits[0])
    if not contained:
        return None
    found = [c for c, k in zip(choices, keys, strict=True) if len(k) > 1 and _contains_word(key, k)]
    return str(found[0]) if len(found) == 1 else None


def _is_numeric_choice(choice: str) -> bool:
    return re.fullmatch(r"[-+]?[\d.,]+\s*(?:°|%|cm|m|mm|km|units?)?", choice.strip()) is not None


def _contains_word(text: str, phrase: str) -> bool:
    idx = text.find(phrase)
    while idx >= 0:
        before = text[idx - 1] if idx > 0 else " "
        after = text[idx + len(phrase)] if idx + len(phrase) < len(text) else " "
        if not (before.isalnum() or after.isalnum()):
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
        m = _LEAD_LETTER.match(clean(text))
        if m and ord(m.group(1).upper()) - 65 < len(choices):
            return m.group(1).upper()
        letters = [
            c.upper() for c in _PAREN_LETTER.findall(text) if ord(c.upper()) - 65 < len(choices)
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
    text = text[-MAX_CHARS:]
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
