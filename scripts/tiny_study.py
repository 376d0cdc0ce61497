"""The tiny study: MHPO, its ablations and the GRPO-family baselines on CPU, several seeds,
two settings, summarised over seeds.

    python scripts/reproduce.py tiny-study --dry-run                  # the plan, nothing run
    python scripts/reproduce.py tiny-study --run                      # every pending run
    python scripts/reproduce.py tiny-study --run --max-runs 10        # ten of them, then stop
    python scripts/reproduce.py tiny-study --summarize-only           # tables and plots again
    python scripts/reproduce.py tiny-study --run --variants grpo --seeds 0 --steps 2
        --runs-root /tmp/study/runs --out /tmp/study/out    # (one line) a 2-step check

One of ``--run``, ``--dry-run`` and ``--summarize-only`` is required: the whole study is
about two hours of CPU, so it never starts by default.

What is trained. Every run is one of the shipped tiny vision recipes (``recipes/tiny/``:
the embedded tiny Qwen2.5-VL on the synthetic shapes task) plus overrides:

- variants: ``mhpo`` (c=1.5, softplus shift: the loss's defaults), ``mhpo_lfm_only``,
  ``mhpo_dhp_only``, ``mhpo_symmetric`` (the registered ablations), ``mhpo_c0_5``,
  ``mhpo_c2_0`` (``algorithm.loss.c``), ``mhpo_relu`` (``algorithm.loss.shift=relu``),
  and the baselines ``grpo``, ``dapo`` (its own recipe: clip-higher, dynamic sampling,
  overlong shaping), ``gspo``, ``sapo``, ``cispo``;
- seeds 0, 1, 2 (``seed=N``). The seed is the RL seed only (rollout sampling, data order,
  minibatch order). The starting model is the same for every run: the embedded model's
  construction and supervised warm start are seeded on their own and cached, and the
  held-out problems are the same 100 for every run;
- settings: ``default`` (the tiny recipe's optimisation: 2 minibatches, 1 epoch, lr 3e-4)
  and ``stress`` (``trainer.minibatches=4 trainer.update_epochs=2 optim.lr=6e-4``: 8
  optimizer updates per batch of rollouts at twice the learning rate, so the later
  updates are far from the sampling policy: where a hard clip is expected to struggle
  and smooth bounds on the ratio should matter). These two are the study (about two
  hours); ``--settings`` defaults to them.
- a follow-up setting, run on request (``--settings mild``, 36 runs, about 50 min):
  ``mild`` (``trainer.update_epochs=2``: 4 updates per batch at the tiny recipe's lr
  3e-4), added when every MHPO variant collapsed under ``stress`` while the clipped
  losses did not, to tell rollout reuse from the doubled learning rate. A summary
  covers the two study settings and any follow-up setting that has run folders.

Every setting runs :data:`STEPS` steps with the held-out accuracy (greedy, the first
:data:`EVAL_SIZE` test problems) at the start and every :data:`EVAL_EVERY` steps, a
checkpoint every :data:`SAVE_EVERY` steps (one kept).

Budget (12 variants x 3 seeds x 2 settings = 72 runs, about two hours on 2 cores).
Measured on the 2-core machine (2026-11-25, nothing else running, warm start cached) with
2-step runs of ``grpo`` through this script: a ``default`` step takes 0.77-0.97 s
(0.9 s in the README's 350-step run), a ``stress`` step 1.4-1.6 s (8 optimizer updates
instead of 2), an evaluation of 100 problems 0.4-0.7 s, and each run pays about 16 s
before its first step (interpreter, imports, loading the cached warm start); the 2-step
runs took 18.7 s each. With T steps, evaluations every 10 steps and a checkpoint every
10 (about 6 s of evaluations and saves per run):

    36 runs x 0.9 T + 36 runs x 1.5 T  = 86 T s of steps
    72 runs x (16 + 6) s               = 1580 s of start-up, evaluation, checkpoints

T = 60 gives 5180 + 1580 = 6760 s, about 1 h 53 min, leaving a few minutes for DAPO's
dynamic sampling (up to 3 rollouts a step when groups have equal rewards). The per-step
times come from 2-step runs, not from the whole study: each run's wall time is recorded
(``study_attempts.jsonl`` in its folder) and ``summary.md`` reports the measured mean
per setting. The whole study, measured (2026-11-25, 2 cores, at times sharing them with
a test run): ``default`` 75 s a run (45 min for 36), ``stress`` 106 s (64 min), 1 h 49 min
in all; the ``mild`` follow-up 85 s a run. 60 steps is short: the 350-step default run
gains most of its accuracy after step 150, so the ``default`` setting mostly shows the early phase and the update
statistics, and ``stress`` whether a loss stays stable far off-policy.

Skipping and resuming. A run is done when ``checkpoint-<STEPS>`` exists in its folder
and ``metrics.jsonl`` reached that step; done runs are skipped. An interrupted run
resumes by itself (the trainer starts from the latest checkpoint in its folder). A run
the trainer stops on purpose because its updates went non-finite
(``trainer.max_consecutive_skips`` updates in a row, or non-finite weights) is recorded
as *halted* in ``study_halted.json`` in its folder, is not tried again (delete that file to retry) and
is reported in its own column; any other failure stops the study with its exit code.
Runs go in the order setting, seed, variant, so a study cut short by ``--max-runs``
has whole comparisons (every variant at seed 0) first.

Metrics (:func:`run_metrics`; only done runs enter the tables; each cell says over how
many seeds):

- final accuracy: ``eval/accuracy`` at the last step;
- accuracy AUC: the trapezoid area under ``eval/accuracy`` against the step, over the
  eval steps (start included), divided by the step range: the mean accuracy over training;
- grad-norm spikes: steps whose ``grad_norm`` (before clipping) is above
  :data:`SPIKE_FACTOR` times the run's median ``grad_norm`` (finite values only; a
  non-finite one is a skipped update, counted apart);
- ratio extremes: the largest ``ratio_max`` and the smallest ``ratio_min`` of the run;
- entropy at the end: the mean ``entropy`` of the last :data:`TAIL` steps;
- training reward at the end: the mean of ``reward/mean`` over the last :data:`TAIL`
  steps (DAPO: ``dynamic_sampling/reward_mean_sampled``, everything sampled rather than
  the groups dynamic sampling kept);
- collapsed: the training reward is 0 at each of the last :data:`TAIL` steps, or the final
  accuracy is more than :data:`COLLAPSE_DROP` below the accuracy at step 0;
- skipped updates: the sum of ``skipped_steps`` (optimizer updates skipped for a
  non-finite loss or gradient).

Outputs in ``--out``: ``summary.md`` (a table per setting, the command, commit and date,
done and pending runs), ``summary.json`` (the same numbers and every run's), and per
setting ``accuracy_<setting>.png`` (the variants' mean held-out accuracy curves) and
``stability_<setting>.png`` (gradient norm, largest and smallest ratio per step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

STEPS = 60
EVAL_EVERY = 10
EVAL_SIZE = 100
SAVE_EVERY = 10
SEEDS = (0, 1, 2)
SPIKE_FACTOR = 5.0
TAIL = 10
COLLAPSE_DROP = 0.2
DEFAULT_RUNS_ROOT = "runs/tiny_study"
DEFAULT_OUT = "docs/results/tiny_study"
HALTED_FILE = "study_halted.json"
ATTEMPTS_FILE = "study_attempts.jsonl"
LOG_FILE = "study_train.log"
DASH = "—"
# the trainer's own stops for updates gone non-finite (mhpo_vl/training/update.py, state.py)
HALT_RE = re.compile(
    r"mhpo-vl: error: (step (\d+): .*(?:optimizer updates in a row skipped|non-finite weights).*)"
)


@dataclass(frozen=True)
class Variant:
    name: str
    recipe: str
    overrides: tuple[str, ...]
    label: str
    family: str  # "mhpo" or "baseline" (the plots draw them solid / dashed)


_MHPO = "recipes/tiny/mhpo.yaml"
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("mhpo", _MHPO, (), "MHPO (c=1.5, softplus shift)", "mhpo"),
        Variant(
            "mhpo_lfm_only",
            _MHPO,
            ("algorithm.loss.name=mhpo_lfm_only",),
            "MHPO, modulator only",
            "mhpo",
        ),
        Variant(
            "mhpo_dhp_only",
            _MHPO,
            ("algorithm.loss.name=mhpo_dhp_only",),
            "MHPO, hazard only",
            "mhpo",
        ),
        Variant(
            "mhpo_symmetric",
            _MHPO,
            ("algorithm.loss.name=mhpo_symmetric",),
            "MHPO, one hazard for both sides",
            "mhpo",
        ),
        Variant("mhpo_c0_5", _MHPO, ("algorithm.loss.c=0.5",), "MHPO, c=0.5", "mhpo"),
        Variant("mhpo_c2_0", _MHPO, ("algorithm.loss.c=2.0",), "MHPO, c=2.0", "mhpo"),
        Variant("mhpo_relu", _MHPO, ("algorithm.loss.shift=relu",), "MHPO, relu shift", "mhpo"),
        Variant("grpo", "recipes/tiny/grpo.yaml", (), "GRPO (token clip 0.2)", "baseline"),
        Variant(
            "dapo", "recipes/tiny/dapo.yaml", (), "DAPO (clip-higher, dyn. sampling)", "baseline"
        ),
        Variant("gspo", "recipes/tiny/gspo.yaml", (), "GSPO (sequence ratio)", "baseline"),
        Variant("sapo", "recipes/tiny/sapo.yaml", (), "SAPO (soft gate)", "baseline"),
        Variant("cispo", "recipes/tiny/cispo.yaml", (), "CISPO (clipped IS weight)", "baseline"),
    )
}


@dataclass(frozen=True)
class Setting:
    name: str
    overrides: tuple[str, ...]
    about: str


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("default", (), "the tiny recipe's optimisation (2 minibatches, 1 epoch, lr 3e-4)"),
        Setting(
            "mild",
            ("trainer.update_epochs=2",),
            "2 minibatches x 2 epochs = 4 updates per batch of rollouts at the tiny recipe's "
            "lr 3e-4: reuse alone, half the stress setting's and at its learning rate",
        ),
        Setting(
            "stress",
            ("trainer.minibatches=4", "trainer.update_epochs=2", "optim.lr=6e-4"),
            "4 minibatches x 2 epochs = 8 updates per batch of rollouts, lr 6e-4: "
            "the later updates are far off-policy",
        ),
    )
}


STUDY_SETTINGS = ("default", "stress")  # the study proper; the others are follow-ups


def summary_settings(runs_root: Path, also: Sequence[str] = ()) -> list[str]:
    """The study's settings, plus each follow-up setting that has a folder under
    ``runs_root`` or is in ``also`` (being trained now), in :data:`SETTINGS` order."""
    return [
        name
        for name in SETTINGS
        if name in STUDY_SETTINGS or name in also or (runs_root / name).is_dir()
    ]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunSpec:
    setting: str
    variant: str
    seed: int
    run_dir: str  # as given: relative to the repository root, or absolute
    steps: int = STEPS

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.variant}/seed{self.seed}"

    @property
    def path(self) -> Path:
        return ROOT / self.run_dir  # an absolute run_dir stays as it is

    @property
    def recipe(self) -> str:
        return VARIANTS[self.variant].recipe

    def overrides(self, output_dir: str | None = None) -> list[str]:
        common = [
            f"name=tiny_study_{self.setting}_{self.variant}_seed{self.seed}",
            f"seed={self.seed}",
            f"trainer.output_dir={output_dir or self.run_dir}",
            f"trainer.max_steps={self.steps}",
            f"trainer.save_every={min(SAVE_EVERY, self.steps)}",
            "trainer.keep_last=1",
            "trainer.progress_bar=false",
            f"eval.every={min(EVAL_EVERY, self.steps)}",
            f"eval.size={EVAL_SIZE}",
        ]
        return [*common, *VARIANTS[self.variant].overrides, *SETTINGS[self.setting].overrides]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mhpo_vl", "train", self.recipe, *self.overrides()]


def plan(
    settings: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    runs_root: str = DEFAULT_RUNS_ROOT,
    steps: int = STEPS,
) -> list[RunSpec]:
    """Every run, in the order they train: setting, then seed, then variant."""
    return [
        RunSpec(s, v, k, f"{runs_root.rstrip('/')}/{s}/{v}/seed{k}", steps)
        for s in settings
        for k in seeds
        for v in variants
    ]


def _checkpoints(run_dir: Path) -> list[int]:
    if not run_dir.is_dir():
        return []
    found = (re.fullmatch(r"checkpoint-(\d+)", p.name) for p in run_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def run_state(run_dir: Path, steps: int) -> tuple[str, int]:
    """``("done", steps)``, ``("halted", step)``, ``("resume", checkpoint step)`` or
    ``("new", 0)``."""
    ckpts = _checkpoints(run_dir)
    if steps in ckpts and any(r.get("step") == steps for r in read_records(run_dir)):
        return "done", steps
    halted = run_dir / HALTED_FILE
    if halted.is_file():
        return "halted", int(json.loads(halted.read_text(encoding="utf-8")).get("step", 0))
    if ckpts:
        return "resume", ckpts[-1]
    return "new", 0


# --------------------------------------------------------------------------- metrics


def _number(value: Any) -> Any:
    """The trainer writes non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return value


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` of a run folder, read by the trainer's own reader, with the
    non-finite numbers restored (empty when the run has not logged yet)."""
    from mhpo_vl.tracking import read_metrics

    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return []
    return [{k: _number(v) for k, v in rec.items()} for rec in read_metrics(run_dir)]


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def series(records: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` for each record that has ``key`` as a number (NaN and inf kept)."""
    return [(int(r["step"]), float(r[key])) for r in records if _is_num(r.get(key))]


def curve_auc(points: Sequence[tuple[float, float]]) -> float | None:
    """Trapezoid area under ``(step, value)`` points divided by the step range: the mean
    value over the range. One point: its value; none: None."""
    pts = sorted(points)
    if not pts:
        return None
    if len(pts) == 1 or pts[-1][0] == pts[0][0]:
        return pts[-1][1]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False))
    return area / (pts[-1][0] - pts[0][0])


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def grad_spikes(values: Sequence[float], factor: float = SPIKE_FACTOR) -> int:
    """How many finite values exceed ``factor`` times the median of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0
    limit = factor * _median(finite)
    return sum(v > limit for v in finite)


