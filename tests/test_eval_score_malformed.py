"""``mhpo-vl eval score`` on hostile or broken results files, through the real CLI.

Deeply nested JSON is refused in one line (Python's ``json`` recurses: 100,000 ``[``
used to end in ``RecursionError``). Each item's fields are checked: a malformed item
(a list where a string belongs, a missing ``answer``, a non-string ``response``, ...) is
named by its pid and counted, never scored; more than ``--max-malformed`` of them
(default 0.05) exits 2 with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mhpo_vl.cli import main
from mhpo_vl.errors import UserError
from mhpo_vl.eval.mathvista import MAX_MALFORMED, score_file

GOOD = {
    "question": "How many?",
    "choices": None,
    "unit": None,
    "precision": None,
    "answer": "3",
    "question_type": "free_form",
    "answer_type": "integer",
    "metadata": {"language": "english"},
    "response": "The answer is 3.",
}
CHOICE = {**GOOD, "choices": ["1", "3"], "question_type": "multi_choice", "answer_type": "text"}

# pid -> (malformed item, what the message must say)
MALFORMED = {
    "list_response": ({**GOOD, "response": ["The answer is 3."]}, "'response' must be a string"),
    "int_response": ({**GOOD, "response": 3}, "'response' must be a string"),
    "no_answer": ({k: v for k, v in GOOD.items() if k != "answer"}, "missing key 'answer'"),
    "list_answer": ({**GOOD, "answer": ["3"]}, "'answer' must be a string or number"),
    "list_question": ({**GOOD, "question": ["How", "many?"]}, "'question' must be a string"),
    "nested_choice": ({**CHOICE, "choices": ["1", ["3"]]}, "'choices' item 1 must be a string"),
    "string_choices": ({**CHOICE, "choices": "1, 3"}, "'choices' must be a list or null"),
    "bad_qtype": ({**GOOD, "question_type": "essay"}, "question_type 'essay' is not one of"),
    "bad_atype": ({**GOOD, "answer_type": 7}, "'answer_type' must be a string"),
    "bool_answer": ({**GOOD, "answer": True}, "'answer' must be a string or number"),
    "not_object": ("The answer is 3.", "item is not a JSON object"),
}


def _write(tmp_path: Path, data, name: str = "preds.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _run(*args: str) -> int:
    return main(["eval", "score", "mathvista", *args])


def _good(n: int) -> dict:
    return {str(i): {**GOOD, "pid": str(i)} for i in range(n)}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"1": {"response": ' + "[" * 100_000 + "]" * 100_000 + "}}",
        '{"1": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}",
    ],
    ids=["lists", "inside-an-item", "objects"],
)
def test_deeply_nested_json_is_refused_in_one_line(tmp_path, capsys, text):
    path = _write(tmp_path, text)
    assert _run(str(path), "--out-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "nested deeper than" in err


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path, capsys):
    data = _good(3)
    data["0"]["response"] = '[{"[' * 5_000 + ' \\" ]]] The answer is 3.'
    path = _write(tmp_path, data)
    assert _run(str(path), "--out-dir", str(tmp_path / "out")) == 0
    assert "accuracy 100.0% (3/3)" in capsys.readouterr().out


def test_deep_annotations_are_refused_too(tmp_path, capsys):
    preds = _write(tmp_path, {"1": {"response": "3"}})
    gold = _write(tmp_path, "[" * 100_000 + "]" * 100_000, "gold.json")
    assert _run(str(preds), "--out-dir", str(tmp_path / "o"), "--annotations", str(gold)) == 2
    assert "gold.json" in capsys.readouterr().err


def test_malformed_items_are_named_counted_and_not_scored(tmp_path, capsys):
    data = {**_good(40), **{pid: item for pid, (item, _) in MALFORMED.items()}}
    path = _write(tmp_path, data)
    out = tmp_path / "out"
    assert _run(str(path), "--out-dir", str(out), "--max-malformed", "0.5") == 0
    printed = capsys.readouterr().out
    assert "accuracy 100.0% (40/40)" in printed
    assert f"malformed items (not scored): {len(MALFORMED)} of {len(data)}" in printed
    scored = json.loads((out / "output.json").read_text())
    assert set(scored) == set(_good(40))
    _, summary = score_file(path, tmp_path / "again", max_malformed=1.0)
    named = dict(line.split(": ", 1) for line in summary.malformed)
    for pid, (_, message) in MALFORMED.items():
        assert message in named[f"pid {pid!r}"], (pid, named[f"pid {pid!r}"])


def test_more_than_max_malformed_exits_2_with_one_line(tmp_path, capsys):
    data = {**_good(17), "a": {**GOOD, "response": [1]}, "b": {**GOOD, "answer": None},
            "c": {**GOOD, "question": {"q": 1}}}  # fmt: skip
    path = _write(tmp_path, data)
    assert _run(str(path), "--out-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert "3 of 20 items are malformed (15.0%), over --max-malformed 0.05" in err
    assert "pid 'a'" in err and "pid 'b'" in err and "pid 'c'" in err
    assert not (tmp_path / "out" / "scores.json").exists()


def test_up_to_max_malformed_scores_the_rest(tmp_path, capsys):
    assert MAX_MALFORMED == 0.05
    data = {**_good(19), "x": {**GOOD, "response": {"text": "3"}}}  # 1 of 20: 5%
    path = _write(tmp_path, data)
    assert _run(str(path), "--out-dir", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "accuracy 100.0% (19/19)" in printed and "pid 'x'" in printed


def test_missing_or_null_response_is_still_scored_wrong_not_malformed(tmp_path, capsys):
    data = {**_good(2), "n": {**GOOD, "response": None}, "m": {**GOOD, "response": ""}}
    path = _write(tmp_path, data)
    assert _run(str(path), "--out-dir", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "accuracy 50.0% (2/4)" in printed and "malformed" not in printed


@pytest.mark.parametrize("value", ["-0.1", "1.5", "lots"])
def test_max_malformed_must_be_a_fraction(tmp_path, capsys, value):
    path = _write(tmp_path, _good(2))
    with pytest.raises(SystemExit) as info:
        _run(str(path), "--out-dir", str(tmp_path / "out"), "--max-malformed", value)
    assert info.value.code == 2
    assert "argument --max-malformed: must be a fraction in [0, 1]" in capsys.readouterr().err


def test_benchmark_files_are_read_with_bounded_depth(tmp_path):
    from mhpo_vl.eval.loaders import load_benchmark

    deep = _write(tmp_path, "[" * 100_000 + "]" * 100_000, "mathvista.json")
    with pytest.raises(UserError, match="nested deeper than"):
        load_benchmark("mathvista_testmini", source=str(deep), images=False)
    lines = _write(tmp_path, '{"pid": "1"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "m.jsonl")
    with pytest.raises(UserError, match="line 2: .*nested deeper than"):
        load_benchmark("mathvista_testmini", source=str(lines), images=False)


def test_report_reads_results_files_with_bounded_depth(tmp_path):
    from mhpo_vl.report import check_result, load_table

    deep = _write(tmp_path, "[" * 100_000 + "]" * 100_000, "results.json")
    value, why = check_result(deep, load_table("text_qwen2_5_7b"))
    assert value is None and why.startswith("unreadable (JSON nested deeper than 64 levels")
