"""The training loop: the one module that knows every part.

Per step: sample P prompts -> roll out G responses each -> score with the
recipe's verifiers -> group advantages -> ``update_epochs`` passes over
``minibatches`` minibatches, each one optimizer step of the recipe's policy loss
(gradient accumulation over micro-batches, with the token/sequence counts of the
whole minibatch across processes, so results do not depend on how it is split).
The loss is looked up by name; this module never branches on it.

Runs under accelerate: one process here, ``accelerate launch`` / ``torchrun`` for
many (each process rolls out its share of the prompts; gradients are averaged).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import algorithms, checkpoint
from mhpo_vl.config import Recipe, dump_recipe
from mhpo_vl.data import EpochSampler, ProblemSet, load_problems
from mhpo_vl.models import Policy, load_policy, token_logprobs
from mhpo_vl.rewards import overlong_penalty, reward_stats, score_rewards
from mhpo_vl.rollout import ENGINES, RolloutBatch, SamplingParams, build_prompts
from mhpo_vl.tracking import RunLogger

log = logging.getLogger("mhpo_vl")


@dataclass
class Run:
    """Everything the loop touches, built once by :func:`setup`."""

    cfg: Recipe
    accelerator: Any
    policy: Policy
    model: Any  # the prepared (possibly DDP-wrapped) policy model
    ref: Policy | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: Any
    train_set: ProblemSet
    eval_set: ProblemSet | None
    sampler: EpochSampler
    logger: RunLogger
    suites: list[tuple[str, Any, list[dict]]]
    start_step: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "reward": 0.0})

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index


# ----------------------------------------------------------------------------- set-up


def make_accelerator() -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Text-only batches leave a VL model's vision tower unused: DDP must allow that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Recipe) -> Any:
    """LR multiplier per training step: linear warm-up, then constant/linear/cosine."""
    o, total = cfg.optim, cfg.trainer.max_steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.scheduler == "linear":
            return 1.0 - progress
        if o.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_policy(path: str, cfg: Recipe, device: Any) -> Policy:
    m = cfg.model
    return load_policy(
        path,
        dtype=m.dtype,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
        freeze_vision=m.freeze_vision,
        device=device,
    )


def setup(cfg: Recipe) -> Run:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the one to watch
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    acc = make_accelerator()
    out = Path(cfg.trainer.output_dir)
    ckpt = checkpoint.latest_checkpoint(out) if cfg.trainer.resume else None
    torch.manual_seed(cfg.seed)
    policy = _load_policy(str(ckpt) if ckpt else cfg.model.path, cfg, acc.device)
    # The reference is the starting policy; it is not loaded at all when unused.
    ref = _load_policy(cfg.model.path, cfg, acc.device) if cfg.algorithm.kl_coef > 0 else None
    if ref is not None:
        ref.model.requires_grad_(False).eval()
    d = cfg.data
    train_set = load_problems(
        d.train, "data.train", min_pixels=d.min_pixels, max_pixels=d.max_pixels
    )
    eval_set = None
    if d.eval is not None:
        eval_set = load_problems(
            d.eval, "data.eval", min_pixels=d.min_pixels, max_pixels=d.max_pixels
        )
    params = [p for p in policy.model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg)
    model, optimizer = acc.prepare(policy.model, optimizer)
    run = Run(
        cfg, acc, policy, model, ref, optimizer, scheduler,
        ENGINES.get(cfg.rollout.engine)(policy),
        train_set, eval_set, EpochSampler(len(train_set), cfg.seed),
        RunLogger(out, enabled=acc.is_main_process, tensorboard=cfg.trainer.tensorboard),
        eval_suites(cfg, eval_set),
    )  # fmt: skip
    if ckpt is not None:
        _restore(run, ckpt)
    elif acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        dump_recipe(cfg, out / "config.yaml")
        log.info("training on %d process(es), device %s", acc.num_processes, acc.device)
    return run


def _restore(run: Run, ckpt: Path) -> None:
    state = checkpoint.load_state(ckpt)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["data_order"])
    checkpoint.set_rng_state(state["rng"][run.rank])
    run.start_step = state["step"]
    run.logger.truncate_after(run.start_step)
    if run.accelerator.is_main_process:
        log.info("resumed from %s (step %d)", ckpt, run.start_step)


def _save(run: Run, step: int) -> None:
    acc = run.accelerator
    rng = (
        acc.gather_for_metrics([checkpoint.rng_state()], use_gather_object=True)
        if run.world > 1
        else [checkpoint.rng_state()]
    )
    if acc.is_main_process:
        state = {
            "step": step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "data_order": run.sampler.state_dict(),
            "rng": rng,
        }
        path = checkpoint.save_checkpoint(
            run.cfg.trainer.output_dir, step, acc.unwrap_model(run.model), run.policy.processor,
            state, run.cfg.trainer.keep_last,
        )  # fmt: skip
        log.info("saved %s", path)
    acc.wait_for_everyone()


# ----------------------------------------------------------------------------- rollouts


def _sampling(cfg: Recipe, n: int) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        n=n,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
    )


def _local_rows(run: Run, num_prompts: int) -> list[dict[str, Any]]:
    """This process's share of the next ``num_prompts`` prompts of the global data order."""
    indices = run.sampler.next(num_prompts)[run.rank :: run.world]
    return [run.train_set[i] for i in indices]


