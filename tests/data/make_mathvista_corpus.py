"""Write ``mathvista_corpus.jsonl``: responses in the styles of small open VLMs for
MathVista testmini questions, each labelled with the verdict of the official pipeline.

    python tests/data/make_mathvista_corpus.py TESTMINI_JSON [OUT_JSONL]

TESTMINI_JSON is MathVista's ``testmini.json`` (pid -> annotation). The output is
deterministic (fixed seed). Each record is self-contained: the problem fields the
scorer needs, the ``style``, the ``response``, our label ``official_extraction`` and the
``split``.

Labelling rule. ``official_extraction`` is what a careful GPT-4 extraction (MathVista's
``extract_answer.py``) returns for the response: the answer the response commits to
(a letter stays a letter, an option text stays the text, a yes/no statement becomes
"yes"/"no" with the choices' spelling, a number stated in a sentence becomes that
number as written, a fraction stays a fraction). A response that commits to nothing (a
refusal, a hedge between two candidates, an option list copied back) is extracted as
written: its last sentence (the official normalization then maps it onto the nearest
choice by edit distance, or fails for free form). The verdict is the official
normalization of that label, computed by the test, never typed by hand.

Split rule: a record is in the held-out half when its pid is odd, in the dev half when
it is even (so a question's responses are all in one half); the hand-written set is split
by the same rule. ``mathvista_corpus_blind.json`` is a third split, "blind": 40 mixed
small-VLM responses written and labelled after the rules were frozen, measured once.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

SEED = 20261125
FIELDS = (
    "pid",
    "question",
    "choices",
    "answer",
    "answer_type",
    "precision",
    "unit",
    "question_type",
)
HERE = Path(__file__).parent

REFUSALS = (
    "I cannot determine the answer from this image.",
    "Sorry, the image is too unclear for me to tell.",
    "It is not possible to determine this from the picture.",
    "I'm unable to answer this question based on the given image.",
    "The image does not provide enough information to answer.",
    "I can't tell from the image.",
)


def letter(i: int) -> str:
    return chr(65 + i)


def yes_no_statement(q: str, affirm: bool, rng: random.Random) -> str | None:
    """A sentence restating a yes/no question, affirming or denying it (several ways:
    a negation, the opposite comparison, a leading yes/no)."""
    q = q.strip().split("\n")[-1].rstrip("?").strip()
    opposite = {
        "greater": "less",
        "less": "greater",
        "more": "fewer",
        "fewer": "more",
        "larger": "smaller",
        "smaller": "larger",
        "bigger": "smaller",
        "higher": "lower",
        "lower": "higher",
        "maximum": "minimum",
        "minimum": "maximum",
        "highest": "lowest",
        "lowest": "highest",
        "roughest": "smoothest",
        "smoothest": "roughest",
        "largest": "smallest",
        "smallest": "largest",
    }
    m = re.fullmatch(r"Are there (more|fewer|less) (.+) than (.+)", q, re.I)
    if m:
        cmp, a, b = m.groups()
        if affirm:
            return rng.choice(
                [f"There are {cmp} {a} than {b}.", f"Yes, there are {cmp} {a} than {b}."]
            )
        return rng.choice(
            [
                f"There are {opposite[cmp.lower()]} {a} than {b}.",
                f"There are not {cmp} {a} than {b}.",
                f"No, there are {opposite[cmp.lower()]} {a} than {b}.",
            ]
        )
    m = re.fullmatch(
        r"Is (the .+?|[A-Z][\w ]+?) (greater|less|larger|smaller|more|fewer|bigger|higher|lower) (?:than|then) (.+)",
        q,
    )
    if m:
        a, cmp, b = m.groups()
        a = a[0].upper() + a[1:]
        if affirm:
            return rng.choice(
                [
                    f"{a} is {cmp} than {b}.",
                    f"Based on the image, {a[0].lower() + a[1:] if a.startswith('The') else a} is {cmp} than {b}.",
                ]
            )
        return rng.choice(
            [
                f"{a} is not {cmp} than {b}.",
                f"{a} is {opposite.get(cmp, 'not ' + cmp)} than {b}.",
                f"{a} isn't {cmp} than {b}.",
            ]
        )
    m = re.fullmatch(r"Is ([A-Z][\w ]+?) the (\w+)", q)
    if m:
        a, sup = m.groups()
        if affirm:
            return rng.choice(
                [
                    f"{a} is the {sup}.",
                    f"Yes, {a} is the {sup}.",
                    f"Based on the image, {a} is the {sup}.",
                ]
            )
        flip = opposite.get(sup)
        return rng.choice(
            [f"Based on the image, {a} is not the {sup}.", f"{a} is not the {sup}."]
            + ([f"{a} is the {flip}."] if flip else [])
        )
    m = re.fullmatch(r"Does ([A-Z][\w ]+?) have the (.+)", q)
    if m:
        a, rest = m.groups()
        if affirm:
            return rng.choice([f"{a} has the {rest}.", f"Yes, {a} has the {rest}."])
        return rng.choice([f"{a} does not have the {rest}.", f"No, {a} doesn't have the {rest}."])
    return None


def mc_responses(row: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(style, response, label) for a multiple-choice row."""
    choices = [str(c) for c in row["choices"]]
    gold = choices.index(row["answer"]) if row["answer"] in choices else 0
    pick = gold if rng.random() < 0.6 else rng.randrange(len(choices))
    L, T = letter(pick), choices[pick]
    yes_no = sorted(c.lower() for c in choices) == ["no", "yes"]
    out: list[tuple[str, str, str]] = []
    if yes_no:
        affirm = T.lower() == "yes"
        said = yes_no_statement(row["question"], affirm, rng)
        if said:
            out.append(("yes_no_statement", said, T))
        else:
            out.append(
                (
                    "yes_no_statement",
                    rng.choice(
                        [
                            f"{T}.",
                            f"{T}, it is.",
                            f"{T}, that is correct." if affirm else f"{T}, it is not.",
                        ]
                    ),
                    T,
                )
            )
    bare = rng.choice([L, f"({L})", f"{L}.", f"**{L}**", f"{L}) {T}", f"({L}) {T}"])
    out.append(("bare_letter", bare, L))
    sentence = rng.choice(
        [
            f"The answer is {L}.",
            f"The correct option is ({L}).",
            f"Answer: {L}",
            f"The correct answer is {L}. {T}",
            f"I choose option {L}.",
            f"Option {L} is correct.",
        ]
    )
    out.append(("answer_sentence", sentence, L))
    if not yes_no:
        restated = rng.choice(
            [
                f"It is {T}.",
                f"Based on the image, it is {T}.",
                f"{T}",
                f"Looking at the picture, the correct one is {T}.",
                f"I think it's {T}.",
            ]
        )
        out.append(("option_text", restated, T))
    if rng.random() < 0.5:
        other = rng.choice([c for i, c in enumerate(choices) if i != pick] or [T])
        lead = rng.choice([f"{L}.", f"{T}.", f"({L})"]) if not yes_no else f"{T}."
        why = rng.choice(
            [
                f" Because {other} does not fit what the image shows.",
                " The figure shows this clearly when you compare 2 of the parts.",
                f" This is the best match; {other} is less likely.",
            ]
        )
        out.append(("answer_then_explanation", lead + why, L if lead.strip("(). ") == L else T))
    if not yes_no and len(choices) > 1 and rng.random() < 0.3:
        other = rng.choice([c for i, c in enumerate(choices) if i != pick])
        out.append(
            (
                "negated_option",
                rng.choice([f"It is not {other}, it is {T}.", f"The answer is {T}, not {other}."]),
                T,
            )
        )
    if len(choices) >= 2 and rng.random() < 0.35:
        i = rng.randrange(len(choices) - 1)
        echo = f"({letter(i)}) {choices[i]} ({letter(i + 1)}) {choices[i + 1]}"
        out.append(("option_echo", echo, echo))
    if rng.random() < 0.25:
        r = rng.choice(REFUSALS)
        out.append(("refusal", r, r.rstrip(".")))
    if rng.random() < 0.2:
        j = (pick + 1) % len(choices)
        h = rng.choice(
            [f"It could be {L} or {letter(j)}.", f"Either {T} or {choices[j]}, I am not sure."]
        )
        out.append(("hedge", h, h.rstrip(".")))
    if rng.random() < 0.3:
        out.append(
            ("boxed", rng.choice([f"\\boxed{{{L}}}", f"The final answer is $\\boxed{{{L}}}$."]), L)
        )
    return out


