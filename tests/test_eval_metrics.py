"""Report metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from mhpo_vl.eval.metrics import (
    avg_at_k,
    breakdown,
    maj_at_k,
    majority_answer,
    markdown_table,
    pass_at_k,
    pass_at_k_one,
)

# 3 problems x 4 samples: per-problem means 0.75, 0, 1
CORRECT_PK = [[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]


def test_avg_at_k():
    assert avg_at_k(CORRECT_PK) == pytest.approx((0.75 + 0 + 1) / 3)
    # not the pooled mean when problems have different sample counts
    assert avg_at_k([[1, 1], [0, 0, 0, 0]]) == pytest.approx(0.5)
    assert avg_at_k([]) == 0.0


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (4, 0, 2, 0.0),
        (4, 3, 2, 1.0),  # n - c < k: every draw of 2 holds a correct one
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (32, 5, 8, 1 - math.comb(27, 8) / math.comb(32, 8)),
    ],
)
def test_pass_at_k_one(n, c, k, expected):
    assert pass_at_k_one(n, c, k) == pytest.approx(expected)


def test_pass_at_k_mean_and_errors():
    # per problem with k=2: c=3 of 4 -> 1.0; c=0 -> 0.0; c=4 -> 1.0
    assert pass_at_k(CORRECT_PK, 2) == pytest.approx(2 / 3)
    assert pass_at_k(CORRECT_PK, 1) == pytest.approx(avg_at_k(CORRECT_PK))
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k_one(4, 1, 5)


def test_maj_at_k():
    answers = [["A", "B", "A"], ["1", None, "2"], [None, None, None]]
    correct = [[1, 0, 1], [0, 0, 1], [0, 0, 0]]
    # A wins (right); "1" and "2" tie, "1" seen first (wrong); no answers (wrong)
    assert maj_at_k(answers, correct) == pytest.approx(1 / 3)
    assert majority_answer(["x", "y", "y", "x"]) == "x"
    assert majority_answer([None, ""]) is None


def test_breakdown_per_category():
    rows = [
        {"metadata": {"source": "A", "skills": ["s1", "s2"]}},
        {"metadata": {"source": "A", "skills": ["s2"]}},
        {"metadata": {"source": "B", "skills": ["s1"]}},
    ]
    out = breakdown(rows, [1.0, 0.5, 0.0], ["source", "skills", "absent"])
    assert out["source"] == {
        "A": {"accuracy": 75.0, "total": 2},
        "B": {"accuracy": 0.0, "total": 1},
    }
    assert out["skills"] == {
        "s2": {"accuracy": 75.0, "total": 2},
        "s1": {"accuracy": 50.0, "total": 2},
    }
    assert "absent" not in out


def test_markdown_table_in_paper_layout():
    table = markdown_table(
        {"base": {"MATH500": 70.0, "AIME24": 16.4}, "MHPO": {"MATH500": 82.1}},
        ["MATH500", "AIME24"],
    )
    assert table.splitlines() == [
        "| method | MATH500 | AIME24 | avg |",
        "|---|---|---|---|",
        "| base | 70.0 | 16.4 | 43.2 |",
        "| MHPO | 82.1 | - | 82.1 |",
    ]
