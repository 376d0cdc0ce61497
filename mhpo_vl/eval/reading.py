"""Reading a response as MathVista's official pipeline does: the evaluation path only.

MathVista's official pipeline has GPT-4 read what a response commits to, whatever its
form ("Periwinkle is not the maximum." -> "no"; "There are 2 items sold less than 5
units." -> "2"). :func:`extract_for_eval` does that with rules, for scores comparable
with the leaderboard. Training rewards never use it: it reads statements that a reward
must not pay for (the "answers must commit" rule of :mod:`mhpo_vl.rewards.verifiers`).
Like :mod:`mhpo_vl.rewards.extract`, it reads only the tail of a response, with linear
patterns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mhpo_vl.rewards.extract import (
    DASHES,
    HEDGE_WORD,
    LEAD_LETTER,
    PAREN_LETTER,
    TAIL_CHARS,
    Mention,
    choice_key,
    choice_mentions,
    clean,
    first_sentence,
    is_float,
    is_numeric_choice,
    last_boxed,
    last_list,
    last_phrase,
    last_tag_content,
    lines,
    number_matches,
    number_mentions,
    numbers,
    raised,
    resolve,
    same_value,
    split_equation,
    tail,
)

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|[。！？；]\s*|\n+")
_NEGATION = re.compile(
    r"\b(?:not|no|never|neither|nor|none|nothing|nobody|without|cannot)\b|n[’']t\b", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"\b(?:cannot|can\s*not|can[’']t|unable\s+to|not\s+able\s+to)\s+(?:\w+\s+){0,2}?"
    r"(?:determine|tell|see|say|answer|be\s+answered|be\s+determined|identify|know|find|view|"
    r"analy[sz]e|perceive|read|provide|give|confirm|count|judge|decide|infer|make\s+out|"
    r"access|process|assist|help|be\s+sure|compare|measure|calculate|estimate)\b"
    r"|\b(?:impossible|unclear|unknown|uncertain|insufficient)\b|\bnot\s+(?:possible|clear|enough|sure|certain|visible|provided|given|"
    r"shown|able|determinable)\b|\b(?:does|do|did)\s*(?:not|n[’']t)\s+(?:provide|show|"
    r"give|contain|include|specify|indicate)|\bdifficult\s+to\b|\bhard\s+to\s+(?:tell|say|"
    r"determine)\b|\bno\s+(?:way|information|data|image)\b|\bplease\s+(?:provide|clarify|"
    r"specify|share|describe|upload)\b|\b(?:need|needs|require|requires)\s+(?:more|additional|"
    r"further|the)\s+(?:\w+\s+)?(?:information|context|details|data)\b|\b(?:ambiguous|vague|"
    r"invalid|subjective|incomplete)\b|\b(?:is|are)\s+missing\b|\bnot\s+(?:valid|defined|specified)\b|"
    r"\bas\s+an\s+ai\b|\bi[’']m\s+sorry\b|\bno\s+(?:option|choice|answer)\b|"
    r"\bnone\s+of\s+the\s+(?:options|choices|answers)\b|\bnot\s+(?:in|among|one\s+of)\s+the\s+"
    r"(?:options|choices)\b|\bnot\s+available\b",
    re.IGNORECASE,
)
_HEDGE = re.compile(
    r"\b(?:either|or)\b|\b(?:maybe|perhaps|possibly)\b|\bmight\s+be\b|\bcould\s+be\b",
    re.IGNORECASE,
)
_LETTER_FORMS = re.compile(
    r"\b(?:option|choice|answer|letter|solution|result)\s*[:：]?\s*\(?([A-Z])\)?(?![\w'’])"
    r"|\b(?:option|choice|answer|solution|result|pick|selection)\s+(?:is|would\s+be|will\s+be)"
    r"\s+\(?([A-Z])\)?(?=\s*[:.)]|\s*$)"
    r"|(?:^|\s)\(?([A-Z])\)?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b"
    r"|\b(?:is|be|choose|select|pick)\s+\(?([A-Z])\)?\s*(?:[.!]\s*)?$"
    r"|^\s*\**\(?([A-Z])\)?\**\s*(?:[.:)]\s*)?$",
    re.IGNORECASE,
)
# a comparison and its opposite: a statement in the other direction answers "no"
_UP = (
    r"more|greater|larger|bigger|higher|taller|longer|older|heavier|wider|faster|"
    r"maximum|max|highest|largest|biggest|greatest|most|tallest|longest|oldest|heaviest|"
    r"above|exceeds?"
)
_DOWN = (
    r"fewer|less|smaller|lower|shorter|younger|lighter|narrower|slower|"
    r"minimum|min|lowest|smallest|least|fewest|shortest|youngest|lightest|"
    r"below"
)
_UP_RE = re.compile(rf"\b(?:{_UP})\b", re.IGNORECASE)
_DOWN_RE = re.compile(rf"\b(?:{_DOWN})\b", re.IGNORECASE)
_EQUAL_RE = re.compile(r"\b(?:equal|same|identical|equally)\b", re.IGNORECASE)
_YES = ("yes", "true", "correct", "right")
_NO = ("no", "false", "incorrect", "wrong")
_LEAD_WORD = re.compile(r"^\W*([A-Za-z]+)\b")
_COPULA_NUMBER = re.compile(
    r"(?:\b(?:is|are|was|were|be|equals?|equal\s+to|of|has|have|had|about|approximately|"
    r"around|roughly|nearly|exactly|only|just|total|totals|measures|gives|becomes|remain|"
    r"remains|remaining|leaving|leaves|left|needs?|takes?|costs?)\b|[=:≈])\s*(?:\\?\$)?\s*(?:about\s+|approximately\s+|"
    r"around\s+|roughly\s+|only\s+|just\s+|exactly\s+|a\s+total\s+of\s+)?(?=[-−\d.\\])",
    re.IGNORECASE,
)
_WORD_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)
_CONCLUDE = re.compile(
    r"\b(?:so|therefore|thus|hence|overall|finally|in\s+total|in\s+conclusion|altogether|"
    r"leaving|which\s+leaves|giving|which\s+gives|resulting\s+in)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    """The non-empty sentences of the tail, in order (a decimal point ends none)."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(tail(text)) if s.strip()]