def rollout(run: Run, rows: list[dict[str, Any]]) -> tuple[RolloutBatch, dict[str, Any]]:
    """Generate G responses per row and score them: the batch plus rewards [B] and parts."""
    cfg = run.cfg
    G = cfg.rollout.group_size
    prompts = build_prompts(rows, cfg.data.template, system=cfg.data.system_prompt)
    t0 = time.perf_counter()
    batch = run.engine.generate(prompts, _sampling(cfg, G))
    t1 = time.perf_counter()
    rows_B = [row for row in rows for _ in range(G)]
    specs = [(r.name, r.weight) for r in cfg.rewards]
    total, parts = score_rewards(specs, batch.completions, rows_B)
    run.timings["generate"] += t1 - t0
    run.timings["reward"] += time.perf_counter() - t1
    rewards_B = torch.tensor(total, dtype=torch.float32)
    ov = cfg.algorithm.overlong
    if ov.enabled:
        lengths = batch.response_lengths.tolist()
        pen = [
            overlong_penalty(int(n), cfg.rollout.max_new_tokens, ov.buffer, ov.factor)
            for n in lengths
        ]
        parts["overlong"] = pen
        rewards_B = rewards_B + torch.tensor(pen, dtype=torch.float32)
    return batch, {"rewards": rewards_B, "parts": parts, "rows": rows_B}


def collect(run: Run) -> tuple[RolloutBatch, dict[str, Any], dict[str, float]]:
    """Roll out this step's prompts; with dynamic sampling, keep only groups whose
    rewards differ, sampling more prompts (bounded tries) until P groups are kept."""
    cfg = run.cfg
    P, G = cfg.trainer.prompts_per_step, cfg.rollout.group_size
    ds = cfg.algorithm.dynamic_sampling
    batch, scored = rollout(run, _local_rows(run, P))
    stats = {"dynamic_sampling/tries": 1.0}
    if not ds.enabled:
        return batch, scored, stats
    from mhpo_vl.rollout.batch import concat_batches

    kept_batches, kept_scored, kept, sampled = [], [], 0, []
    P_local = len(batch.completions) // G
    for attempt in range(ds.max_tries):
        if attempt:
            batch, scored = rollout(run, _local_rows(run, P))
        sampled.append(scored["rewards"])
        groups = scored["rewards"].view(-1, G)
        keep = (groups.max(dim=1).values > groups.min(dim=1).values).nonzero().flatten().tolist()
        keep = keep[: P_local - kept]
        if keep:
            idx = [g * G + j for g in keep for j in range(G)]
            kept_batches.append(batch.select(idx))
            kept_scored.append(_select_scored(scored, idx))
            kept += len(keep)
        stats["dynamic_sampling/tries"] = float(attempt + 1)
        if kept >= P_local:
            break
    stats["dynamic_sampling/kept_frac"] = kept / P_local
    # reward/mean is over the kept groups; this is over everything sampled
    stats["dynamic_sampling/reward_mean_sampled"] = float(torch.cat(sampled).mean())
    if not kept_batches:  # every group uniform in every try: the last one (zero advantage)
        return batch, scored, stats
    return concat_batches(kept_batches), _concat_scored(kept_scored), stats


