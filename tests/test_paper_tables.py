"""The paper's tables as data (eval/paper/), the recipes behind their rows
(recipes/paper/, written by recipes/paper/make_recipes.py), scripts/reproduce.py's plan
and ``mhpo-vl report``. Nothing is trained or downloaded; the only subprocesses are
``reproduce.py`` runs that stop before running anything.

Data paths. The recipes read files a data/prepare_*.py script writes (data/math/,
data/geometry3k/), absent in a fresh checkout, so validation runs those scripts on
their fixtures (data/fixtures) into a temporary folder and overrides the data sources,
as tests/test_recipes_real.py does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "eval" / "paper"
RECIPES = ROOT / "recipes" / "paper"
FIX = ROOT / "data" / "fixtures"
SCRIPT = ROOT / "scripts" / "reproduce.py"
TABLES = ["ablations", "text_qwen2_5_7b", "text_qwen3_4b_base", "vision_qwen2_5_vl_7b"]
PAPER_RECIPES = sorted(RECIPES.glob("*.yaml"))
TEXT = ["math500", "hmmt25", "amc23", "aime25", "aime24"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_recipes():
    return _load("paper_make_recipes", RECIPES / "make_recipes.py")


@pytest.fixture(scope="module")
def reproduce():
    return _load("paper_reproduce", SCRIPT)


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def table(name: str) -> dict:
    return raw(PAPER / f"{name}.yaml")


def recipe_rows(name: str) -> dict[str, dict]:
    """row -> recipe tree, for the rows of a table that train."""
    return {k: raw(ROOT / r["recipe"]) for k, r in table(name)["rows"].items() if r["recipe"]}


def without(tree: dict, *dotted: str) -> dict:
    tree = json.loads(json.dumps(tree))
    for key in dotted:
        *parents, last = key.split(".")
        node = tree
        for p in parents:
            node = node[p]
        node.pop(last)
    return tree


# --------------------------------------------------------------------------- the recipes


def test_committed_recipes_are_what_the_script_writes(make_recipes):
    expected = make_recipes.expected_files()
    assert sorted(expected) == PAPER_RECIPES
    for path, text in expected.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: python recipes/paper/make_recipes.py"
        )
    for t in make_recipes.TABLES:
        for r in t.rows:  # the uniform YAML reads back as the tree it was written from
            text = (ROOT / make_recipes.recipe_path(t.key, r.key)).read_text(encoding="utf-8")
            assert yaml.safe_load(text) == make_recipes.build(t, r)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """data/<name> -> the same files written from the fixtures into a temporary folder."""
    sys.path.insert(0, str(ROOT / "data"))
    import prepare_geometry3k
    import prepare_math

    base = tmp_path_factory.mktemp("prepared")
    prepare_math.main(["--out", str(base / "math"), "--from-local", str(FIX)])
    prepare_geometry3k.main(
        ["--out", str(base / "geometry3k"), "--from-local", str(FIX / "geometry3k")]
    )
    return {"data/math": base / "math", "data/geometry3k": base / "geometry3k"}


def test_every_paper_recipe_validates_offline(prepared):
    from mhpo_vl.validation import load_recipe

    assert len(PAPER_RECIPES) == 20
    for path in PAPER_RECIPES:
        cfg = raw(path)
        overrides = []
        for split in ("train", "eval"):
            source = Path(cfg["data"][split]["source"])
            target = prepared[source.parent.as_posix()] / source.name
            assert target.is_file(), f"{path.name}: {source} is not what its prep script writes"
            overrides.append(f"data.{split}.source={target}")
        recipe = load_recipe(path, overrides)
        assert recipe.name == cfg["name"] == f"paper_{path.stem}"
        assert recipe.trainer.output_dir == f"runs/{cfg['name']}"


@pytest.mark.parametrize("name", TABLES)
def test_rows_of_a_table_differ_only_in_name_output_dir_and_algorithm(name):
    trees = recipe_rows(name)
    if name == "ablations":  # only the loss may differ from the main MHPO run
        stripped = [
            without(t, "name", "trainer.output_dir", "algorithm.loss") for t in trees.values()
        ]
    else:
        stripped = [without(t, "name", "trainer.output_dir", "algorithm") for t in trees.values()]
    assert all(s == stripped[0] for s in stripped[1:])
    for row, tree in trees.items():
        algo = tree["algorithm"]
        dapo = algo["loss"]["name"] == "dapo"
        assert (row == "dapo") == dapo
        assert algo.get("dynamic_sampling", {}).get("enabled", False) == dapo
        assert algo.get("overlong", {}).get("enabled", False) == dapo
        if dapo:  # as recipes/tiny/dapo.yaml, with DAPO's asymmetric clip stated
            assert (algo["loss"]["clip_low"], algo["loss"]["clip_high"]) == (0.2, 0.28)
            assert algo["overlong"]["buffer"] == tree["rollout"]["max_new_tokens"] // 4
        base = without(algo, "loss", *(["dynamic_sampling", "overlong"] if dapo else []))
        assert base == {
            "advantage": "grpo",
            "kl_coef": 0.0,
            "rollout_correction": {"level": "token", "cap": 2.0},
        }


def test_recipes_copy_their_base_recipe(make_recipes):
    """Everything but name, output_dir, algorithm, eval.benchmarks and the stated
    Qwen3-4B-Base length changes is the colleague's real recipe."""
    for t in make_recipes.TABLES:
        base = raw(ROOT / t.base)
        edits = [k for k in t.edits if k != "eval.benchmarks"]
        keep = ("name", "trainer.output_dir", "algorithm", "eval.benchmarks", *edits)
        for tree in recipe_rows(t.key).values():
            assert without(tree, *keep) == without(base, *keep)
    qwen3 = raw(RECIPES / "text_qwen3_4b_base_mhpo.yaml")
    assert qwen3["rollout"]["max_new_tokens"] == qwen3["eval"]["max_new_tokens"] == 4096
    assert qwen3["rollout"]["engine_args"]["max_model_len"] >= 4096 + 512
    mhpo = raw(RECIPES / "text_qwen2_5_7b_mhpo.yaml")
    assert (
        mhpo["algorithm"] == raw(ROOT / "recipes/qwen2_5_7b_instruct/math_mhpo.yaml")["algorithm"]
    )


