"""``mhpo-vl eval score mathvista`` through the real CLI entry: the agreement with the
file's own ``true_false`` is printed when (and only when) the file carries it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mhpo_vl.cli import main

FREE = {
    "question": "How many?",
    "choices": None,
    "unit": None,
    "precision": None,
    "question_type": "free_form",
    "answer_type": "integer",
    "metadata": {"language": "english"},
}
CHOICE = {
    **FREE,
    "question": "Which way?",
    "choices": ["up", "down"],
    "question_type": "multi_choice",
    "answer_type": "text",
}

# pid -> (item, response, the file's true_false); ours follows from the response
ITEMS = {
    "1": (FREE, "3", "The answer is \\boxed{3}.", True),  # ours right: agree
    "2": (FREE, "5", "The answer is \\boxed{4}.", True),  # ours wrong: disagree
    "3": (CHOICE, "down", "The answer is \\boxed{down}.", False),  # ours right: disagree
    "4": (CHOICE, "up", "The answer is \\boxed{down}.", False),  # ours wrong: agree
    "5": (FREE, "7", "The answer is \\boxed{7}.", None),  # no true_false: left out
}


def _write(tmp_path: Path, with_true_false: bool) -> Path:
    data = {}
    for pid, (base, answer, response, verdict) in ITEMS.items():
        item = {**base, "pid": pid, "answer": answer, "response": response}
        if with_true_false and verdict is not None:
            item["true_false"] = verdict
        data[pid] = item
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(data))
    return path


def _score(path: Path, out: Path, capsys) -> str:
    code = main(["eval", "score", "mathvista", str(path), "--out-dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_score_prints_agreement_with_the_files_true_false(tmp_path, capsys):
    out = tmp_path / "out"
    printed = _score(_write(tmp_path, True), out, capsys)
    ours = json.loads((out / "output.json").read_text())
    assert [ours[p]["true_false"] for p in "12345"] == [True, False, True, False, True]
    assert "accuracy 60.0% (3/5)" in printed
    line = next(x for x in printed.splitlines() if x.startswith("agreement"))
    assert line == (
        "agreement with the file's true_false: 2/4 (50.0%) "
        "(multi_choice 1/2 (50.0%), free_form 1/2 (50.0%))"
    )
    hint = next(x for x in printed.splitlines() if x.startswith("disagreements"))
    assert re.match(r"disagreements: 2 \(pids 2, 3\); compare 'extraction'", hint)
    assert str(out / "output.json") in hint


def test_score_without_true_false_prints_no_agreement(tmp_path, capsys):
    printed = _score(_write(tmp_path, False), tmp_path / "out", capsys)
    assert "accuracy 60.0% (3/5)" in printed
    assert "agreement" not in printed and "disagreements" not in printed


def test_full_agreement_prints_no_disagreement_line(tmp_path, capsys):
    path = tmp_path / "predictions.json"
    item = {**FREE, "pid": "1", "answer": "3", "response": "\\boxed{3}", "true_false": True}
    path.write_text(json.dumps({"1": item}))
    printed = _score(path, tmp_path / "out", capsys)
    assert "agreement with the file's true_false: 1/1 (100.0%) (free_form 1/1 (100.0%))" in printed
    assert "disagreements" not in printed