def _select_scored(scored: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    return {
        "rewards": scored["rewards"][idx],
        "parts": {k: [v[i] for i in idx] for k, v in scored["parts"].items()},
        "rows": [scored["rows"][i] for i in idx],
    }


def _concat_scored(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rewards": torch.cat([s["rewards"] for s in items]),
        "parts": {k: sum((s["parts"][k] for s in items), []) for k in items[0]["parts"]},
        "rows": sum((s["rows"] for s in items), []),
    }


# ----------------------------------------------------------------------------- update


def _micro_chunks(indices: list[int], size: int | None) -> list[list[int]]:
    size = size or len(indices)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


@torch.no_grad()
def _logprobs_no_grad(model: Any, batch: RolloutBatch, micro: int | None) -> torch.Tensor:
    chunks = _micro_chunks(list(range(batch.response_mask.shape[0])), micro)
    return torch.cat([token_logprobs(model, batch.select(c))[0] for c in chunks])


def _old_logprobs(run: Run, batch: RolloutBatch, micro: int | None) -> torch.Tensor:
    """The behaviour policy's log-probs of the sampled tokens: recomputed, or the ones the
    engine recorded while sampling (``trainer.old_logprobs``)."""
    if run.cfg.trainer.old_logprobs == "rollout":
        if batch.sample_logprobs is None:
            raise RuntimeError(
                f"trainer.old_logprobs 'rollout': the {run.cfg.rollout.engine!r} engine "
                "returned no sampling log-probs; use 'recompute'"
            )
        return batch.sample_logprobs.to(batch.response_mask.device)
    return _logprobs_no_grad(run.model, batch, micro)


def _global_sum(run: Run, value: float) -> float:
    if run.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=run.accelerator.device)
    return float(run.accelerator.reduce(t, reduction="sum").item())


@dataclass
class _UpdateInputs:
    """What every minibatch of one step's update reads: the rollouts, their advantages
    [B], and the old / reference log-probs [B, T] (None when unused)."""

    batch: RolloutBatch
    advantages_B: torch.Tensor
    old_B: torch.Tensor | None
    ref_B: torch.Tensor | None


def update(run: Run, batch: RolloutBatch, advantages_B: torch.Tensor) -> dict[str, float]:
    """``update_epochs`` x ``minibatches`` optimizer steps over the step's rollouts."""
    t = run.cfg.trainer
    B = batch.response_mask.shape[0]
    # Old log-probs only matter when a later update sees the same rollouts.
    old_B = (
        _old_logprobs(run, batch, t.micro_batch_size)
        if t.update_epochs * t.minibatches > 1
        else None
    )
    ref_B = (
        _logprobs_no_grad(run.ref.model, batch, t.micro_batch_size) if run.ref is not None else None
    )
    inputs = _UpdateInputs(batch, advantages_B, old_B, ref_B)
    params = [p for p in run.model.parameters() if p.requires_grad]
    acc_metrics: dict[str, list[float]] = {}
    for _ in range(t.update_epochs):
        order = torch.randperm(B) if t.minibatches > 1 else torch.arange(B)
        # exactly `minibatches` optimizer steps (fewer only if B is smaller), even when
        # dynamic sampling kept a number of groups that does not divide evenly
        for mb in torch.tensor_split(order, min(t.minibatches, B)):
            for k, v in _accumulate_minibatch(run, inputs, mb.tolist()).items():
                acc_metrics.setdefault(k, []).extend(v)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.max_grad_norm)
            acc_metrics.setdefault("grad_norm", []).append(float(grad_norm))
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    return _summarize(acc_metrics)