def ratio_extremes(records: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The run's largest ``ratio_max`` and smallest ``ratio_min`` (NaN values ignored)."""
    highs = [v for _, v in series(records, "ratio_max") if not math.isnan(v)]
    lows = [v for _, v in series(records, "ratio_min") if not math.isnan(v)]
    return (max(highs) if highs else None, min(lows) if lows else None)


def tail_mean(records: Sequence[dict[str, Any]], key: str, last: int = TAIL) -> float | None:
    """Mean of ``key`` over the last ``last`` records that have it (finite values)."""
    values = [v for _, v in series(records, key) if math.isfinite(v)][-last:]
    return sum(values) / len(values) if values else None


SAMPLED_REWARD = "dynamic_sampling/reward_mean_sampled"


def reward_key(records: Sequence[dict[str, Any]]) -> str:
    """The column with the mean reward of everything sampled. With dynamic sampling
    (DAPO) ``reward/mean`` is over the kept groups only, which never include an all-0
    group, so the sampled mean is the one to compare and to judge a collapse by."""
    return SAMPLED_REWARD if any(SAMPLED_REWARD in r for r in records) else "reward/mean"


def is_collapsed(
    records: Sequence[dict[str, Any]], last: int = TAIL, drop: float = COLLAPSE_DROP
) -> bool:
    """The sampled mean reward (:func:`reward_key`) is 0 at each of the last ``last``
    training steps (all of them when fewer), or the final held-out accuracy is more than
    ``drop`` below the first."""
    rewards = [v for _, v in series(records, reward_key(records))][-last:]
    if rewards and all(v == 0 for v in rewards):
        return True
    acc = series(records, "eval/accuracy")
    return len(acc) >= 2 and acc[-1][1] < acc[0][1] - drop


def run_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's numbers for the tables (see the module docstring for the definitions)."""
    acc = series(records, "eval/accuracy")
    high, low = ratio_extremes(records)
    return {
        "start_accuracy": acc[0][1] if acc else None,
        "final_accuracy": acc[-1][1] if acc else None,
        "accuracy_auc": curve_auc(acc),
        "grad_spikes": grad_spikes([v for _, v in series(records, "grad_norm")]),
        "ratio_max": high,
        "ratio_min": low,
        "entropy_end": tail_mean(records, "entropy"),
        "reward_end": tail_mean(records, reward_key(records)),
        "collapsed": is_collapsed(records),
        "skipped_updates": sum(v for _, v in series(records, "skipped_steps") if math.isfinite(v)),
        "steps": max((int(r["step"]) for r in records), default=0),
    }


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; None for one value) of the non-None
    values, and how many there were."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    if n < 2:
        std = None
    elif all(math.isfinite(v) for v in vals):
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    else:
        std = math.nan
    return {"mean": mean, "std": std, "n": n}


