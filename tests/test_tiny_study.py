"""The tiny study (``mhpo_vl/study/``, ``reproduce.py tiny-study``): the plan as data and
its recipes, the metrics on hand-made records, the summary of a partial study over
hand-made run folders, the CLI's plan and refusals, and one 2-step run of one cell."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhpo_vl.report import markdown_table
from mhpo_vl.study import cli, metrics, plan, runs, summary
from mhpo_vl.study.render import render_markdown, spread_text
from mhpo_vl.validation import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"


def raw_recipe(path: str) -> dict:
    return plan.read_tree(path)


# --------------------------------------------------------------------------- the plan


def test_the_default_plan_is_48_cells_in_training_order():
    assert plan.DEFAULT_SETTINGS == ("learn", "hard")
    assert plan.DEFAULT_VARIANTS == ("grpo", "dapo", "gspo", "sapo", "cispo",
                                     "mhpo_detached", "mhpo_full", "mhpo_relu")  # fmt: skip
    cells = plan.plan(plan.DEFAULT_SETTINGS, plan.DEFAULT_VARIANTS, plan.SEEDS)
    assert len(cells) == 48 and len({c.key for c in cells}) == 48
    assert [c.key for c in cells[:2]] == ["learn/grpo/seed0", "learn/dapo/seed0"]
    assert cells[8].key == "learn/grpo/seed1" and cells[24].key == "hard/grpo/seed0"
    assert cells[-1].run_dir == "runs/tiny_study/hard/mhpo_relu/seed2"
    for cell in cells:
        recipe = raw_recipe(cell.recipe)
        assert cell.steps == recipe["trainer"]["max_steps"]  # the recipe's own schedule
        assert cell.save_every == recipe["eval"]["every"]


def test_learn_is_the_recipe_as_shipped_and_hard_adds_lr_and_minibatches():
    learn = plan.plan(["learn"], ["grpo"], [2], "r")[0].overrides()
    assert learn == [
        "name=tiny_study_learn_grpo_seed2", "seed=2", "trainer.output_dir=r/learn/grpo/seed2",
        "trainer.save_every=50", "trainer.keep_last=1", "trainer.progress_bar=false",
    ]  # fmt: skip
    relu = plan.plan(["hard"], ["mhpo_relu"], [0], "r")[0].overrides()
    assert relu[6:] == ["algorithm.loss.shift=relu", "algorithm.loss.dhp_gradient=full",
                        "optim.lr=6.0e-4", "trainer.minibatches=4"]  # fmt: skip
    threads = plan.plan(["learn"], ["grpo"], [2], "r")[0].overrides(threads=1)
    assert threads[:6] == learn and threads[6] == "trainer.num_threads=1"


def test_a_setting_follows_the_recipe_and_steps_overrides_last():
    tree = {"trainer": {"max_steps": 400}, "eval": {"every": 40}}
    trees = {plan.MHPO_RECIPE: tree}
    cell = plan.plan(["learn"], ["mhpo_full"], [0], "r", trees=trees)[0]
    assert (cell.steps, cell.save_every) == (400, 40)
    assert not any("max_steps" in o or "eval." in o for o in cell.overrides())
    # the 60-step study's setting sets its own steps; --steps still wins
    quick = plan.plan(["stress"], ["mhpo"], [0], "r", steps=2, trees=trees, eval_size=8)[0]
    assert (quick.steps, quick.save_every) == (2, 2)
    assert quick.overrides()[-2:] == ["trainer.max_steps=2", "eval.size=8"]
    assert plan.resolved(tree, ["eval.every=10", "eval.every=5"], "eval.every") == 5
    assert plan.resolved(tree, [], "optim.lr") is None


def test_every_default_setting_and_variant_validates():
    """Each (setting, variant)'s overrides load with the real validation, and mean what
    the plan says."""
    cells = plan.plan(plan.DEFAULT_SETTINGS, plan.DEFAULT_VARIANTS, [0], "/tmp/tiny_study_v")
    for cell in cells:
        recipe = load_recipe(ROOT / cell.recipe, cell.overrides())
        raw = raw_recipe(cell.recipe)
        assert recipe.trainer.max_steps == raw["trainer"]["max_steps"]
        assert recipe.eval.every == raw["eval"]["every"] and recipe.seed == 0
        hard = cell.setting == "hard"
        assert recipe.optim.lr == (6.0e-4 if hard else raw["optim"]["lr"])
        assert recipe.trainer.minibatches == (4 if hard else raw["trainer"]["minibatches"])
        loss = recipe.algorithm.loss
        if cell.variant.startswith("mhpo"):
            assert loss["name"] == "mhpo"
            assert loss["dhp_gradient"] == (
                "detached" if cell.variant == "mhpo_detached" else "full"
            )
            assert loss.get("shift", "softplus") == (
                "relu" if cell.variant == "mhpo_relu" else "softplus"
            )
        else:
            assert loss["name"] == cell.variant


def test_the_60_step_studys_entries_still_validate():
    legacy = [n for n, s in plan.SETTINGS.items() if s.legacy]
    variants = [n for n, v in plan.VARIANTS.items() if v.legacy]
    assert legacy == ["default", "mild", "stress"] and "mhpo_relu_detached" in variants
    for cell in plan.plan(legacy, variants, [0], "/tmp/tiny_study_v"):
        recipe = load_recipe(ROOT / cell.recipe, cell.overrides())
        assert (recipe.trainer.max_steps, recipe.eval.every, recipe.eval.size) == (60, 10, 100)
        assert cell.save_every == 10


# --------------------------------------------------------------------------- metrics


def steps(n: int, **columns) -> list[dict]:
    """Training records 1..n, each column a list of n values (``__`` for ``/``)."""
    return [{"step": i + 1, **{k.replace("__", "/"): v[i] for k, v in columns.items()}}
            for i in range(n)]  # fmt: skip


def with_evals(records: list[dict], accs: dict[int, float]) -> list[dict]:
    by_step = {r["step"]: r for r in records}
    for step, acc in accs.items():
        by_step.setdefault(step, {"step": step})["eval/accuracy"] = acc
    return sorted(by_step.values(), key=lambda r: r["step"])


def test_run_metrics_of_hand_made_records(tmp_path):
    records = with_evals(
        steps(
            6,
            grad_norm=[1.0, 2.0, 1.5, 20.0, "nan", 1.0],
            ratio_max=[1.2, 3.5, 1.1, 1.3, 1.4, 1.2],
            ratio_min=[0.8, 0.5, 0.9, 0.2, 0.7, 0.8],
            ratio_mean=[1.0, 1.02, 0.98, 1.0, "nan", 1.0],
            clip_frac=[0.1, 0.2, 0.3, 0.0, 0.1, 0.2],
            reward__mean=[0.5, 0.5, 0.5, 0.5, 0.25, 0.75],
            skipped_steps=[0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        ),
        {0: 0.60, 2: 0.70, 4: 0.80, 6: 0.77},
    )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    read = runs.read_records(tmp_path)
    assert math.isnan(read[5]["grad_norm"])  # the trainer's "nan" string, restored
    m = metrics.run_metrics(read)
    assert (m["start"], m["final"], m["best"]) == (0.60, 0.77, 0.80)
    assert m["gain"] == pytest.approx(0.17)
    # 0.70 is start + 0.10 and 0.80 is start + 0.20 (up to float rounding): reached
    assert (m["steps_to_10"], m["steps_to_20"]) == (2, 4)
    assert m["dip"] is False  # 0.80 -> 0.77 is 0.03 below: not more than 0.03
    assert m["collapsed"] is False
    assert (m["ratio_max"], m["ratio_min"]) == (3.5, 0.2)
    assert m["ratio_mean"] == pytest.approx(1.0)  # 5 finite values
    assert m["clip_frac"] == pytest.approx(0.15)
    assert m["ratio_out_frac"] is None  # not logged
    # finite grad norms 1, 2, 1.5, 20, 1: median 1.5, limit 7.5, one spike
    assert (m["grad_median"], m["grad_max"], m["grad_spikes"]) == (1.5, 20.0, 1)
    assert m["grad_nonfinite"] == 1
    assert m["reward_end"] == pytest.approx(0.5) and m["skipped_updates"] == 1.0
    assert m["steps"] == 6


def test_steps_to_gain_dip_and_collapse_edges():
    acc = [(0, 0.55), (50, 0.60), (100, 0.66), (150, 0.64)]
    assert metrics.steps_to_gain(acc, 0.10) == 100 and metrics.steps_to_gain(acc, 0.20) is None
    assert (
        metrics.steps_to_gain([(0, 0.5)], 0.10) is None and metrics.steps_to_gain([], 0.1) is None
    )
    assert not metrics.is_dip(acc)  # 0.02 below
    assert metrics.is_dip([(0, 0.5), (50, 0.80), (100, 0.76)])  # 0.04 below
    assert not metrics.is_dip([(0, 0.5)])

    def run(start: float, end: float, rewards: list[float]) -> list[dict]:
        return with_evals(steps(len(rewards), reward__mean=rewards), {0: start, len(rewards): end})

    assert metrics.is_collapsed(run(0.6, 0.39, [0.5] * 12))  # 0.21 below the start
    assert not metrics.is_collapsed(run(0.6, 0.40, [0.5] * 12))  # 0.20: not more than
    assert metrics.is_collapsed(run(0.6, 0.6, [0.5, 0.4] + [0.0] * 10))  # last 10 rewards 0
    assert not metrics.is_collapsed(run(0.6, 0.6, [0.5, 0.4, 0.1] + [0.0] * 9))
    # DAPO: judged by everything sampled, not the groups dynamic sampling kept
    dapo = steps(12, reward__mean=[0.5] * 12,
                 dynamic_sampling__reward_mean_sampled=[0.3, 0.2] + [0.0] * 10)  # fmt: skip
    assert metrics.is_collapsed(dapo) and metrics.run_metrics(dapo)["reward_end"] == 0.0


def test_spread_and_aggregate_over_seeds():
    assert summary.spread([0.7, 0.8, None, 0.6]) == pytest.approx(
        {"mean": 0.7, "min": 0.6, "max": 0.8, "n": 3}
    )
    assert summary.spread([None]) == {"mean": None, "min": None, "max": None, "n": 0}
    agg = summary.aggregate(
        [
            {"final": 0.7, "steps_to_10": 100, "collapsed": False, "dip": True},
            {"final": 0.5, "steps_to_10": None, "collapsed": True, "dip": True},
            {"final": 0.9, "steps_to_10": 200, "collapsed": False, "dip": False},
        ]
    )
    assert agg["stats"]["final"] == pytest.approx({"mean": 0.7, "min": 0.5, "max": 0.9, "n": 3})
    assert agg["stats"]["steps_to_10"] == {"mean": 150.0, "min": 100.0, "max": 200.0, "n": 2}
    assert agg["flags"] == {"collapsed": 1, "dip": 2}
    assert spread_text(agg["stats"]["final"], ".3f") == "0.700 [0.500–0.900]"
    assert spread_text({"mean": 0.5, "min": 0.5, "max": 0.5, "n": 1}, ".3f") == "0.500"


def test_markdown_table_is_the_reports():
    assert markdown_table(["a", "b"], [["x", "1"]], "lr") == [
        "| a | b |",
        "|---|---:|",
        "| x | 1 |",
    ]
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [["x"]])


# --------------------------------------------------------------------------- a partial study


def fake_run(path: Path, accs: dict[int, float], *, upto: int, ckpt: int | None,
             grad: float = 1.0, wall: float | None = 30.0) -> None:  # fmt: skip
    """A run folder as the trainer and the study leave it: metrics up to ``upto``,
    ``checkpoint-<ckpt>``, one attempt of ``wall`` seconds."""
    path.mkdir(parents=True)
    records = with_evals(
        steps(upto, grad_norm=[grad * (10 if s == 3 else 1) for s in range(1, upto + 1)],
              ratio_max=[2.0] * upto, ratio_min=[0.5] * upto, ratio_mean=[1.0] * upto,
              reward__mean=[0.5] * upto),
        accs,
    )  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if ckpt is not None:
        (path / f"checkpoint-{ckpt}").mkdir()
    if wall is not None:
        attempt = {"commit": "abc", "from_step": 0, "to_step": upto, "rc": 0, "wall_s": wall}
        (path / runs.ATTEMPTS_FILE).write_text(json.dumps(attempt) + "\n")


@pytest.fixture
def partial_study(tmp_path):
    """8 cells of 20 steps: 3 done, 1 partial, 1 halted, 3 not started."""
    tree = {"trainer": {"max_steps": 20}, "eval": {"every": 10}}
    trees = {"recipes/tiny/grpo.yaml": tree, plan.MHPO_RECIPE: tree}
    root = tmp_path / "runs"
    cells = plan.plan(["learn", "hard"], ["grpo", "mhpo_full"], [0, 1], str(root), trees=trees)
    learn = root / "learn"
    fake_run(learn / "grpo/seed0", {0: 0.6, 10: 0.72, 20: 0.8}, upto=20, ckpt=20)
    fake_run(learn / "grpo/seed1", {0: 0.6, 10: 0.66, 20: 0.7}, upto=20, ckpt=20, wall=50.0)
    fake_run(learn / "mhpo_full/seed0", {0: 0.6, 10: 0.5, 20: 0.3}, upto=20, ckpt=20)
    fake_run(learn / "mhpo_full/seed1", {0: 0.6, 10: 0.9}, upto=13, ckpt=10)  # cut at 13
    fake_run(root / "hard/grpo/seed0", {0: 0.6}, upto=7, ckpt=None)
    (root / "hard/grpo/seed0" / runs.HALTED_FILE).write_text(json.dumps({"step": 7}))
    return cells, tmp_path


def test_a_partial_study_renders_as_partial(partial_study):
    cells, tmp = partial_study
    results = summary.collect(cells)
    assert [r.state for r in results[:4]] == ["done", "done", "done", "resume"]
    s = summary.summarize(results)
    assert s["counts"] == {"planned": 8, "done": 3, "halted": 1, "partial": 1, "not_started": 3}
    grpo = s["settings"]["learn"]["variants"]["grpo"]
    assert grpo["stats"]["final"] == pytest.approx({"mean": 0.75, "min": 0.7, "max": 0.8, "n": 2})
    assert grpo["stats"]["steps_to_10"]["n"] == 2 and grpo["stats"]["steps_to_20"]["n"] == 1
    assert grpo["stats"]["wall_s"]["mean"] == 40.0
    mhpo = s["settings"]["learn"]["variants"]["mhpo_full"]
    assert mhpo["done"] == [0] and mhpo["partial"] == {"1": {"checkpoint": 10, "logged": 13}}
    assert mhpo["flags"] == {"collapsed": 1, "dip": 1}  # 0.6 -> 0.3; 0.5 -> 0.3

    out = tmp / "out"
    cli.write_summary(results, out, "python scripts/reproduce.py tiny-study --summarize-only")
    md = (out / "summary.md").read_text()
    assert ("**Partial: 3 of 8 planned runs done** (1 halted, 1 partial (started, not "
            "finished), 3 not started)") in md  # fmt: skip
    row = next(ln for ln in md.splitlines() if ln.startswith("| grpo | 2/2 | 0.600 |"))
    # final 0.75 [0.7-0.8], best the same, gain +0.15 [+0.10-+0.20], +10 at 10 and 20,
    # +20 at 20 (1 of 2), wall 40 [30-50], no collapse, no dip
    assert row == ("| grpo | 2/2 | 0.600 | 0.750 [0.700–0.800] | 0.750 [0.700–0.800] | "
                   "+0.150 [+0.100–+0.200] | 15 [10–20] (2/2) | 20 (1/2) | 40 [30–50] | 0/2 | 0/2 |")  # fmt: skip
    assert "| mhpo_full | 1/2 | 0.600 | 0.300 | 0.600 | -0.300 | not reached (0/1) |" in md
    assert "| mhpo_full | 1 | partial: step 13/20, checkpoint-10 |" in md
    assert "| grpo | 0 | halted at step 7 |" in md and "| mhpo_full | 1 | not started |" in md
    assert "No run of this setting is done yet." in md  # hard
    assert "| grpo | 0.750 [0.700–0.800] (2/2 seeds, 0 collapsed) | — (0/2 seeds, 1 halted) |" in md
    assert "| grpo | 1 | done | 0.600 | 0.700 | 0.700 | +0.100 | 20 | not reached | 50 |" in md
    assert "Done runs trained at: `abc` (3 runs)" in md
    data = json.loads((out / "summary.json").read_text())
    assert data["counts"]["partial"] == 1 and "collapsed" in data["definitions"]
    assert set(data["settings"]["learn"]["variants"]["grpo"]["runs"]) == {"0", "1"}
    import matplotlib.image

    for name in ("accuracy_learn.png", "stability_learn.png"):
        assert matplotlib.image.imread(out / name).shape[0] > 100
    assert not (out / "accuracy_hard.png").exists()


def test_an_empty_study_says_so(tmp_path):
    cells = plan.plan(plan.DEFAULT_SETTINGS, plan.DEFAULT_VARIANTS, plan.SEEDS, str(tmp_path))
    s = summary.summarize(summary.collect(cells))
    md = render_markdown(s, {"command": "x", "commit": "y", "date": "z"})
    assert "**No run done yet: 0 of 48 planned** (0 halted, 0 partial" in md
    assert md.count("| not started |") == 48
    assert md.count("No run of this setting is done yet.") == 2


# --------------------------------------------------------------------------- the CLI


def test_one_cell_dry_run_and_skipping(tmp_path, capsys):
    root = tmp_path / "runs"
    done = root / "learn" / "grpo" / "seed0"
    fake_run(done, {0: 0.6, 350: 0.7}, upto=2, ckpt=350)
    (done / "metrics.jsonl").open("a").write(json.dumps({"step": 350}) + "\n")
    fake_run(root / "learn" / "grpo" / "seed1", {0: 0.6}, upto=60, ckpt=50)
    argv = ["--dry-run", "--settings", "learn", "--variants", "grpo,mhpo_full", "--seeds", "0,1",
            "--runs-root", str(root), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/4] learn/grpo/seed0: skip, done" in out
    assert "[3/4] learn/grpo/seed1: train (resumes from checkpoint-50, 350 steps)" in out
    cmd = (
        "  $ python -m mhpo_vl train recipes/tiny/mhpo.yaml name=tiny_study_learn_mhpo_full_seed1 "
        f"seed=1 trainer.output_dir={root}/learn/mhpo_full/seed1 trainer.save_every=50 "
        "trainer.keep_last=1 trainer.progress_bar=false algorithm.loss.dhp_gradient=full\n"
    )
    assert cmd in out and out.count("  $ ") == 3
    assert not (tmp_path / "out").exists()


def test_bad_arguments_exit_2(capsys):
    assert cli.main(["--dry-run", "--variants", "mhpo_full,ppo"]) == 2
    assert "unknown variant 'ppo'; valid names: grpo, dapo" in capsys.readouterr().err
    assert cli.main(["--dry-run", "--settings", "easy"]) == 2
    assert cli.main(["--dry-run", "--seeds", "0,x"]) == 2
    assert cli.main(["--run", "--steps", "2"]) == 2  # would write into the study's folders
    assert "--steps needs --runs-root and --out" in capsys.readouterr().err
    assert cli.main(["--dry-run", "--eval-size", "8"]) == 2
    assert "--eval-size needs --steps" in capsys.readouterr().err
    assert cli.main(["--dry-run", "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_cells_side_by_side_stop_starting_after_a_failure(monkeypatch, capsys):
    """--jobs N: cells start in plan order; after one fails no new cell starts, the ones
    going finish, and the failure's exit code is returned."""
    cells = plan.plan(["learn"], ["grpo", "dapo", "gspo", "sapo"], [0], "r")
    started = []

    def fake_train_cell(cell, st, jobs, head):
        started.append((cell.variant, jobs))
        return 3 if cell.variant == "grpo" else None

    monkeypatch.setattr(cli, "train_cell", fake_train_cell)
    states = {c: runs.CellState("new") for c in cells}
    assert cli.train_all(cells, states, 1) == 3 and started == [("grpo", 1)]
    started.clear()
    assert cli.train_all(cells[1:], states, 2) == 0
    assert sorted(started) == [("dapo", 2), ("gspo", 2), ("sapo", 2)]
    assert cli.threads_per_job(1) is None and cli.threads_per_job(10_000) == 1