def _yes_no(choices: Sequence[str]) -> tuple[int, int] | None:
    """Indices of the "yes" and "no" choices when the choices are exactly those two."""
    keys = [choice_key(c) for c in choices]
    if len(keys) == 2 and set(keys) == {"yes", "no"}:
        return keys.index("yes"), keys.index("no")
    return None


def _direction(text: str) -> int:
    """+1 for a comparison upwards ("more", "the maximum"), -1 downwards, 0 none or both."""
    up, down = bool(_UP_RE.search(text)), bool(_DOWN_RE.search(text))
    return 0 if up == down else (1 if up else -1)


def _statement_polarity(statement: str, question: str) -> bool | None:
    """Whether ``statement`` affirms what ``question`` asks (a yes/no question), or None
    when it cannot be read (a refusal, a hedge)."""
    if _REFUSAL.search(statement):
        return None
    m = _LEAD_WORD.match(statement)
    if m and m.group(1).lower() in _YES:
        return True
    if m and m.group(1).lower() in _NO:
        return False
    if re.search(r"\b(?:yes|no)\b.{0,40}\b(?:yes|no)\b", statement, re.IGNORECASE):
        return None  # "yes or no", "not yes but no": leave it to the fallback
    yes_no = re.findall(r"\b(yes|no)\b", statement, re.IGNORECASE)
    if yes_no and re.search(
        r"\b(?:answer|is|would\s+be)\s*(?::\s*)?\"?(?:yes|no)\b", statement, re.I
    ):
        return yes_no[-1].lower() == "yes"
    if _HEDGE.search(statement):
        return None
    positive = True
    asked, said = _direction(question), _direction(statement)
    if asked and said and asked != said:
        positive = False
    elif asked and _EQUAL_RE.search(statement) and not _EQUAL_RE.search(question):
        positive = False
    elif not asked and said and _EQUAL_RE.search(question):
        positive = False  # "Is A the same as B?" -- "A is larger."
    if _NEGATION.search(statement):
        positive = not positive
    return positive


_NEGATED = re.compile(
    r"(?:,\s*)?\b(?:not|rather\s+than|instead\s+of)\s+(?:the\s+)?"
    r"(?:[-\d.]+\d\S*|[^\s,.;]+)(?:\s+[^\s,.;]+){0,3}",
    re.IGNORECASE,
)


