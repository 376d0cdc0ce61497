"""The dataset-preparation scripts in data/: run on the hub-schema fixtures in
data/fixtures (``--from-local``, no network), their output read back through the
trainer's own loader, and their errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
FIX = DATA / "fixtures"
sys.path.insert(0, str(DATA))

import prep_common  # noqa: E402
import prepare_geometry3k as g3k  # noqa: E402
import prepare_math as pmath  # noqa: E402
import prepare_mathvista_mix as mix  # noqa: E402

from mhpo_vl.config import DatasetSpec  # noqa: E402
from mhpo_vl.data import load_problems  # noqa: E402


def load(path: Path) -> list[dict]:
    """Every row of a written file, through the trainer's loader; none may be bad."""
    problems = load_problems(DatasetSpec(source=str(path)), "data.test", max_bad_frac=0.0)
    rows = problems.valid_rows()
    assert problems.bad_rows == []
    return rows


def fixture_png(folder: str, name: str):
    from PIL import Image

    with Image.open(FIX / folder / "images" / name) as img:
        return img.convert("RGB")


def same_pixels(a, b) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


# ---------------------------------------------------------------- geometry3k


def test_geometry3k_script_writes_rows_the_loader_reads(tmp_path):
    out = tmp_path / "g3k"
    proc = run_script(
        "data/prepare_geometry3k.py", "--out", str(out), "--from-local", str(FIX / "geometry3k")
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: wrote 3 rows" in proc.stdout
    assert "dropped 1 of 4 rows: missing_answer 1 (e.g. geometry3k-train-3)" in proc.stdout
    assert "test: wrote 2 rows" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet"]

    train = load(out / "train.parquet")
    assert [r["id"] for r in train] == [f"geometry3k-train-{i}" for i in range(3)]
    assert [r["answer"] for r in train] == ["5", "12", "1"]
    assert train[0]["question"] == "Find x. The legs are 3 and 4."  # <image> removed
    assert all(r["choices"] is None and r["task"] == "geometry3k" for r in train)
    for i, row in enumerate(train):
        assert same_pixels(row["image"], fixture_png("geometry3k", f"train_{i}.png"))
    test = load(out / "test.parquet")
    assert [r["answer"] for r in test] == ["10", "4"]


def hub_style_copy(tmp_path: Path) -> Path:
    """The geometry3k fixture as the hub stores it: parquet shards under data/, the
    ``images`` column a list of ``datasets.Image`` (bytes inside the file)."""
    import datasets

    feats = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "problem": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    repo = tmp_path / "hub_geometry3k"
    for split in ("train", "test"):
        src = prep_common.read_local(FIX / "geometry3k", split)
        records = [
            {**r, "images": [{"bytes": (FIX / "geometry3k" / p).read_bytes()} for p in r["images"]]}
            for r in src.records
        ]
        path = repo / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(records, features=feats).to_parquet(str(path))
    return repo


def test_geometry3k_from_a_hub_layout_and_from_its_parquet_files(tmp_path):
    repo = hub_style_copy(tmp_path)
    # the download path, pointed at a local folder laid out as the hub repo is
    src = prep_common.read_hub(str(repo), "train")
    assert sorted(src.columns) == ["answer", "images", "problem"]
    rows, drops = g3k.convert_geometry3k(src.records, src.columns, "train")
    assert [r["answer"] for r in rows] == ["5", "12", "1"] and drops.reasons == {
        "missing_answer": 1
    }
    # --limit streams the first rows only
    src = prep_common.read_hub(str(repo), "train", limit=2)
    rows, drops = g3k.convert_geometry3k(src.records, src.columns, "train")
    assert len(rows) == 2 and drops.total == 2
    # --from-local on the parquet files themselves (images as {bytes, path})
    local = tmp_path / "local"
    local.mkdir()
    for split in ("train", "test"):
        (local / f"{split}.parquet").write_bytes(
            (repo / "data" / f"{split}-00000-of-00001.parquet").read_bytes()
        )
    g3k.main(["--out", str(tmp_path / "out"), "--from-local", str(local)])
    train = load(tmp_path / "out" / "train.parquet")
    assert [r["answer"] for r in train] == ["5", "12", "1"]
    assert same_pixels(train[2]["image"], fixture_png("geometry3k", "train_2.png"))


def test_geometry3k_takes_decoded_images_and_limit(tmp_path):
    src = prep_common.read_local(FIX / "geometry3k", "train")
    decoded = [
        {**r, "images": [fixture_png("geometry3k", Path(r["images"][0]).name)]} for r in src.records
    ]
    rows, _ = g3k.convert_geometry3k(decoded, src.columns, "train")
    assert len(rows) == 3
    assert isinstance(rows[0]["image"]["bytes"], bytes)
    lines = g3k.main(
        ["--out", str(tmp_path), "--from-local", str(FIX / "geometry3k"), "--limit", "2"]
    )
    assert lines[0].startswith("train: wrote 2 rows")
    assert len(load(tmp_path / "train.parquet")) == 2


def test_geometry3k_drops_rows_without_one_usable_image(tmp_path):
    good = prep_common.read_local(FIX / "geometry3k", "train").records[0]
    records = [
        {**good, "images": []},
        {**good, "images": [good["images"][0], good["images"][0]]},
        {**good, "images": ["images/nowhere.png"]},
        {**good, "images": [{"bytes": b"not an image", "path": None}]},
        good,
    ]
    rows, drops = g3k.convert_geometry3k(records, list(good), "train", FIX / "geometry3k")
    assert len(rows) == 1 and rows[0]["id"] == "geometry3k-train-4"
    assert drops.reasons == {
        "no_image": 1,
        "multiple_images": 1,
        "image_not_found": 1,
        "unreadable_image": 1,
    }
    assert drops.summary().startswith("dropped 4 of 5 rows")


def test_missing_column_is_a_clear_error(tmp_path):
    with pytest.raises(prep_common.MissingColumnError, match="missing column 'problem'"):
        g3k.convert_geometry3k([], ["images", "answer"], "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        (bad / f"{split}.jsonl").write_text(json.dumps({"images": [], "answer": "1"}) + "\n")
    proc = run_script(
        "data/prepare_geometry3k.py", "--out", str(tmp_path / "o"), "--from-local", str(bad)
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad / 'train.jsonl'}: missing column 'problem' (columns: images, answer); "
        "expected images, problem, answer"
    ]
    assert not (tmp_path / "o").exists()


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert (
        prep_common.run_main(g3k.main, ["--out", str(tmp_path), "--from-local", str(missing)]) == 2
    )
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prep_common.run_main(g3k.main, ["--out", str(tmp_path), "--from-local", str(empty)]) == 2
    assert "no train.parquet or train.jsonl or train.json" in capsys.readouterr().err
    assert prep_common.run_main(g3k.main, ["--limit", "0"]) == 2
    assert "--limit: must be >= 1" in capsys.readouterr().err
    argv = ["--out", str(tmp_path), "--from-local", str(FIX), "--sources", "geometry3k,mathvista"]
    assert prep_common.run_main(mix.main, argv) == 2
    assert "--sources: unknown ['mathvista']" in capsys.readouterr().err


# ---------------------------------------------------------------- the MathVista-style mix


def test_mathvista_mix_writes_three_sources(tmp_path):
    out = tmp_path / "mix"
    lines = mix.main(
        [
            "--out", str(out), "--from-local", str(FIX),
            "--exclude-questions", str(FIX / "eval_questions.jsonl"),
        ]
    )  # fmt: skip
    assert "dropped 4 of 10 rows" in lines[0]
    for reason in (
        "missing_answer 1",
        "multiple_answers 1",
        "in_eval_set 1",
        "answer_out_of_range 1",
    ):
        assert reason in lines[0]
    assert lines[0].endswith("[geometry3k 3, chartqa 1, scienceqa 2]")
    train = load(out / "train.parquet")
    by_id = {r["id"]: r for r in train}
    assert [r["task"] for r in train] == ["geometry3k"] * 3 + ["chartqa"] + ["scienceqa"] * 2
    assert "chartqa-train-1" not in by_id  # its question is in the evaluation set
    chart = by_id["chartqa-train-0"]
    assert (chart["question"], chart["answer"], chart["choices"]) == (
        "What is the value of the tallest bar?", "34", None,
    )  # fmt: skip
    assert same_pixels(chart["image"], fixture_png("chartqa", "train_0.png"))
    sci = by_id["scienceqa-train-0"]
    assert sci["question"] == "Context: Look at the picture.\nWhich color is the disc?"
    assert (sci["answer"], sci["choices"]) == ("red", ["red", "blue"])
    assert by_id["scienceqa-train-1"]["answer"] == "circle"
    test = load(out / "test.parquet")
    assert len(test) == 6 and {r["task"] for r in test} == {"geometry3k", "chartqa", "scienceqa"}


def test_mathvista_mix_caps_each_source_reproducibly():
    splits = {name: prep_common.read_local(FIX / name, "train") for name in mix.SOURCES}
    rows, _, counts = mix.build_mix(splits, "train", per_source=1, seed=3)
    assert counts == {"geometry3k": 1, "chartqa": 1, "scienceqa": 1}
    splits = {name: prep_common.read_local(FIX / name, "train") for name in mix.SOURCES}
    again, _, _ = mix.build_mix(splits, "train", per_source=1, seed=3)
    assert [r["id"] for r in rows] == [r["id"] for r in again]


def test_mix_sources_are_not_evaluation_sets():
    from mhpo_vl.eval.benchmarks import BENCHMARKS

    eval_hubs = {BENCHMARKS.get(name).hub_id for name in BENCHMARKS.names()}
    assert "AI4Math/MathVista" in eval_hubs
    for module in (mix, pmath):
        for name, src in module.SOURCES.items():
            assert src.hub_id not in eval_hubs, name
    assert g3k.HUB_ID not in eval_hubs


def test_mix_source_missing_a_column(tmp_path):
    with pytest.raises(prep_common.MissingColumnError, match="missing column 'label'"):
        mix.convert_chartqa([], ["image", "query"], "train")
    with pytest.raises(prep_common.MissingColumnError, match="missing column 'choices'"):
        mix.convert_scienceqa([], ["image", "question", "answer"], "train")


# ---------------------------------------------------------------- text math


def test_math_script_writes_math_and_gsm8k(tmp_path):
    lines = pmath.main(
        ["--out", str(tmp_path), "--from-local", str(FIX), "--sources", "math,gsm8k"]
    )
    assert "dropped 2 of 7 rows" in lines[0]
    assert "no_boxed_answer 1 (e.g. math-train-3)" in lines[0]
    assert "no_final_answer 1 (e.g. gsm8k-train-2)" in lines[0]
    train = load(tmp_path / "train.parquet")
    assert [r["answer"] for r in train] == ["5", "\\frac{1}{2}", "3", "7", "1000"]
    assert [r["task"] for r in train] == ["math/prealgebra"] * 2 + ["math/algebra"] + ["gsm8k"] * 2
    assert all(r["image"] is None for r in train)
    assert train[3]["question"].startswith("Ann has 3 apples")
    assert len(load(tmp_path / "test.parquet")) == 4
    pmath.main(["--out", str(tmp_path / "small"), "--from-local", str(FIX), "--test-size", "1"])
    assert [r["answer"] for r in load(tmp_path / "small" / "test.parquet")] in (["42"], ["4"])


def test_math_answers_are_extracted():
    assert pmath.last_boxed("so $\\boxed{\\frac{1}{2}}$ and") == "\\frac{1}{2}"
    assert pmath.last_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert pmath.last_boxed("it is \\fbox{7}.") == "7"
    assert pmath.last_boxed("$\\boxed 5$") == "5"
    assert pmath.last_boxed("\\boxed{unbalanced") is None
    assert pmath.last_boxed("no answer") is None
    assert pmath.gsm8k_final("work\n#### 1,234") == "1234"
    assert pmath.gsm8k_final("no marker") is None
    with pytest.raises(prep_common.MissingColumnError, match="missing column 'solution'"):
        pmath.convert_math([], ["problem", "level", "type"], "train")
