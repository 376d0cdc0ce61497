"""The memory model of ``mhpo-vl estimate`` against a measurement: one update on the CPU.

Builds a small Qwen2 text model (random weights, ~27M parameters, so that tensors, not
Python, dominate), a batch of rollouts in prompt groups, and runs the update path the
trainer runs: micro-batches of :func:`mhpo_vl.models.token_logprobs` (the shared-prefix
forward when on) and :func:`mhpo_vl.algorithms.policy_loss`, backward, gradient
clipping, an AdamW step. It counts the peak bytes of live tensors during the second
such update (the first one creates AdamW's state, as a run's first step does) and
prints it beside the estimate's update phase for the same setting (without the parts
that are not tensors of this process: the CUDA runtime and vLLM's sleeping residue).

    python scripts/measure_memory.py                      # four settings, a table
    python scripts/measure_memory.py --json

**What is measured.** Before the update: the bytes of every distinct storage of the
parameters, AdamW's state and the batch. During it: every allocation and free of
PyTorch's CPU allocator in order, from ``torch.profiler`` with ``profile_memory=True``;
the peak is the first plus the running sum's maximum. Tensors only: no allocator cache,
no Python heap, deterministic. AdamW runs with ``foreach=True``, as it does by default on
CUDA (on CPU PyTorch defaults to the per-tensor loop, whose temporaries are smaller).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mhpo_vl import algorithms  # noqa: E402
from mhpo_vl.batch import RolloutBatch  # noqa: E402
from mhpo_vl.config import (  # noqa: E402
    ModelConfig,
    ParallelConfig,
    Recipe,
    RolloutConfig,
    TrainerConfig,
)
from mhpo_vl.estimate import GB, describe_model, estimate  # noqa: E402
from mhpo_vl.models import token_logprobs  # noqa: E402
from mhpo_vl.training.update import micro_chunks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_logprob_memory import allocator_peak  # noqa: E402  (the same measurement)

MB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Setting:
    """One measured update: the model's size and the batch's."""

    hidden: int = 512
    layers: int = 6
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 1536
    vocab: int = 16000
    group: int = 4  # G completions per prompt
    prompts: int = 4  # prompts in the minibatch
    micro_batch: int = 8  # completions per forward
    prompt_tokens: int = 96
    new_tokens: int = 64
    checkpointing: bool = False
    shared_prefix: bool = True
    dtype: str = "float32"  # compute dtype (autocast); parameters stay float32
    seed: int = 0

    @property
    def rows(self) -> int:
        return self.group * self.prompts


SETTINGS = {
    "shared prefix": Setting(),
    "shared prefix, checkpointing": Setting(checkpointing=True),
    "one row per completion": Setting(shared_prefix=False),
    "one row per completion, checkpointing": Setting(shared_prefix=False, checkpointing=True),
    "bfloat16 autocast, shared prefix": Setting(dtype="bfloat16"),
    "bfloat16 autocast, one row per completion": Setting(dtype="bfloat16", shared_prefix=False),
}


def model_config(s: Setting) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def build_model(s: Setting) -> torch.nn.Module:
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(s.seed)
    model = Qwen2ForCausalLM(model_config(s)).float()
    if s.checkpointing:  # as mhpo_vl.models.policy.load_policy turns it on
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model.train()


def make_batch(s: Setting) -> RolloutBatch:
    """``rows`` rollouts, ``group`` per prompt (same prompt tokens and left padding),
    prompts of different lengths (left-padded to ``prompt_tokens``), completions of
    ``new_tokens`` with one ending early in each group (right padding after it)."""
    g = torch.Generator().manual_seed(s.seed)
    P, T = s.prompt_tokens, s.new_tokens
    ids = torch.zeros(s.rows, P + T, dtype=torch.long)
    attn = torch.ones(s.rows, P + T, dtype=torch.long)
    resp = torch.ones(s.rows, T)
    for p in range(s.prompts):
        pad = (p * 7) % (P // 4)
        prompt = torch.randint(1, s.vocab, (P,), generator=g)
        for j in range(s.group):
            r = p * s.group + j
            ids[r, :P] = prompt
            ids[r, P:] = torch.randint(1, s.vocab, (T,), generator=g)
            attn[r, :pad] = 0
            if j == 0:  # an early end: mask and attention off after it
                resp[r, T // 2 :] = 0
                attn[r, P + T // 2 :] = 0
    ids = ids.masked_fill(attn == 0, 0)
    return RolloutBatch(ids, attn, resp, sample_logprobs=torch.zeros(s.rows, T))


def update(model: torch.nn.Module, optimizer: Any, batch: RolloutBatch, s: Setting) -> None:
    """One minibatch as :func:`mhpo_vl.training.update.accumulate_minibatch` runs it:
    micro-batches of whole groups, token log-probs with entropies under autocast to the
    compute dtype, MHPO's loss, backward; then clipping and the optimizer step."""
    rows = list(range(len(batch)))
    n_tok = float(batch.response_mask.sum())
    advantages = torch.linspace(-1.0, 1.0, len(batch))
    group = s.group if s.shared_prefix else 1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.dtype == "bfloat16")
    for chunk in micro_chunks(rows, s.micro_batch, group):
        sub = batch.select(chunk)
        with autocast:  # as Policy.autocast: the forward only
            logp, ent = token_logprobs(model, sub, with_entropy=True, shared_prefix=s.shared_prefix)
        out = algorithms.policy_loss(
            "mhpo", logp, logp.detach(), advantages[chunk], sub.response_mask,
            num_tokens=n_tok, num_seqs=float(len(batch)), max_len=s.new_tokens,
        )  # fmt: skip
        out.loss.backward()
        float((ent.detach() * sub.response_mask).sum())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _resident(model: torch.nn.Module, optimizer: Any, batch: RolloutBatch) -> int:
    tensors = list(model.parameters())
    for st in optimizer.state.values():
        tensors += [v for v in st.values() if torch.is_tensor(v) and v.numel() > 1]
    tensors += [batch.input_ids, batch.attention_mask, batch.response_mask]
    tensors += [batch.sample_logprobs] if batch.sample_logprobs is not None else []
    return _storage_bytes(tensors)