def _drop_negated(sentence: str, choices: Sequence[str]) -> str:
    """``sentence`` without "not X" / "rather than X" where X is a choice ("12, not 13"
    -> "12")."""
    keys = [choice_key(c) for c in choices]

    def cut(m: re.Match[str]) -> str:
        rest = choice_key(re.sub(r"^(?:,\s*)?\S+(?:\s+than|\s+of)?\s+(?:the\s+)?", "", m.group(0)))
        named = any(rest == k or rest.startswith(k + " ") for k in keys if k)
        return " " if named else m.group(0)

    return _NEGATED.sub(cut, sentence)


def _named_choices(sentence: str, choices: Sequence[str]) -> list[int]:
    """The distinct choices a sentence names by text (or by value, for numeric choices),
    a choice right after a negation ("not B", "isn't red") left out."""
    text, found = choice_mentions(_drop_negated(sentence, choices), choices)
    low = text.lower()
    picked: list[int] = []
    several = len(number_mentions(text)) > 1
    for m in found:
        if _LETTER.fullmatch(text[m.start : m.end]):
            continue  # letters are read elsewhere
        if several and is_numeric_choice(str(choices[int(m.value)])):
            continue  # a number among others (a computation): read by sentence_number
        before = low[max(0, m.start - 16) : m.start]
        if re.search(r"(?:\bnot|n[’']t)\s+(?:\w+\s+)?$", before):
            continue
        if int(m.value) not in picked:
            picked.append(int(m.value))
    return picked


_LETTER = re.compile(r"\(?[A-Za-z]\)?")


def _numeric_choice(value: str, choices: Sequence[str]) -> str | None:
    """The numeric choice whose number equals ``value``, or None."""
    hits = [
        c
        for c in choices
        if is_numeric_choice(str(c)) and numbers(str(c)) and _same_number(numbers(str(c))[0], value)
    ]
    return str(hits[0]) if len(hits) == 1 else None


def _same_number(a: str, b: str) -> bool:
    try:
        return same_value(float(a), float(b))
    except ValueError:
        return False


def _is_option_echo(line: str, choices: Sequence[str]) -> bool:
    """Whether ``line`` copies two or more options back, each letter with its text."""
    pairs = 0
    for i, choice in enumerate(choices):
        letter = chr(65 + i)
        pattern = rf"\(?{letter}[).:]?\s*{re.escape(choice_key(choice))}(?![\w])"
        if re.search(pattern, choice_key(line), re.IGNORECASE) and f"{letter}" in line:
            pairs += 1
    return pairs >= 2


def sentence_choice(text: str, choices: Sequence[str], question: str = "") -> str | None:
    """The choice (letter or text) a response commits to in plain sentences, or None."""
    whole = len(text) < TAIL_CHARS  # else the first sentence read may be a middle one
    text = tail(text)
    body = sentences(text)
    if not body:
        return None
    n = len(choices)
    last_line = (lines(text) or [""])[-1]
    if _is_option_echo(last_line, choices):
        return last_line  # the official normalization reads its first "(X)"
    ends = [body[-1], body[0]] if len(body) > 1 and whole else body[-1:]
    if _REFUSAL.search(body[-1]) and not _named_choices(body[-1], choices):
        return None  # "none of the options match": the fallback decides, as GPT-4's copy
    for sentence in ends:
        for m in _LETTER_FORMS.finditer(sentence):
            letter = next(g for g in m.groups() if g)
            if ord(letter.upper()) - 65 < n and (letter.isupper() or len(sentence) < 4):
                return letter.upper()
    yes_no = _yes_no(choices)
    if yes_no is not None:
        lead = _LEAD_WORD.match(body[0])
        if any(_REFUSAL.search(b) for b in body) and not (
            lead and lead.group(1).lower() in (*_YES, *_NO)
        ):
            return None
        for sentence in ends[::-1]:
            verdict = _statement_polarity(sentence, question)
            if verdict is not None:
                return str(choices[yes_no[0] if verdict else yes_no[1]])
        return None
    for sentence in ends:
        if _REFUSAL.search(sentence) and not _named_choices(sentence, choices):
            continue
        named = _named_choices(sentence, choices)
        if len(named) == 1:
            return str(choices[named[0]])
        if len(named) > 1:
            return None  # two candidates: a hedge or a comparison; the fallback decides
    for sentence in ends:
        restated = _restated_choice(sentence, choices)
        if restated is not None:
            return str(choices[restated])
    if any(is_numeric_choice(str(c)) for c in choices) and not any(
        _REFUSAL.search(b) for b in body[-2:]
    ):
        value = sentence_number(text, question)
        if value is not None:
            return _numeric_choice(value, choices) or value
    return None


