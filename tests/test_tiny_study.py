"""scripts/tiny_study.py (``reproduce.py tiny-study``): the metrics on hand-made numbers,
the summary over fake run folders, the plan and its skipping. Nothing is trained: the
only subprocesses are dry runs."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"


def _load():
    spec = importlib.util.spec_from_file_location("tiny_study", ROOT / "scripts" / "tiny_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ts = _load()


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """The two dry runs, started together (they only validate and print)."""
    root = tmp_path_factory.mktemp("dry")
    base = [sys.executable, str(SCRIPT), "tiny-study", "--dry-run"]
    base += ["--runs-root", str(root / "runs"), "--out", str(root / "out")]
    procs = {
        "all": subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "three": subprocess.Popen(
            [*base, "--max-runs", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
    }
    done = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert not (root / "runs").exists() and not (root / "out").exists()
    return root, done


# --------------------------------------------------------------------------- metrics


def test_curve_auc_is_the_trapezoid_mean():
    # (0.5 + 0.7) / 2 * 10 + (0.7 + 0.6) / 2 * 10 = 12.5, over 20 steps
    assert ts.curve_auc([(0, 0.5), (10, 0.7), (20, 0.6)]) == pytest.approx(0.625)
    assert ts.curve_auc([(20, 0.6), (0, 0.5), (10, 0.7)]) == pytest.approx(0.625)  # any order
    # uneven eval steps: 0.5 * 10 + 0.5 * 30 = 20, over 40 steps
    assert ts.curve_auc([(0, 0.4), (10, 0.6), (40, 0.4)]) == pytest.approx(0.5)
    assert ts.curve_auc([(5, 0.3)]) == 0.3
    assert ts.curve_auc([]) is None


def test_grad_spikes_count_values_above_five_medians():
    # finite values 1, 1, 1, 1, 6, 1, 5: median 1, limit 5; 6 is a spike, 5 is not
    assert ts.grad_spikes([1, 1, 1, 1, 6, 1, math.nan, 5.0, math.inf]) == 1
    assert ts.grad_spikes([0.2, 0.4, 0.3, 2.5, 1.6]) == 1  # median 0.4, limit 2.0
    # an even count: median (1 + 3) / 2 = 2, limit 2 x 2 = 4
    assert ts.grad_spikes([1.0, 3.0, 0.2, 0.4, 4.5, 5.5], factor=2.0) == 2
    assert ts.grad_spikes([]) == 0
    assert ts.grad_spikes([math.nan]) == 0


def _steps(n: int, **columns) -> list[dict]:
    """Records 1..n with each column a list of n values."""
    return [
        {"step": i + 1, **{k.replace("__", "/"): v[i] for k, v in columns.items()}}
        for i in range(n)
    ]


def test_collapse_needs_ten_zero_rewards_or_a_drop_over_point_two():
    zeros = _steps(12, reward__mean=[0.5, 0.4] + [0.0] * 10)
    assert ts.is_collapsed(zeros)
    nine = _steps(12, reward__mean=[0.5, 0.4, 0.1] + [0.0] * 9)
    assert not ts.is_collapsed(nine)
    short = _steps(3, reward__mean=[0.0] * 3)  # fewer than 10 steps: all of them
    assert ts.is_collapsed(short)

    def with_acc(start: float, end: float) -> list[dict]:
        return [
            {"step": 0, "eval/accuracy": start},
            *_steps(10, reward__mean=[0.5] * 10),
            {"step": 10, "eval/accuracy": end},
        ]

    assert ts.is_collapsed(with_acc(0.6, 0.35))  # 0.25 below the start
    assert not ts.is_collapsed(with_acc(0.6, 0.41))  # 0.19 below
    assert not ts.is_collapsed(with_acc(0.6, 0.9))


def test_run_metrics_of_a_hand_made_run(tmp_path):
    lines = [
        {"step": 0, "eval/accuracy": 0.6},
        *_steps(
            12,
            grad_norm=[1.0] * 5 + [9.0] + [1.0] * 5 + ["nan"],
            ratio_max=[1.5, 3.0] + [1.2] * 10,
            ratio_min=[0.5, 0.9] + [0.05] + [0.8] * 9,
            entropy=[1.0, 1.0] + [0.5] * 10,
            reward__mean=[0.5] * 12,
            skipped_steps=[0.0] * 11 + [2.0],
        ),
    ]
    lines[6]["eval/accuracy"] = 0.8  # step 6
    lines[12]["eval/accuracy"] = 0.7  # step 12
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = ts.read_records(tmp_path)
    assert math.isnan(records[-1]["grad_norm"])  # the trainer's "nan" string, restored
    m = ts.run_metrics(records)
    assert m["start_accuracy"] == 0.6 and m["final_accuracy"] == 0.7
    # (0.6 + 0.8) / 2 * 6 + (0.8 + 0.7) / 2 * 6 = 8.7, over 12 steps
    assert m["accuracy_auc"] == pytest.approx(0.725)
    assert m["grad_spikes"] == 1  # the 9.0; the nan is a skipped update
    assert (m["ratio_max"], m["ratio_min"]) == (3.0, 0.05)
    assert m["entropy_end"] == pytest.approx(0.5)  # last 10 steps
    assert m["reward_end"] == pytest.approx(0.5)
    assert m["skipped_updates"] == 2.0
    assert m["collapsed"] is False and m["steps"] == 12


def test_dapo_is_judged_by_everything_it_sampled():
    # dynamic sampling keeps only mixed groups: reward/mean stays 0.5 while everything
    # sampled went to 0; the study reads the sampled mean for the end reward and collapse
    dapo = _steps(
        12,
        reward__mean=[0.5] * 12,
        dynamic_sampling__reward_mean_sampled=[0.4, 0.2] + [0.0] * 10,
    )
    assert ts.reward_key(dapo) == "dynamic_sampling/reward_mean_sampled"
    assert ts.is_collapsed(dapo)
    assert ts.run_metrics(dapo)["reward_end"] == 0.0
    plain = _steps(12, reward__mean=[0.4, 0.2] + [0.3] * 10)
    assert ts.reward_key(plain) == "reward/mean"
    assert ts.run_metrics(plain)["reward_end"] == pytest.approx(0.3)


def test_mean_std_over_seeds():
    assert ts.mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert ts.mean_std([0.5, None]) == {"mean": 0.5, "std": None, "n": 1}
    assert ts.mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert math.isnan(ts.mean_std([1.0, math.inf])["std"])


def test_halt_reason_is_the_trainers_non_finite_stop():
    text = (
        "some log\nmhpo-vl: error: step 17: 3 optimizer updates in a row skipped for a "
        "non-finite loss (trainer.max_consecutive_skips=3); lower optim.lr or check the recipe\n"
    )
    step, reason = ts._halt_reason(text)
    assert step == 17 and reason.startswith("step 17: 3 optimizer updates")
    assert ts._halt_reason("mhpo-vl: error: step 3: reward 'accuracy' failed on 8 of 8") is None


# --------------------------------------------------------------------------- fake runs


def fake_run(path: Path, steps: int, accs: dict[int, float], *, upto: int | None = None,
             grad: float = 1.0, ratio_max: float = 2.0) -> None:  # fmt: skip
    """A run folder as the trainer leaves it: metrics up to ``upto`` (default: steps) and
    ``checkpoint-<upto>``."""
    upto = steps if upto is None else upto
    path.mkdir(parents=True)
    records = [{"step": 0, "eval/accuracy": accs[0]}]
    for step in range(1, upto + 1):
        rec = {
            "step": step,
            "grad_norm": grad * (10.0 if step == 3 else 1.0),
            "ratio_max": ratio_max,
            "ratio_min": 0.5,
            "entropy": 0.4,
            "reward/mean": 0.5,
            "skipped_steps": 0.0,
        }
        if step in accs:
            rec["eval/accuracy"] = accs[step]
        records.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / f"checkpoint-{upto}").mkdir()


def test_summary_over_fake_runs_leaves_out_the_unfinished_one(tmp_path):
    runs = tmp_path / "runs"
    specs = ts.plan(["default"], ["mhpo", "grpo"], [0, 1], str(runs), steps=20)
    assert [s.key for s in specs] == [
        "default/mhpo/seed0", "default/grpo/seed0", "default/mhpo/seed1", "default/grpo/seed1",
    ]  # fmt: skip
    d = runs / "default"
    fake_run(d / "mhpo" / "seed0", 20, {0: 0.6, 10: 0.7, 20: 0.8})
    fake_run(d / "mhpo" / "seed1", 20, {0: 0.6, 10: 0.6, 20: 0.6}, ratio_max=4.0)
    fake_run(d / "grpo" / "seed0", 20, {0: 0.6, 10: 0.5, 20: 0.3}, grad=2.0)
    fake_run(d / "grpo" / "seed1", 20, {0: 0.6, 10: 0.9}, upto=10)  # interrupted at 10
    # the commits the study trained them at: one run resumed across two commits
    attempts = {
        d / "mhpo" / "seed0": [("aaa", 0, 20)],
        d / "mhpo" / "seed1": [("aaa", 0, 10), ("bbb", 10, 20), ("ccc", 20, 20)],
        d / "grpo" / "seed0": [("bbb", 0, 20)],
    }
    for run, rows in attempts.items():
        (run / ts.ATTEMPTS_FILE).write_text(
            "".join(
                json.dumps({"commit": c, "from_step": a, "to_step": b, "rc": 0, "wall_s": 5.0})
                + "\n"
                for c, a, b in rows
            )
        )
    results = ts.collect(specs)
    assert [r.state for r in results] == ["done", "done", "done", "resume"]
    assert results[2].commits == ("aaa", "bbb")  # ccc trained no step
    assert results[2].wall_s == 15.0

    summary = ts.summarize(results)
    assert summary["counts"] == {"planned": 4, "done": 3, "halted": 0, "pending": 1}
    assert summary["trained_at"] == {"aaa": 2, "bbb": 2}
    mhpo = summary["settings"]["default"]["variants"]["mhpo"]
    grpo = summary["settings"]["default"]["variants"]["grpo"]
    assert mhpo["done"] == [0, 1] and grpo["done"] == [0] and grpo["pending"] == [1]
    # mhpo final accuracy 0.8 and 0.6: mean 0.7, sample std sqrt(0.02)
    assert mhpo["stats"]["final_accuracy"]["mean"] == pytest.approx(0.7)
    assert mhpo["stats"]["final_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    # AUC 0.7 (0.65 and 0.75 halves) and 0.6
    assert mhpo["stats"]["accuracy_auc"]["mean"] == pytest.approx(0.65)
    assert mhpo["stats"]["ratio_max"]["mean"] == pytest.approx(3.0)
    assert mhpo["stats"]["grad_spikes"]["mean"] == 1.0  # step 3, 10x the median
    assert mhpo["collapsed"] == 0
    # grpo: only seed 0 counts (0.6 -> 0.3 is a collapse); the interrupted 0.9 does not
    assert grpo["stats"]["final_accuracy"] == {"mean": 0.3, "std": None, "n": 1}
    assert grpo["collapsed"] == 1

    out = tmp_path / "out"
    ts.write_summary(results, out, "python scripts/reproduce.py tiny-study --summarize-only")
    md = (out / "summary.md").read_text()
    assert "3 done, 0 halted, 1 pending, of 4 planned" in md
    assert "| mhpo | 2/2 | 0.700 ± 0.141 | 0.650 ± 0.071 | 1.0 ± 0.0 | 3 ± 1.4 |" in md
    assert "| grpo | 1/2 | 0.300 |" in md
    assert "Pending (1): default/grpo/seed1." in md
    assert "trained at: `aaa` (2 runs), `bbb` (2 runs)" in md
    assert "| mhpo | 0.700 ± 0.141 (0/2 collapsed) |" in md
    assert "| grpo | 0.300 (1/1 collapsed) |" in md
    assert "tiny-study --summarize-only" in md and "commit `" in md
    data = json.loads((out / "summary.json").read_text())
    assert (
        data["counts"]["pending"] == 1
        and "0" in data["settings"]["default"]["variants"]["grpo"]["runs"]
    )
    assert (out / "accuracy_default.png").stat().st_size > 0
    assert (out / "stability_default.png").stat().st_size > 0


# --------------------------------------------------------------------------- the plan


def test_dry_run_prints_all_72_commands(dry_runs):
    root, done = dry_runs
    full = done["all"]
    assert full.returncode == 0, full.stderr
    assert "invalid recipe" not in full.stderr  # every variant x setting validated
    commands = [ln for ln in full.stdout.splitlines() if ln.startswith("  $ ")]
    assert len(commands) == 72
    assert "pending 72; to train now: 72" in full.stdout
    assert "dry run: nothing was run" in full.stdout
    first = commands[0]
    assert first.startswith("  $ python -m mhpo_vl train recipes/tiny/mhpo.yaml ")
    assert f"trainer.output_dir={root}/runs/default/mhpo/seed0" in first
    assert f"trainer.max_steps={ts.STEPS}" in first and "seed=0" in first
    stress_dapo = [c for c in commands if "/stress/dapo/seed2 " in c]
    assert len(stress_dapo) == 1 and "recipes/tiny/dapo.yaml" in stress_dapo[0]
    for override in ("trainer.minibatches=4", "trainer.update_epochs=2", "optim.lr=6e-4"):
        assert override in stress_dapo[0]
    c05 = [c for c in commands if "/default/mhpo_c0_5/seed1 " in c][0]
    assert "algorithm.loss.c=0.5" in c05 and "seed=1" in c05

    three = done["three"]
    assert three.returncode == 0, three.stderr
    planned = [ln for ln in three.stdout.splitlines() if ln.startswith("  $ ")]
    assert len(planned) == 3 and "to train now: 3 (--max-runs 3)" in three.stdout
    assert three.stdout.count("later (beyond --max-runs 3)") == 69


def test_follow_up_settings_join_the_summary_once_they_have_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert ts.summary_settings(runs) == ["default", "stress"]
    assert ts.summary_settings(runs, ["mild"]) == ["default", "mild", "stress"]
    (runs / "mild").mkdir(parents=True)
    assert ts.summary_settings(runs) == ["default", "mild", "stress"]

    argv = ["--dry-run", "--settings", "mild", "--variants", "mhpo,dapo", "--seeds", "1"]
    assert ts.main([*argv, "--runs-root", str(runs), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    commands = [ln for ln in out.splitlines() if ln.startswith("  $ ")]
    assert len(commands) == 2 and "/mild/dapo/seed1 " in commands[1]
    for cmd in commands:  # reuse alone: the recipe's minibatches and learning rate
        assert cmd.endswith(" trainer.update_epochs=2")
        assert "minibatches" not in cmd and "optim.lr" not in cmd


def test_a_finished_run_is_skipped_and_a_cut_one_resumes(tmp_path, capsys):
    runs = tmp_path / "runs"
    done_dir = runs / "default" / "grpo" / "seed0"
    fake_run(done_dir, ts.STEPS, {0: 0.6, ts.STEPS: 0.7})
    cut = runs / "default" / "grpo" / "seed1"
    fake_run(cut, ts.STEPS, {0: 0.6}, upto=20)
    assert ts.run_state(done_dir, ts.STEPS) == ("done", ts.STEPS)
    assert ts.run_state(cut, ts.STEPS) == ("resume", 20)
    assert ts.run_state(tmp_path / "nothing", ts.STEPS) == ("new", 0)
    # metrics at the last step but no final checkpoint (killed while saving): not done
    (done_dir / f"checkpoint-{ts.STEPS}").rmdir()
    (done_dir / "checkpoint-50").mkdir()
    assert ts.run_state(done_dir, ts.STEPS) == ("resume", 50)
    (done_dir / "checkpoint-50").rmdir()
    (done_dir / f"checkpoint-{ts.STEPS}").mkdir()
    # a halted run is not tried again
    halted = runs / "stress" / "grpo" / "seed0"
    fake_run(halted, ts.STEPS, {0: 0.6}, upto=10)
    (halted / ts.HALTED_FILE).write_text(json.dumps({"step": 12, "reason": "x"}))
    assert ts.run_state(halted, ts.STEPS) == ("halted", 12)

    argv = ["--dry-run", "--variants", "grpo", "--seeds", "0", "--runs-root", str(runs)]
    assert ts.main([*argv, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "[1/2] default/grpo/seed0: skip, done" in out
    assert "[2/2] stress/grpo/seed0: skip, halted at step 12" in out
    assert "  $ " not in out and "to train now: 0" in out


def test_bad_arguments_exit_2(capsys):
    assert ts.main(["--dry-run", "--variants", "mhpo,ppo"]) == 2
    assert "unknown variant 'ppo'; valid names: mhpo, mhpo_lfm_only" in capsys.readouterr().err
    assert ts.main(["--dry-run", "--seeds", "0,x"]) == 2
    assert ts.main(["--run", "--steps", "2"]) == 2  # would write into the study's folders
    assert "--steps needs --runs-root and --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        ts.main([])
    assert exc.value.code == 2
