"""Benchmarks registry, loaders on local files of the hub schema, and the runner with a
real generation callable (it answers the gold for every other problem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mhpo_vl.cli import main
from mhpo_vl.errors import UserError
from mhpo_vl.eval.benchmarks import (
    BENCHMARKS,
    choices_from_options,
    choices_from_text,
    letter_to_choice,
)
from mhpo_vl.eval.loaders import load_benchmark
from mhpo_vl.eval.runner import evaluate, write_results

REPO = Path(__file__).parents[1]
EXPECTED = {
    "mathvista_testmini",
    "mathverse_testmini",
    "mathvision_test",
    "mathvision_testmini",
    "wemath",
    "logicvista",
    "dynamath",
    "math500",
    "aime24",
    "aime25",
    "amc23",
    "hmmt25",
    "synthetic",
    "synthetic_text",
}


def test_registry_knows_every_benchmark_and_lists_them_on_error():
    assert EXPECTED <= set(BENCHMARKS.names())
    with pytest.raises(UserError, match="unknown benchmark 'mathvist'.*mathvista_testmini"):
        load_benchmark("mathvist")


def test_suites_and_paper_numbers_name_known_benchmarks():
    import yaml

    suites = yaml.safe_load((REPO / "eval" / "suites.yaml").read_text())
    for names in suites["suites"].values():
        assert set(names) <= set(BENCHMARKS.names())
    for path in sorted((REPO / "eval" / "paper").glob("*.yaml")):  # the paper's tables
        table = yaml.safe_load(path.read_text())
        assert set(table["columns"].values()) <= set(BENCHMARKS.names()), path.name


def test_choice_parsers():
    q = "Which is it?\nChoices:\nA:3\nB:4\nC:5"
    assert choices_from_text(q) == ["3", "4", "5"]
    assert choices_from_text("no choices here") is None
    assert choices_from_text("Pick. Choices: (A) up (B) down") == ["up", "down"]
    assert choices_from_options("A. 12 cm; B. 14 cm; C. 16 cm") == ["12 cm", "14 cm", "16 cm"]
    assert letter_to_choice("B", ["x", "y"]) == "y"
    assert letter_to_choice("7", ["x", "y"]) == "7"


def _png(path: Path, color: str) -> None:
    Image.new("RGB", (8, 8), color).save(path)


def test_mathvision_from_local_jsonl_with_image_paths(tmp_path):
    _png(tmp_path / "1.png", "red")
    records = [
        {
            "id": "1",
            "question": "Pick",
            "options": ["2", "3", "4"],
            "answer": "B",
            "image": "1.png",
            "subject": "algebra",
            "level": 1,
        },
        {
            "id": "2",
            "question": "Value?",
            "options": [],
            "answer": "7",
            "image": "1.png",
            "subject": "logic",
            "level": 2,
        },
    ]
    path = tmp_path / "mathvision.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    rows = load_benchmark("mathvision_testmini", source=str(path))
    assert rows[0]["answer"] == "3" and rows[0]["choices"] == ["2", "3", "4"]
    assert rows[1]["choices"] is None and rows[1]["question_type"] == "free_form"
    assert rows[0]["image"].size == (8, 8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**records[0], "image": "missing.png"}))
    with pytest.raises(UserError, match="row 0: image file not found: .*missing.png"):
        load_benchmark("mathvision_testmini", source=str(bad))


def test_mathvista_from_local_json_object_like_testmini(tmp_path):
    data = {
        "7": {
            "pid": "7",
            "question": "How many?",
            "choices": None,
            "unit": None,
            "precision": None,
            "answer": "3",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": {"source": "X"},
            "image": "images/7.png",
        },
    }
    (tmp_path / "images").mkdir()
    _png(tmp_path / "images" / "7.png", "blue")
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(data))
    rows = load_benchmark("mathvista_testmini", source=str(path))
    assert rows[0]["id"] == "7" and rows[0]["image"].mode == "RGB"
    assert "image" not in load_benchmark("mathvista_testmini", source=str(path), images=False)[0]


def test_text_benchmark_from_parquet(tmp_path):
    import datasets

    path = tmp_path / "math500.parquet"
    datasets.Dataset.from_list(
        [
            {"problem": "1+1?", "answer": "2", "unique_id": "a"},
            {"problem": "Half of 1?", "answer": "\\frac{1}{2}", "unique_id": "b"},
        ]
    ).to_parquet(str(path))
    rows = load_benchmark("math500", source=str(path))
    assert [r["id"] for r in rows] == ["a", "b"] and rows[1]["answer"] == "\\frac{1}{2}"


def test_hub_ids_fail_with_one_line_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # the HF_*_OFFLINE variables are read at import time; set the flags they set
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot load HuggingFaceH4/MATH-500 split 'test'"):
        load_benchmark("math500", limit=1)


def _dynamath_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "dynamath"
    folder.mkdir()
    _png(folder / "q.png", "green")
    for v in range(1, 11):
        records = [
            {
                "id": "1",
                "question": f"Area {v}?",
                "image": "q.png",
                "ground_truth": str(v),
                "answer_type": "float",
                "subject": "geometry",
                "knowledge_level": "high",
            },
            {
                "id": "2",
                "question": "Pick\nChoices:\n(A) up\n(B) down",
                "image": "q.png",
                "ground_truth": "B",
                "answer_type": "multiple choice",
                "subject": "graph",
                "knowledge_level": "low",
            },
        ]
        (folder / f"sample_variant{v}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return folder


def _gold_every_other(rows):
    """A generation callable: the gold answer for even rows, a wrong one for odd rows."""

    def generate(prompts, k):
        assert len(prompts) == len(rows)
        out = []
        for p, row in enumerate(rows):
            good = f"<think>easy</think><answer>{row['answer']}</answer>"
            out += [good if p % 2 == 0 else "<answer>wrong</answer>"] * k
        return out

    return generate


def test_evaluate_dynamath_average_and_worst_case(tmp_path):
    rows = load_benchmark("dynamath", source=str(_dynamath_dir(tmp_path)))
    assert len(rows) == 20 and rows[1]["choices"] == ["up", "down"]
    assert rows[1]["answer"] == "down"
    result = evaluate(_gold_every_other(rows), "dynamath", rows, k=2)
    # even rows (question 1, every variant) right, odd rows (question 2) wrong
    assert result["metrics"]["avg@2"] == pytest.approx(50.0)
    assert result["metrics"]["worst_case"] == pytest.approx(50.0)
    assert result["metrics"]["n_groups"] == 2
    assert result["breakdown"]["subject"]["geometry"]["accuracy"] == 100.0


def test_evaluate_and_write_results_records_settings(tmp_path):
    rows = [
        {"id": "a", "question": "1+1?", "answer": "2", "choices": None},
        {"id": "b", "question": "2+2?", "answer": "4", "choices": None},
        {"id": "c", "question": "Half?", "answer": "\\frac{1}{2}", "choices": None},
    ]
    settings = {"model": {"path": "m", "revision": "abc"}, "decoding": {"temperature": 1.0}}
    result = evaluate(_gold_every_other(rows), "math500", rows, k=3, settings=settings)
    m = result["metrics"]
    assert m["avg@3"] == pytest.approx(200 / 3) and m["pass@3"] == pytest.approx(200 / 3)
    assert m["maj@3"] == pytest.approx(200 / 3)
    assert result["problems"][2]["predictions"] == ["\\frac{1}{2}"] * 3
    path = write_results(result, tmp_path, rows)
    saved = json.loads(path.read_text())
    assert saved["settings"]["model"] == {"path": "m", "revision": "abc"}
    assert saved["settings"]["k"] == 3 and saved["settings"]["template"] == "boxed"
    assert len((tmp_path / "math500" / "samples.jsonl").read_text().splitlines()) == 3


def test_evaluate_mathvista_writes_official_layout(tmp_path):
    item = {
        "question": "How many?",
        "choices": None,
        "unit": None,
        "precision": None,
        "question_type": "free_form",
        "answer_type": "integer",
        "metadata": {"language": "english", "skills": ["counting"]},
    }
    rows = [{**item, "id": str(i), "pid": str(i), "answer": str(i)} for i in range(4)]
    result = evaluate(_gold_every_other(rows), "mathvista_testmini", rows, k=1)
    assert result["settings"]["template"] == "mathvista_query"
    write_results(result, tmp_path, rows)
    scores = json.loads((tmp_path / "mathvista_testmini" / "scores.json").read_text())
    assert scores["average"] == {"accuracy": "50.0", "correct": 2, "total": 4}
    output = json.loads((tmp_path / "mathvista_testmini" / "output.json").read_text())
    assert output["0"]["true_false"] is True and output["1"]["true_false"] is False
    assert scores["refusals"] == {"count": 0, "total": 4, "fraction": 0.0, "pids": []}
    assert result["metrics"]["refusals"] == 0.0


def test_evaluate_mathvista_counts_refusals(tmp_path):
    """A refusal scores 0 and is counted, per sample in the metrics and per item (first
    sample) in scores.json, as ``eval score`` counts them; the other scorers have no
    refusal count."""
    choices = ["Population will decrease", "Population will increase"]
    rows = [
        {"id": str(i), "pid": str(i), "question": "What happens to the fish?", "unit": None,
         "choices": choices, "answer": choices[0], "precision": None,
         "question_type": "multi_choice", "answer_type": "text", "metadata": {}}
        for i in range(2)
    ]  # fmt: skip
    said = {"0": ["The answer cannot be determined from the image.", "(A)"],
            "1": ["(A)", "There is not enough information to decide."]}  # fmt: skip

    def generate(prompts, k):
        return [text for row in rows for text in said[row["id"]]]

    result = evaluate(generate, "mathvista_testmini", rows, k=2)
    assert [p["refusals"] for p in result["problems"]] == [[True, False], [False, True]]
    assert [p["scores"] for p in result["problems"]] == [[0.0, 1.0], [1.0, 0.0]]
    assert result["metrics"]["refusals"] == 50.0 and result["metrics"]["avg@2"] == 50.0
    write_results(result, tmp_path, rows)
    scores = json.loads((tmp_path / "mathvista_testmini" / "scores.json").read_text())
    assert scores["refusals"] == {"count": 1, "total": 2, "fraction": 0.5, "pids": ["0"]}
    assert scores["average"]["correct"] == 1
    plain = [{"id": "a", "question": "1+1?", "answer": "2", "choices": None}]
    assert "refusals" not in evaluate(_gold_every_other(plain), "math500", plain)["metrics"]


def test_generate_fn_must_return_k_per_prompt():
    rows = [{"id": "a", "question": "q", "answer": "1", "choices": None}]
    with pytest.raises(RuntimeError, match="returned 1 completions for 1 prompts x k=2"):
        evaluate(lambda prompts, k: ["x"], "math500", rows, k=2)


def test_synthetic_benchmark_is_loaded_lazily():
    pytest.importorskip("mhpo_vl.data.synthetic")
    rows = load_benchmark("synthetic_text", limit=4)
    assert len(rows) == 4 and all(r["answer"] for r in rows)
    result = evaluate(_gold_every_other(rows), "synthetic_text", rows, k=1)
    assert result["metrics"]["avg@1"] == pytest.approx(50.0)


def test_cli_run_rejects_unknown_benchmark_before_loading_a_model(capsys):
    code = main(
        ["eval", "run", "--model", "nowhere", "--benchmarks", "math500,nope", "--out-dir", "unused"]
    )
    assert code == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_eval_run_with_the_real_engine_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mhpo_vl.rollout.hf")
    monkeypatch.setenv("MHPO_VL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(
        [
            "eval",
            "run",
            "--model",
            "embedded:tiny-text?sft_steps=0",
            "--benchmarks",
            "synthetic_text",
            "--limit",
            "4",
            "--k",
            "2",
            "--max-new-tokens",
            "4",
            "--dtype",
            "float32",
            "--revision",
            "r1",
            "--out-dir",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "synthetic_text" / "results.json").read_text())
    assert saved["settings"]["model"]["revision"] == "r1"
    assert saved["settings"]["decoding"]["max_new_tokens"] == 4
    assert saved["settings"]["k"] == 2 and saved["settings"]["n_problems"] == 4
    problems = (out / "synthetic_text" / "samples.jsonl").read_text().splitlines()
    assert [len(json.loads(p)["responses"]) for p in problems] == [2, 2, 2, 2]
    assert (out / "table.md").read_text().startswith("| method | synthetic_text | avg |")


def test_every_hub_entry_records_its_card_and_reads_only_card_columns():
    for name in BENCHMARKS:
        bench = BENCHMARKS.get(name)
        if bench.loader is not None:
            continue
        assert bench.card_columns and bench.verified, name
        assert "2026-11-25" in bench.verified, name
        assert set(bench.columns.values()) <= set(bench.card_columns), name
        if bench.image_column:
            assert bench.image_column in bench.card_columns, name


def _parquet(path: Path, records: list[dict], features: dict) -> str:
    import datasets

    datasets.Dataset.from_list(records, features=datasets.Features(features)).to_parquet(str(path))
    return str(path)


def test_amc23_card_schema_float_answer_reads_as_the_integer(tmp_path):
    from datasets import Value

    features = {
        "id": Value("int64"),
        "problem": Value("string"),
        "answer": Value("float64"),
        "url": Value("string"),
        "question": Value("string"),
    }
    records = [
        {"id": 0, "problem": "p0", "answer": 27.0, "url": "u", "question": "How many?"},
        {"id": 1, "problem": "p1", "answer": 0.5, "url": "u", "question": "Half?"},
    ]
    rows = load_benchmark("amc23", source=_parquet(tmp_path / "t.parquet", records, features))
    assert [(r["id"], r["question"], r["answer"]) for r in rows] == [
        ("0", "How many?", "27"),
        ("1", "Half?", "0.5"),
    ]
    assert rows[0]["question_type"] == "free_form" and rows[0]["choices"] is None


def test_hmmt25_card_schema(tmp_path):
    from datasets import Sequence, Value

    features = {
        "problem_idx": Value("int64"),
        "problem": Value("string"),
        "answer": Value("string"),
        "problem_type": Sequence(Value("string")),
    }
    records = [{"problem_idx": 1, "problem": "Compute 9!", "answer": "362880", "problem_type": []}]
    rows = load_benchmark("hmmt25", source=_parquet(tmp_path / "t.parquet", records, features))
    assert (rows[0]["id"], rows[0]["question"], rows[0]["answer"]) == ("1", "Compute 9!", "362880")


def test_wemath_card_schema_with_image_feature(tmp_path):
    from datasets import Image as ImageFeature
    from datasets import Value

    cols = ("ID", "split", "knowledge concept", "question", "option", "answer", "key")
    features = {c: Value("string") for c in cols}
    features |= {"image_path": ImageFeature(), "question number": Value("int64")}
    features["knowledge concept description"] = Value("string")
    record = {
        "ID": "1-1",
        "split": "testmini",
        "knowledge concept": "Area",
        "question": "Which?",
        "option": "A. 12 cm; B. 14 cm",
        "answer": "B",
        "key": "2steps_1",
        "image_path": Image.new("RGB", (8, 8), "red"),
        "question number": 1,
        "knowledge concept description": "d",
    }
    rows = load_benchmark("wemath", source=_parquet(tmp_path / "t.parquet", [record], features))
    assert rows[0]["id"] == "1-1" and rows[0]["choices"] == ["12 cm", "14 cm"]
    assert rows[0]["answer"] == "14 cm" and rows[0]["image"].size == (8, 8)
    assert rows[0]["metadata"] == {"knowledge concept": "Area", "key": "2steps_1"}
