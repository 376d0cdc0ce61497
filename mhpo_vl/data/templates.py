"""Prompt templates: turn one problem row into chat messages.

A problem row (every dataset loader produces this schema) has:
``id`` (str), ``question`` (str), ``answer`` (str, the gold; for multiple choice the
choice text, as MathVista stores it), ``choices`` (list[str] or None), optionally
``image`` (a PIL image or None), ``answer_type`` and ``precision``.

Templates only add instructions; the verifiers in :mod:`mhpo_vl.rewards` extract
answers from every format these templates ask for (``<answer>``, ``\\boxed{}``, a bare
letter or number).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mhpo_vl.registry import Registry

TEMPLATES: Registry[Callable[[Mapping[str, Any]], str]] = Registry("prompt template")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def format_choices(choices: list[str]) -> str:
    """``(A) x  (B) y`` on one line per choice, MathVista style."""
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def _problem_text(row: Mapping[str, Any]) -> str:
    text = str(row["question"]).strip()
    if row.get("choices"):
        text += "\nChoices:\n" + format_choices(list(row["choices"]))
    return text


def _answer_hint(row: Mapping[str, Any]) -> str:
    return "the letter of the correct choice" if row.get("choices") else "a number or short phrase"


@TEMPLATES.register("plain")
def plain(row: Mapping[str, Any]) -> str:
    """Question (and choices), answer directly: the tiny models' format."""
    return f"{_problem_text(row)}\nAnswer with {_answer_hint(row)}."


@TEMPLATES.register("think_answer")
def think_answer(row: Mapping[str, Any]) -> str:
    """R1-style reasoning: ``<think>...</think><answer>...</answer>``."""
    return (
        f"{_problem_text(row)}\n"
        "First think through the problem step by step inside <think> </think> tags, "
        f"then give {_answer_hint(row)} inside <answer> </answer> tags."
    )


@TEMPLATES.register("boxed")
def boxed(row: Mapping[str, Any]) -> str:
    """Reason freely, final answer in ``\\boxed{}`` (the usual text-math format)."""
    return (
        f"{_problem_text(row)}\n"
        f"Please reason step by step, and put {_answer_hint(row)} within \\boxed{{}}."
    )


def build_messages(
    row: Mapping[str, Any], template: str = "plain", system: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for one row; an image part comes first when the row has an image.

    Images travel separately (the processor takes them); the message holds a
    ``{"type": "image"}`` placeholder so the chat template inserts vision tokens.
    """
    text = TEMPLATES.get(template)(row)
    content: list[dict[str, Any]] = []
    if row.get("image") is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    return messages


def build_prompts(
    rows: Iterable[Mapping[str, Any]], template: str = "plain", system: str | None = None
) -> list[dict[str, Any]]:
    """Problem rows -> engine prompts (``messages`` plus the row's ``images``): what the
    trainer's rollouts and the eval runner both hand to a rollout engine."""
    return [
        {
            "messages": build_messages(row, template, system),
            "images": [row["image"]] if row.get("image") is not None else [],
        }
        for row in rows
    ]
