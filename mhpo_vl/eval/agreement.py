"""How far our MathVista verdicts are from the ones a predictions file already carries.

Official MathVista output files (and leaderboard submissions) hold each item's
``true_false`` as judged by their own scorer. After ``eval score`` writes our verdicts
to ``output.json``, :func:`compare_verdicts` counts where the two agree, overall and by
``question_type``, so a user sees at once whether a gap in accuracy comes from the
model or from the scoring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUESTION_TYPES = ("multi_choice", "free_form")


@dataclass
class Tally:
    """Items that carry the file's ``true_false`` and how many of them we agree with."""

    agree: int = 0
    total: int = 0

    def add(self, same: bool) -> None:
        self.total += 1
        self.agree += same

    def text(self) -> str:
        pct = 100.0 * self.agree / self.total if self.total else 0.0
        return f"{self.agree}/{self.total} ({pct:.1f}%)"


@dataclass
class Agreement:
    """Agreement overall and by question type, and the pids where the verdicts differ."""

    overall: Tally = field(default_factory=Tally)
    by_type: dict[str, Tally] = field(default_factory=dict)
    disagree: list[str] = field(default_factory=list)


def _file_verdict(item: Any) -> bool | None:
    """The item's own ``true_false`` as a bool; None when absent or not a boolean.

    Only real booleans count (JSON ``true``/``false``); a string or number there is
    something else and is better left out than guessed.
    """
    if not isinstance(item, Mapping):
        return None
    value = item.get("true_false")
    return value if isinstance(value, bool) else None


def compare_verdicts(
    original: Mapping[str, Any], ours: Mapping[str, Mapping[str, Any]]
) -> Agreement | None:
    """Compare ``original`` (the predictions file, ``pid -> item``) with ``ours``
    (the ``output.json`` layout :func:`mhpo_vl.eval.mathvista.score_file` writes).

    Returns None when no item of the file carries a boolean ``true_false``.
    """
    result = Agreement()
    for pid, item in original.items():
        theirs = _file_verdict(item)
        scored = ours.get(str(pid))
        if theirs is None or scored is None:
            continue
        same = bool(scored.get("true_false")) == theirs
        qtype = str(scored.get("question_type") or "unknown")
        result.overall.add(same)
        result.by_type.setdefault(qtype, Tally()).add(same)
        if not same:
            result.disagree.append(str(pid))
    return result if result.overall.total else None


def agreement_lines(agreement: Agreement, output_path: str) -> list[str]:
    """The lines ``eval score`` prints: overall, by question type, and the disagreements
    with where to look them up."""
    order = [t for t in QUESTION_TYPES if t in agreement.by_type]
    order += sorted(t for t in agreement.by_type if t not in QUESTION_TYPES)
    parts = ", ".join(f"{t} {agreement.by_type[t].text()}" for t in order)
    lines = [f"agreement with the file's true_false: {agreement.overall.text()} ({parts})"]
    if agreement.disagree:
        shown = ", ".join(agreement.disagree[:10])
        more = f" and {len(agreement.disagree) - 10} more" if len(agreement.disagree) > 10 else ""
        lines.append(
            f"disagreements: {len(agreement.disagree)} (pids {shown}{more}); compare "
            f"'extraction', 'prediction' and 'answer' for those pids in {output_path}"
        )
    return lines
