"""Synthetic tasks for the embedded tiny models: a visual one and a text one.

Unlike the benchmarks, these are generated on the fly with Pillow, deterministically by
seed, so the whole pipeline runs offline on a CPU. The visual task is MathVista-like in
form (free-form integers, and multiple choice whose gold ``answer`` is the choice text)
but tiny in content: an 84 x 84 image is a 3 x 3 grid of cells, each cell aligned with
one merged Qwen-VL vision token (28 px = 2 x 2 patches of 14 px) and holding at most one
coloured shape. Every question needs the image:

- ``count_all``   How many shapes are there?                 (free form, 3-9)
- ``most_color``  Which colour appears most often?           (4 choices, fixed order)
- ``same_color``  Do all the shapes have the same colour?    (yes / no, balanced)

Why these: a 1.5M-parameter model trained from scratch on a CPU learns questions about
whole-image statistics in a few hundred supervised steps, with a smooth learning curve,
while questions that must route a word of the question to some image tokens ("how many
*red* shapes") take thousands. The warm start stops on the rising part of that curve,
which leaves RL something it can learn in minutes.

The text task asks single-digit arithmetic facts and comparisons in several phrasings.

Splits are disjoint by construction: a problem belongs to ``test`` iff the hash of its
generating parameters falls in the held-out bucket, whatever the seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
from PIL import Image, ImageDraw

from mhpo_vl.errors import UserError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (250, 250, 250)
GRID = 3  # cells per side; one merged vision token per cell
CELL = 28  # pixels per cell (= patch 14 x spatial merge 2)
SIZE = GRID * CELL
MIN_OBJECTS, MAX_OBJECTS = 3, GRID * GRID
TEST_BUCKETS = 8  # 1 in TEST_BUCKETS problems is held out
DEFAULT_SIZES = {"vision": {"train": 4000, "test": 400}, "text": {"train": 4000, "test": 400}}

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "image": datasets.Image(),
        "answer_type": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "precision": datasets.Value("float32"),
        "task": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class Shape:
    """One object: its colour and kind, the grid cell, and pixel jitter inside the cell."""

    color: str
    kind: str
    row: int
    col: int
    dx: int = 0
    dy: int = 0
    radius: int = 10

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def draw_scene(shapes: list[Shape]) -> Image.Image:
    """Render shapes on a light background, one per cell, centred (plus jitter)."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in shapes:
        cx = s.col * CELL + CELL // 2 + s.dx
        cy = s.row * CELL + CELL // 2 + s.dy
        r, fill = s.radius, COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif s.kind == "square":
            q = r - 1  # about the circle's area
            draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r - 1), (cx + r, cy + r - 1)], fill=fill)
    return img


def random_scene(rng: random.Random) -> list[Shape]:
    """3-9 shapes in distinct cells; colours from a random 2-3 colour subset (so that
    counts differ), random kinds, small jitter."""
    k = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), k)
    palette = rng.sample(list(COLORS), rng.randint(1, 3))
    return [
        Shape(
            color=rng.choice(palette),
            kind=rng.choice(SHAPES),
            row=c // GRID,
            col=c % GRID,
            dx=rng.randint(-2, 2),
            dy=rng.randint(-2, 2),
            radius=rng.randint(9, 11),
        )
        for c in sorted(cells)
    ]


# --- visual questions: each returns (question, answer, choices) or None if the scene
# does not admit the question (the generator then draws a new scene). Choices come in
# a fixed order (the palette's, the shapes'), as in many benchmark option lists.

Question = tuple[str, str, list[str] | None]


def _unique_most(values: list[str]) -> str | None:
    top = Counter(values).most_common(2)
    return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None


def q_most_color(shapes: list[Shape], rng: random.Random) -> Question | None:
    answer = _unique_most([s.color for s in shapes])
    return answer and ("Which colour appears most often?", answer, list(COLORS))


def q_count_all(shapes: list[Shape], rng: random.Random) -> Question | None:
    return "How many shapes are there?", str(len(shapes)), None


def q_same_color(shapes: list[Shape], rng: random.Random) -> Question | None:
    answer = "yes" if len({s.color for s in shapes}) == 1 else "no"
    if answer != rng.choice(["yes", "no"]):  # rejection keeps yes / no balanced
        return None
    return "Do all the shapes have the same colour?", answer, ["yes", "no"]


VISION_TASKS: dict[str, Callable[[list[Shape], random.Random], Question | None]] = {
    "count_all": q_count_all,
    "most_color": q_most_color,
    "same_color": q_same_color,
}


# --- text questions: single-digit facts under several phrasings. The held-out split is
# by problem (phrasing included), so a test question may ask a fact the train split
# asks in other words: the tiny text model learns the facts, not an algorithm.

