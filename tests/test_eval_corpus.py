"""The evaluation path against a labelled corpus of small-VLM-style responses.

``tests/data/mathvista_corpus.jsonl`` (written by ``tests/data/make_mathvista_corpus.py``
from templates per style with a fixed seed, plus the hand-written hard shapes in
``mathvista_corpus_hand.json``) holds responses to MathVista testmini questions, each
record self-contained (problem fields, ``style``, ``response``, ``split``).

Labelling rule: ``official_extraction`` is what a careful GPT-4 extraction returns for the
response -- the answer the response commits to (a letter stays a letter, an option text
stays the text, a yes/no statement becomes yes/no as the choices spell it, a number stated
in a sentence becomes that number as written, a fraction stays a fraction); a response
that commits to nothing (refusal, hedge, option list copied back) is extracted as written
(its last sentence). The reference verdict ``official_true_false`` is computed here by
the official normalization (edit-distance fallback included) from that label, never typed.

Split rule: odd pid -> held-out (measured once, at the end), even pid -> dev; the 40
records of ``mathvista_corpus_blind.json`` form a third split, "blind", written and
labelled after the rules were frozen and measured once (87.5% then; 97.5% after the
three rule fixes it showed, so no longer blind: a fresh blind set is the honest check).

The second half holds unit tests for each rule shape and the two fallbacks on the same
responses: ``fallback="official"`` (evaluation, leaderboard-comparable) against
``fallback="none"`` and the training reward (answers must commit: no guessing).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from mhpo_vl.errors import UserError
from mhpo_vl.eval.mathvista import eval_extraction, score_file, score_item
from mhpo_vl.eval.reading import extract_for_eval
from mhpo_vl.rewards import REWARDS
from mhpo_vl.rewards.normalize import normalize_row_answer

CORPUS = Path(__file__).parent / "data" / "mathvista_corpus.jsonl"
RECORDS = [json.loads(line) for line in CORPUS.read_text("utf-8").splitlines() if line]

# measured (dev while writing the rules, held-out once at the end), rounded down a little
FLOORS = {"dev": 0.99, "heldout": 0.98, "blind": 0.95}
STYLE_FLOOR = 0.90


def official_true_false(rec: dict) -> bool:
    prediction = normalize_row_answer(rec["official_extraction"], rec, official=True)
    return prediction is not None and prediction == rec["answer"]


def test_corpus_shape():
    styles = {r["style"] for r in RECORDS}
    assert len(styles) >= 8 and len({r["pid"] for r in RECORDS}) >= 150
    assert {r["split"] for r in RECORDS} == {"dev", "heldout", "blind"}
    parity = [r for r in RECORDS if r["split"] != "blind"]
    assert all(r["split"] == ("heldout" if int(r["pid"]) % 2 else "dev") for r in parity)
    types = {(r["question_type"], r["answer_type"]) for r in RECORDS}
    assert {("multi_choice", "text"), ("free_form", "integer"), ("free_form", "float")} <= types
    assert ("free_form", "list") in types
    verdicts = [official_true_false(r) for r in RECORDS]
    assert 0.3 < sum(verdicts) / len(verdicts) < 0.8  # both verdicts well represented


def _agreement(records: list[dict], fallback: str = "official") -> dict[str, list[int]]:
    """Agreement with the labels on the records the evaluation path does not read as
    refusals (those are scored wrong by design: :func:`test_refusals_are_read_as_such`)."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in records:
        scored = score_item(rec, False, fallback)
        if scored["refusal"]:
            continue
        same = scored["true_false"] == official_true_false(rec)
        for key in ("all", rec["style"]):
            table[key][0] += same
            table[key][1] += 1
    return table


@pytest.mark.parametrize("split", ["dev", "heldout", "blind"])
def test_corpus_agreement(split):
    table = _agreement([r for r in RECORDS if r["split"] == split])
    for key, (same, total) in sorted(table.items()):
        print(f"{split} {key}: {100 * same / total:.1f}% ({same}/{total})")
    same, total = table.pop("all")
    assert same / total >= FLOORS[split]
    low = {k: f"{s}/{t}" for k, (s, t) in table.items() if s / t < STYLE_FLOOR}
    assert low == {}


def test_refusals_are_read_as_such():
    """Every record of the refusal style, and no record of another style but two
    refusals written for the blind split, is read as a refusal: scored wrong, no
    prediction."""
    refused = [r for r in RECORDS if score_item(r, False, "official")["refusal"]]
    assert {r["style"] for r in refused} == {"refusal", "blind_mixed"}
    assert (
        sum(r["style"] == "refusal" for r in refused)
        == 46
        == sum(r["style"] == "refusal" for r in RECORDS)
    )
    assert sum(r["style"] == "blind_mixed" for r in refused) == 2
    for rec in refused:
        scored = score_item(rec, False, "official")
        assert scored["prediction"] is None and scored["true_false"] is False


