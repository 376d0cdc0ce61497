"""MathVista-compatible scoring: read and write the official output and scores layouts.

An output file maps ``pid -> item``; an item carries the problem fields (``question``,
``choices``, ``answer``, ``question_type``, ``answer_type``, ``precision``, ``metadata``,
...), the model's ``response`` and, once scored, ``extraction``, ``prediction`` and
``true_false``. The scores file holds ``average`` and the breakdowns the official
``calculate_score.py`` reports, with the same keys, number formats and ordering.

Two ways to score:

- ``use_extraction=True``: take each item's own ``extraction`` (e.g. GPT-4's) through the
  official normalization, edit-distance fallback included; reproduces official verdicts.
- default: our rule-based extraction from ``response``. Two fallbacks, named:

  - ``fallback="official"`` (the evaluation path, default for ``eval score`` / ``eval
    run``): :func:`~mhpo_vl.eval.reading.extract_for_eval` reads marked answers and
    plain statements ("Periwinkle is not the maximum." -> no; "There are 2 items sold
    less than 5 units." -> 2), then the official normalization; when it abstains on a
    hedge the official edit-distance fallback maps the response's last line onto a
    choice, as the official scorer does with GPT-4's extraction. A refusal
    (:func:`~mhpo_vl.eval.reading.is_refusal`) scores 0 on both fallbacks and is never
    mapped onto a choice; items carry ``refusal``. Scores are comparable with the
    leaderboard on the items that are not refusals.
  - ``fallback="none"`` (the training reward's strictness): :func:`mhpo_vl.rewards.judge`;
    an answer that does not commit to one candidate is wrong, never mapped onto the
    nearest choice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
from mhpo_vl.eval import safejson
from mhpo_vl.eval.reading import extract_for_eval, is_refusal
from mhpo_vl.rewards.extract import clean, lines, tail
from mhpo_vl.rewards.normalize import PAREN_LETTER, normalize_row_answer
from mhpo_vl.rewards.verifiers import judge

BREAKDOWN_KEYS = (
    "question_type",
    "answer_type",
    "language",
    "source",
    "category",
    "task",
    "context",
    "grade",
    "skills",
)
FALLBACKS = ("official", "none")
REQUIRED = ("question", "answer", "question_type", "answer_type", "choices")
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("text", "integer", "float", "list")
MAX_MALFORMED = 0.05  # default --max-malformed: the share of items that may be malformed
SHOW = 5  # malformed items named in a message
_NULL = type(None)
# field -> (the JSON types it may have, as words); bool is never a number here
FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "question": ((str,), "a string"),
    "answer": ((str, int, float), "a string or number"),
    "question_type": ((str,), "a string"),
    "answer_type": ((str,), "a string"),
    "choices": ((list, _NULL), "a list or null"),
    "unit": ((str, _NULL), "a string or null"),
    "precision": ((int, float, _NULL), "a number or null"),
    "response": ((str, _NULL), "a string or null"),
    "extraction": ((str, int, float, _NULL), "a string, number or null"),
    "metadata": ((dict, _NULL), "an object or null"),
}
GOLD_FIELDS = (
    "question",
    "image",
    "choices",
    "unit",
    "precision",
    "answer",
    "question_type",
    "answer_type",
    "pid",
    "metadata",
)

_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, "
    "e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final "
    "value, e.g., 1, 2, 3, at the end.",
    1: "Please answer the question requiring a floating-point number with one decimal place "
    "and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    2: "Please answer the question requiring a floating-point number with two decimal places "
    "and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the "
    "final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def build_query(row: Mapping[str, Any]) -> str:
    """MathVista's official zero-shot query: hint line, question (with unit), choices."""
    if row.get("question_type") == "multi_choice":
        hint = _HINTS["multi_choice"]
    elif row.get("answer_type") == "float":
        hint = _HINTS[int(row.get("precision") or 1)]
    else:
        hint = _HINTS.get(str(row.get("answer_type")), _HINTS["integer"])
    question = str(row["question"])
    if row.get("unit"):
        question += f" (Unit: {row['unit']})"
    text = f"Hint: {hint}\nQuestion: {question}"
    if row.get("choices"):
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        text += "\nChoices:\n" + "\n".join(
            f"({letters[i]}) {c}" for i, c in enumerate(row["choices"])
        )
    return text.strip()


@dataclass
class ScoreSummary:
    """Counts beside the scores: items without a response, without an extraction."""

    total: int = 0
    correct: int = 0
    missing_response: list[str] = field(default_factory=list)
    missing_extraction: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # "pid 'x': what is wrong", not scored
    items: int = 0  # items in the file, malformed ones included