def test_ablation_losses():
    losses = {k: t["algorithm"]["loss"] for k, t in recipe_rows("ablations").items()}
    main = losses.pop("mhpo")
    assert main["name"] == "mhpo" and main["c"] == 1.5 and main["shift"] == "softplus"
    assert losses["c0_5"] == {**main, "c": 0.5}
    assert losses["c2_0"] == {**main, "c": 2.0}
    assert losses["shift_relu"] == {**main, "shift": "relu"}
    assert losses["lfm_only"]["name"] == "mhpo_lfm_only"
    assert losses["dhp_only"]["name"] == "mhpo_dhp_only"
    assert losses["symmetric"]["name"] == "mhpo_symmetric"


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=[p.name for p in PAPER_RECIPES])
def test_recipe_header_says_how_to_run_it(path):
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT).as_posix()
    table_key = next(t for t in TABLES if path.stem.startswith(t + "_"))
    row = path.stem[len(table_key) + 1 :]
    assert text.startswith(f"# Paper table {table_key}, row ")
    assert "# Hardware: 8x H100 80GB" in text
    assert f"# Launch: torchrun --nproc-per-node 8 -m mhpo_vl train {rel}\n" in text
    assert f"accelerate launch --num_processes 8 -m mhpo_vl train {rel}\n" in text
    assert f"# Train, then evaluate: python scripts/reproduce.py {table_key} --rows {row}\n" in text
    data = "data/geometry3k" if table_key.startswith("vision") else "data/math"
    assert f"# Data: python data/prepare_{Path(data).name}.py --out {data}\n" in text
    assert "Where the paper is silent" in text and "../" not in text


# --------------------------------------------------------------------------- the data


@pytest.mark.parametrize("name", TABLES)
def test_table_data(name):
    from mhpo_vl.eval.benchmarks import BENCHMARKS

    t = table(name)
    assert t["table"] == name and t["metric"] == "avg@32"
    assert "not been checked against the paper's PDF" in " ".join(t["provenance"].split())
    assert t["protocol"]["k"] == 32 and t["protocol"]["temperature"] == 1.0
    cols = list(t["columns"].values())
    assert all(c in BENCHMARKS for c in cols)
    for key, row in t["rows"].items():
        assert set(row["values"]) == {*cols, "avg"}
        assert all(v is None or 0 <= v <= 100 for v in row["values"].values())
        known = [row["values"][c] for c in cols]
        if None not in known:  # the paper's average is its row's mean
            assert sum(known) / len(known) == pytest.approx(row["values"]["avg"], abs=0.05)
        if row["recipe"] is None:
            assert key == "base" and row["model"] == t["model"] and row["output_dir"]
            continue
        recipe = raw(ROOT / row["recipe"])
        assert row["recipe"].startswith("recipes/paper/") and (ROOT / row["recipe"]).is_file()
        assert recipe["model"]["path"] == t["model"]
        assert recipe["eval"]["benchmarks"] == cols
        assert recipe["rollout"]["max_new_tokens"] == t["protocol"]["max_new_tokens"]
        assert recipe["data"]["template"] == t["protocol"]["template"]
        expected = (
            "text_qwen2_5_7b_mhpo" if (name, key) == ("ablations", "mhpo") else f"{name}_{key}"
        )
        assert row["recipe"] == f"recipes/paper/{expected}.yaml"