def _fmt_number(row: dict, value: float) -> str:
    if row["answer_type"] == "integer":
        return str(int(value))
    return f"{value:.{int(row['precision'] or 1)}f}"


def ff_responses(row: dict, rng: random.Random) -> list[tuple[str, str, str]]:
    """(style, response, label) for a free-form row."""
    q = row["question"].strip().split("\n")[-1].strip()
    if row["answer_type"] == "list":
        v = row["answer"] if rng.random() < 0.6 else "[1, 2]"
        return [("number_sentence", f"The answer is {v}.", v), ("bare_number", v, v)]
    gold = float(row["answer"])
    value = (
        gold
        if rng.random() < 0.6
        else gold + rng.choice([1, 2, -1]) * (1 if row["answer_type"] == "integer" else 0.1)
    )
    n = _fmt_number(row, value)
    unit = f" {row['unit']}" if row.get("unit") else ""
    out: list[tuple[str, str, str]] = [("bare_number", rng.choice([n, f"{n}{unit}", f"{n}."]), n)]
    m = re.search(r"How many (.+?)\?", q, re.I)
    w = re.search(r"What is the (.+?)\?", q, re.I)
    if m:
        rest = m.group(1)
        s = rng.choice([f"{n} {rest}.", f"In the image, {n} {rest}."])
        if not re.search(r"\b(?:are|is|were|was|have|has|do|does)\b", rest):
            s = rng.choice([s, f"There are {n} {rest}."])
        out.append(("number_sentence", s[0].upper() + s[1:], n))
    elif w:
        out.append(("number_sentence", f"The {w.group(1)} is {n}{unit}.", n))
    else:
        out.append(
            (
                "number_sentence",
                rng.choice([f"The value is {n}{unit}.", f"It is approximately {n}{unit}."]),
                n,
            )
        )
    if rng.random() < 0.4:
        a, b = rng.randint(1, 9), rng.randint(10, 30)
        out.append(
            (
                "answer_then_explanation",
                rng.choice(
                    [
                        f"{n}. I counted {a} of them on the left and more on the right.",
                        f"{n}{unit}\nThe image shows {a} labels and a scale up to {b}.",
                    ]
                ),
                n,
            )
        )
    if rng.random() < 0.5:
        a = rng.randint(1, 9)
        out.append(
            (
                "reasoning_then_answer",
                rng.choice(
                    [
                        f"First I look at the image. I count {a} in the first group and the rest in the second, so in total {n}.",
                        f"Looking at the figure step by step, the first part is {a}. Therefore, the answer is {n}{unit}.",
                        f"The image shows {a} marked items. After checking the rest, the final value is {n}.",
                    ]
                ),
                n,
            )
        )
    if row["answer_type"] == "float" and rng.random() < 0.5:
        out.append(
            (
                "units_percent_fraction",
                rng.choice([f"{n}{unit or '%'}", f"About {n} percent.", f"The ratio is {n}."]),
                n,
            )
        )
    elif rng.random() < 0.4:
        out.append(
            (
                "units_percent_fraction",
                rng.choice(
                    [
                        f"{n} units",
                        f"The length is {n} cm.",
                        f"It measures {n}{unit or ' degrees'}.",
                    ]
                ),
                n,
            )
        )
    if rng.random() < 0.2:
        r = rng.choice(REFUSALS)
        out.append(("refusal", r, r.rstrip(".")))
    if rng.random() < 0.15:
        other = _fmt_number(row, value + (1 if row["answer_type"] == "integer" else 0.1))
        h = rng.choice(
            [f"It could be {n} or {other}.", f"Either {n} or {other}, it is hard to say."]
        )
        out.append(("hedge", h, h.rstrip(".")))
    if rng.random() < 0.25:
        out.append(("boxed", f"So the result is $\\boxed{{{n}}}$.", n))
    return out