# --------------------------------------------------------------------------- the summary

STAT_KEYS = (
    "final_accuracy",
    "accuracy_auc",
    "grad_spikes",
    "ratio_max",
    "ratio_min",
    "entropy_end",
    "reward_end",
    "skipped_updates",
)


@dataclass
class RunResult:
    spec: RunSpec
    state: str
    step: int
    records: list[dict[str, Any]]
    wall_s: float | None = None  # the study's attempts at it, summed
    commits: tuple[str, ...] = ()  # the commits its attempts trained at


def _attempts(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / ATTEMPTS_FILE
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _commits(attempts: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The commits of the attempts that trained steps, in order, each once."""
    trained = (a for a in attempts if a.get("to_step", 0) > a.get("from_step", 0))
    return tuple(dict.fromkeys(str(a.get("commit", "unknown")) for a in trained))


def _wall_time(attempts: Sequence[dict[str, Any]]) -> float | None:
    return sum(float(a.get("wall_s", 0.0)) for a in attempts) if attempts else None


def collect(specs: Sequence[RunSpec]) -> list[RunResult]:
    """Each planned run's state, and its metrics (up to its last step) when done."""
    results = []
    for spec in specs:
        state, step = run_state(spec.path, spec.steps)
        records = []
        if state == "done":
            records = [r for r in read_records(spec.path) if int(r["step"]) <= spec.steps]
        attempts = _attempts(spec.path)
        results.append(
            RunResult(spec, state, step, records, _wall_time(attempts), _commits(attempts))
        )
    return results


def summarize(results: Sequence[RunResult]) -> dict[str, Any]:
    """Per setting and variant: seeds done / halted / pending, every done run's metrics,
    and mean / std over the done seeds."""
    settings: dict[str, Any] = {}
    counts = {"planned": len(results), "done": 0, "halted": 0, "pending": 0}
    trained_at: dict[str, int] = {}
    for res in results:
        spec = res.spec
        setting = settings.setdefault(
            spec.setting,
            {
                "about": SETTINGS[spec.setting].about,
                "overrides": list(SETTINGS[spec.setting].overrides),
                "steps": spec.steps,
                "variants": {},
            },
        )
        var = setting["variants"].setdefault(
            spec.variant,
            {
                "label": VARIANTS[spec.variant].label,
                "recipe": spec.recipe,
                "overrides": list(VARIANTS[spec.variant].overrides),
                "seeds": [],
                "done": [],
                "halted": {},
                "pending": [],
                "runs": {},
                "wall_s": [],
            },
        )
        var["seeds"].append(spec.seed)
        if res.state == "done":
            counts["done"] += 1
            for commit in res.commits or ("unknown",):
                trained_at[commit] = trained_at.get(commit, 0) + 1
            var["done"].append(spec.seed)
            var["runs"][str(spec.seed)] = run_metrics(res.records)
            if res.wall_s is not None:
                var["wall_s"].append(res.wall_s)
        elif res.state == "halted":
            counts["halted"] += 1
            var["halted"][str(spec.seed)] = res.step
        else:
            counts["pending"] += 1
            var["pending"].append(spec.seed)
    for setting in settings.values():
        for var in setting["variants"].values():
            runs = list(var["runs"].values())
            var["stats"] = {k: mean_std([r[k] for r in runs]) for k in STAT_KEYS}
            var["collapsed"] = sum(bool(r["collapsed"]) for r in runs)
    return {"counts": counts, "trained_at": trained_at, "settings": settings}


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return DASH
    if not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _cell(stat: dict[str, Any], spec: str) -> str:
    if not stat["n"]:
        return DASH
    if stat["std"] is None:
        return _fmt(stat["mean"], spec)
    return (
        f"{_fmt(stat['mean'], spec)} ± {_fmt(stat['std'], '.2g' if spec.endswith('g') else spec)}"
    )


COLUMNS = (
    ("final_accuracy", "final acc", ".3f"),
    ("accuracy_auc", "acc AUC", ".3f"),
    ("grad_spikes", "grad spikes", ".1f"),
    ("ratio_max", "max ratio", ".3g"),
    ("ratio_min", "min ratio", ".3g"),
    ("entropy_end", "entropy (end)", ".3f"),
    ("reward_end", "reward (end)", ".3f"),
    ("skipped_updates", "skipped updates", ".1f"),
)


def overview(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per variant, one column per setting, each cell the final
    accuracy (mean ± std) and how many of the done seeds collapsed."""
    names = list(summary["settings"])
    variants = list(dict.fromkeys(v for s in summary["settings"].values() for v in s["variants"]))
    lines = [
        "## Overview: final held-out accuracy (mean ± std over seeds), collapsed runs",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for vname in variants:
        cells = []
        for name in names:
            var = summary["settings"][name]["variants"].get(vname)
            n = len(var["done"]) if var else 0
            if not n:
                cells.append(DASH)
                continue
            acc = _cell(var["stats"]["final_accuracy"], ".3f")
            cells.append(f"{acc} ({var['collapsed']}/{n} collapsed)")
        lines.append(f"| {vname} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(summary: dict[str, Any], meta: dict[str, str]) -> str:
    c = summary["counts"]
    lines = [
        "# Tiny study: MHPO against the baselines on CPU",
        "",
        f"Produced by `{meta['command']}` at commit `{meta['commit']}` on {meta['date']}.",
        "",
        f"Runs: {c['done']} done, {c['halted']} halted, {c['pending']} pending, of "
        f"{c['planned']} planned. Only done runs enter the tables; `seeds` is how many "
        "each row's cells are over (done / planned). Cells are mean ± sample standard "
        "deviation over those seeds.",
        "",
        "The done runs were trained at: "
        + (
            ", ".join(
                f"`{commit}` ({n} run{'s' if n != 1 else ''})"
                for commit, n in summary["trained_at"].items()
            )
            or "none yet"
        )
        + " (from each run's `study_attempts.jsonl`; a run resumed across commits counts "
        "under each).",
        "",
        "Every run is a `recipes/tiny/` vision recipe (the embedded tiny Qwen2.5-VL, the "
        "synthetic shapes task) with the study's overrides (`seed=<k>`, `trainer.max_steps`, "
        f"`eval.every`, `eval.size={EVAL_SIZE}`, `trainer.save_every`, `trainer.keep_last=1`), "
        "the variant's and the setting's; see `scripts/tiny_study.py`. The seed changes only the RL seed (rollout sampling, data "
        "and minibatch order): every run starts from the same warm-started model and is "
        f"evaluated on the same {EVAL_SIZE} held-out problems (greedy). One evaluation of "
        f"{EVAL_SIZE} problems has a binomial standard error of about 0.045 near 0.7, so "
        "accuracy differences of a few points are noise.",
        "",
        "Columns: *final acc*: `eval/accuracy` at the last step; *acc AUC*: trapezoid area "
        "under the accuracy curve over the eval steps (step 0 included) divided by the step "
        f"range; *grad spikes*: steps with `grad_norm` above {SPIKE_FACTOR:g}x the run's "
        "median (finite values); *max ratio* / *min ratio*: the run's largest `ratio_max` "
        f"and smallest `ratio_min`; *entropy (end)*: mean `entropy` of the last {TAIL} "
        f"steps; *reward (end)*: mean training reward of the last {TAIL} steps ({TAIL} x "
        "128 sampled rollouts, a less noisy signal than one greedy evaluation of 100 "
        "problems; for DAPO over everything sampled, not only the groups dynamic sampling "
        f"kept); *collapsed*: runs whose training reward was 0 at each of the last {TAIL} "
        f"steps or whose final accuracy is more than {COLLAPSE_DROP:g} below the start; "
        "*skipped updates*: sum of `skipped_steps` (non-finite updates); *halted*: runs the "
        "trainer stopped because their updates stayed non-finite (not in the other columns).",
        "",
        "Variants: "
        + "; ".join(
            f"`{v.name}`: {v.label}" + (f" (`{' '.join(v.overrides)}`)" if v.overrides else "")
            for v in VARIANTS.values()
        )
        + ".",
    ]
    lines += ["", *overview(summary)]
    for name, setting in summary["settings"].items():
        over = " ".join(f"`{o}`" for o in setting["overrides"]) or "none"
        lines += [
            "",
            f"## {name}: {setting['about']}",
            "",
            f"{setting['steps']} steps, held-out accuracy every "
            f"{min(EVAL_EVERY, setting['steps'])}; the setting's overrides: {over}.",
            "",
            "| variant | seeds | "
            + " | ".join(h for _, h, _ in COLUMNS)
            + " | collapsed | halted |",
            "|---|---|" + "---|" * len(COLUMNS) + "---|---|",
        ]
        walls = []
        for vname, var in setting["variants"].items():
            n = len(var["done"])
            cells = [_cell(var["stats"][k], f) for k, _, f in COLUMNS]
            collapsed = f"{var['collapsed']}/{n}" if n else DASH
            halted = str(len(var["halted"])) if var["halted"] else "0"
            lines.append(
                f"| {vname} | {n}/{len(var['seeds'])} | "
                + " | ".join(cells)
                + f" | {collapsed} | {halted} |"
            )
            walls += var["wall_s"]
        if walls:
            lines += [
                "",
                f"Wall time of the {len(walls)} done runs this study timed: mean "
                f"{sum(walls) / len(walls):.0f} s, total {sum(walls) / 60:.1f} min.",
            ]
        if any(var["done"] for var in setting["variants"].values()):
            lines += [
                "",
                f"![accuracy, {name}](accuracy_{name}.png)",
                "",
                f"![stability, {name}](stability_{name}.png)",
            ]
    pending = [
        f"{s}/{v}/seed{k}"
        for s, setting in summary["settings"].items()
        for v, var in setting["variants"].items()
        for k in var["pending"]
    ]
    if 0 < len(pending) <= 12:
        lines += ["", f"Pending ({len(pending)}): " + ", ".join(pending) + "."]
    elif pending:
        per = {s: sum(p.startswith(f"{s}/") for p in pending) for s in summary["settings"]}
        lines += [
            "",
            f"Pending: {len(pending)} (" + ", ".join(f"{s}: {n}" for s, n in per.items()) + ").",
        ]
    halted = [
        f"{s}/{v}/seed{k} (step {step})"
        for s, setting in summary["settings"].items()
        for v, var in setting["variants"].items()
        for k, step in var["halted"].items()
    ]
    if halted:
        lines += ["", "Halted: " + ", ".join(halted) + "."]
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # as the trainer writes them
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- plots


def _mean_curves(
    results: Sequence[RunResult], setting: str, key: str
) -> dict[str, tuple[list[int], list[float]]]:
    """variant -> (steps, mean over its done seeds of ``key`` at steps all of them have;
    NaN / inf values left out of the mean)."""
    by_variant: dict[str, list[dict[int, float]]] = {}
    for res in results:
        if res.spec.setting == setting and res.state == "done":
            by_variant.setdefault(res.spec.variant, []).append(dict(series(res.records, key)))
    out = {}
    for variant, runs in by_variant.items():
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        xs, ys = [], []
        for step in steps:
            vals = [r[step] for r in runs if math.isfinite(r[step])]
            if vals:
                xs.append(step)
                ys.append(sum(vals) / len(vals))
        if xs:
            out[variant] = (xs, ys)
    return out


def _smooth(ys: list[float], window: int = 5) -> list[float]:
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
            for i in range(len(ys))]  # fmt: skip


def _style(variant: str, order: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    i = order.index(variant) if variant in order else 0
    dashed = VARIANTS[variant].family == "baseline"
    return {"color": cmap(i % 20), "ls": "--" if dashed else "-", "label": variant}


def plot_setting(results: Sequence[RunResult], setting: str, out: Path) -> list[Path]:
    """``accuracy_<setting>.png`` and ``stability_<setting>.png`` (nothing without a done run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(VARIANTS)
    written = []
    acc = _mean_curves(results, setting, "eval/accuracy")
    if not acc:
        return written
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for variant, (xs, ys) in acc.items():
        lw = 2.6 if variant == "mhpo" else 1.4
        ax.plot(xs, ys, marker="o", ms=3, lw=lw, **_style(variant, order))
    ax.set(
        title=f"Held-out accuracy, {setting} (mean over done seeds)",
        xlabel="step",
        ylabel="eval/accuracy",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = out / f"accuracy_{setting}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    panels = (("grad_norm", "grad_norm (before clipping)"), ("ratio_max", "ratio_max"),
              ("ratio_min", "ratio_min"))  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for variant, (xs, ys) in _mean_curves(results, setting, key).items():
            lw = 2.2 if variant == "mhpo" else 1.1
            ax.plot(xs, _smooth(ys), lw=lw, **_style(variant, order))
        ax.set_yscale("log")
        ax.set(title=f"{title}, {setting} (mean over done seeds, 5-step moving average)")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = out / f"stability_{setting}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


# --------------------------------------------------------------------------- running


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit_id(ignore: Path | None = None) -> str:
    """``git rev-parse HEAD``, with a note when tracked files have uncommitted changes
    (other than under ``ignore``: the summary's own folder, rewritten each time)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    spec = ["--", "."]
    if ignore is not None and ignore.resolve().is_relative_to(ROOT):
        spec.append(f":(exclude){ignore.resolve().relative_to(ROOT)}")
    if head != "unknown" and _git("status", "--porcelain", "--untracked-files=no", *spec):
        head += " (with uncommitted changes)"
    return head


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_summary(results: Sequence[RunResult], out: Path, command: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    meta = {"command": command, "commit": commit_id(ignore=out), "date": _now()}
    summary = {**meta, "definitions": _definitions(), **summary}
    (out / "summary.md").write_text(render_markdown(summary, meta), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(_json_safe(summary), indent=1) + "\n", encoding="utf-8"
    )
    for setting in summary["settings"]:
        plot_setting(results, setting, out)
    return summary


def _definitions() -> dict[str, str]:
    return {
        "final_accuracy": "eval/accuracy at the last step",
        "accuracy_auc": "trapezoid area under eval/accuracy over the eval steps / step range",
        "grad_spikes": f"steps with grad_norm > {SPIKE_FACTOR:g} x the run's median (finite)",
        "ratio_max": "largest ratio_max of the run",
        "ratio_min": "smallest ratio_min of the run",
        "entropy_end": f"mean entropy of the last {TAIL} steps",
        "reward_end": f"mean training reward (everything sampled) of the last {TAIL} steps",
        "collapsed": f"training reward 0 at each of the last {TAIL} steps, or final accuracy "
        f"more than {COLLAPSE_DROP:g} below the start",
        "skipped_updates": "sum of skipped_steps (non-finite updates skipped)",
        "std": "sample standard deviation over the done seeds (n - 1)",
    }


def _display(cmd: list[str]) -> str:
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def _validate(spec: RunSpec) -> str | None:
    """None when the run's recipe and overrides validate, else the one-line problem."""
    from mhpo_vl.errors import UserError
    from mhpo_vl.validation import load_recipe

    try:
        load_recipe(ROOT / spec.recipe, spec.overrides(output_dir=str(spec.path)))
    except UserError as exc:
        return " ".join(str(exc).split())
    return None


def _log_text(log: Path, start: int) -> str:
    """What the log gained from byte ``start`` on."""
    return log.read_bytes()[start:].decode("utf-8", errors="replace")


def _halt_reason(text: str) -> tuple[int, str] | None:
    """(step, message) when the trainer stopped the run for non-finite updates."""
    for line in reversed(text.splitlines()):
        m = HALT_RE.search(line)
        if m:
            return int(m.group(2)), m.group(1)
    return None


def _env() -> dict[str, str]:
    """This environment with this interpreter's scripts folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def train_one(spec: RunSpec, from_step: int) -> tuple[int, str, float]:
    """Train (or resume) one run, its output appended to ``<run>/study_train.log`` and the
    attempt to ``<run>/study_attempts.jsonl``. Returns (exit code, the log's new text,
    wall seconds)."""
    path = spec.path
    path.mkdir(parents=True, exist_ok=True)
    log = path / LOG_FILE
    cmd = spec.command()
    start = log.stat().st_size if log.exists() else 0
    t0 = time.monotonic()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"# {_now()} $ {_display(cmd)}\n")
        fh.flush()
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        except KeyboardInterrupt:
            rc = 130
    wall = time.monotonic() - t0
    last = max((int(r["step"]) for r in read_records(path)), default=0)
    attempt = {
        "date": _now(),
        "commit": commit_id(),
        "from_step": from_step,
        "to_step": last,
        "rc": rc,
        "wall_s": round(wall, 2),
    }
    with (path / ATTEMPTS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(attempt) + "\n")
    return rc, _log_text(log, start), wall


# --------------------------------------------------------------------------- the CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce.py tiny-study",
        description="Train and summarise the CPU study of MHPO against the baselines.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--run",
        action="store_true",
        help="train the pending runs (at most --max-runs), then write the summary",
    )
    action.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    action.add_argument(
        "--summarize-only",
        action="store_true",
        help="rebuild summary.md, summary.json and the plots from the runs there are",
    )
    parser.add_argument(
        "--settings",
        default=",".join(STUDY_SETTINGS),
        help=f"from: {', '.join(SETTINGS)} (default: {','.join(STUDY_SETTINGS)}, the study; "
        "the others are follow-ups)",
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"from: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="e.g. 0,1,2")
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help="train at most N pending runs, then stop (run the study in pieces)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"where summary.md, summary.json and the PNGs go (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--runs-root",
        default=None,
        help=f"the runs' folders: <root>/<setting>/<variant>/seed<k> (default: {DEFAULT_RUNS_ROOT})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per run instead of {STEPS}, for a quick check of the pipeline; needs "
        "--runs-root and --out elsewhere than the study's",
    )
    return parser


def _names(given: str, valid: dict[str, Any], what: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in given.split(",") if n.strip()))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(
            f"unknown {what} {unknown[0]!r}; valid names: {', '.join(valid)}"
            if unknown
            else f"no {what} given"
        )
    return names


def _seeds(given: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(s) for s in given.split(",") if s.strip()))
    except ValueError:
        raise ValueError(f"--seeds expects integers like 0,1,2, got {given!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds expects integers >= 0, got {given!r}")
    return seeds


def _resolve(where: str) -> Path:
    return ROOT / where  # an absolute path stays as it is


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = _names(args.settings, SETTINGS, "setting")
        variants = _names(args.variants, VARIANTS, "variant")
        seeds = _seeds(args.seeds)
        if args.max_runs is not None and args.max_runs < 1:
            raise ValueError("--max-runs must be >= 1")
        if args.steps is not None:
            if args.steps < 1:
                raise ValueError("--steps must be >= 1")
            if args.runs_root is None or args.out is None:
                raise ValueError(
                    "--steps needs --runs-root and --out, so that the study's own runs "
                    "and summary stay as they are"
                )
    except ValueError as exc:
        print(f"reproduce.py tiny-study: error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs_root or DEFAULT_RUNS_ROOT
    out = _resolve(args.out or DEFAULT_OUT)
    steps = args.steps or STEPS
    command = shlex.join(["python", "scripts/reproduce.py", "tiny-study", *argv])

    # the summary covers the whole study under runs_root; the selection is what trains
    every = plan(
        summary_settings(_resolve(runs_root), settings),
        list(VARIANTS),
        sorted({*SEEDS, *seeds}),
        runs_root,
        steps,
    )
    if args.summarize_only:
        summary = write_summary(collect(every), out, command)
        _print_counts(summary["counts"], out)
        return 0

    specs = plan(settings, variants, seeds, runs_root, steps)
    states = {spec: run_state(spec.path, spec.steps) for spec in specs}
    pending = [s for s in specs if states[s][0] in ("new", "resume")]
    chosen = pending if args.max_runs is None else pending[: args.max_runs]
    n_done = sum(st == "done" for st, _ in states.values())
    n_halted = sum(st == "halted" for st, _ in states.values())
    print(
        f"tiny-study: {len(settings)} settings x {len(variants)} variants x {len(seeds)} "
        f"seeds = {len(specs)} runs of {steps} steps under {runs_root} (commands run from "
        f"the repository root; python is {sys.executable})"
    )
    print(
        f"done {n_done}, halted {n_halted}, pending {len(pending)}; "
        f"to train now: {len(chosen)}"
        + (f" (--max-runs {args.max_runs})" if args.max_runs is not None else "")
    )
    problems = []
    checked: set[tuple[str, str]] = set()
    for spec in chosen:
        if (spec.setting, spec.variant) not in checked:
            checked.add((spec.setting, spec.variant))
            if problem := _validate(spec):
                problems.append(f"{spec.setting}/{spec.variant}: {problem}")
    for problem in problems:
        print(f"invalid recipe: {problem}", file=sys.stderr)

    chosen_set = set(chosen)
    for i, spec in enumerate(specs, 1):
        state, step = states[spec]
        head = f"[{i}/{len(specs)}] {spec.key}:"
        if state == "done":
            print(f"{head} skip, done ({spec.run_dir}/checkpoint-{step})")
        elif state == "halted":
            print(
                f"{head} skip, halted at step {step} (delete {spec.run_dir}/{HALTED_FILE} "
                "to try again)"
            )
        elif spec not in chosen_set:
            print(f"{head} later (beyond --max-runs {args.max_runs})")
        else:
            how = f"resumes from checkpoint-{step}" if state == "resume" else "from the start"
            print(f"{head} train ({how})")
            print(f"  $ {_display(spec.command())}")
    if args.dry_run:
        print("dry run: nothing was run")
        return 2 if problems else 0
    if problems:
        print("reproduce.py tiny-study: stopped before running anything", file=sys.stderr)
        return 2

    rc = 0
    for i, spec in enumerate(chosen, 1):
        state, step = states[spec]
        print(
            f"({i}/{len(chosen)}) {spec.key}: training, log in {spec.run_dir}/{LOG_FILE}",
            flush=True,
        )
        code, text, wall = train_one(spec, step)
        new_state, new_step = run_state(spec.path, spec.steps)
        if code == 0 and new_state == "done":
            acc = series(read_records(spec.path), "eval/accuracy")
            final = f", final accuracy {acc[-1][1]:.3f}" if acc else ""
            print(f"  done in {wall:.0f} s{final}", flush=True)
            continue
        halt = _halt_reason(text) if code == 2 else None
        if halt is not None:
            (spec.path / HALTED_FILE).write_text(
                json.dumps({"step": halt[0], "reason": halt[1], "date": _now()}) + "\n",
                encoding="utf-8",
            )
            print(f"  halted at step {halt[0]} after {wall:.0f} s: {halt[1]}", flush=True)
            continue
        if code == 130:
            print("reproduce.py tiny-study: interrupted; the same command resumes", file=sys.stderr)
            rc = 130
            break
        tail = "\n".join(text.splitlines()[-20:])
        why = f"exit {code}" if code else "exit 0 but no final checkpoint"
        print(
            f"{tail}\nreproduce.py tiny-study: {spec.key}: training failed ({why}); "
            f"see {spec.run_dir}/{LOG_FILE}",
            file=sys.stderr,
        )
        rc = code or 1
        break
    summary = write_summary(collect(every), out, command)
    _print_counts(summary["counts"], out)
    return rc


def _print_counts(counts: dict[str, int], out: Path) -> None:
    print(
        f"summary: {counts['done']} done, {counts['halted']} halted, {counts['pending']} "
        f"pending of {counts['planned']}; {out / 'summary.md'}"
    )


if __name__ == "__main__":
    sys.exit(main())
