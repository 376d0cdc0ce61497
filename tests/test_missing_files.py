"""A missing file reads the same from ``train``, ``eval`` and ``report``: one line,

    <what> not found: <path> (<where the path came from>); <what to do>

(after the recipe's path, for a path that a recipe key gave), exit code 2, through the
real CLI entry (:func:`mhpo_vl.cli.main`).
"""

from __future__ import annotations

import json
import re

import pytest

from mhpo_vl.cli import main

SHAPE = re.compile(
    r"^mhpo-vl: error: (?:(?P<recipe>\S+\.yaml): )?(?P<what>[a-z][\w ]*) not found: "
    r"(?P<path>.+?) \((?P<where>[^()]+)\); (?P<fix>\S.+)\n$"
)
TINY = "recipes/tiny/mhpo.yaml"


def _cases(tmp):
    """(command line, what, path, where, recipe prefix or None) per missing file."""
    gone = tmp / "gone"
    preds = tmp / "preds.json"
    preds.write_text(json.dumps({"1": {"response": "3"}}))
    run = [f"trainer.output_dir={tmp / 'run'}"]
    return {
        "train-recipe": (["train", str(gone / "r.yaml")], "recipe file", gone / "r.yaml",
                         "the RECIPE argument", None),
        "validate-recipe": (["validate", str(gone / "r.yaml")], "recipe file", gone / "r.yaml",
                            "the RECIPE argument", None),
        "train-data": (["train", TINY, f"data.train.source={gone / 'train.jsonl'}", *run],
                       "dataset", gone / "train.jsonl", "data.train.source", TINY),
        "train-data-relative": (["train", TINY, "data.eval.source=gone/test.parquet", *run],
                                "dataset", "gone/test.parquet", "data.eval.source", TINY),
        "train-model": (["train", TINY, f"model.path={gone / 'model'}", *run], "model",
                        gone / "model", "model.path or --model", None),
        "eval-score-predictions": (["eval", "score", "mathvista", str(gone / "p.json"),
                                    "--out-dir", str(tmp / "o")], "predictions file",
                                   gone / "p.json", "PREDICTIONS argument", None),
        "eval-score-annotations": (["eval", "score", "mathvista", str(preds), "--out-dir",
                                    str(tmp / "o"), "--annotations", str(gone / "t.json")],
                                   "annotations file", gone / "t.json", "--annotations", None),
        "eval-run-checkpoint": (["eval", "run", "--model", str(gone / "checkpoint-9"),
                                 "--benchmarks", "math500", "--out-dir", str(tmp / "o")],
                                "model", gone / "checkpoint-9", "model.path or --model", None),
        "eval-run-data": (["eval", "run", "--model", str(gone / "checkpoint-9"), "--benchmarks",
                           "math500", "--data", f"math500={gone / 'math500.jsonl'}",
                           "--out-dir", str(tmp / "o")], "benchmark data",
                          gone / "math500.jsonl", "--data math500=...", None),
        "report-results-root": (["report", "text_qwen2_5_7b", "--results-root", str(gone),
                                 "--out", str(tmp / "rep")], "results folder", gone,
                                "--results-root", None),
    }  # fmt: skip


CASES = [
    "train-recipe", "validate-recipe", "train-data", "train-data-relative", "train-model",
    "eval-score-predictions", "eval-score-annotations", "eval-run-checkpoint",
    "eval-run-data", "report-results-root",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_missing_file_is_one_line_of_one_shape(tmp_path, capsys, case):
    argv, what, path, where, recipe = _cases(tmp_path)[case]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    m = SHAPE.match(err)
    assert m, err
    assert m["what"] == what and m["path"] == str(path) and m["where"] == where, err
    assert m["recipe"] == recipe, err
    assert "Traceback" not in err and "[Errno" not in err


def test_report_names_a_tables_missing_recipe(tmp_path):
    from mhpo_vl.errors import UserError
    from mhpo_vl.report import ROOT, TABLES_DIR, write_report

    table = (TABLES_DIR / "ablations.yaml").read_text(encoding="utf-8")
    first = re.search(r"recipe: (\S+)", table)[1]
    (tmp_path / "ablations.yaml").write_text(table.replace(first, "recipes/paper/gone.yaml"))
    with pytest.raises(UserError) as info:
        write_report("ablations", tmp_path, tmp_path / "out", tables_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"recipe file not found: {ROOT / 'recipes/paper/gone.yaml'} (")
    assert "ablations.yaml" in message and "make_recipes.py" in message