def is_refusal(text: str) -> bool:
    """Whether a response declines to answer ("cannot be determined", "not enough
    information", "I cannot answer", "impossible to tell"): a refusal phrase in one of its
    last two sentences. Asked only after :func:`extract_for_eval` found no answer, so a
    doubt followed by an answer ("unclear, but the answer is B") is not a refusal, and
    neither is a guess between candidates (a hedge: the official fallback decides)."""
    last = sentences(text)[-2:]
    return any(_REFUSAL.search(s) for s in last) and not any(_GUESS.search(s) for s in last)


# a guess between candidates ("Either D or E, I am not sure"): a hedge, not a refusal
_GUESS = re.compile(
    r"\beither\b.{0,60}?\bor\b|\b(?:maybe|perhaps|possibly|probably)\b",
    re.IGNORECASE,
)


_STOP_WORDS = frozenset(
    "a an the and or of to in on at by for with from as into onto over under than then "
    "is are was were be been being will would shall should can could may might must do "
    "does did has have had it its this that these those there their them they he she his "
    "her we our you your i my me so such very more most much many some any all each "
    "which what who whom whose when where why how if not no yes also just only likely "
    "probably think answer option choice correct".split()
)
_WORD = re.compile(r"[a-z]+")
_NOT = re.compile(r"\b(?:not|never|neither|nor|cannot)\b|n[’']t\b", re.IGNORECASE)
RESTATED_COVER = 0.75  # the share of an option's meaning-bearing words a sentence must have
RESTATED_MARGIN = 0.25  # ... and by how much more than the runner-up option


def meaning_words(text: str) -> set[str]:
    """The meaning-bearing words of ``text``: lowercase, stop words dropped, a plural or
    third-person "s" dropped and each cut to its first six letters, so "decreasing" and
    "decrease", "stays" and "stay" meet. Words of one or two letters ("A", "I'd") say
    nothing here."""
    words = _WORD.findall(text.lower())
    return {_stem(w) for w in words if len(w) > 2 and w not in _STOP_WORDS}


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word[:6]


def _restated_choice(sentence: str, choices: Sequence[str]) -> int | None:
    """The text option whose meaning-bearing words ``sentence`` restates ("the fish
    population will likely decrease" -> "Population will decrease"): it must hold at
    least ``RESTATED_COVER`` of them, ``RESTATED_MARGIN`` more than any other option, in
    a sentence without negation, and no other option restated as well. Never the nearest
    option at any distance: a sentence that restates no option, or two, names none."""
    if _NOT.search(sentence) or any(is_numeric_choice(str(c)) for c in choices):
        return None
    said = meaning_words(sentence)
    cover = []
    for choice in choices:
        words = meaning_words(str(choice))
        cover.append(len(words & said) / len(words) if words else 0.0)
    ranked = sorted(range(len(choices)), key=lambda i: cover[i], reverse=True)
    if not ranked or cover[ranked[0]] < RESTATED_COVER:
        return None
    if sum(c >= RESTATED_COVER for c in cover) > 1:
        return None  # two options restated: a comparison or a hedge
    runner_up = cover[ranked[1]] if len(ranked) > 1 else 0.0
    return ranked[0] if cover[ranked[0]] - runner_up >= RESTATED_MARGIN else None


def _in_question(value: str, question: str) -> bool:
    return any(_same_number(value, q) for q in numbers(question))


# a response that opens with its answer: "3. I counted...", "**12 cm**\n..."
_HEAD_NUMBER = re.compile(
    r"\s*(?:\*+\s*)?(-?[\d.,/]+)\s*(?:(?:%|°|[A-Za-z]{1,6})\s*)?(?:\*+\s*)?(?:[.!:]\s|\n)"
)


