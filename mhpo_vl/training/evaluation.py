"""Eval suites during training: the held-out split and each ``eval.benchmarks`` entry,
scored by the eval module (the same code as ``mhpo-vl eval``), each process scoring
its share of the rows."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from mhpo_vl import rng
from mhpo_vl.batch import SamplingParams
from mhpo_vl.data import BadRowLog, ProblemSet

if TYPE_CHECKING:
    from mhpo_vl.config import Recipe
    from mhpo_vl.training.state import Run

Suite = tuple[str, Any, list[dict]]  # (metric prefix, benchmark, rows)


def eval_suites(
    cfg: Recipe, eval_set: ProblemSet | None, prompt_limit: Any = None
) -> tuple[list[Suite], dict[str, BadRowLog]]:
    """(metric prefix, benchmark, rows) for the held-out split and each ``eval.benchmarks``
    entry, loaded once (bad rows dropped like the train split's, prompts over
    ``prompt_limit`` too); also each benchmark's bad-row report."""
    from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark
    from mhpo_vl.eval.loaders import load_benchmark

    suites: list[Suite] = []
    if eval_set is not None:
        spec = cfg.data.eval
        heldout = Benchmark(
            name="heldout", hub_id=spec.source, splits=(spec.split,), to_row=lambda r, _s: dict(r),
            template=cfg.data.template, scorer="accuracy",
        )  # fmt: skip
        suites.append(("eval/accuracy", heldout, eval_set.valid_rows(cfg.eval.size)))
    reports = {}
    for name in cfg.eval.benchmarks:
        reports[name] = BadRowLog(f"eval.benchmarks.{name}", name)
        rows = load_benchmark(
            name, limit=cfg.eval.size, report=reports[name], prompt_limit=prompt_limit,
            **cfg.data.limits(),
        )  # fmt: skip
        suites.append((f"eval/{name}/accuracy", BENCHMARKS.get(name), rows))
    return suites, reports


def share(rows: list[dict], rank: int, world: int, lockstep: bool) -> tuple[list[dict], int]:
    """This process's rows (every ``world``-th) and how many of them count. In lockstep
    every process gets the same number of rows, padded with repeats that do not count."""
    mine = rows[rank::world]
    if not lockstep or not rows:
        return mine, len(mine)
    width = -(-len(rows) // world)
    pad = (mine or rows[:1]) * width
    return (mine + pad)[:width], len(mine)


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Accuracy on each eval suite with the recipe's eval decoding (greedy by default),
    plus per-task accuracy where rows name a task. Each process scores its share.

    Uses a forked RNG so that evaluating never changes the training trajectory.
    """
    from mhpo_vl.eval.runner import evaluate as run_benchmark

    cfg, e, par = run.cfg, run.cfg.eval, run.par
    if not run.suites:
        return {}
    max_new = e.max_new_tokens or cfg.rollout.max_new_tokens

    def generate(prompts: list[dict[str, Any]], k: int) -> list[str]:
        params = SamplingParams(n=k, max_new_tokens=max_new, temperature=e.temperature)
        return run.engine.generate(prompts, params).completions

    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    run.engine.wake()
    with rng.fork(par.device):  # the device's generator too: sampling draws from it
        for prefix, bench, all_rows in run.suites:
            rows, counted = share(all_rows, par.rank, par.world, run.generate_in_step)
            result = run_benchmark(
                generate, bench, rows, 1, system=cfg.data.system_prompt, batch_size=e.batch_size
            )
            problems = result["problems"][:counted]
            metrics.update(suite_accuracy(run, prefix, rows[:counted], problems))
    run.engine.sleep()
    metrics["time/eval"] = time.perf_counter() - t0
    return metrics


def suite_accuracy(
    run: Run, prefix: str, rows: list[dict], problems: list[dict]
) -> dict[str, float]:
    """Accuracy under ``prefix`` and per task (``prefix/<task>``), from every process's
    (correct, count) sums: exact whatever share of the rows each process scored."""
    sums: dict[str, list[float]] = {prefix: [0.0, 0.0]}
    for row, prob in zip(rows, problems, strict=True):
        for key in [prefix] + ([f"{prefix}/{row['task']}"] if row.get("task") else []):
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += prob["scores"][0]
            acc[1] += 1
    totals: dict[str, list[float]] = {}
    for item in run.par.gather(sums):
        for key, (correct, count) in item.items():
            acc = totals.setdefault(key, [0.0, 0.0])
            acc[0] += correct
            acc[1] += count
    return {key: correct / max(count, 1.0) for key, (correct, count) in sorted(totals.items())}