def _accumulate_minibatch(run: Run, inputs: _UpdateInputs, mb: list[int]) -> dict[str, list[float]]:
    """Backward of the policy loss over one minibatch, micro-batch by micro-batch
    (gradients accumulate; DDP syncs on the last); the micro-batches' metrics."""
    cfg, acc, batch = run.cfg, run.accelerator, inputs.batch
    loss_cfg = dict(cfg.algorithm.loss)
    name = loss_cfg.pop("name")
    # Counts of the whole minibatch across processes, divided by the world size
    # because DDP averages (not sums) the processes' gradients.
    n_tok = _global_sum(run, float(batch.response_mask[mb].sum())) / run.world
    n_seq = _global_sum(run, float(len(mb))) / run.world
    chunks = _micro_chunks(mb, cfg.trainer.micro_batch_size)
    metrics: dict[str, list[float]] = {}
    for i, idx in enumerate(chunks):
        sub = batch.select(idx)
        sync = contextlib.nullcontext() if i == len(chunks) - 1 else acc.no_sync(run.model)
        with sync:
            logp, ent = token_logprobs(run.model, sub, with_entropy=True)
            out = algorithms.policy_loss(
                name, logp,
                inputs.old_B[idx] if inputs.old_B is not None else logp.detach(),
                inputs.advantages_B[idx], sub.response_mask,
                agg=cfg.algorithm.agg,
                ref_logprobs=inputs.ref_B[idx] if inputs.ref_B is not None else None,
                kl_coef=cfg.algorithm.kl_coef, kl_estimator=cfg.algorithm.kl_estimator,
                num_tokens=n_tok, num_seqs=n_seq, max_len=cfg.rollout.max_new_tokens,
                **loss_cfg,
            )  # fmt: skip
            acc.backward(out.loss)
        mask = sub.response_mask
        values = dict(out.metrics, loss=float(out.loss.detach()))
        values["entropy"] = float((ent.detach() * mask).sum() / mask.sum().clamp(min=1))
        for k, v in values.items():
            metrics.setdefault(k, []).append(v)
    return metrics