def measure(s: Setting) -> int:
    """Peak live tensor bytes during the second update of setting ``s``."""
    model = build_model(s)
    batch = make_batch(s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    update(model, optimizer, batch, s)  # AdamW's state exists from here on
    gc.collect()
    before = _resident(model, optimizer, batch)
    return before + allocator_peak(lambda: update(model, optimizer, batch, s))


def recipe_for(s: Setting) -> Recipe:
    """The recipe whose per-GPU update is setting ``s`` on one GPU (float32, DDP)."""
    return Recipe(
        model=ModelConfig(path="measured", dtype=s.dtype, gradient_checkpointing=s.checkpointing),
        rollout=RolloutConfig(group_size=s.group, max_new_tokens=s.new_tokens),
        trainer=TrainerConfig(
            prompts_per_step=s.prompts,
            minibatches=1,
            micro_batch_size=s.micro_batch,
            shared_prefix=s.shared_prefix,
        ),
        parallel=ParallelConfig(strategy="ddp"),
    )


def estimated(s: Setting) -> int:
    """The estimate's update phase for ``s``, less what is not a tensor of this process."""
    shape = describe_model(model_config(s), "measured", "scripts/measure_memory.py")
    est = estimate(recipe_for(s), shape, gpus=1, prompt_tokens=s.prompt_tokens)
    parts = dict(est.phases["update"])
    parts.pop("runtime", None)
    parts.pop("vllm", None)
    return sum(parts.values())


def compare(names: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in names:
        s = SETTINGS[name]
        est, got = estimated(s), measure(s)
        out.append(
            {
                "setting": name,
                "estimated_mb": round(est / MB, 1),
                "measured_mb": round(got / MB, 1),
                "ratio": round(est / got, 3),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = compare(args.settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'setting':40} {'estimated MB':>13} {'measured MB':>12} {'est/meas':>9}")
    for r in rows:
        print(
            f"{r['setting']:40} {r['estimated_mb']:>13.1f} {r['measured_mb']:>12.1f} "
            f"{r['ratio']:>9.3f}"
        )
    print(f"(1 GB = {GB:,} bytes; tensors of one update, CPU, float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