def sentence_number(text: str, question: str = "") -> str | None:
    """The number a response states as its answer in plain sentences, or None.

    Reads the last sentence with a number: the value after its last ``=``; else the
    first number after a copula or cue ("is 5", "are 2", "total of 7"); else the first
    number not in the question; else its first number. Number words up to twenty count
    when a sentence has no digits."""
    body = sentences(text)
    head = _HEAD_NUMBER.match(text)
    if len(text) < TAIL_CHARS and head and len(body) > 1 and numbers(head.group(1)):
        return numbers(head.group(1))[0]  # "3. I counted three cubes and 2 balls."
    for sentence in reversed(body):
        if _REFUSAL.search(sentence) and not re.search(
            r"\b(?:but|however|approximately|about|around|estimated?)\b", sentence, re.I
        ):
            continue
        sentence = clean(sentence).translate(DASHES)
        sentence = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", sentence)
        found = [
            (m.start(), v) for m, v in number_matches(sentence) if not raised(sentence, m.start())
        ]
        words = [
            (m.start(), _WORD_NUMBERS[m.group(1).lower()])
            for m in _WORD_NUMBER.finditer(sentence)
            if _cued(sentence, m.start()) or re.fullmatch(r"\W*\w+\W*", sentence)
        ]
        found = sorted(found + words)
        if not found:
            continue
        if len(found) == 1:
            return found[0][1]
        values = [
            Mention(m.start(), m.end(), float(v))
            for m, v in number_matches(sentence)
            if not raised(sentence, m.start()) and is_float(v)
        ]
        if HEDGE_WORD.search(sentence) and _hedged(sentence, values):
            return sentence  # "9 or 10": no number is the answer (fails, as official)
        sides = split_equation(sentence)
        if len(sides) > 1 and numbers(sides[-1]) and _stated_value(sides[-1]):
            return numbers(sides[-1])[0]  # "4/2 = 2 dots in each group" -> 2
        concluded = [m.end() for m in _CONCLUDE.finditer(sentence)]
        if concluded:
            after = [(pos, v) for pos, v in found if pos >= concluded[-1]]
            found = after or found
        cued = [v for pos, v in found if _cued(sentence, pos)]
        fresh = [v for _, v in found if not _in_question(v, question)]
        both = [v for v in cued if v in fresh]
        if both or not fresh:  # the last stated value: "62 and 8, a difference of 54"
            return (both or cued or [found[0][1]])[-1]
        return fresh[0]
    return None


_PROSE = re.compile(r"[A-Za-z]{3,}")
# a right-hand side that opens with its value, words after it: "2 dots in each group"
_VALUE_THEN_WORDS = re.compile(r"\s*(?:\\?\$\s*)?-?\d[\d.,]*\s*(?:%|°)?\s+[A-Za-z]")


def _stated_value(side: str) -> bool:
    """Whether an equation's last side states a value: no prose ("= 12.5"), or a number
    first and words after it, no other number ("= 2 dots in each group"; not "= 17, so
    the radius is 8.5")."""
    if not _PROSE.search(side):
        return True
    return _VALUE_THEN_WORDS.match(side) is not None and len(numbers(side)) == 1


def _hedged(sentence: str, values: list[Mention]) -> bool:
    """Whether two different numbers stand side by side with "or" between them."""
    for a, b in zip(values, values[1:], strict=False):
        gap = sentence[a.end : b.start]
        if a.value != b.value and len(gap) < 40 and _OR_GAP.fullmatch(gap):
            return True
    return False


# between two numbers of a hedge: a unit, then "or" ("9 or 10", "1 cm or maybe 2")
_OR_GAP = re.compile(r"\s*(?:%|°|[A-Za-z]{1,8})?\s*,?\s*or\s+(?:maybe\s+|perhaps\s+|even\s+)?")


def _cued(sentence: str, pos: int) -> bool:
    """Whether the number at ``pos`` follows a copula or cue word ("is", "are", "=")."""
    before = sentence[max(0, pos - 40) : pos]
    return any(m.end() == len(before) for m in _COPULA_NUMBER.finditer(before + "0")) or (
        re.search(r"(?:^|\b(?:there\s+(?:are|is|were|was)|has|have)\s+)$", before, re.I) is not None
    )


def _lead_letter(text: str, choices: Sequence[str]) -> str | None:
    """A capital choice letter that opens the response as a label ("B", "(B) ...",
    "B. ...", "B: ...", "B text-of-B"), not as a word ("A dog ...")."""
    m = LEAD_LETTER.match(text)
    if not m or not m.group(1).isupper() or ord(m.group(1)) - 65 >= len(choices):
        return None
    rest = text[m.end() :].strip()
    label = text[: m.end()].strip()
    own = choice_key(choices[ord(m.group(1)) - 65])
    if label.endswith((")", ".", ":")) or not rest or choice_key(rest).startswith(own):
        return m.group(1)
    return None