ADD = ("What is {a} + {b}?", "What is the sum of {a} and {b}?", "Compute {a} plus {b}.")
SUB = ("What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.")
MUL = ("What is {a} * {b}?", "What is the product of {a} and {b}?", "Compute {a} times {b}.")
GREATER = ("Is {a} greater than {b}?", "Is {a} larger than {b}?", "Is {a} more than {b}?")


def t_add(rng: random.Random) -> Question:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return rng.choice(ADD).format(a=a, b=b), str(a + b), None


def t_sub(rng: random.Random) -> Question:
    a, b = sorted((rng.randint(0, 9), rng.randint(0, 9)), reverse=True)
    return rng.choice(SUB).format(a=a, b=b), str(a - b), None


def t_mul(rng: random.Random) -> Question:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return rng.choice(MUL).format(a=a, b=b), str(a * b), None


def t_greater(rng: random.Random) -> Question:
    a, b = rng.sample(range(10), 2)
    return rng.choice(GREATER).format(a=a, b=b), "yes" if a > b else "no", ["yes", "no"]


TEXT_TASKS: dict[str, Callable[[random.Random], Question]] = {
    "add": t_add,
    "sub": t_sub,
    "mul": t_mul,
    "greater": t_greater,
}


# --- rows and splits


def problem_hash(params: Any) -> str:
    """Stable hash of a problem's generating parameters (decides its split)."""
    blob = json.dumps(params, sort_keys=True, default=lambda o: o.__dict__)
    return hashlib.sha256(blob.encode()).hexdigest()


def split_of(digest: str) -> str:
    return "test" if int(digest[:8], 16) % TEST_BUCKETS == 0 else "train"


def _check_split(split: str, kind: str, n: int | None) -> int:
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r} of synthetic {kind} task; use 'train' or 'test'")
    n = DEFAULT_SIZES[kind][split] if n is None else n
    if n < 0:
        raise UserError(f"number of synthetic {kind} problems must be >= 0, got {n}")
    return n


def _row(task: str, digest: str, question: Question, image: Image.Image | None) -> dict[str, Any]:
    text, answer, choices = question
    return {
        "id": f"{task}-{digest[:12]}",
        "question": text,
        "answer": answer,
        "choices": choices,
        "image": image,
        "answer_type": "text" if choices else "integer",
        "question_type": "multi_choice" if choices else "free_form",
        "precision": None,
        "task": task,
    }


def vision_problems(split: str = "train", n: int | None = None, seed: int = 0):
    """Yield ``(shapes, row)`` pairs: the scene that generated each row, and the row.

    Tasks cycle in a fixed order so every type is equally represented. A question may
    reject a scene (no unique answer, or not the answer it drew to stay balanced): then
    a new scene is drawn for the same question, whose own RNG is fixed per slot."""
    n = _check_split(split, "vision", n)
    rng = random.Random(f"vision-{split}-{seed}")
    names = list(VISION_TASKS)
    made = 0
    while made < n:
        task = names[made % len(names)]
        slot = rng.random()
        question = None
        while question is None:
            shapes = random_scene(rng)
            question = VISION_TASKS[task](shapes, random.Random(slot))
        digest = problem_hash([task, shapes, question])
        if split_of(digest) != split:
            continue
        made += 1
        yield shapes, _row(task, digest, question, draw_scene(shapes))


def text_problems(split: str = "train", n: int | None = None, seed: int = 0):
    """Yield text arithmetic rows (tasks cycle in a fixed order); see :func:`synthetic_text`."""
    n = _check_split(split, "text", n)
    rng = random.Random(f"text-{split}-{seed}")
    names = list(TEXT_TASKS)
    made = 0
    while made < n:
        task = names[made % len(names)]
        question = TEXT_TASKS[task](rng)
        digest = problem_hash([task, question])
        if split_of(digest) != split:
            continue
        made += 1
        yield _row(task, digest, question, None)


def _dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=FEATURES)


def synthetic_vision(split: str = "train", n: int | None = None, seed: int = 0) -> datasets.Dataset:
    """The shapes-in-a-grid visual reasoning task (see the module docstring).

    ``n`` defaults to 4000 (train) / 400 (test). Same ``(split, n, seed)``, same rows."""
    return _dataset([row for _, row in vision_problems(split, n, seed)])


def synthetic_text(split: str = "train", n: int | None = None, seed: int = 0) -> datasets.Dataset:
    """Small arithmetic word problems for the text-only tiny model; ``image`` is None."""
    return _dataset(list(text_problems(split, n, seed)))


def target_text(row: dict[str, Any]) -> str:
    """The bare answer a model should produce for a row: the choice letter for multiple
    choice, the answer itself otherwise (used as the warm-start SFT target)."""
    if row.get("choices"):
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[list(row["choices"]).index(row["answer"])]
    return str(row["answer"])