def test_the_strict_path_agrees_much_less():
    """The training reward's strictness as an evaluation: statements, refusals and
    hedges are all wrong, whatever the official pipeline says (the issue's 82-90%)."""
    strict = _agreement(RECORDS, "none")["all"]
    official = _agreement(RECORDS, "official")["all"]
    assert strict[0] / strict[1] < official[0] / official[1] - 0.05


# --- unit tests: each rule shape -------------------------------------------------------

YN = ["Yes", "No"]
yn = ["yes", "no"]


@pytest.mark.parametrize(
    "response, choices, question, expected",
    [
        # multiple choice: letters in any common form
        ("B", ["1", "2", "3"], "", "B"),
        ("(B) 2", ["1", "2", "3"], "", "B"),
        ("**C**", ["1", "2", "3"], "", "C"),
        ("Option B is correct.", ["1", "2", "3"], "", "B"),
        ("I choose option C.", ["1", "2", "3"], "", "C"),
        ("A dog is shown in the picture.", ["cat", "dog"], "", "dog"),  # "A" is a word
        # option text restated in a sentence; a negated option is not the one named
        ("Based on the image, the leaf is cordate.", ["Hastate", "Cordate"], "", "Cordate"),
        ("It is not Hastate, it is Cordate.", ["Hastate", "Cordate"], "", "Cordate"),
        ("The answer is 12, not 13.", ["12", "13", "14"], "", "12"),
        ("64°. The other angle, 26°, is given.", ["26°", "74°", "64°"], "", "64°"),
        # yes/no and comparison statements, negations
        (
            "Based on the image, Periwinkle is not the maximum.",
            yn,
            "Is Periwinkle the maximum?",
            "no",
        ),
        ("Periwinkle is the maximum.", yn, "Is Periwinkle the maximum?", "yes"),
        ("Periwinkle is the minimum.", yn, "Is Periwinkle the maximum?", "no"),
        (
            "There are fewer metallic fighters than rubber objects.",
            YN,
            "Are there fewer metallic fighters than rubber objects?",
            "Yes",
        ),
        (
            "There are more metallic fighters than rubber objects.",
            YN,
            "Are there fewer metallic fighters than rubber objects?",
            "No",
        ),
        ("Black is equal to Blue.", yn, "Is Black greater than Blue?", "no"),
        ("No, it doesn't.", YN, "Does Coral have the lowest value?", "No"),
        # an option list copied back: as written (the official normalization reads its first "(X)")
        ("(C) yes (D) no", ["a", "b", "yes", "no"], "", "(C) yes (D) no"),
        # a numeric choice stated as a value; one not among the choices stays a number
        ("The degree of angle C is 125°.", ["125°", "120°"], "", "125°"),
        ("So x = 130.", ["125°", "120°"], "", "130"),
    ],
)
def test_choice_shapes(response, choices, question, expected):
    assert extract_for_eval(response, choices, "text", question) == expected


@pytest.mark.parametrize(
    "response, choices, question",
    [
        ("I cannot determine the answer from the image.", YN, "Is A the maximum?"),
        ("It could be yes or no.", yn, "Is A the maximum?"),
        ("The question does not provide a function. Please provide it.", YN, "Is f odd?"),
        ("However, none of the options match this result.", ["1", "2"], ""),
        ("Either 1 or 2, I am not sure.", ["1", "2"], ""),
    ],
)
def test_choice_abstentions(response, choices, question):
    assert extract_for_eval(response, choices, "text", question) is None


@pytest.mark.parametrize(
    "response, answer_type, question, expected",
    [
        (
            "There are 2 items sold less than 5 units in at least one store.",
            "integer",
            "How many items sold less than 5 units in at least one store?",
            "2",
        ),
        (
            "6 algorithms have accuracies higher than 2.",
            "integer",
            "How many ... higher than 2?",
            "6",
        ),
        ("In the image, 1 blocks have exactly 36 houses.", "integer", "exactly 36 houses?", "1"),
        ("The age gap is 22 years.", "integer", "", "22"),
        ("The driver drove 7,873 miles.", "integer", "", "7873"),
        ("About 45%.", "float", "", "45"),
        ("So the total is 7 - 2 - 1 = 4.", "integer", "", "4"),
        (
            "The largest is 230.5 and the smallest 22.15, so the total is 252.65.",
            "float",
            "",
            "252.65",
        ),
        ("3. I counted 2 of them on the left.", "integer", "", "3"),
        ("There are four objects left.", "integer", "", "4"),
        ("The ratio is 4/3.", "float", "", "4/3"),  # as written: float() fails, as official
        ("The answer is undefined.", "integer", "", "undefined"),  # not a number: wrong
        ("It could be 9 or 10.", "integer", "", "It could be 9 or 10"),
        ("The answer is [1, 2].", "list", "", "[1, 2]"),
    ],
)
def test_number_shapes(response, answer_type, question, expected):
    assert extract_for_eval(response, None, answer_type, question) == expected