def test_every_recipe_is_some_row():
    used = {r["recipe"] for name in TABLES for r in table(name)["rows"].values()}
    assert {p.relative_to(ROOT).as_posix() for p in PAPER_RECIPES} <= used


def test_the_paper_numbers():
    rows = table("text_qwen2_5_7b")["rows"]
    got = {k: [r["values"][c] for c in [*TEXT, "avg"]] for k, r in rows.items()}
    assert got == {
        "base": [70.0, 5.6, 52.4, 3.5, 16.4, 29.6],
        "grpo": [79.2, 7.8, 68.3, 8.6, 27.4, 38.3],
        "dapo": [81.2, 9.1, 71.3, 11.4, 28.0, 40.2],
        "sapo": [80.4, 8.0, 69.2, 10.1, 27.1, 39.0],
        "mhpo": [82.1, 13.8, 74.6, 16.7, 31.5, 43.7],
    }
    q3 = table("text_qwen3_4b_base")["rows"]
    assert (q3["mhpo"]["values"]["avg"], q3["gspo"]["values"]["avg"]) == (52.9, 47.2)
    assert q3["gspo"].get("approx") and not q3["mhpo"].get("approx")
    vl = table("vision_qwen2_5_vl_7b")
    assert (vl["rows"]["mhpo"]["values"]["avg"], vl["rows"]["dapo"]["values"]["avg"]) == (
        53.0,
        52.3,
    )
    assert "OUR CHOICE" in (PAPER / "vision_qwen2_5_vl_7b.yaml").read_text()
    ab = table("ablations")["rows"]
    assert ab["mhpo"]["values"] == rows["mhpo"]["values"]
    assert (ab["lfm_only"]["values"]["avg"], ab["dhp_only"]["values"]["avg"]) == (41.0, 40.0)
    assert ab["lfm_only"]["approx"] and ab["dhp_only"]["approx"]


# --------------------------------------------------------------------------- reproduce.py


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


SCRIPT_RUNS = [
    *((name, "--dry-run") for name in TABLES),
    ("no_such_table", "--dry-run"),
    ("tiny-study",),
    ("ablations", "--rows", "nope", "--dry-run"),
]


@pytest.fixture(scope="module")
def script_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """The dry runs and refusals, started together (they only read and print)."""
    procs = {
        args: subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for args in SCRIPT_RUNS
    }
    done = {}
    for args, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        done[args] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("name", TABLES)
def test_dry_run_prints_every_rows_commands_in_order(name, script_runs):
    t = table(name)
    done = script_runs[(name, "--dry-run")]
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "dry run: nothing was run" in out
    p = t["protocol"]
    cols = ",".join(t["columns"].values())
    pos = 0
    for key, row in t["rows"].items():
        if row["recipe"]:
            recipe = raw(ROOT / row["recipe"])
            outdir = recipe["trainer"]["output_dir"]
            model = f"{outdir}/checkpoint-{recipe['trainer']['max_steps']}"
            if (ROOT / outdir).exists():  # someone has run it here: its plan may differ
                continue
            train = f"torchrun --nproc-per-node 8 -m mhpo_vl train {row['recipe']}"
            assert train in out[pos:], f"{key}: no train command after the previous row"
            pos = out.index(train, pos)
        else:
            outdir, model = row["output_dir"], row["model"]
            if (ROOT / outdir).exists():
                continue
        evaluate = (
            f"mhpo-vl eval run --model {model} --benchmarks {cols} "
            f"--out-dir {outdir}/paper_eval --k 32 --temperature 1.0 --top-p {p['top_p']} "
            f"--max-new-tokens {p['max_new_tokens']} --template {p['template']} "
            f"--batch-size {p['batch_size']}"
        )
        assert evaluate in out[pos:], f"{key}: no eval command after its training"
        pos = out.index(evaluate, pos)
    if not (ROOT / ("data/geometry3k" if "vision" in name else "data/math")).exists():
        assert "prepare it first: python data/prepare_" in out


