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
from mhpo_vl.data import BadRowLog, EpochSampler, ProblemSet, load_problems
from mhpo_vl.errors import RunHalted, UserError
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
    bench_reports: dict[str, BadRowLog]  # bad rows of each eval.benchmarks entry
    scaler: Any = None  # torch.amp.GradScaler; enabled only for float16 compute
    start_step: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "reward": 0.0})
    skips: dict[str, Any] = field(default_factory=lambda: {"consecutive": 0, "total": 0})
    # this step's reward calls and failures: name -> [count, first failure's description]
    reward_calls: int = 0
    reward_failures: dict[str, list] = field(default_factory=dict)

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


def _load_policy(path: str, cfg: Recipe, device: Any, master_dtype: str) -> Policy:
    m = cfg.model
    return load_policy(
        path,
        dtype=m.dtype,
        master_dtype=master_dtype,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
        freeze_vision=m.freeze_vision,
        device=device,
    )


def _check_verifiers() -> None:
    """Stop before training if math-verify cannot run here: every math reward would be 0."""
    from mhpo_vl.rewards.mathcheck import VerifierUnavailable, require_math_verify

    try:
        require_math_verify()
    except VerifierUnavailable as exc:
        raise UserError(f"the math answer checker cannot run: {exc}") from None


def _data_limits(cfg: Recipe) -> dict[str, Any]:
    """How every split's images are decoded and how many bad rows it may have."""
    d = cfg.data
    return {
        "min_pixels": d.min_pixels,
        "max_pixels": d.max_pixels,
        "max_image_pixels": d.max_image_pixels,
        "max_bad_frac": d.max_bad_frac,
    }


def setup(cfg: Recipe) -> Run:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the one to watch
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    _check_verifiers()
    acc = make_accelerator()
    out = Path(cfg.trainer.output_dir)
    if acc.is_main_process:
        for name in checkpoint.clean_leftovers(out):  # of a save or prune that was killed
            log.info("removed %s, left by an interrupted run", out / name)
    acc.wait_for_everyone()
    ckpt = checkpoint.latest_checkpoint(out) if cfg.trainer.resume else None
    torch.manual_seed(cfg.seed)
    m = cfg.model
    policy = _load_policy(str(ckpt) if ckpt else m.path, cfg, acc.device, m.master_dtype)
    # The reference is the starting policy; it is not loaded at all when unused. Frozen,
    # it needs no master weights: its parameters are in the compute dtype.
    ref = _load_policy(m.path, cfg, acc.device, m.dtype) if cfg.algorithm.kl_coef > 0 else None
    if ref is not None:
        ref.model.requires_grad_(False).eval()
    train_set = load_problems(cfg.data.train, "data.train", **_data_limits(cfg))
    eval_set = None
    if cfg.data.eval is not None:
        eval_set = load_problems(cfg.data.eval, "data.eval", **_data_limits(cfg))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg)
    model, optimizer = acc.prepare(policy.model, optimizer)
    # float16 gradients underflow without loss scaling; bfloat16 and float32 need none
    scaler = torch.amp.GradScaler(
        acc.device.type, enabled=m.dtype == "float16" and m.master_dtype == "float32"
    )
    run = Run(
        cfg, acc, policy, model, ref, optimizer, scheduler,
        ENGINES.get(cfg.rollout.engine)(policy, batch_size=cfg.rollout.batch_size),
        train_set, eval_set, EpochSampler(len(train_set), cfg.seed),
        RunLogger(out, enabled=acc.is_main_process, tensorboard=cfg.trainer.tensorboard),
        *eval_suites(cfg, eval_set), scaler,
    )  # fmt: skip
    if ckpt is not None:
        _restore(run, ckpt)
    else:  # a fresh start: records of an earlier attempt that never checkpointed go
        run.logger.truncate_after(-1)
    if acc.is_main_process:
        dump_recipe(cfg, out / "config.yaml")
        log.info(
            "training on %d process(es), device %s, %s compute, %s parameters",
            acc.num_processes, acc.device, m.dtype, m.master_dtype,
        )  # fmt: skip
        if m.master_dtype == m.dtype != "float32":
            log.warning(
                "pure %s: parameters and optimizer state are %s (model.master_dtype), so "
                "updates below its resolution are lost (at lr 1e-6 most of them); "
                "model.master_dtype=float32 keeps float32 master weights",
                m.dtype, m.dtype,
            )  # fmt: skip
    return run


