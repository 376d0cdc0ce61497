"""Two strictness levels, one module: MathVista evaluation reads a response the way the
official pipeline does (and falls back as it does), training rewards never guess. Both
`eval run` (through the benchmark's scorer) and `eval score` (through --fallback)."""

from __future__ import annotations

import json

from test_eval_corpus import MC_ROW

from mhpo_vl.cli import main
from mhpo_vl.eval.benchmarks import BENCHMARKS
from mhpo_vl.eval.runner import evaluate, score_response
from mhpo_vl.rewards import REWARDS

YES_NO = {**MC_ROW, "id": "7", "pid": "7", "unit": None}
# the shortest choice is where the official scorer puts an empty extraction
SHORT_FIRST = {**YES_NO, "id": "8", "pid": "8", "choices": ["no", "maybe so"], "answer": "no"}
STATEMENT = "Based on the image, Periwinkle is not the maximum."
REFUSAL = ""


def test_mathvista_is_scored_the_official_way_in_eval_run():
    bench = BENCHMARKS.get("mathvista_testmini")
    assert bench.scorer == "mathvista" and "mathvista" not in REWARDS
    assert score_response(STATEMENT, YES_NO, "mathvista") == ("no", 1.0)
    assert score_response(STATEMENT, YES_NO, "accuracy")[1] == 0.0  # a reward never guesses
    assert REWARDS.get("accuracy")(STATEMENT, YES_NO) == 0.0
    result = evaluate(lambda prompts, k: [STATEMENT] * (len(prompts) * k), bench, [YES_NO], k=2)
    assert result["metrics"]["avg@2"] == 100.0 and result["settings"]["scorer"] == "mathvista"


def test_an_abstention_falls_back_as_the_official_scorer_does():
    assert score_response(REFUSAL, SHORT_FIRST, "mathvista") == ("no", 1.0)
    assert score_response(REFUSAL, SHORT_FIRST, "accuracy") == (None, 0.0)


def test_eval_score_fallback_flag(tmp_path, capsys):
    items = {"8": {**SHORT_FIRST, "response": REFUSAL}, "7": {**YES_NO, "response": STATEMENT}}
    path = tmp_path / "output.json"
    path.write_text(json.dumps(items))
    lines = {}
    for fallback in ("official", "none"):
        out = tmp_path / fallback
        code = main(["eval", "score", "mathvista", str(path), "--out-dir", str(out),
                     "--fallback", fallback])  # fmt: skip
        assert code == 0
        lines[fallback] = capsys.readouterr().out.splitlines()[0]
    assert lines["official"] == "accuracy 100.0% (2/2)"
    assert lines["none"] == "accuracy 0.0% (0/2)"


def test_eval_run_prints_the_refusal_share(monkeypatch, capsys):
    """`eval run` prints each benchmark's metrics and, for MathVista, the share of
    samples that were refusals (scored 0)."""
    import mhpo_vl.eval.runner as runner

    results = [
        {"benchmark": "mathvista_testmini",
         "metrics": {"avg@2": 50.0, "pass@1": 50.0, "pass@2": 50.0, "maj@2": 50.0,
                     "refusals": 25.0}},
        {"benchmark": "math500", "metrics": {"avg@1": 10.0, "pass@1": 10.0}},
    ]  # fmt: skip
    monkeypatch.setattr(runner, "run_eval", lambda *a, **kw: results)
    argv = ["eval", "run", "--model", "m", "--benchmarks", "mathvista_testmini,math500",
            "--out-dir", "unused"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("maj@2 50.00  refusals 25.0% of samples (scored 0)")
    assert lines[1].endswith("pass@1 10.00")