def main(argv: list[str]) -> int:
    testmini = json.loads(Path(argv[0]).read_text("utf-8"))
    out_path = Path(argv[1]) if len(argv) > 1 else HERE / "mathvista_corpus.jsonl"
    rng = random.Random(SEED)
    pids = sorted(testmini, key=int)
    mc = [p for p in pids if testmini[p]["question_type"] == "multi_choice"]
    yn = [p for p in mc if sorted(str(c).lower() for c in testmini[p]["choices"]) == ["no", "yes"]]
    other_mc = [p for p in mc if p not in yn]
    ff = [p for p in pids if testmini[p]["question_type"] == "free_form"]
    lists = [p for p in ff if testmini[p]["answer_type"] == "list"]
    floats = [p for p in ff if testmini[p]["answer_type"] == "float"]
    ints = [p for p in ff if testmini[p]["answer_type"] == "integer"]
    chosen = (
        rng.sample(yn, 35)
        + rng.sample(other_mc, 45)
        + rng.sample(ints, 50)
        + rng.sample(floats, 20)
        + lists
    )
    records = []
    for pid in sorted(set(chosen), key=int):
        row = {k: testmini[pid].get(k) for k in FIELDS}
        make = mc_responses if row["question_type"] == "multi_choice" else ff_responses
        for style, response, label in make(row, rng):
            records.append(
                {**row, "style": style, "response": response, "official_extraction": label}
            )
    for name in ("mathvista_corpus_hand.json", "mathvista_corpus_blind.json"):
        for rec in json.loads((HERE / name).read_text("utf-8")):
            row = {k: testmini[rec["pid"]].get(k) for k in FIELDS}
            records.append(
                {
                    **row,
                    "style": rec["style"],
                    "response": rec["response"],
                    "official_extraction": rec["label"],
                    "split": rec.get("split"),
                }
            )
    with out_path.open("w", encoding="utf-8") as f:
        for rec in records:
            rec["split"] = rec.get("split") or ("heldout" if int(rec["pid"]) % 2 else "dev")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(records)} records for {len({r['pid'] for r in records})} questions to {out_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
