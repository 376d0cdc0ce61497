"""The synthetic tasks: deterministic, split-disjoint, and right by construction."""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter

import pytest

from mhpo_vl.data import synthetic as syn
from mhpo_vl.data.templates import LETTERS
from mhpo_vl.errors import UserError


def _fingerprint(row) -> str:
    """Question, choices, answer and image pixels: what makes two problems the same."""
    h = hashlib.sha256(f"{row['question']}|{row['choices']}|{row['answer']}".encode())
    if row["image"] is not None:
        buf = io.BytesIO()
        row["image"].save(buf, format="PNG")
        h.update(buf.getvalue())
    return h.hexdigest()


def test_vision_is_deterministic_by_seed():
    a = syn.synthetic_vision("train", n=15, seed=3)
    b = syn.synthetic_vision("train", n=15, seed=3)
    c = syn.synthetic_vision("train", n=15, seed=4)
    fa, fb, fc = ([_fingerprint(r) for r in ds] for ds in (a, b, c))
    assert fa == fb
    assert fa != fc
    assert a["id"] == b["id"]


def test_text_is_deterministic_by_seed():
    assert (
        syn.synthetic_text("test", n=30, seed=1)[:] == syn.synthetic_text("test", n=30, seed=1)[:]
    )
    assert syn.synthetic_text("test", n=30, seed=1)["id"] != syn.synthetic_text("test", 30, 2)["id"]


def test_splits_are_disjoint():
    train = {_fingerprint(r) for r in syn.synthetic_text("train", n=1500)}
    test = {_fingerprint(r) for r in syn.synthetic_text("test", n=300)}
    assert len(test) > 100 and not train & test  # small spaces repeat problems
    vtrain = syn.synthetic_vision("train", n=200)
    vtest = syn.synthetic_vision("test", n=60)
    assert not set(vtrain["id"]) & set(vtest["id"])
    assert not {_fingerprint(r) for r in vtrain} & {_fingerprint(r) for r in vtest}


def test_default_sizes_and_schema():
    ds = syn.synthetic_vision("test")
    assert len(ds) == syn.DEFAULT_SIZES["vision"]["test"]
    assert set(ds.column_names) >= {"id", "question", "answer", "choices", "image", "task"}
    row = ds[0]
    assert row["image"].size == (syn.SIZE, syn.SIZE)
    assert row["precision"] is None
    assert syn.synthetic_text("train", n=3)[0]["image"] is None


def _cell_colors(image) -> dict[tuple[int, int], str]:
    """Read the image back: the palette colour at each cell centre, if any."""
    found = {}
    for r in range(syn.GRID):
        for c in range(syn.GRID):
            px = image.getpixel((c * syn.CELL + syn.CELL // 2, r * syn.CELL + syn.CELL // 2 + 3))
            for name, rgb in syn.COLORS.items():
                if px == rgb:
                    found[(r, c)] = name
    return found


def _answer_from_scene(shapes, question: str) -> str:
    """Recompute the gold answer from the scene and the question text alone."""
    colors = Counter(s.color for s in shapes)
    if question == "How many shapes are there?":
        return str(len(shapes))
    if question == "Which colour appears most often?":
        return colors.most_common(1)[0][0]
    assert question == "Do all the shapes have the same colour?", question
    return "yes" if len(colors) == 1 else "no"


def test_vision_answers_are_right_by_construction():
    problems = list(syn.vision_problems("train", n=200, seed=7))
    for shapes, row in problems:
        # the image shows exactly the scene
        assert _cell_colors(row["image"]) == {(s.row, s.col): s.color for s in shapes}
        assert row["answer"] == _answer_from_scene(shapes, row["question"])
        if row["choices"]:
            assert row["answer"] in row["choices"]
            assert len(set(row["choices"])) == len(row["choices"])
            assert syn.target_text(row) == LETTERS[row["choices"].index(row["answer"])]
        else:
            assert syn.target_text(row) == row["answer"]


def test_most_color_has_a_unique_answer_and_yes_no_is_balanced():
    answers = Counter()
    for shapes, row in syn.vision_problems("test", n=300):
        if row["task"] == "most_color":
            top = Counter(s.color for s in shapes).most_common()
            assert len(top) == 1 or top[0][1] > top[1][1]
        if row["task"] == "same_color":
            answers[row["answer"]] += 1
    assert 0.35 < answers["yes"] / sum(answers.values()) < 0.65


def test_text_answers_are_right():
    ops = {"+": "+", "plus": "+", "sum": "+", "-": "-", "minus": "-", "from": "-r"}
    ops.update({"*": "*", "times": "*", "product": "*"})
    for row in syn.synthetic_text("train", n=300):
        a, b = map(int, re.findall(r"\d", row["question"]))
        if row["choices"]:
            assert row["choices"] == ["yes", "no"]
            assert row["answer"] == ("yes" if a > b else "no")
            continue
        (op,) = [ops[w] for w in re.findall(r"[-+*]|\w+", row["question"]) if w in ops]
        expected = {"+": a + b, "-": a - b, "-r": b - a, "*": a * b}[op]
        assert row["answer"] == str(expected), row["question"]


@pytest.mark.parametrize("make", [syn.synthetic_vision, syn.synthetic_text])
def test_every_task_and_both_question_types_present(make):
    ds = make("train", n=40)
    assert Counter(ds["question_type"]).keys() == {"free_form", "multi_choice"}
    tasks = syn.VISION_TASKS if make is syn.synthetic_vision else syn.TEXT_TASKS
    assert set(ds["task"]) == set(tasks)
    for row in ds:
        assert row["answer_type"] == ("text" if row["choices"] else "integer")


def test_bad_split_is_a_user_error():
    with pytest.raises(UserError, match="'validation'"):
        syn.synthetic_vision("validation", n=2)
