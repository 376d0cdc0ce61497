"""The training loop, on one screen; its parts live in :mod:`mhpo_vl.training`.

Per step: sample P prompts -> roll out G responses each and score them (``collect``)
-> group advantages -> ``update_epochs`` x ``minibatches`` optimizer steps of the
recipe's policy loss (``update``) -> the engine samples from the new weights. Runs on
one process, or many under ``torchrun`` / ``accelerate launch`` (each process rolls out
its share of the prompts; ``parallel.strategy`` says how the model is spread).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from mhpo_vl import algorithms
from mhpo_vl.config import Recipe
from mhpo_vl.errors import RunHalted, UserError
from mhpo_vl.parallel import faults
from mhpo_vl.rewards import reward_name
from mhpo_vl.training import metrics as M
from mhpo_vl.training.collect import collect
from mhpo_vl.training.evaluation import evaluate
from mhpo_vl.training.signal import require_signal
from mhpo_vl.training.state import Run, save, setup
from mhpo_vl.training.update import check_skips, update

log = logging.getLogger("mhpo_vl")


def train(cfg: Recipe) -> dict[str, float]:
    """Run (or resume) the recipe; returns the last step's metrics."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # an error on one process stops the others, each naming the rank and the cause
    with faults.boundary(cfg.trainer.collective_timeout, cfg.trainer.output_dir):
        run = setup(cfg)
        try:
            return _loop(run)
        finally:
            run.close()


def _loop(run: Run) -> dict[str, float]:
    cfg, t = run.cfg, run.cfg.trainer
    if run.start_step == 0 and cfg.eval.at_start:
        start = evaluate(run)
        if start:
            run.logger.log(0, start)
            _announce(run, 0, start)
    progress = _progress(run)
    metrics: dict[str, float] = {}
    for step in range(run.start_step + 1, t.max_steps + 1):
        metrics = train_step(run, step)
        if step == t.max_steps or (cfg.eval.every and step % cfg.eval.every == 0):
            metrics.update(evaluate(run))
        run.logger.log(step, metrics)
        check_skips(run, step)
        if step == t.max_steps or (t.save_every and step % t.save_every == 0):
            save(run, step)
        faults.note_step(step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(_postfix(metrics, run.skips["total"]))
    if progress is not None:
        progress.close()
    _announce(run, t.max_steps, metrics)
    return metrics


def train_step(run: Run, step: int) -> dict[str, float]:
    G = run.cfg.rollout.group_size
    M.start_memory_peak(run.par.device)
    t0 = time.perf_counter()
    run.timings.update(generate=0.0, reward=0.0)
    run.reward_calls, run.reward_failures = 0, {}
    run.engine.wake()
    scored, stats = collect(run)
    run.engine.sleep()
    stats.update(M.reward_failure_fracs(run, step))
    t1 = time.perf_counter()
    weights = {reward_name(r.name): r.weight for r in run.cfg.rewards}
    require_signal(step, scored.rewards.tolist(), scored.parts, weights, G)
    try:
        adv = algorithms.compute_advantages(run.cfg.algorithm.advantage, scored.rewards.view(-1, G))
    except UserError as exc:  # rewards the arithmetic cannot turn into advantages
        raise RunHalted(f"step {step}: {exc}") from None
    metrics = update(run, scored.batch, adv.advantages_PG.reshape(-1).float())
    run.scheduler.step()
    run.engine.sync_weights(run.model)
    t2 = time.perf_counter()
    metrics.update(stats)
    # every non-pad token this process rolled out and trained on, per second of the step
    metrics["perf/tokens_per_s"] = float(scored.batch.attention_mask.sum()) / (t2 - t0)
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    metrics.update(M.memory_peak(run.par.device))
    metrics.update(M.rollout_metrics(scored, adv.zero_var_frac))
    metrics.update(
        {
            "time/rollout": t1 - t0,
            "time/generate": run.timings["generate"],
            "time/reward": run.timings["reward"],
            "time/update": t2 - t1,
        }
    )
    metrics = M.reduce_over_processes(run.par, metrics)
    metrics.update(M.bad_row_metrics(run))  # the same on every process: not reduced
    metrics["time/step"] = time.perf_counter() - t0
    M.log_samples(run, step, scored, adv.advantages_PG.reshape(-1))
    return metrics


def _announce(run: Run, step: int, metrics: dict[str, float]) -> None:
    if run.par.is_main:
        for key, value in metrics.items():
            if re.fullmatch(r"eval/(accuracy|[^/]+/accuracy)", key):  # headline numbers only
                log.info("step %d: %s %.3f", step, key, value)


def _progress(run: Run) -> Any:
    if not (run.cfg.trainer.progress_bar and run.par.is_main):
        return None
    from tqdm.auto import tqdm

    t = run.cfg.trainer
    return tqdm(total=t.max_steps, initial=run.start_step, desc=run.cfg.name, unit="step")


def _postfix(metrics: dict[str, float], skipped: int) -> dict[str, str]:
    keys = {
        "reward/mean": "reward",
        "eval/accuracy": "acc",
        "grad_norm": "gnorm",
        "ratio_max": "rmax",
    }
    out = {short: f"{metrics[k]:.3f}" for k, short in keys.items() if k in metrics}
    if skipped:  # non-finite updates skipped so far in this run
        out["skipped"] = str(skipped)
    return out