# the prompt's own instruction echoed: "the final answer should be an integer"
_INSTRUCTION = re.compile(
    r"\b(?:should|must|needs?\s+to|has\s+to|required?s?|requiring|asks?\s+for|asked\s+for|"
    r"in\s+the\s+form\s+of)\b[^.\n]{0,40}?\b(?:integer|whole\s+number|floating[-\s]point|"
    r"decimal\s+places?|python\s+list|option\s+letter)",
    re.IGNORECASE,
)
_EXAMPLES = re.compile(r"\be\.\s?g\.,?[^A-Za-z\n]*", re.IGNORECASE)


def drop_instructions(text: str) -> str:
    """``text`` without the sentences that only echo the prompt's instruction ("The
    final answer should be an integer.", "..., e.g., 1, 2, 3."): they state a type, not
    an answer, and their example values are not the response's. A sentence with a
    number of its own ("should be an integer, so 3") stays."""
    for sentence in sentences(text):
        if _INSTRUCTION.search(sentence) and not numbers(_EXAMPLES.sub(" ", sentence)):
            text = text.replace(sentence, "")
    return text


def extract_for_eval(
    text: str | None,
    choices: Sequence[str] | None = None,
    answer_type: str | None = None,
    question: str = "",
) -> str | None:
    """The evaluation path's extraction: :func:`extract_answer`'s marked answers (tag,
    box, phrase) first, then what the response's sentences commit to
    (:func:`sentence_choice`, :func:`sentence_number`); None when nothing is committed
    to (the caller applies the official fallback)."""
    if not text or not text.strip():
        return None
    text = drop_instructions(tail(text))
    if not text.strip():
        return None
    numeric = not choices and answer_type in ("integer", "float")
    for source in (last_tag_content, last_boxed, last_phrase):
        span = source(text)
        if span is None:
            continue
        if choices:
            lead = _lead_letter(clean(span), choices)
            if lead is not None:
                return lead  # "B: 5": the letter names the option, whatever follows
            span = _drop_negated(span, choices)  # "2, not 1.5"
        found = resolve(span, choices, answer_type)
        if found is not None:
            return _as_written(span, found) if numeric else found
        if choices:  # "12, not 13"; else a mark that names no choice: the fallback
            named = _named_choices(first_sentence(span), choices)
            return str(choices[named[0]]) if len(named) == 1 else None
        if numeric:
            return clean(first_sentence(span))  # "the answer is undefined": wrong, as official
    if choices:
        last_line = (lines(text) or [""])[-1]
        if _is_option_echo(last_line, choices):
            return last_line  # the official normalization reads its first "(X)"
        lead = _lead_letter(clean(text), choices)
        if lead is not None:
            return lead
        first = sentences(text)[0] if len(text) < TAIL_CHARS else ""
        keys = [choice_key(c) for c in choices]
        if choice_key(first) in keys:  # "118°. This is the best match; ..."
            return str(choices[keys.index(choice_key(first))])
        letters = [
            c.upper() for c in PAREN_LETTER.findall(text) if ord(c.upper()) - 65 < len(choices)
        ]
        if letters:
            return letters[-1]
        return sentence_choice(text, choices, question)
    if answer_type == "list":
        return last_list(text)
    if numeric:
        found = sentence_number(text, question)
        return None if found is None else _as_written(sentences(text)[-1], found, text)
    return None


def _as_written(span: str, value: str, text: str = "") -> str:
    """``value`` as the response wrote it when it wrote a fraction ("4/3", not
    1.333...): the official normalization (``float(x)``) fails on a fraction, as it does
    on GPT-4's extraction of one. A value also written plainly ("4/2 = 2") stays plain."""
    for source in (span, text):
        found = [(m, v) for m, v in number_matches(clean(source).translate(DASHES)) if v == value]
        if any(m.group("fn") is None and m.group("sn") is None for m, _ in found):
            return value  # "4/2 = 2": the value is also written plainly
        if found:
            m = found[0][0]
            return f"{m.group('fn') or m.group('sn')}/{m.group('fd') or m.group('sd')}"
    return value
