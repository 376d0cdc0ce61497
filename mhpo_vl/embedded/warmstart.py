"""The embedded models' warm start: a short supervised pass, and held-out accuracy.

RL needs a policy that is sometimes right: a random tiny model never emits a bare
answer, so every reward is 0 and nothing is learned. A few supervised steps on the
task's train split (prompt from the ``plain`` template, target the bare answer, e.g.
``B`` or ``3``, then ``<|im_end|>``) teach the answer format and a little of the task;
stopping early leaves most of the task for RL to learn.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mhpo_vl.batch import RolloutBatch, join
from mhpo_vl.data.synthetic import target_text
from mhpo_vl.models.logprobs import completion_logits, token_logprobs
from mhpo_vl.models.policy import Policy
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts
from mhpo_vl.rollout.encode import encode_prompts


def sft_batch(policy: Policy, rows: Sequence[Mapping[str, Any]]) -> RolloutBatch:
    """Prompts of ``rows`` followed by their targets (bare answer + ``<|im_end|>``)."""
    tok = policy.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    targets = [tok(target_text(r), add_special_tokens=False)["input_ids"] + [end] for r in rows]
    T = max(len(t) for t in targets)
    ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1.0
    prompt = encode_prompts(policy, build_prompts(rows, "plain"))
    return join(prompt, ids, mask, [target_text(r) for r in rows])


def forced_accuracy(policy: Policy, batch: RolloutBatch) -> float:
    """Share of rows whose every target token (EOS included) is the argmax: exactly the
    rows greedy decoding would answer with the target, from one forward pass."""
    model = policy.model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = completion_logits(model, batch).argmax(-1)
    model.train(was_training)
    ok = (pred == batch.completion_ids) | (batch.response_mask == 0)
    return ok.all(-1).float().mean().item()


@dataclass
class SFTResult:
    steps: int
    losses: list[float]
    val_accuracy: list[tuple[int, float]]  # (step, greedy accuracy on the validation rows)


def sft(
    policy: Policy,
    rows: Sequence[Mapping[str, Any]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    val_rows: Sequence[Mapping[str, Any]] = (),
    target_accuracy: float = 0.0,
    eval_every: int = 10,
    log: Callable[[str], None] | None = None,
) -> SFTResult:
    """AdamW on token-mean cross-entropy of the targets, for ``steps`` steps or until the
    greedy accuracy on ``val_rows`` reaches ``target_accuracy`` at two evaluations in a
    row (every ``eval_every`` steps; 0 disables), whichever comes first.

    Stopping on accuracy rather than a step count lands the warm start at the same
    point of the learning curve whatever the machine's float rounding does to the
    exact step where a skill is picked up. Batches are drawn without replacement by a
    seeded RNG; the learning rate warms up linearly (20 steps at most), then stays
    constant: the warm start is stopped mid-learning on purpose, not annealed."""
    model = policy.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, min(20, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    order = _batches(len(rows), batch_size, random.Random(seed))
    val = sft_batch(policy, val_rows) if target_accuracy > 0 and val_rows else None
    result = SFTResult(steps=0, losses=[], val_accuracy=[])
    for step in range(1, steps + 1):
        batch = sft_batch(policy, [rows[i] for i in next(order)])
        logp, _ = token_logprobs(model, batch)
        loss = -(logp * batch.response_mask).sum() / batch.response_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        result.losses.append(loss.item())
        result.steps = step
        if val is not None and step % eval_every == 0:
            acc = forced_accuracy(policy, val)
            result.val_accuracy.append((step, acc))
            if log:
                log(f"sft step {step} loss {_mean(result.losses[-eval_every:]):.3f} val {acc:.3f}")
            recent = [a for _, a in result.val_accuracy[-2:]]
            if len(recent) == 2 and min(recent) >= target_accuracy:  # twice: not a fluke
                break
        elif log and val is None and step % max(1, steps // 10) == 0:
            log(f"sft step {step}/{steps} loss {_mean(result.losses[-10:]):.3f}")
    model.eval()
    return result


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / max(1, len(xs))


def _batches(n: int, size: int, rng: random.Random):
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


def accuracy(
    policy: Policy,
    rows: Sequence[Mapping[str, Any]],
    *,
    temperature: float = 0.0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Exact-match accuracy of the completion against the bare target, overall and per
    task (``temperature = 0``: greedy)."""
    engine = HFEngine(policy, batch_size=batch_size)
    params = SamplingParams(n=1, max_new_tokens=4, temperature=temperature)
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        out = engine.generate(build_prompts(chunk, "plain"), params)
        for row, text in zip(chunk, out.completions, strict=True):
            hits.setdefault(row.get("task") or "all", []).append(text.strip() == target_text(row))
    result = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    result["overall"] = sum(sum(h) for h in hits.values()) / max(1, len(rows))
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