def _restore(run: Run, ckpt: Path) -> None:
    state = checkpoint.load_state(ckpt)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["data_order"])
    checkpoint.set_rng_state(state["rng"][run.rank])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.skips.update(state.get("skips", {}))
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
    _require_finite_weights(run, step)
    if acc.is_main_process:
        state = {
            "step": step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "data_order": run.sampler.state_dict(),
            "rng": rng,
            "scaler": run.scaler.state_dict(),
            "skips": dict(run.skips),
        }
        path = checkpoint.save_checkpoint(
            run.cfg.trainer.output_dir, step, acc.unwrap_model(run.model), run.policy.processor,
            state, run.cfg.trainer.keep_last,
        )  # fmt: skip
        log.info("saved %s", path)
    acc.wait_for_everyone()


def _require_finite_weights(run: Run, step: int) -> None:
    """Never write a checkpoint with NaN or inf weights (a resume would load them)."""
    bad = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if _global_sum(run, float(len(bad))) > 0:
        where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
        last = checkpoint.latest_checkpoint(run.cfg.trainer.output_dir)
        raise RunHalted(
            f"step {step}: non-finite weights{where}; checkpoint not written. "
            f"Resume from {last or 'the start'} with a lower optim.lr"
        )


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
    """This process's share of the next ``num_prompts`` good rows of the global data
    order (rows whose image fails to decode are skipped, counted and named)."""
    return run.train_set.take(run.sampler, num_prompts, rank=run.rank, world=run.world)


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
    failures: dict[str, tuple[int, str]] = {}
    total, parts = score_rewards(specs, batch.completions, rows_B, failures)
    run.reward_calls += len(rows_B)
    for name, (count, first) in failures.items():
        run.reward_failures.setdefault(name, [0, first])[0] += count
    run.timings["generate"] += t1 - t0
    run.timings["reward"] += time.perf_counter() - t1
    device = batch.input_ids.device  # everything per-sequence lives with the batch
    rewards_B = torch.tensor(total, dtype=torch.float32, device=device)
    ov = cfg.algorithm.overlong
    if ov.enabled:
        lengths = batch.response_lengths.tolist()
        pen = [
            overlong_penalty(int(n), cfg.rollout.max_new_tokens, ov.buffer, ov.factor)
            for n in lengths
        ]
        parts["overlong"] = pen
        rewards_B = rewards_B + torch.tensor(pen, dtype=torch.float32, device=device)
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
def _logprobs_no_grad(
    model: Any, policy: Policy, batch: RolloutBatch, micro: int | None
) -> torch.Tensor:
    chunks = _micro_chunks(list(range(batch.response_mask.shape[0])), micro)
    with policy.autocast():
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
    return _logprobs_no_grad(run.model, run.policy, batch, micro)


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
        _logprobs_no_grad(run.ref.model, run.ref, batch, t.micro_batch_size)
        if run.ref is not None
        else None
    )
    inputs = _UpdateInputs(batch, advantages_B, old_B, ref_B)
    params = [p for p in run.model.parameters() if p.requires_grad]
    acc_metrics: dict[str, list[float]] = {}
    for _ in range(t.update_epochs):
        order = torch.randperm(B) if t.minibatches > 1 else torch.arange(B)
        # exactly `minibatches` optimizer steps (fewer only if B is smaller), even when
        # dynamic sampling kept a number of groups that does not divide evenly
        for mb in torch.tensor_split(order, min(t.minibatches, B)):
            mb_metrics = _accumulate_minibatch(run, inputs, mb.tolist())
            for k, v in mb_metrics.items():
                acc_metrics.setdefault(k, []).extend(v)
            finite = all(math.isfinite(x) for x in mb_metrics["loss"])
            grad_norm, skipped = _optimizer_step(run, params, finite)
            acc_metrics.setdefault("grad_norm", []).append(grad_norm)
            acc_metrics.setdefault("skipped_steps", []).append(float(skipped))
    out = _summarize(acc_metrics)
    out["skipped_steps"] = sum(acc_metrics["skipped_steps"])  # a count, not a mean
    return out


