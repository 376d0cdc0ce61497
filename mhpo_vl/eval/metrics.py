"""Report metrics over k samples per problem, per-category breakdowns, paper tables.

Shapes: ``P`` problems, ``K`` samples each; ``correct_PK[p][j]`` is 1.0 if sample ``j`` of
problem ``p`` was judged right.

- Avg@k: mean over problems of the per-problem mean (the paper reports Avg@32).
- pass@k: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021), averaged
  over problems, with n samples of which c are correct.
- maj@k: the most frequent extracted answer (ties: the one seen first) is right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def avg_at_k(correct_PK: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the mean over that problem's samples."""
    if not correct_PK:
        return 0.0
    return sum(sum(row) / len(row) for row in correct_PK) / len(correct_PK)


def pass_at_k_one(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0  # C(n-c, k) / C(n, k) as a product, stable for large n
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k(correct_PK: Sequence[Sequence[float]], k: int) -> float:
    """Mean unbiased pass@k over problems (a sample counts as correct if its score > 0.5)."""
    if not correct_PK:
        return 0.0
    vals = [pass_at_k_one(len(row), sum(1 for x in row if x > 0.5), k) for row in correct_PK]
    return sum(vals) / len(vals)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-empty answer; the earliest seen wins a tie; None if none."""
    counts = Counter(a for a in answers if a not in (None, ""))
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a not in (None, "") and counts[a] == top)


def maj_at_k(
    answers_PK: Sequence[Sequence[str | None]], correct_PK: Sequence[Sequence[float]]
) -> float:
    """Fraction of problems whose majority answer is right (judged by a sample that gave
    it). Answers are the normalized predictions, so "B" and "(B)" vote together."""
    if not answers_PK:
        return 0.0
    hits = 0
    for answers, correct in zip(answers_PK, correct_PK, strict=True):
        best = majority_answer(answers)
        hits += best is not None and any(
            a == best and c > 0.5 for a, c in zip(answers, correct, strict=True)
        )
    return hits / len(answers_PK)


def breakdown(
    rows: Sequence[Mapping[str, Any]], score_P: Sequence[float], keys: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-category mean of per-problem scores, MathVista style: for each key (looked up
    in the row, then in ``row["metadata"]``; list values count in every listed category)
    ``{value: {"accuracy": percent, "total": n}}``, highest first."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in keys:
        sums: dict[Any, list[float]] = {}
        for row, score in zip(rows, score_P, strict=True):
            value = row.get(key, (row.get("metadata") or {}).get(key))
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    sums.setdefault(v, []).append(score)
        table = {
            str(v): {"accuracy": round(100 * sum(s) / len(s), 2), "total": len(s)}
            for v, s in sums.items()
        }
        if table:
            out[key] = dict(sorted(table.items(), key=lambda kv: -kv[1]["accuracy"]))
    return out


def markdown_table(
    results: Mapping[str, Mapping[str, float]],
    benchmarks: Sequence[str] | None = None,
    digits: int = 1,
) -> str:
    """The paper's layout: one row per method, benchmarks as columns, average last.

    ``results[method][benchmark]`` are percentages; a missing cell prints "-" and the
    average is over the cells present.
    """
    if benchmarks is None:
        benchmarks = list(dict.fromkeys(b for r in results.values() for b in r))
    lines = [
        "| method | " + " | ".join(benchmarks) + " | avg |",
        "|---" * (len(benchmarks) + 2) + "|",
    ]
    for method, row in results.items():
        cells = [row.get(b) for b in benchmarks]
        present = [c for c in cells if c is not None]
        avg = sum(present) / len(present) if present else None
        shown = [f"{c:.{digits}f}" if c is not None else "-" for c in [*cells, avg]]
        lines.append(f"| {method} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