@pytest.mark.parametrize(
    "response",
    [
        "I cannot determine the age gap between the two people.",
        "As an AI, I'm unable to view images. Please provide the ages of the two people.",
    ],
)
def test_number_refusals_extract_nothing(response):
    assert extract_for_eval(response, None, "integer", "What is the age gap?") is None


# --- the two paths on the same responses -------------------------------------------------

MC_ROW = {
    "question": "Is Periwinkle the maximum?",
    "choices": ["yes", "no"],
    "answer": "no",
    "question_type": "multi_choice",
    "answer_type": "text",
    "precision": None,
}
INT_ROW = {
    "question": "How many items sold less than 5 units in at least one store?",
    "choices": None,
    "answer": "2",
    "question_type": "free_form",
    "answer_type": "integer",
    "precision": None,
}
HARD = [
    (MC_ROW, "Based on the image, Periwinkle is not the maximum.", True),
    (MC_ROW, "No.", True),
    (INT_ROW, "There are 2 items sold less than 5 units in at least one store.", True),
    (INT_ROW, "The answer is 2.", True),
]
UNCLEAR = [  # the official fallback may land on the gold; a reward never pays for them
    (MC_ROW, "I cannot tell from this image."),
    (MC_ROW, "It could be yes or no."),
    (MC_ROW, "N/A"),
    (INT_ROW, "It could be 2 or 3."),
    (INT_ROW, "Either 2 or 3, I am not sure."),
    (INT_ROW, "I cannot count them, maybe 2?"),
    (MC_ROW, "I cannot tell, possibly (B)."),
]


@pytest.mark.parametrize("row, response, correct", HARD)
def test_eval_path_reads_statements(row, response, correct):
    assert score_item({**row, "response": response}, False, "official")["true_false"] is correct


@pytest.mark.parametrize("row, response", UNCLEAR)
def test_training_reward_refuses_unclear_answers(row, response):
    assert REWARDS.get("accuracy")(response, row) == 0.0
    assert score_item({**row, "response": response}, False, "none")["true_false"] is False


def test_official_fallback_maps_a_hedge_but_not_a_refusal():
    """A hedge's last line goes through the official normalization (nearest choice); a
    refusal is scored wrong and never mapped onto a choice."""
    row = {**MC_ROW, "answer": "no", "response": "It could be yes or no."}
    extraction = eval_extraction(row["response"], row)
    assert extraction == "It could be yes or no"  # the last line, as GPT-4 copies a hedge
    scored = score_item(row, False, "official")
    assert scored["prediction"] == normalize_row_answer(extraction, row, official=True)
    refusal = score_item({**row, "response": "I cannot tell."}, False, "official")
    assert refusal["prediction"] is None and refusal["refusal"] is True
    assert score_item(row, False, "none")["prediction"] is None
    empty = score_item({**row, "response": ""}, False, "official")
    assert empty["prediction"] == "no"  # "" lands on the shortest choice, as official


def test_statements_do_not_pay_as_rewards():
    """The training reward keeps "answers must commit": a statement without an answer
    mark or a choice named is not read, even when the evaluation path reads it right."""
    response = "Based on the image, Periwinkle is not the maximum."
    assert score_item({**MC_ROW, "response": response}, False, "official")["true_false"]
    assert REWARDS.get("accuracy")(response, MC_ROW) == 0.0


def test_unknown_fallback_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fallback must be one of"):
        score_item({**MC_ROW, "response": "no"}, False, "guess")
    path = tmp_path / "preds.json"
    path.write_text(json.dumps({"1": {**MC_ROW, "pid": "1", "response": "I cannot tell."}}))
    scores, _ = score_file(path, tmp_path / "a")
    strict, _ = score_file(path, tmp_path / "b", fallback="none")
    assert strict["average"]["correct"] == 0
    assert scores["average"]["total"] == 1