def test_ctrl_c_with_cells_side_by_side_starts_no_other_and_exits_130(monkeypatch, capsys):
    cells = plan.plan(["learn"], ["grpo", "dapo", "gspo", "sapo"], [0], "r")
    started = []

    def fake_train_cell(cell, st, jobs, head):
        """Ctrl-C (SIGINT, handled in the main thread) while two runs go; each run
        then takes a moment to end, as the real ones do."""
        started.append(cell.variant)
        if cell.variant == "grpo":
            signal.raise_signal(signal.SIGINT)
        time.sleep(0.5)

    monkeypatch.setattr(cli, "train_cell", fake_train_cell)
    states = {c: runs.CellState("new") for c in cells}
    assert cli.train_all(cells, states, 2) == 130
    # the second worker may or may not have taken dapo before the Ctrl-C; no later one starts
    assert "grpo" in started and set(started) <= {"grpo", "dapo"}
    assert "interrupted; the same command resumes" in capsys.readouterr().err


@pytest.mark.slow
def test_one_cell_trains_two_steps_through_reproduce(tmp_path):
    """``reproduce.py tiny-study --run --jobs 2`` of two cells side by side, 2 steps each,
    then their summary."""
    runs_root, out = tmp_path / "runs", tmp_path / "out"
    argv = ["tiny-study", "--run", "--settings", "learn", "--variants", "grpo,mhpo_full",
            "--seeds", "1", "--steps", "2", "--eval-size", "16", "--runs-root", str(runs_root),
            "--out", str(out), "--jobs", "2"]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = runs_root / "learn" / "mhpo_full" / "seed1"
    assert (run / "checkpoint-2").is_dir()
    records = runs.read_records(run)
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2]
    assert {"grad_norm", "ratio_max", "ratio_min", "ratio_mean"} <= set(records[1])
    attempt = runs.attempts(run)[0]
    assert (attempt["from_step"], attempt["to_step"], attempt["rc"], attempt["jobs"]) == (
        0, 2, 0, 2)  # fmt: skip
    log = (run / runs.LOG_FILE).read_text()
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert (f"trainer.progress_bar=false trainer.num_threads={threads} "
            "algorithm.loss.dhp_gradient=full trainer.max_steps=2 eval.size=16") in log  # fmt: skip
    assert (runs_root / "learn" / "grpo" / "seed1" / "checkpoint-2").is_dir()
    assert "learn/grpo/seed1: done in " in done.stdout
    md = (out / "summary.md").read_text()
    assert "**Partial: 2 of 48 planned runs done**" in md
    assert "| mhpo_full | 1 | done |" in md and "(1/3 seeds, " in md
    assert (out / "accuracy_learn.png").is_file()
    data = json.loads((out / "summary.json").read_text())
    run_metrics = data["settings"]["learn"]["variants"]["mhpo_full"]["runs"]["1"]
    assert run_metrics["steps"] == 2 and run_metrics["wall_s"] > 0
