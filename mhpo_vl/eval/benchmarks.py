"""Benchmarks by name: where the data lives, how a record becomes a problem row, how to
prompt and how to score.

Every entry maps its source columns onto the problem-row schema of
:mod:`mhpo_vl.data.templates` (``id, question, answer, choices, image, answer_type,
precision, question_type`` plus ``metadata``); scoring then goes through the same
verifiers as the training rewards. Hub ids, splits and columns were checked against the
dataset cards (read through a search index on 2026-11-25, no download): each entry's
``card_columns`` and ``verified`` say what was read where, and what could not be read.
A local copy of the same schema can always be passed instead of the hub id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mhpo_vl.data.templates import TEMPLATES
from mhpo_vl.eval.mathvista import BREAKDOWN_KEYS, GOLD_FIELDS, build_query
from mhpo_vl.registry import Registry

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHECKED = "2026-11-25"
UNVERIFIED = "unverified: no dataset card was read for this entry"
Row = dict[str, Any]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``to_row(record, split)`` converts a source record; ``splits``
    lists what is read (several for DynaMath's variants); ``scorer`` names a reward in
    :data:`mhpo_vl.rewards.REWARDS`, or ``mathvista`` for MathVista's official reading of
    a response (an eval-only scorer: it guesses where the official pipeline does); ``group_by`` names the row field that identifies the
    same question across splits (for worst-case accuracy).

    ``card_columns`` lists the columns the hub dataset card (its ``dataset_info``)
    declares and ``verified`` says where that was read and when, or starts with
    "unverified:" and the reason: the hub cannot be reached from here, so the cards
    were read through a search index, and what could not be read is said, not guessed."""

    name: str
    hub_id: str
    splits: tuple[str, ...]
    to_row: Callable[[Mapping[str, Any], str], Row]
    template: str = "boxed"
    scorer: str = "accuracy"
    config: str | None = None
    image_column: str | None = None
    group_by: str | None = None
    breakdown_keys: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    card_columns: tuple[str, ...] = ()
    verified: str = UNVERIFIED
    loader: Callable[[Benchmark, int | None], list[Row]] | None = None


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _add(bench: Benchmark) -> Benchmark:
    return BENCHMARKS.register(bench.name, bench)


def _str(value: Any) -> str:
    """Text of a cell; a whole float (AMC23's ``answer`` is float64 on the card) is
    written without its ".0", so the gold "27.0" reads "27" as the problem states it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value).strip()


def letter_to_choice(answer: str, choices: list[str] | None) -> str:
    """A gold given as a letter within range becomes that choice's text."""
    a = answer.strip().strip("()").strip()
    if choices and len(a) == 1 and a.upper() in LETTERS[: len(choices)]:
        return choices[LETTERS.index(a.upper())]
    return answer


# One "A: x" / "(A) x" choice per line. Anchored at line starts (MULTILINE) so a run of
# blank lines is skipped line by line, and the text is the rest of the line (stripped
# after the match), so each run of whitespace is read once. The old ``(?:^|\n)\s*``
# let each newline of a blank run rescan the whole run, and a lazy text followed by
# ``\s*(?=\n|$)`` rescanned each run of spaces from every position in it (both
# quadratic: 20,000 newlines took 6 s).
_INLINE_CHOICE = re.compile(r"^[^\S\n]*\(?([A-H])\s*[).:：]\s*(\S[^\n]*)", re.MULTILINE)
_PAREN_MARK = re.compile(r"\(([A-H])\)")
_OPTION_HEAD = re.compile(r"([A-H])\s*[.:：]\s*")
_OPTION_SEP = re.compile(r";\s*[A-H]\s*[.:：]")


def _inline_choices(tail: str) -> list[tuple[str, str]]:
    """``(letter, text)`` for each line of ``tail`` that starts with a choice letter."""
    return [(m.group(1), m.group(2).rstrip()) for m in _INLINE_CHOICE.finditer(tail)]


def _paren_choices(tail: str) -> list[tuple[str, str]]:
    """``(letter, text)`` for "(A) x (B) y" on one line: each text runs to the next
    "(X)" mark (found once each, so the scan is linear)."""
    marks = list(_PAREN_MARK.finditer(tail))
    ends = [m.start() for m in marks[1:]] + [len(tail)] * bool(marks)
    return [(m.group(1), tail[m.end() : end].strip()) for m, end in zip(marks, ends, strict=True)]


def choices_from_text(question: str) -> list[str] | None:
    """Choices written into the question after ``Choices:`` as ``A: x`` / ``(A) x``
    lines (MathVerse, DynaMath); None unless they run A, B, C... in order."""
    _, sep, tail = question.partition("Choices:")
    if not sep:
        _, sep, tail = question.partition("Options:")
    found = _inline_choices(tail) if sep else []
    if sep and len(found) < 2:  # all on one line: "(A) x (B) y"
        found = _paren_choices(tail)
    if len(found) < 2 or [f[0] for f in found] != list(LETTERS[: len(found)]):
        return None
    return [text for _, text in found]