# where each file's path comes from, and what to do when it is not there
_SOURCES = {
    "predictions": ("PREDICTIONS argument", "give the path of a MathVista output file"),
    "annotations": ("--annotations", "give the path of MathVista's testmini.json or drop the flag"),
}


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file (nesting bounded: :mod:`mhpo_vl.eval.safejson`); a missing file,
    bad JSON or JSON nested too deep is a one-line :class:`UserError`."""
    where, fix = _SOURCES.get(what, ("written by eval score", "run eval score again"))
    return safejson.read_json(path, f"{what} file", where, fix)


def item_problem(item: Any) -> str | None:
    """What is wrong with one item (gold fields filled in), or None: a missing key, a
    field of the wrong JSON type, a value outside MathVista's vocabulary, a
    ``multi_choice`` item without choices, a ``float`` answer without precision."""
    if not isinstance(item, dict):
        return "item is not a JSON object"
    for key in REQUIRED:
        if key not in item:
            return f"missing key {key!r}"
    for key, (types, words) in FIELD_TYPES.items():
        if key in item and type(item[key]) not in types:
            return f"{key!r} must be {words}, got {type(item[key]).__name__}"
    return _value_problem(item)


def _value_problem(item: Mapping[str, Any]) -> str | None:
    for key, valid in (("question_type", QUESTION_TYPES), ("answer_type", ANSWER_TYPES)):
        if item[key] not in valid:
            return f"{key} {item[key]!r} is not one of {', '.join(valid)}"
    choices = item["choices"]
    for i, choice in enumerate(choices or []):
        if type(choice) not in (str, int, float):
            return f"'choices' item {i} must be a string or number, got {type(choice).__name__}"
    if item["question_type"] == "multi_choice" and not choices:
        return "multi_choice item needs a 'choices' list"
    if item["answer_type"] == "float" and item.get("precision") is None:
        return "float answer needs 'precision'"
    return None


def check_items(
    data: Any, path: str | Path, annotations: Mapping[str, Any] | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The well-formed items of a ``pid -> item`` file, gold fields filled from
    ``annotations`` (theirs win: the file may carry only ``response``), and each
    malformed item named (``pid 'x': what is wrong``). Not an object at all, or empty,
    is a :class:`UserError`."""
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected a non-empty JSON object mapping pid -> item")
    items: dict[str, dict[str, Any]] = {}
    malformed: list[str] = []
    for pid, item in data.items():
        if isinstance(item, dict) and annotations is not None:
            gold = annotations.get(str(pid))
            if not isinstance(gold, dict):
                malformed.append(f"pid {pid!r} is not in the annotations")
                continue
            item = {**item, **{k: gold[k] for k in GOLD_FIELDS if k in gold}}
        problem = item_problem(item)
        if problem is not None:
            malformed.append(f"pid {pid!r}: {problem}")
        else:
            items[str(pid)] = dict(item)
    return items, malformed


def judge_malformed(malformed: Sequence[str], total: int, max_malformed: float, path: Any) -> None:
    """A one-line :class:`UserError` when more than ``max_malformed`` of ``total`` items
    are malformed, naming the first few."""
    frac = len(malformed) / total if total else 0.0
    if not malformed or frac <= max_malformed:
        return
    more = f"; ... {len(malformed) - SHOW} more" if len(malformed) > SHOW else ""
    raise UserError(
        f"{path}: {len(malformed)} of {total} items are malformed ({frac:.1%}), over "
        f"--max-malformed {max_malformed:g}: {'; '.join(malformed[:SHOW])}{more}; fix "
        "these items or raise --max-malformed"
    )


