"""Collection: this step's prompts -> G rollouts each -> scored by the recipe's rewards,
with DAPO dynamic sampling (keep only groups whose rewards differ, refill, bounded
tries). Produces a :class:`ScoredBatch`, the typed input of the update."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mhpo_vl.batch import RolloutBatch, SamplingParams, concat_batches
from mhpo_vl.data.templates import build_prompts
from mhpo_vl.rewards import overlong_penalty, score_rewards

if TYPE_CHECKING:
    from mhpo_vl.training.state import Run


@dataclass
class ScoredBatch:
    """Rollouts with their scores: ``rewards`` [B] (weighted sum, overlong shaping
    included), each reward's per-response values in ``parts``, and the data row each
    response answers (``rows[i]`` for ``batch`` row ``i``)."""

    batch: RolloutBatch
    rewards: Tensor
    parts: dict[str, list[float]]
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, idx: list[int]) -> ScoredBatch:
        return ScoredBatch(
            self.batch.select(idx),
            self.rewards[idx],
            {k: [v[i] for i in idx] for k, v in self.parts.items()},
            [self.rows[i] for i in idx],
        )

    @staticmethod
    def concat(items: list[ScoredBatch]) -> ScoredBatch:
        return ScoredBatch(
            concat_batches([s.batch for s in items]),
            torch.cat([s.rewards for s in items]),
            {k: sum((s.parts[k] for s in items), []) for k in items[0].parts},
            sum((s.rows for s in items), []),
        )


def sampling(run: Run, n: int) -> SamplingParams:
    r = run.cfg.rollout
    return SamplingParams(
        n=n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k,
    )  # fmt: skip


def local_rows(run: Run, num_prompts: int) -> list[dict[str, Any]]:
    """This process's share of the next ``num_prompts`` good rows of the global data
    order (rows whose image fails to decode are skipped, counted and named)."""
    return run.train_set.take(run.sampler, num_prompts, rank=run.par.rank, world=run.par.world)


def rollout(run: Run, rows: list[dict[str, Any]]) -> ScoredBatch:
    """Generate G responses per row and score them."""
    cfg = run.cfg
    G = cfg.rollout.group_size
    prompts = build_prompts(rows, cfg.data.template, system=cfg.data.system_prompt)
    t0 = time.perf_counter()
    batch = run.engine.generate(prompts, sampling(run, G))
    t1 = time.perf_counter()
    rows_B = [row for row in rows for _ in range(G)]
    specs = [(r.name, r.weight) for r in cfg.rewards]
    failures: dict[str, tuple[int, str]] = {}
    # one deadline per step: dynamic sampling's later tries get what the first left
    budget = max(cfg.trainer.reward_step_timeout - run.timings["reward"], 0.001)
    total, parts = score_rewards(
        specs, batch.completions, rows_B, failures, budget, cfg.trainer.reward_workers
    )
    run.reward_calls += len(rows_B)
    for name, (count, first) in failures.items():
        run.reward_failures.setdefault(name, [0, first])[0] += count
    run.timings["generate"] += t1 - t0
    run.timings["reward"] += time.perf_counter() - t1
    device = batch.input_ids.device  # everything per-sequence lives with the batch
    # float64: a finite reward beyond float32 (1e39) stays finite; advantages are float32
    rewards_B = torch.tensor(total, dtype=torch.float64, device=device)
    ov = cfg.algorithm.overlong
    if ov.enabled:
        lengths = batch.response_lengths.tolist()
        pen = [
            overlong_penalty(int(n), cfg.rollout.max_new_tokens, ov.buffer, ov.factor)
            for n in lengths
        ]
        parts["overlong"] = pen
        rewards_B = rewards_B + torch.tensor(pen, dtype=torch.float64, device=device)
    return ScoredBatch(batch, rewards_B, parts, rows_B)


def collect(run: Run) -> tuple[ScoredBatch, dict[str, float]]:
    """Roll out this step's prompts; with dynamic sampling, keep only groups whose
    rewards differ, sampling more prompts (bounded tries) until P groups are kept.

    When processes must generate in step (:attr:`~mhpo_vl.training.state.Run.
    generate_in_step`) a process that has its groups keeps sampling, and discarding,
    until every process has theirs."""
    cfg = run.cfg
    P, G = cfg.trainer.prompts_per_step, cfg.rollout.group_size
    ds = cfg.algorithm.dynamic_sampling
    scored = rollout(run, local_rows(run, P))
    stats = {"dynamic_sampling/tries": 1.0}
    if not ds.enabled:
        return scored, stats
    kept_items: list[ScoredBatch] = []
    kept, sampled = 0, []
    P_local = len(scored) // G
    for attempt in range(ds.max_tries):
        if attempt:
            scored = rollout(run, local_rows(run, P))
        sampled.append(scored.rewards)
        groups = scored.rewards.view(-1, G)
        keep = (groups.max(dim=1).values > groups.min(dim=1).values).nonzero().flatten().tolist()
        keep = keep[: P_local - kept]
        if keep:
            kept_items.append(scored.select([g * G + j for g in keep for j in range(G)]))
            kept += len(keep)
        stats["dynamic_sampling/tries"] = float(attempt + 1)
        done = kept >= P_local
        if run.generate_in_step:
            done = run.par.sum(float(not done)) == 0
        if done:
            break
    stats["dynamic_sampling/kept_frac"] = kept / P_local
    # reward/mean is over the kept groups; this is over everything sampled
    stats["dynamic_sampling/reward_mean_sampled"] = float(torch.cat(sampled).mean())
    if not kept_items:  # every group uniform in every try: the last one (zero advantage)
        return scored, stats
    return ScoredBatch.concat(kept_items), stats