def _optimizer_step(run: Run, params: list[torch.Tensor], loss_finite: bool) -> tuple[float, bool]:
    """Clip and step; unless the loss or the gradient norm is not finite on any process:
    then the gradients are dropped and the skip is counted (:func:`_check_skips` stops
    the run after too many in a row). Returns (pre-clip gradient norm, skipped)."""
    run.scaler.unscale_(run.optimizer)  # no-op unless float16 loss scaling is on
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.max_grad_norm))
    local_bad = not (loss_finite and math.isfinite(grad_norm))
    skipped = _global_sum(run, float(local_bad)) > 0  # every process decides the same
    if skipped:
        run.skips["consecutive"] += 1
        run.skips["total"] += 1
        run.skips["last_bad"] = "loss" if not loss_finite else f"gradient norm {grad_norm}"
    else:
        run.scaler.step(run.optimizer)
        run.skips["consecutive"] = 0
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


def _check_skips(run: Run, step: int) -> None:
    """Stop once ``trainer.max_consecutive_skips`` optimizer updates in a row were skipped
    (called after the step's metrics are logged, so the skips are on record)."""
    limit = run.cfg.trainer.max_consecutive_skips
    if run.skips["consecutive"] >= limit:
        raise RunHalted(
            f"step {step}: {run.skips['consecutive']} optimizer updates in a row skipped for "
            f"a non-finite {run.skips.get('last_bad', 'loss')} "
            f"(trainer.max_consecutive_skips={limit}); lower optim.lr or check the recipe"
        )


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
            with run.policy.autocast():
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
            acc.backward(run.scaler.scale(out.loss))
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
    run.reward_calls, run.reward_failures = 0, {}
    batch, scored, stats = collect(run)
    stats.update(_check_reward_failures(run, step))
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
    metrics.update(_bad_row_metrics(run))  # the same on every process: not reduced
    metrics["time/step"] = time.perf_counter() - t0
    _log_samples(run, step, batch, scored)
    return metrics


def _check_reward_failures(run: Run, step: int) -> dict[str, float]:
    """Each failing reward's fraction of this step's calls (over every process); stop the
    run when one reaches ``trainer.max_reward_fail_frac``, naming it and a failure."""
    calls, failures = 0, {}
    for item in _gather_dicts(run, {"calls": run.reward_calls, "failures": run.reward_failures}):
        calls += item["calls"]
        for name, (count, first) in item["failures"].items():
            failures.setdefault(name, [0, first])[0] += count
    limit = run.cfg.trainer.max_reward_fail_frac
    fracs = {f"reward_fail_frac/{n}": c / max(calls, 1) for n, (c, _) in failures.items()}
    for name, (count, first) in failures.items():
        if count / max(calls, 1) >= limit:
            raise RunHalted(
                f"step {step}: reward {name!r} failed on {count} of {calls} responses "
                f"(trainer.max_reward_fail_frac={limit}); first: {first}"
            )
    return fracs


def _bad_row_metrics(run: Run) -> dict[str, float]:
    """Cumulative bad-row counts of every split (``data/bad_rows[/<reason>]``, ...)."""
    out = run.train_set.bad_row_metrics("data")
    if run.eval_set is not None:
        out.update(run.eval_set.bad_row_metrics("data/eval"))
    for name, report in run.bench_reports.items():
        out.update(report.metrics(f"data/eval/{name}"))
    return out


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


def eval_suites(
    cfg: Recipe, eval_set: ProblemSet | None
) -> tuple[list[tuple[str, Any, list[dict]]], dict[str, BadRowLog]]:
    """(metric prefix, benchmark, rows) for the held-out split and each ``eval.benchmarks``
    entry, loaded once (bad rows dropped like the train split's); scored by the eval
    module, the same code as ``mhpo-vl eval``. Also each benchmark's bad-row report."""
    from mhpo_vl.eval.benchmarks import BENCHMARKS, Benchmark
    from mhpo_vl.eval.loaders import load_benchmark

    suites = []
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
        rows = load_benchmark(name, limit=cfg.eval.size, report=reports[name], **_data_limits(cfg))
        suites.append((f"eval/{name}/accuracy", BENCHMARKS.get(name), rows))
    return suites, reports


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
        _check_skips(run, step)
        if step == t.max_steps or (t.save_every and step % t.save_every == 0):
            _save(run, step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(_postfix(metrics, run.skips["total"]))
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