def choices_from_options(options: str) -> list[str] | None:
    """WeMath's ``"A. x; B. y; ..."`` option string as a list: each text runs from its
    "X." head to the next "; Y." separator (searched forward once: linear)."""
    text = options or ""
    found: list[tuple[str, str]] = []
    pos = 0
    while head := _OPTION_HEAD.search(text, pos):
        sep = _OPTION_SEP.search(text, head.end())
        stop = sep.start() if sep else len(text)
        found.append((head.group(1), text[head.end() : stop].rstrip()))
        pos = stop
    if len(found) < 2 or [f[0] for f in found] != list(LETTERS[: len(found)]):
        return None
    return [text for _, text in found]


def _choice_row(rid: Any, question: str, answer: str, choices: list[str] | None) -> Row:
    return {
        "id": _str(rid),
        "question": question,
        "answer": letter_to_choice(answer, choices),
        "choices": choices,
        "answer_type": "text" if choices else None,
        "question_type": "multi_choice" if choices else "free_form",
        "precision": None,
    }


# ---- vision benchmarks -------------------------------------------------------------


def mathvista_row(rec: Mapping[str, Any], split: str) -> Row:
    """MathVista as is: it defines the schema (answer = choice text)."""
    row = {k: rec.get(k) for k in (*GOLD_FIELDS, "query") if k not in ("image", "pid")}
    row["id"] = _str(rec.get("pid"))
    row["pid"] = row["id"]
    row["choices"] = list(rec["choices"]) if rec.get("choices") else None
    row["answer"] = _str(rec.get("answer"))
    return row


@TEMPLATES.register("mathvista_query")
def mathvista_query(row: Mapping[str, Any]) -> str:
    """MathVista's official zero-shot query (hint, question, unit, choices)."""
    return build_query(row)


_add(
    Benchmark(
        name="mathvista_testmini",
        hub_id="AI4Math/MathVista",
        splits=("testmini",),
        to_row=mathvista_row,
        template="mathvista_query",
        image_column="decoded_image",
        breakdown_keys=BREAKDOWN_KEYS,
        columns={"id": "pid", "image": "decoded_image"},
        scorer="mathvista",
        notes="1000 items; scored as the official pipeline does (mhpo_vl.eval.mathvista)",
        card_columns=(*GOLD_FIELDS, "decoded_image", "query"),  # the official fields + 2
        verified=f"card AI4Math/MathVista (dataset_info: splits testmini 1000, test 5141; "
        f"config default), read {CHECKED}",
    )
)


def mathverse_row(rec: Mapping[str, Any], split: str) -> Row:
    question = _str(rec.get("question"))
    is_mc = "choice" in _str(rec.get("question_type")).lower()
    choices = choices_from_text(question) if is_mc else None
    row = _choice_row(rec.get("sample_index"), question, _str(rec.get("answer")), choices)
    row["metadata"] = {
        "problem_version": rec.get("problem_version"),
        **dict(rec.get("metadata") or {}),
    }
    return row


_add(
    Benchmark(
        name="mathverse_testmini",
        hub_id="AI4Math/MathVerse",
        config="testmini",
        splits=("testmini",),
        to_row=mathverse_row,
        image_column="image",
        breakdown_keys=("problem_version", "subject"),
        columns={
            "id": "sample_index",
            "question": "question",
            "answer": "answer",
            "question_type": "question_type",
            "image": "image",
        },
        notes="3940 items (5 problem versions); multi-choice options parsed from the question",
        card_columns=(
            "sample_index",
            "problem_index",
            "problem_version",
            "question",
            "image",
            "answer",
            "question_type",
            "metadata",
            "query_wo",
            "query_cot",
            "question_for_eval",
        ),
        verified=f"card AI4Math/MathVerse: configs testmini (split testmini, 3940) and "
        f"testmini_text_only (788); columns from the card's dataset_info as mirrored in "
        f"the lmms-eval copy (CaraJ/MathVerse-lmmseval), read {CHECKED}",
    )
)


def mathvision_row(rec: Mapping[str, Any], split: str) -> Row:
    options = [str(o) for o in rec.get("options") or []] or None
    row = _choice_row(rec.get("id"), _str(rec.get("question")), _str(rec.get("answer")), options)
    row["metadata"] = {"subject": rec.get("subject"), "level": rec.get("level")}
    return row


