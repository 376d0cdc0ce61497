"""The update: ``update_epochs`` x ``minibatches`` optimizer steps of the recipe's policy
loss over one step's scored rollouts (gradient accumulation over micro-batches, with
the token/sequence counts of the whole minibatch across processes, so results do not
depend on how it is split). The loss is looked up by name; nothing here branches on it,
nor on the parallel strategy."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from mhpo_vl import algorithms
from mhpo_vl.batch import RolloutBatch
from mhpo_vl.errors import RunHalted
from mhpo_vl.models import Policy, token_logprobs
from mhpo_vl.models.prefix import plan
from mhpo_vl.rollout import resolve_old_logprobs
from mhpo_vl.training.metrics import summarize

if TYPE_CHECKING:
    from mhpo_vl.training.state import Run


def micro_chunks(
    indices: list[int],
    size: int | None,
    group: int = 1,
    cost: Callable[[list[int]], int] | None = None,
    budget: int | None = None,
) -> list[list[int]]:
    """``indices`` in chunks of at most ``size`` rows (None: no bound) and, with
    ``budget``, at most ``budget`` tokens (``cost(rows)``). With ``group > 1`` (rows
    ``g * group + j`` share a prompt), chunks hold whole groups where they fit, so the
    shared-prefix forward encodes each prompt once per chunk; a group that fits in no
    chunk is split. A single row over the budget is a chunk of its own."""

    def fits(rows: list[int]) -> bool:
        return (size is None or len(rows) <= size) and (
            budget is None or cost is None or cost(rows) <= budget
        )

    runs: list[list[int]] = []
    for i in indices:
        if group > 1 and runs and runs[-1][0] // group == i // group:
            runs[-1].append(i)
        else:
            runs.append([i])
    chunks: list[list[int]] = []
    current: list[int] = []
    for run in runs:
        if current and not fits(current + run):
            chunks.append(current)
            current = []
        while len(run) > 1 and not fits(run):  # split the group: the longest part that fits
            k = max([k for k in range(1, len(run)) if fits(run[:k])], default=1)
            chunks.append(run[:k])
            run = run[k:]
        current = current + run
    if current:
        chunks.append(current)
    return chunks


def _chunks(run: Run, batch: RolloutBatch, rows: list[int]) -> list[list[int]]:
    """``rows`` in micro-batches: ``trainer.micro_batch_size`` rows and
    ``trainer.micro_batch_tokens`` tokens at most, whole prompt groups where they fit
    (a group's prompt counted once when the shared prefix packs it)."""
    t, G = run.cfg.trainer, _group(run, len(batch))
    if t.micro_batch_tokens is None:
        return micro_chunks(rows, t.micro_batch_size, G)
    prompts, answers = batch.prompt_lengths.tolist(), batch.response_lengths.tolist()

    def cost(chunk: list[int]) -> int:  # each answer, and one prompt per group (G = 1: each)
        return sum(answers[i] for i in chunk) + sum(prompts[i] for i in {i // G * G for i in chunk})

    return micro_chunks(rows, t.micro_batch_size, G, cost, t.micro_batch_tokens)


def _group(run: Run, B: int) -> int:
    """Rows per prompt group when the shared-prefix forward is on (1: off)."""
    G = run.cfg.rollout.group_size
    return G if run.cfg.trainer.shared_prefix and B % G == 0 else 1


def minibatch_order(run: Run, B: int) -> torch.Tensor:
    """The order rows are split into minibatches: shuffled when there are several,
    whole prompt groups kept together when the shared-prefix forward is on."""
    t, G = run.cfg.trainer, _group(run, B)
    if t.minibatches == 1:
        return torch.arange(B)
    if G == 1:
        return torch.randperm(B)
    return (torch.randperm(B // G)[:, None] * G + torch.arange(G)).flatten()


def _lockstep_count(run: Run, n: int) -> int:
    """``n``, or the largest ``n`` over the processes when they must move in step."""
    return int(run.par.max(float(n))) if run.par.lockstep else n


@torch.no_grad()
def logprobs_no_grad(run: Run, model: Any, policy: Policy, batch: RolloutBatch) -> torch.Tensor:
    """Log-probs ``[B, T]`` under ``model`` (old or reference), micro-batch by
    micro-batch (whole prompt groups, the shared prefix as in training)."""
    (B, T), shared = batch.response_mask.shape, run.cfg.trainer.shared_prefix
    chunks = _chunks(run, batch, list(range(B)))
    out = []
    with policy.autocast():
        for c in chunks:
            sub = batch.select(c).trimmed() if shared else batch.select(c)
            logp, _ = token_logprobs(model, sub, shared_prefix=shared)
            out.append(torch.nn.functional.pad(logp, (0, T - logp.shape[1])))
        for _ in range(_lockstep_count(run, len(chunks)) - len(chunks)):  # in step
            token_logprobs(model, batch.select(chunks[0]), shared_prefix=shared)
    return torch.cat(out)


def old_logprobs(run: Run, batch: RolloutBatch) -> torch.Tensor:
    """The behaviour policy's log-probs of the sampled tokens: the engine's own where it
    declares them exact (``trainer.old_logprobs: auto``), else recomputed."""
    cfg = run.cfg
    source = resolve_old_logprobs(
        cfg.trainer.old_logprobs, run.engine.logprobs, cfg.rollout.temperature
    )
    if source == "rollout":
        if batch.sample_logprobs is None:
            raise RuntimeError(
                f"trainer.old_logprobs 'rollout': the {cfg.rollout.engine!r} engine "
                "returned no sampling log-probs; use 'recompute'"
            )
        return batch.sample_logprobs.to(batch.response_mask.device)
    return logprobs_no_grad(run, run.model, run.policy, batch)


@dataclass
class UpdateInputs:
    """What every minibatch of one step's update reads: the rollouts, their advantages
    [B], the old / reference log-probs [B, T] (None when unused) and the engine's
    sampling log-probs when a rollout correction uses them."""

    batch: RolloutBatch
    advantages_B: torch.Tensor
    old_B: torch.Tensor | None
    ref_B: torch.Tensor | None
    engine_B: torch.Tensor | None = None


def _engine_logprobs(run: Run, batch: RolloutBatch) -> torch.Tensor | None:
    """The engine's sampling log-probs when they only approximate the policy's (vLLM):
    the mismatch is logged and, with ``algorithm.rollout_correction``, corrected."""
    if run.engine.logprobs != "approximate" or batch.sample_logprobs is None:
        return None
    return batch.sample_logprobs.to(batch.response_mask.device)


def update(run: Run, batch: RolloutBatch, advantages_B: torch.Tensor) -> dict[str, float]:
    """``update_epochs`` x ``minibatches`` optimizer steps over the step's rollouts."""
    t = run.cfg.trainer
    B = batch.response_mask.shape[0]
    # Old log-probs only matter when a later update sees the same rollouts.
    old_B = old_logprobs(run, batch) if t.update_epochs * t.minibatches > 1 else None
    ref_B = logprobs_no_grad(run, run.ref.model, run.ref, batch) if run.ref is not None else None
    inputs = UpdateInputs(batch, advantages_B, old_B, ref_B, _engine_logprobs(run, batch))
    values: dict[str, list[float]] = {}
    # exactly `minibatches` optimizer steps (fewer only if B is smaller), even when
    # dynamic sampling kept a number of groups that does not divide evenly
    n_mb = min(t.minibatches, B)
    if run.par.lockstep:
        n_mb = min(t.minibatches, -int(run.par.max(-float(B))))
    for _ in range(t.update_epochs):
        order = minibatch_order(run, B)
        for mb in torch.tensor_split(order, n_mb):
            mb_values = accumulate_minibatch(run, inputs, mb.tolist())
            for k, v in mb_values.items():
                values.setdefault(k, []).extend(v)
            finite = all(math.isfinite(x) for x in mb_values["loss"])
            grad_norm, skipped = optimizer_step(run, finite)
            values.setdefault("grad_norm", []).append(grad_norm)
            values.setdefault("skipped_steps", []).append(float(skipped))
    return summarize(values)


def accumulate_minibatch(run: Run, inputs: UpdateInputs, mb: list[int]) -> dict[str, list[float]]:
    """Backward of the policy loss over one minibatch, micro-batch by micro-batch
    (gradients accumulate; they are reduced over processes on the last); the
    micro-batches' metrics."""
    cfg, par, batch = run.cfg, run.par, inputs.batch
    a = cfg.algorithm
    loss_cfg = dict(a.loss)
    name = loss_cfg.pop("name")
    # Counts of the whole minibatch across processes, divided by the world size
    # because the processes' gradients are averaged (not summed).
    n_tok = par.sum(float(batch.response_mask[mb].sum())) / par.world
    n_seq = par.sum(float(len(mb))) / par.world
    chunks = _chunks(run, batch, mb)
    shared = cfg.trainer.shared_prefix
    total = _lockstep_count(run, len(chunks))
    metrics: dict[str, list[float]] = {}
    for i in range(total):
        last = i == total - 1
        if i >= len(chunks):  # a forward to stay in step with the other processes
            with par.accumulate(run.model, last=last), run.policy.autocast():
                logp, _ = token_logprobs(run.model, batch.select(chunks[0]), shared_prefix=shared)
                par.backward(logp.sum() * 0.0)
            continue
        idx = chunks[i]
        sub = batch.select(idx)
        if shared:  # no column that is padding in every row (off: the plain forward)
            sub = sub.trimmed()
        T = sub.response_mask.shape[1]
        groups = plan(run.model, sub) if shared else None  # None: the naive forward
        with par.accumulate(run.model, last=last):
            with run.policy.autocast():
                logp, ent = token_logprobs(run.model, sub, with_entropy=True, groups=groups)
            old = inputs.old_B[idx, :T] if inputs.old_B is not None else logp.detach()
            weights, correction = None, {}
            if inputs.engine_B is not None:
                rc = a.rollout_correction
                weights, correction = algorithms.rollout_correction(
                    old, inputs.engine_B[idx, :T], sub.response_mask, rc.level, rc.cap
                )
            out = algorithms.policy_loss(
                name, logp, old, inputs.advantages_B[idx], sub.response_mask,
                agg=a.agg,
                ref_logprobs=inputs.ref_B[idx, :T] if inputs.ref_B is not None else None,
                kl_coef=a.kl_coef, kl_estimator=a.kl_estimator,
                num_tokens=n_tok, num_seqs=n_seq, max_len=cfg.rollout.max_new_tokens,
                token_weights=weights if a.rollout_correction.level != "none" else None,
                **loss_cfg,
            )  # fmt: skip
            par.backward(run.scaler.scale(out.loss))
        mask = sub.response_mask
        values = dict(out.metrics, loss=float(out.loss.detach()), **correction)
        values["entropy"] = float((ent.detach() * mask).sum() / mask.sum().clamp(min=1))
        values["perf/shared_prefix_frac"] = float(groups is not None)  # of micro-batches
        for k, v in values.items():
            metrics.setdefault(k, []).append(v)
    return metrics


def optimizer_step(run: Run, loss_finite: bool) -> tuple[float, bool]:
    """Clip and step; unless the loss or the gradient norm is not finite on any process:
    then the gradients are dropped and the skip is counted (:func:`check_skips` stops
    the run after too many in a row). Returns (pre-clip gradient norm, skipped)."""
    run.scaler.unscale_(run.optimizer)  # no-op unless float16 loss scaling is on
    grad_norm = run.par.clip_grad_norm(run.model, run.cfg.optim.max_grad_norm)
    local_bad = not (loss_finite and math.isfinite(grad_norm))
    skipped = run.par.sum(float(local_bad)) > 0  # every process decides the same
    if skipped:
        run.skips["consecutive"] += 1
        run.skips["total"] += 1
        run.skips["last_bad"] = _what_was_bad(run, loss_finite, grad_norm)
    else:
        run.scaler.step(run.optimizer)
        run.skips["consecutive"] = 0
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


def _what_was_bad(run: Run, loss_finite: bool, grad_norm: float) -> str:
    """ "loss" or "gradient norm X", and on several processes where the loss was not
    finite (every process skips alike; the gradients mixed it everywhere)."""
    what = "loss" if not loss_finite else f"gradient norm {grad_norm}"
    if run.par.world > 1:
        bad = [r for r, ok in enumerate(run.par.gather(loss_finite)) if not ok]
        if bad:
            what = f"loss on rank {', '.join(map(str, bad))}"
    return what


def check_skips(run: Run, step: int) -> None:
    """Stop once ``trainer.max_consecutive_skips`` optimizer updates in a row were skipped
    (called after the step's metrics are logged, so the skips are on record)."""
    limit = run.cfg.trainer.max_consecutive_skips
    if run.skips["consecutive"] >= limit:
        raise RunHalted(
            f"step {step}: {run.skips['consecutive']} optimizer updates in a row skipped for "
            f"a non-finite {run.skips.get('last_bad', 'loss')} "
            f"(trainer.max_consecutive_skips={limit}); lower optim.lr or check the recipe"
        )