def test_bad_table_and_tiny_study_exit_2(script_runs):
    bad = script_runs[("no_such_table", "--dry-run")]
    assert bad.returncode == 2
    assert "valid names: " + ", ".join([*TABLES, "tiny-study"]) in bad.stderr
    tiny = script_runs[("tiny-study",)]
    assert tiny.returncode == 2 and "one of the arguments --run --dry-run" in tiny.stderr
    row = script_runs[("ablations", "--rows", "nope", "--dry-run")]
    assert row.returncode == 2 and "valid rows: mhpo, lfm_only" in row.stderr


def test_without_data_it_stops_before_running_anything():
    if (ROOT / "data" / "math").exists():
        pytest.skip("data/math is prepared here; this run would start training")
    done = run_script("text_qwen2_5_7b", "--rows", "grpo")
    assert done.returncode == 2
    assert "prepare it first: python data/prepare_math.py --out data/math" in done.stdout
    assert "stopped before running anything" in done.stderr
    assert not (ROOT / "runs" / "paper_text_qwen2_5_7b_grpo").exists()


def fake_results(path: Path, value: float, k: int = 32, max_new: int = 2048, model=None) -> None:
    """A results.json as ``mhpo-vl eval run`` writes it (the fields the report reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": {"path": model, "revision": None, "dtype": "bfloat16"},
        "decoding": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": max_new, "n": k},
        "k": k,
        "template": "boxed",
    }
    metrics = {f"avg@{k}": value, "pass@1": value, f"pass@{k}": 90.0, f"maj@{k}": value}
    path.write_text(
        json.dumps({"benchmark": path.parent.name, "settings": settings, "metrics": metrics})
    )


def test_plan_skips_done_work_and_resumes(reproduce, tmp_path):
    args = reproduce.build_parser(TABLES).parse_args(["text_qwen2_5_7b"])
    args.data = {}
    t = reproduce.load_table("text_qwen2_5_7b")
    out = tmp_path / "runs" / "paper_text_qwen2_5_7b_grpo"
    model = "runs/paper_text_qwen2_5_7b_grpo/checkpoint-300"

    plan = reproduce.plan_row(t, "grpo", args, tmp_path)
    assert plan.train[:3] == ["torchrun", "--nproc-per-node", "8"]
    assert plan.train_note == "from the start"
    (out / "checkpoint-100").mkdir(parents=True)
    plan = reproduce.plan_row(t, "grpo", args, tmp_path)
    assert plan.train and plan.train_note.endswith(
        "resumes from runs/paper_text_qwen2_5_7b_grpo/checkpoint-100"
    )
    (out / "checkpoint-300").mkdir()
    plan = reproduce.plan_row(t, "grpo", args, tmp_path)
    assert plan.train is None and "checkpoint-300 exists" in plan.train_note

    for bench in ("math500", "amc23"):
        fake_results(out / "paper_eval" / bench / "results.json", 80.0, model=model)
    fake_results(out / "paper_eval" / "aime24" / "results.json", 30.0, k=4, model=model)
    plan = reproduce.plan_row(t, "grpo", args, tmp_path)
    assert plan.evaluate[plan.evaluate.index("--benchmarks") + 1] == "hmmt25,aime25,aime24"
    assert "math500, amc23 already done" in plan.eval_note
    for bench in ("hmmt25", "aime25", "aime24"):
        fake_results(out / "paper_eval" / bench / "results.json", 10.0, model=model)
    plan = reproduce.plan_row(t, "grpo", args, tmp_path)
    assert plan.done and plan.train is None
    # results of another checkpoint do not count
    fake_results(out / "paper_eval" / "aime24" / "results.json", 10.0, model="elsewhere")
    assert not reproduce.plan_row(t, "grpo", args, tmp_path).done


def test_validation_names_the_missing_data(reproduce):
    if (ROOT / "data" / "math").exists():
        pytest.skip("data/math is prepared here")
    problem = reproduce._validate("recipes/paper/text_qwen2_5_7b_grpo.yaml")
    assert problem and "data/math/train.parquet" in problem


# --------------------------------------------------------------------------- report


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", TABLES)
def test_report_from_paper_data_alone(name, tmp_path):
    from mhpo_vl.report import compare, load_table, render_markdown, write_report

    if name == "vision_qwen2_5_vl_7b":  # the files, for one table (a PNG takes a second)
        markdown, paths = write_report(name, tmp_path, tmp_path / "out")
        assert [p.name for p in paths] == [f"{name}.md", f"{name}.png"]
        assert paths[0].read_text() == markdown and is_png(paths[1])
    else:
        markdown = render_markdown(compare(load_table(name), tmp_path))
    t = table(name)
    for row in t["rows"].values():
        line = next(s for s in markdown.splitlines() if s.startswith(f"| {row['label']} |"))
        cells = line.strip("|").split("|")[1:]
        assert len(cells) == 3 * (len(t["columns"]) + 1)
        assert all(c.strip() == "—" for c in cells[1::3] + cells[2::3])  # ours, Δ
    if name == "text_qwen2_5_7b":
        assert "| GRPO | 79.2 | — | — | 7.8 | — | — |" in markdown
    if name == "ablations":
        assert "| LFM only | — | — | — |" in markdown and "| ~41.0 | — | — |" in markdown


def test_report_with_results_and_the_difference_by_hand(tmp_path, capsys):
    from mhpo_vl.cli import main

    runs = tmp_path / "runs"
    # GRPO, every column: ours - paper = +0.8, +2.2, +1.7, -0.6, +2.6; avg 39.6 - 38.3 = +1.3
    for bench, value in zip(TEXT, [80.0, 10.0, 70.0, 8.0, 30.0], strict=True):
        fake_results(runs / "paper_text_qwen2_5_7b_grpo/paper_eval" / bench / "results.json", value)
    # MHPO, one column: no average yet
    fake_results(runs / "paper_text_qwen2_5_7b_mhpo/paper_eval/math500/results.json", 83.0)
    # DAPO with k = 4: not the protocol, not used
    fake_results(runs / "paper_text_qwen2_5_7b_dapo/paper_eval/math500/results.json", 99.0, k=4)
    out = tmp_path / "report"
    assert (
        main(["report", "text_qwen2_5_7b", "--results-root", str(tmp_path), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        "| GRPO | 79.2 | 80.0 | +0.8 | 7.8 | 10.0 | +2.2 | 68.3 | 70.0 | +1.7 "
        "| 8.6 | 8.0 | -0.6 | 27.4 | 30.0 | +2.6 | 38.3 | 39.6 | +1.3 |"
    ) in printed
    assert "| MHPO | 82.1 | 83.0 | +0.9 | 13.8 | — | — |" in printed
    assert printed.rstrip().endswith(f"wrote {out / 'text_qwen2_5_7b.png'}")
    assert "| DAPO | 81.2 | — | — |" in printed and "k 4, not 32" in printed
    assert (out / "text_qwen2_5_7b.md").read_text() in printed and is_png(
        out / "text_qwen2_5_7b.png"
    )

    # an "about" value: the difference is marked approximate too (40.0 - ~41.0)
    for bench in TEXT:
        fake_results(runs / "paper_ablations_lfm_only/paper_eval" / bench / "results.json", 40.0)
    from mhpo_vl.report import compare, load_table, render_markdown

    markdown = render_markdown(compare(load_table("ablations"), tmp_path))
    line = next(s for s in markdown.splitlines() if s.startswith("| LFM only |"))
    assert line.startswith("| LFM only | — | 40.0 | — | — | 40.0 | — |")
    assert line.endswith("| ~41.0 | 40.0 | ~-1.0 |")


def test_report_reads_what_eval_run_writes(tmp_path, monkeypatch):
    """The real ``run_eval`` (model and data stubbed) writes a file the report accepts."""
    from mhpo_vl.eval import loaders, runner
    from mhpo_vl.report import check_result, load_table

    rows = [{"id": "p1", "question": "What is 2 + 3?", "answer": "5"}]
    monkeypatch.setattr(loaders, "load_benchmark", lambda name, source=None, limit=None: rows)
    fake = lambda prompts, k: (["\\boxed{5}"] * 8 + ["\\boxed{4}"] * 24) * len(prompts)  # noqa: E731
    monkeypatch.setattr(runner, "_engine_generate_fn", lambda *a, **kw: fake)
    model = "runs/paper_text_qwen2_5_7b_mhpo/checkpoint-300"
    out = tmp_path / "paper_eval"
    runner.run_eval(
        model, ["aime24"], out, k=32, temperature=1.0, max_new_tokens=2048, template="boxed"
    )
    t = load_table("text_qwen2_5_7b")
    assert check_result(out / "aime24" / "results.json", t, model) == (25.0, None)
    assert check_result(out / "aime24" / "results.json", load_table("text_qwen3_4b_base"))[1] == (
        "max_new_tokens 2048, not 4096"
    )


def test_report_bad_table_exit_2(capsys):
    from mhpo_vl.cli import main

    assert main(["report", "no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "unknown table 'no_such_table'; valid names: " + ", ".join(TABLES) in err