for _split in ("test", "testmini"):
    _add(
        Benchmark(
            name=f"mathvision_{_split}",
            hub_id="MathLLMs/MathVision",
            splits=(_split,),
            to_row=mathvision_row,
            image_column="decoded_image",
            breakdown_keys=("subject", "level"),
            columns={
                "id": "id",
                "question": "question",
                "choices": "options",
                "answer": "answer",
                "image": "decoded_image",
            },
            notes="test 3040 / testmini 304; letter answers mapped to option text",
            card_columns=(
                "id",
                "question",
                "options",
                "image",
                "decoded_image",
                "answer",
                "solution",
                "level",
                "subject",
            ),
            verified=f"card MathLLMs/MathVision (dataset_info: test 3040, testmini 304; "
            f"config default), read {CHECKED}",
        )
    )


def wemath_row(rec: Mapping[str, Any], split: str) -> Row:
    choices = choices_from_options(_str(rec.get("option")))
    row = _choice_row(rec.get("ID"), _str(rec.get("question")), _str(rec.get("answer")), choices)
    row["metadata"] = {"knowledge concept": rec.get("knowledge concept"), "key": rec.get("key")}
    return row


_add(
    Benchmark(
        name="wemath",
        hub_id="We-Math/We-Math",
        splits=("testmini",),
        to_row=wemath_row,
        image_column="image_path",
        breakdown_keys=("knowledge concept",),
        columns={
            "id": "ID",
            "question": "question",
            "choices": "option",
            "answer": "answer",
            "image": "image_path",
        },
        notes="plain accuracy; WeMath's composite loose/strict metrics are not implemented; "
        "1740 items expected on testmini (not confirmed on a card)",
        card_columns=(
            "ID",
            "split",
            "knowledge concept",
            "question",
            "option",
            "answer",
            "image_path",
            "key",
            "question number",
            "knowledge concept description",
        ),
        verified=f"partly: We-Math/We-Math's own card was not found by the search tool; "
        f"split 'testmini' and these columns (image_path an Image) from a derived copy's "
        f"dataset_info (ttlynne/We-Math_cot_clean, which adds 'cot' and 'image') and "
        f"public loaders of We-Math/We-Math, read {CHECKED}",
    )
)


def logicvista_row(rec: Mapping[str, Any], split: str) -> Row:
    row = {
        "id": _str(rec.get("id") or rec.get("question_id")),
        "question": _str(rec.get("question")),
        "answer": _str(rec.get("answer")),
        "choices": None,
        "answer_type": "letters",
        "question_type": "multi_choice",
        "precision": None,
        "metadata": {"skill": rec.get("skill")},
    }
    return row


_add(
    Benchmark(
        name="logicvista",
        hub_id="lscpku/LogicVista",
        splits=("test",),
        to_row=logicvista_row,
        scorer="choice_letters",
        image_column="image",
        breakdown_keys=("skill",),
        columns={"id": "id", "question": "question", "answer": "answer", "image": "image"},
        notes="gold may name several letters ('A, C'); 448 items per the paper (not "
        "confirmed on a card)",
        card_columns=(
            "id",
            "question",
            "answer",
            "reasoning",
            "image",
            "skill",
            "broad_capability",
            "specific_capability",
            "imagesource",
            "sourcelink",
            "liscenced",
        ),
        verified=f"unverified: the card of lscpku/LogicVista was not found by the search "
        f"tool; columns and split 'test' as observed by public evaluation scripts that "
        f"load it, read {CHECKED}",
    )
)


def dynamath_row(rec: Mapping[str, Any], split: str) -> Row:
    question = _str(rec.get("question"))
    is_mc = "choice" in _str(rec.get("answer_type")).lower()
    choices = choices_from_text(question) if is_mc else None
    row = _choice_row(rec.get("id"), question, _str(rec.get("ground_truth")), choices)
    row["qid"] = row["id"]
    row["id"] = f"{row['id']}@{split}"
    row["variant"] = split
    row["metadata"] = {"subject": rec.get("subject"), "knowledge_level": rec.get("knowledge_level")}
    return row


_add(
    Benchmark(
        name="dynamath",
        hub_id="DynaMath/DynaMath_Sample",
        splits=tuple(f"sample_variant{i}" for i in range(1, 11)),
        to_row=dynamath_row,
        image_column="decoded_image",
        group_by="qid",
        breakdown_keys=("subject", "knowledge_level"),
        columns={
            "id": "id",
            "question": "question",
            "answer": "ground_truth",
            "image": "decoded_image",
        },
        notes="501 questions x 10 variants; reports average case and worst case (all variants)",
        card_columns=(
            "id",
            "question",
            "image",
            "decoded_image",
            "ground_truth",
            "answer_type",
            "subject",
            "knowledge_level",
        ),
        verified=f"card DynaMath/DynaMath_Sample (config default, splits sample_variant1.."
        f"sample_variant10, 501 each), read {CHECKED}",
    )
)

# ---- text benchmarks (math-verify, gold first) --------------------------------------