def _summarize(values: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if k.endswith("_min"):
            out[k] = min(v)
        elif k.endswith("_max"):
            out[k] = max(v)
        elif k == "loss":  # micro-batch losses add up to the minibatch loss
            out[k] = sum(v) / (len(values["grad_norm"]) if "grad_norm" in values else 1)
        else:
            out[k] = sum(v) / len(v)
    return out


# ----------------------------------------------------------------------------- one step


def train_step(run: Run, step: int) -> dict[str, float]:
    cfg = run.cfg
    G = cfg.rollout.group_size
    t0 = time.perf_counter()
    run.timings.update(generate=0.0, reward=0.0)
    batch, scored, stats = collect(run)
    t1 = time.perf_counter()
    rewards_PG = scored["rewards"].view(-1, G)
    adv = algorithms.compute_advantages(cfg.algorithm.advantage, rewards_PG)
    metrics = update(run, batch, adv.advantages_PG.reshape(-1))
    run.scheduler.step()
    t2 = time.perf_counter()
    lengths = batch.response_lengths.float()
    metrics.update(stats)
    metrics.update(
        {
            "lr": run.optimizer.param_groups[0]["lr"],
            "reward/mean": float(scored["rewards"].mean()),
            "reward/std": float(scored["rewards"].std()) if len(lengths) > 1 else 0.0,
            "zero_std_frac": adv.zero_var_frac,
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "time/rollout": t1 - t0,
            "time/generate": run.timings["generate"],
            "time/reward": run.timings["reward"],
            "time/update": t2 - t1,
        }
    )
    for part, values in scored["parts"].items():
        metrics[f"reward/{part}"] = sum(values) / len(values)
    for name, counts in reward_stats().items():  # cumulative, so a failing verifier shows
        if counts["failures"]:
            metrics[f"reward_failures/{name}"] = float(counts["failures"])
    metrics = _reduce_metrics(run, metrics)
    metrics["time/step"] = time.perf_counter() - t0
    _log_samples(run, step, batch, scored)
    return metrics


def _gather_dicts(run: Run, item: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's dict (keys may differ between processes, so no tensor collectives)."""
    if run.world == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


def _reduce_metrics(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    """Mean over processes (min/max for ``*_min``/``*_max``; sum for failure counts)."""
    if run.world == 1:
        return metrics
    columns: dict[str, list[float]] = {}
    for item in _gather_dicts(run, metrics):
        for k, v in item.items():
            columns.setdefault(k, []).append(v)
    out = {}
    for k, col in columns.items():
        if k.endswith("_min"):
            out[k] = min(col)
        elif k.endswith("_max"):
            out[k] = max(col)
        elif k.startswith("reward_failures/"):
            out[k] = sum(col)
        else:
            out[k] = sum(col) / len(col)
    return out


def _log_samples(run: Run, step: int, batch: RolloutBatch, scored: dict[str, Any]) -> None:
    n = min(run.cfg.trainer.log_samples, len(batch.completions))
    records = []
    for i in range(n):
        row = scored["rows"][i]
        records.append(
            {
                "id": row["id"],
                "prompt": row["question"],
                "answer": row["answer"],
                "response": batch.completions[i],
                "reward": float(scored["rewards"][i]),
                "parts": {k: v[i] for k, v in scored["parts"].items()},
            }
        )
    run.logger.samples(step, records)


# ----------------------------------------------------------------------------- evaluation


def eval_suites(cfg: Recipe, eval_set: ProblemSet | None) -> list[tuple[str, Any, list[dict]]]:
    """(metric prefix, benchmark, rows) for the held-out split and each ``eval.benchmarks``
    entry, loaded once; scored by the eval module, the same code as ``mhpo-vl eval``."""
    from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark
    from mhpo_vl.eval.loaders import load_benchmark

    suites = []
    if eval_set is not None:
        spec = cfg.data.eval
        heldout = Benchmark(
            name="heldout", hub_id=spec.source, splits=(spec.split,), to_row=lambda r, _s: dict(r),
            template=cfg.data.template, scorer="accuracy",
        )  # fmt: skip
        suites.append(("eval/accuracy", heldout, eval_set.rows(cfg.eval.size)))
    for name in cfg.eval.benchmarks:
        suites.append(
            (
                f"eval/{name}/accuracy",
                BENCHMARKS.get(name),
                load_benchmark(name, limit=cfg.eval.size),
            )
        )
    return suites


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Accuracy on each eval suite with the recipe's eval decoding (greedy by default),
    plus per-task accuracy where rows name a task. Each process scores its share.

    Uses a forked RNG so that evaluating never changes the training trajectory.
    """
    from mhpo_vl.eval.runner import evaluate as run_benchmark

    cfg, e = run.cfg, run.cfg.eval
    if not run.suites:
        return {}
    max_new = e.max_new_tokens or cfg.rollout.max_new_tokens

    def generate(prompts: list[dict[str, Any]], k: int) -> list[str]:
        params = SamplingParams(n=k, max_new_tokens=max_new, temperature=e.temperature)
        return run.engine.generate(prompts, params).completions

    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        for prefix, bench, all_rows in run.suites:
            rows = all_rows[run.rank :: run.world]
            result = run_benchmark(
                generate, bench, rows, 1, system=cfg.data.system_prompt, batch_size=e.batch_size
            )
            metrics.update(_suite_accuracy(run, prefix, rows, result["problems"]))
    metrics["time/eval"] = time.perf_counter() - t0
    return metrics


def _suite_accuracy(
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
    for item in _gather_dicts(run, sums):
        for key, (correct, count) in item.items():
            acc = totals.setdefault(key, [0.0, 0.0])
            acc[0] += correct
            acc[1] += count
    return {key: correct / max(count, 1.0) for key, (correct, count) in sorted(totals.items())}


# ----------------------------------------------------------------------------- the loop


def train(cfg: Recipe) -> dict[str, float]:
    """Run (or resume) the recipe; returns the last step's metrics."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run = setup(cfg)
    t = cfg.trainer
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
        if step == t.max_steps or (t.save_every and step % t.save_every == 0):
            _save(run, step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(_postfix(metrics))
    if progress is not None:
        progress.close()
    run.logger.close()
    _announce(run, t.max_steps, metrics)
    return metrics


def _announce(run: Run, step: int, metrics: dict[str, float]) -> None:
    if run.accelerator.is_main_process:
        for key, value in metrics.items():
            if re.fullmatch(r"eval/(accuracy|[^/]+/accuracy)", key):  # headline numbers only
                log.info("step %d: %s %.3f", step, key, value)


def _progress(run: Run) -> Any:
    if not (run.cfg.trainer.progress_bar and run.accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    t = run.cfg.trainer
    return tqdm(total=t.max_steps, initial=run.start_step, desc=run.cfg.name, unit="step")


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    keys = {
        "reward/mean": "reward",
        "eval/accuracy": "acc",
        "grad_norm": "gnorm",
        "ratio_max": "rmax",
    }
    return {short: f"{metrics[k]:.3f}" for k, short in keys.items() if k in metrics}
