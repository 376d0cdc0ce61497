"""How each metric reduces, declared once: over a step's micro-batches and updates
(:func:`summarize`) and over processes (:func:`reduce_over_processes`).

The first rule in :data:`REDUCTIONS` whose pattern matches a metric's name applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mhpo_vl.errors import RunHalted
from mhpo_vl.rewards import reward_stats

if TYPE_CHECKING:
    from mhpo_vl.parallel import Parallel
    from mhpo_vl.training.collect import ScoredBatch
    from mhpo_vl.training.state import Run


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class Reduction:
    pattern: str
    in_step: str  # over one step's micro-batches / optimizer updates
    over_processes: str
    why: str

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


REDUCTIONS: tuple[Reduction, ...] = (
    Reduction(r".*_min", "min", "min", "the smallest value anywhere"),
    Reduction(r".*_max", "max", "max", "the largest value anywhere"),
    Reduction(
        "loss",
        "sum_per_update",
        "mean",
        "micro-batch losses add up to their minibatch's loss; the mean over updates",
    ),  # fmt: skip
    Reduction("skipped_steps", "sum", "mean", "a count; every process skips together"),
    Reduction(
        r"reward_(?:failures|cut_off|refused)/.*", "mean", "sum", "each process counts its own"
    ),
    Reduction(r".*", "mean", "mean", "everything else"),
)

_FUNCS: dict[str, Callable[[list[float]], float]] = {
    "min": min,
    "max": max,
    "sum": sum,
    "mean": _mean,
}


def start_memory_peak(device: torch.device) -> None:
    """Start measuring this step's peak accelerator memory (see :func:`memory_peak`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_peak(device: torch.device) -> dict[str, float]:
    """``perf/gpu_memory_gb_max``: the most memory torch's allocator held at once on the
    accelerator since :func:`start_memory_peak`, in GiB (the max over processes; what
    ``mhpo-vl estimate`` predicts). Nothing on the CPU."""
    if device.type != "cuda":
        return {}
    return {"perf/gpu_memory_gb_max": torch.cuda.max_memory_allocated(device) / 2**30}


def rule(name: str) -> Reduction:
    return next(r for r in REDUCTIONS if r.matches(name))


def summarize(values: dict[str, list[float]]) -> dict[str, float]:
    """One step's per-micro-batch / per-update values -> one float each."""
    updates = len(values.get("grad_norm", [])) or 1
    out = {}
    for name, v in values.items():
        how = rule(name).in_step
        out[name] = sum(v) / updates if how == "sum_per_update" else _FUNCS[how](v)
    return out


def reduce_over_processes(par: Parallel, metrics: dict[str, float]) -> dict[str, float]:
    """Every process's step metrics -> the run's (keys may differ between processes)."""
    if par.world == 1:
        return metrics
    columns: dict[str, list[float]] = {}
    for item in par.gather(metrics):
        for k, v in item.items():
            columns.setdefault(k, []).append(v)
    return {k: _FUNCS[rule(k).over_processes](col) for k, col in columns.items()}


# ----------------------------------------------------------------------------- per step


def rollout_metrics(scored: ScoredBatch, zero_var_frac: float) -> dict[str, float]:
    """Rewards and response lengths of the step's (kept) rollouts."""
    lengths = scored.batch.response_lengths.float()
    out = {
        "reward/mean": float(scored.rewards.mean()),
        "reward/std": float(scored.rewards.std()) if len(lengths) > 1 else 0.0,
        "zero_std_frac": zero_var_frac,
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
    }
    for part, values in scored.parts.items():
        out[f"reward/{part}"] = sum(values) / len(values)
    for name, counts in reward_stats().items():  # cumulative, so a failing verifier shows
        if counts["failures"]:
            out[f"reward_failures/{name}"] = float(counts["failures"])
        for kind in ("cut_off", "refused"):  # at the step deadline; answers not read
            if counts.get(kind):
                out[f"reward_{kind}/{name}"] = float(counts[kind])
    return out


def reward_failure_fracs(run: Run, step: int) -> dict[str, float]:
    """Each failing reward's fraction of this step's calls (over every process); stop the
    run when one reaches ``trainer.max_reward_fail_frac``, naming it and a failure."""
    calls, failures = 0, {}
    gathered = run.par.gather({"calls": run.reward_calls, "failures": run.reward_failures})
    for rank, item in enumerate(gathered):
        calls += item["calls"]
        for name, (count, first) in item["failures"].items():
            where = f"rank {rank}: " if len(gathered) > 1 else ""  # whose first failure
            failures.setdefault(name, [0, where + first])[0] += count
    limit = run.cfg.trainer.max_reward_fail_frac
    fracs = {f"reward_fail_frac/{n}": c / max(calls, 1) for n, (c, _) in failures.items()}
    for name, (count, first) in failures.items():
        if count / max(calls, 1) >= limit:
            raise RunHalted(
                f"step {step}: reward {name!r} failed on {count} of {calls} responses "
                f"(trainer.max_reward_fail_frac={limit}); first: {first}"
            )
    return fracs


def bad_row_metrics(run: Run) -> dict[str, float]:
    """Cumulative bad-row counts of every split (``data/bad_rows[/<reason>]``, ...)."""
    out = run.train_set.bad_row_metrics("data")
    if run.eval_set is not None:
        out.update(run.eval_set.bad_row_metrics("data/eval"))
    for name, report in run.bench_reports.items():
        out.update(report.metrics(f"data/eval/{name}"))
    return out


def log_samples(run: Run, step: int, scored: ScoredBatch, advantages: torch.Tensor) -> None:
    """The step's first ``trainer.log_samples`` prompt groups, each with all its G
    responses, to ``samples.jsonl`` (and the trackers), one line per response: its
    prompt, answer, response, reward, reward parts and ``advantages`` [B] (the update's,
    row for row with ``scored``); each group's image is written once as a PNG. The
    image is the row's decoded one (what the processor was given; a row holds one)."""
    if not run.logger.enabled:
        return
    G = run.cfg.rollout.group_size
    groups = min(run.cfg.trainer.log_samples, len(scored) // G)
    records, images = [], []
    for g in range(groups):
        row = scored.rows[g * G]
        image = row.get("image")
        images.append(image[0] if isinstance(image, list | tuple) and image else image)
        # the options of a multiple-choice row: the answer may be a letter or the text
        choices = {"choices": list(row["choices"])} if row.get("choices") else {}
        for i in range(g * G, (g + 1) * G):
            records.append(
                {
                    "group": g,
                    "id": str(row["id"]),
                    "prompt": row["question"],
                    "answer": str(row["answer"]),
                    "response": scored.batch.completions[i],
                    "reward": float(scored.rewards[i]),
                    "parts": {k: float(v[i]) for k, v in scored.parts.items()},
                    "advantage": float(advantages[i]),
                    "image": None,
                    **choices,
                }
            )
    run.logger.samples(step, records, images)