def text_row(question_col: str, answer_col: str, id_col: str | None = None) -> Callable:
    def convert(rec: Mapping[str, Any], split: str) -> Row:
        return {
            "id": _str(rec.get(id_col)) if id_col else "",
            "question": _str(rec.get(question_col)),
            "answer": _str(rec.get(answer_col)),
            "choices": None,
            "answer_type": None,
            "question_type": "free_form",
            "precision": None,
        }

    return convert


_MATHARENA = ("problem_idx", "problem", "answer", "problem_type")
_TEXT = (
    # name, hub id, split, question, answer, id column, notes, card columns, verified
    (
        "math500",
        "HuggingFaceH4/MATH-500",
        "test",
        "problem",
        "answer",
        "unique_id",
        "500 items",
        ("problem", "solution", "answer", "subject", "level", "unique_id"),
        "partly: HuggingFaceH4/MATH-500's own card was not returned by the search tool; "
        f"split test (500) and columns from copies that mirror its dataset_info "
        f"(lmms-lab/MATH500, macabdul9/MATH-500), read {CHECKED}",
    ),
    (
        "aime24",
        "HuggingFaceH4/aime_2024",
        "train",
        "problem",
        "answer",
        "id",
        "30 items",
        ("id", "problem", "solution", "answer", "url"),
        "unverified: the card of HuggingFaceH4/aime_2024 was not returned by the search "
        "tool; 30 rows per the hub's listing, split 'train' and columns from public "
        f"loaders, read {CHECKED}",
    ),
    (
        "aime25",
        "math-ai/aime25",
        "test",
        "problem",
        "answer",
        "id",
        "30 items (AIME 2025 I and II); one file test.jsonl",
        ("id", "problem", "answer"),
        "partly: math-ai/aime25's card (265 bytes) declares no features; the repo holds "
        "one test.jsonl (split 'test'); columns id/problem/answer from public loaders "
        f"of it, read {CHECKED}",
    ),
    (
        "amc23",
        "math-ai/amc23",
        "test",
        "question",
        "answer",
        "id",
        "40 items (AMC 12 2023); answer is float64 on the card ('27.0' is read as '27')",
        ("id", "problem", "answer", "url", "question"),
        "partly: math-ai/amc23 holds test-00000-of-00001.parquet (split 'test'); the "
        "features (id int64, problem, answer float64, url, question) from a copy's "
        f"dataset_info (FlippyDora/amc23, 40 rows) and loaders of math-ai/amc23, read "
        f"{CHECKED}",
    ),
    (
        "hmmt25",
        "MathArena/hmmt_feb_2025",
        "train",
        "problem",
        "answer",
        "problem_idx",
        "30 items (Feb 2025)",
        _MATHARENA,
        "MathArena/hmmt_feb_2025: config default, split train, 30 rows (hub listing); "
        "the card's own dataset_info was not returned, its columns are those of every "
        f"MathArena card read (hmmt_feb_2026, cmimc_2025, brumo_2025), read {CHECKED}",
    ),
)

for _name, _hub, _split, _q, _a, _id, _note, _card, _verified in _TEXT:
    _add(
        Benchmark(
            name=_name,
            hub_id=_hub,
            splits=(_split,),
            to_row=text_row(_q, _a, _id),
            scorer="math_answer",
            columns={"id": _id, "question": _q, "answer": _a},
            notes=_note,
            card_columns=_card,
            verified=_verified,
        )
    )

# ---- the embedded synthetic tasks (imported only when used) --------------------------


def _synthetic_loader(kind: str) -> Callable[[Benchmark, int | None], list[Row]]:
    def load(bench: Benchmark, limit: int | None) -> list[Row]:
        from mhpo_vl.data import synthetic

        make = synthetic.synthetic_vision if kind == "vision" else synthetic.synthetic_text
        ds = make(split="test", n=limit)
        return [dict(ds[i], choices=ds[i]["choices"] or None) for i in range(len(ds))]

    return load


for _name, _kind in (("synthetic", "vision"), ("synthetic_text", "text")):
    _add(
        Benchmark(
            name=_name,
            hub_id=f"mhpo_vl.data.synthetic:synthetic_{_kind}",
            splits=("test",),
            to_row=lambda rec, split: dict(rec),
            template="plain",
            loader=_synthetic_loader(_kind),
            breakdown_keys=("task",),
            notes=f"the embedded synthetic {_kind} task, held-out split (400 by default)",
            verified="n/a: generated in process, no hub dataset",
        )
    )


def check_section(eval_cfg: Any) -> None:
    """Check the recipe's ``eval`` section: every ``eval.benchmarks`` name is registered."""
    for i, name in enumerate(eval_cfg.benchmarks):
        BENCHMARKS.check(f"eval.benchmarks[{i}]", name)