def validate_items(
    data: Any,
    path: str | Path,
    annotations: Mapping[str, Any] | None = None,
    max_malformed: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """The well-formed items (:func:`check_items`); more than ``max_malformed`` malformed
    ones (default: any) is a :class:`UserError` naming them."""
    items, malformed = check_items(data, path, annotations)
    judge_malformed(malformed, len(data), max_malformed, path)
    return items


def _official(extraction: Any, item: Mapping[str, Any]) -> dict[str, Any]:
    prediction = normalize_row_answer(extraction, item, official=True)
    correct = prediction is not None and prediction == item["answer"]
    return {"extraction": extraction, "prediction": prediction, "true_false": correct}


def read_for_eval(response: Any, item: Mapping[str, Any]) -> tuple[str, bool]:
    """The evaluation path's extraction for one item and whether the response is a
    refusal. The extraction is what the response commits to
    (:func:`~mhpo_vl.eval.reading.extract_for_eval`); else ``""`` for a refusal
    (:func:`~mhpo_vl.eval.reading.is_refusal`: scored wrong, never mapped onto a choice);
    else, for multiple choice, the response's last line cleaned (a hedge: the official
    normalization maps it onto the nearest choice, as it does GPT-4's copy); else ``""``."""
    text = tail(str(response or ""))
    choices = [str(c) for c in item.get("choices") or []] or None
    found = extract_for_eval(
        text, choices, item.get("answer_type"), str(item.get("question") or "")
    )
    if found is not None:
        return found, False
    if is_refusal(text):
        return "", True
    if choices and text.strip():
        return clean((lines(text) or [""])[-1]), False
    return "", False


def eval_extraction(response: Any, item: Mapping[str, Any]) -> str:
    """The evaluation path's extraction for one item (:func:`read_for_eval`)."""
    return read_for_eval(response, item)[0]


def score_item(
    item: Mapping[str, Any], use_extraction: bool, fallback: str = "official"
) -> dict[str, Any]:
    """``extraction``, ``prediction`` and ``true_false`` for one item (see the module
    docstring for ``use_extraction`` and ``fallback``)."""
    if fallback not in FALLBACKS:
        raise UserError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    if use_extraction:
        extraction = item.get("extraction")
        return _official("" if extraction is None else extraction, item)
    extraction, refusal = read_for_eval(item.get("response"), item)
    if refusal:
        return {"extraction": "", "prediction": None, "true_false": False, "refusal": True}
    if fallback == "official":
        return {**_official(extraction, item), "refusal": False}
    verdict = judge(item.get("response"), item)
    return {
        "extraction": verdict.extraction if verdict.extraction is not None else "",
        "prediction": verdict.prediction,
        "true_false": verdict.correct,
        "refusal": False,
    }


def score_items(
    items: Mapping[str, Mapping[str, Any]],
    use_extraction: bool = False,
    fallback: str = "official",
) -> tuple[dict[str, dict[str, Any]], ScoreSummary]:
    """Score every item; returns the output layout and a summary."""
    out: dict[str, dict[str, Any]] = {}
    summary = ScoreSummary()
    for pid, item in items.items():
        response = item.get("response")
        if not isinstance(response, str) or not response.strip():
            summary.missing_response.append(pid)
        if use_extraction and not item.get("extraction"):
            summary.missing_extraction.append(pid)
        scored = {**item, **score_item(item, use_extraction, fallback)}
        summary.total += 1
        summary.correct += bool(scored["true_false"])
        out[pid] = scored
    return out, summary


def is_well_formed(extraction: Any, item: Mapping[str, Any]) -> bool:
    """Whether an (official) extraction is an answer of the item's type: a choice letter
    in range, ``(X)`` or a choice text; a number; a ``[...]`` list. The rest are refusals
    ("N/A", "The question does not provide...") that the official scorer maps onto the
    nearest choice by edit distance."""
    text = str(extraction or "").strip()
    if item.get("question_type") == "multi_choice":
        choices = [str(c) for c in item.get("choices") or []]
        letters = PAREN_LETTER.findall(text)
        letter = letters[0].upper() if letters else text
        in_range = len(letter) == 1 and 0 <= ord(letter) - 65 < len(choices)
        return in_range or text in choices
    if item.get("answer_type") == "list":
        return text.startswith("[") and text.endswith("]")
    try:
        float(text)
    except ValueError:
        return False
    return True


def _field(item: Mapping[str, Any], key: str) -> Any:
    if key in item:
        return item[key]
    meta = item.get("metadata")
    return meta.get(key) if isinstance(meta, Mapping) else None


def _ordered_values(items: Iterable[Mapping[str, Any]], key: str) -> list[Any]:
    seen: dict[Any, None] = {}
    for item in items:
        value = _field(item, key)
        for v in value if key == "skills" and isinstance(value, list) else [value]:
            if v is not None:
                seen.setdefault(v, None)
    return list(seen)


def scores_layout(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The official scores dict: ``average`` (accuracy ``str(round(acc, 2))``) and per
    breakdown key ``{value: {"accuracy": "%.2f", "correct", "total"}}`` sorted by
    accuracy, highest first (first appearance breaks ties)."""
    items = list(results.values())
    if not items:
        raise UserError("no items to score")
    correct = sum(bool(i.get("true_false")) for i in items)
    scores: dict[str, Any] = {
        "average": {
            "accuracy": str(round(correct / len(items) * 100, 2)),
            "correct": correct,
            "total": len(items),
        }
    }
    for key in BREAKDOWN_KEYS:
        table = {}
        for value in _ordered_values(items, key):
            members = [i for i in items if _matches(_field(i, key), value, key)]
            hits = sum(bool(i.get("true_false")) for i in members)
            table[value] = {
                "accuracy": f"{hits / len(members) * 100:.2f}",
                "correct": hits,
                "total": len(members),
            }
        scores[key] = dict(
            sorted(table.items(), key=lambda kv: float(kv[1]["accuracy"]), reverse=True)
        )
    return scores


def refusal_counts(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``refusals`` entry of our scores file: how many scored items are refusals
    (scored wrong, not mapped onto a choice), of how many, the share (0 to 1, four
    decimals) and their pids."""
    pids = [str(pid) for pid, item in results.items() if item.get("refusal")]
    total = len(results)
    frac = round(len(pids) / total, 4) if total else 0.0
    return {"count": len(pids), "total": total, "fraction": frac, "pids": pids}


EXCERPT = 400  # characters of a response's end kept in disagreements.jsonl
DISAGREEMENTS = "disagreements.jsonl"


def _verdict(scored: Mapping[str, Any]) -> dict[str, Any]:
    return {k: scored[k] for k in ("extraction", "prediction", "true_false")}


def extraction_disagreements(
    items: Mapping[str, Mapping[str, Any]], results: Mapping[str, Mapping[str, Any]]
) -> tuple[int, list[dict[str, Any]]]:
    """How many items carry their own ``extraction`` (e.g. GPT-4's), and one review row
    per item where our rule-based reading lands on another prediction than theirs (the
    official normalization of each): pid, the response's end, the answer, both
    extractions, predictions and verdicts. Shows a person where to check our rules."""
    compared, rows = 0, []
    for pid, item in items.items():
        own = item.get("extraction")
        if own is None or pid not in results:
            continue
        compared += 1
        ours, theirs = _verdict(results[pid]), _verdict(_official(own, item))
        if ours["prediction"] == theirs["prediction"]:
            continue
        rows.append(
            {
                "pid": pid,
                "response": str(item.get("response") or "")[-EXCERPT:],
                "answer": item.get("answer"),
                "refusal": bool(results[pid].get("refusal")),
                "ours": ours,
                "theirs": theirs,
            }
        )
    return compared, rows


def write_disagreements(out: Path, compared: int, rows: Sequence[Mapping[str, Any]]) -> dict:
    """Write ``out/disagreements.jsonl`` (one row per line) and return the
    ``extraction_agreement`` entry of our scores file."""
    path = out / DISAGREEMENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    frac = round(len(rows) / compared, 4) if compared else 0.0
    return {"compared": compared, "disagree": len(rows), "fraction": frac, "file": DISAGREEMENTS}


def _matches(field_value: Any, value: Any, key: str) -> bool:
    if key == "skills":
        return isinstance(field_value, list) and value in field_value
    return field_value == value


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def score_file(
    predictions: str | Path,
    out_dir: str | Path,
    use_extraction: bool = False,
    annotations: str | Path | None = None,
    fallback: str = "official",
    max_malformed: float = MAX_MALFORMED,
) -> tuple[dict[str, Any], ScoreSummary]:
    """Score a MathVista output file; write ``out_dir/output.json`` and ``scores.json``
    (with rule-based extraction, also the refusal count and, when items carry their own
    ``extraction``, ``disagreements.jsonl``: :func:`extraction_disagreements`).

    Malformed items (:func:`item_problem`) are not scored: they are named in the
    summary, and more than ``max_malformed`` of them is a :class:`UserError`."""
    gold = read_json(annotations, "annotations") if annotations else None
    if gold is not None and not isinstance(gold, dict):
        raise UserError(f"{annotations}: expected a JSON object mapping pid -> annotation")
    data = read_json(predictions, "predictions")
    items, malformed = check_items(data, predictions, gold)
    judge_malformed(malformed, len(data), max_malformed, predictions)
    results, summary = score_items(items, use_extraction, fallback)
    summary.malformed, summary.items = malformed, len(data)
    scores = scores_layout(results)
    out = Path(out_dir)
    if not use_extraction:  # the file's own extraction: the official layout, exactly
        scores["refusals"] = refusal_counts(results)
        compared, rows = extraction_disagreements(items, results)
        if compared:
            scores["extraction_agreement"] = write_disagreements(out, compared, rows)
        else:  # a review file left from an earlier run would describe another file
            (out / DISAGREEMENTS).unlink(missing_ok=True)
    write_json(out / "output.json", results)
    write_json(out / "scores.json", scores)
    return scores, summary
