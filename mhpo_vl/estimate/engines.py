"""The rollout engine's memory: vLLM's share of the GPU (:func:`vllm_plan`: its weights,
working memory, CUDA graphs, and the KV cache in what is left, with how many
``max_model_len`` sequences it holds), or, with ``rollout.engine: hf``, ``generate`` on
the policy itself (:func:`hf_generation`). vLLM's working memory and CUDA graphs are not
tensors of ours: they are the constants below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mhpo_vl.config import Recipe
from mhpo_vl.estimate.memory import (
    DTYPE_BYTES,
    GB,
    Workload,
    engine_args,
    vision_block_bytes,
)
from mhpo_vl.estimate.model import ModelShape

VLLM_CUDA_GRAPHS_GB = 0.5
"""vLLM's captured CUDA graphs (none with ``enforce_eager``); vLLM's sleep mode does not
free their memory pool, so it stays while the trainer updates."""

VLLM_MAX_BATCHED_TOKENS = 16384
VLLM_MAX_NUM_SEQS = 1024
"""vLLM's defaults for the offline ``LLM`` on an 80 GB GPU (its profiling run forwards
this many tokens; its sampler holds float32 logits for this many sequences); a recipe's
``engine_args.extra`` may set ``max_num_batched_tokens`` / ``max_num_seqs``."""


@dataclass(frozen=True)
class VllmPlan:
    """vLLM's share of one GPU and how its KV cache fits ``max_model_len`` sequences."""

    share: int
    weights: int
    working: int
    cuda_graphs: int
    kv_cache: int
    seq_bytes: int
    max_model_len: int
    concurrent: int
    sleep_level: int
    cpu: int  # weights in CPU RAM while asleep at level 1

    @property
    def asleep(self) -> int:
        """What stays on the GPU while vLLM sleeps: its CUDA graph pool."""
        return self.cuda_graphs


def kv_bytes_per_token(shape: ModelShape, compute: int, tp: int = 1) -> int:
    """``2 (k and v) * layers * kv_heads * head_dim * bytes`` (kv heads split over TP)."""
    return 2 * shape.layers * math.ceil(shape.kv_heads / tp) * shape.head_dim * compute


def vllm_plan(recipe: Recipe, shape: ModelShape, gpu_mem_gb: float) -> VllmPlan:
    """vLLM holds ``gpu_memory_utilization x`` the GPU's memory while awake: its weights
    in the compute dtype divided by ``tensor_parallel_size``, its working memory (the
    profiling forward of ``max_num_batched_tokens`` tokens, ``(4h + 2I) * c`` each, and
    the sampler's float32 logits for ``max_num_seqs`` sequences), CUDA graphs, and the KV
    cache in what is left (``extra.kv_cache_memory_bytes``, when given, sizes the KV cache
    instead, and the share is what the four add up to). ``max_model_len: -1`` lets vLLM
    fit the length to the KV cache (up to the model's own). Asleep, level 1 moves the
    weights to CPU RAM and level 2 drops them; both free the KV cache."""
    args = engine_args(recipe)
    extra = args.get("extra") or {}
    c = DTYPE_BYTES[recipe.model.dtype]
    tp = args["tensor_parallel_size"]
    share = int(args["gpu_memory_utilization"] * gpu_mem_gb * GB)
    weights = c * shape.params // tp
    tokens = extra.get("max_num_batched_tokens", VLLM_MAX_BATCHED_TOKENS)
    seqs = extra.get("max_num_seqs", VLLM_MAX_NUM_SEQS)
    working = (
        tokens * (4 * shape.hidden + 2 * shape.intermediate) * c // tp + seqs * shape.vocab * 4
    )
    graphs = 0 if args["enforce_eager"] else int(VLLM_CUDA_GRAPHS_GB * GB)
    kv = share - weights - working - graphs
    if extra.get("kv_cache_memory_bytes"):
        kv = int(extra["kv_cache_memory_bytes"])
        share = weights + working + graphs + kv
    per_token = kv_bytes_per_token(shape, c, tp)
    length = args["max_model_len"] or shape.max_positions
    if length < 0:  # vLLM's auto-fit: the longest that the KV cache holds once
        length = max(1, min(shape.max_positions, max(0, kv) // per_token))
    level = args["sleep_level"]
    seq = per_token * length
    concurrent = max(0, kv) // seq if seq else 0
    return VllmPlan(
        share, weights, working, graphs, kv, seq, length, concurrent, level,
        weights if level == 1 else 0,
    )  # fmt: skip


def hf_generation(recipe: Recipe, shape: ModelShape, work: Workload) -> dict[str, int]:
    """``rollout.engine: hf``: ``generate`` on the policy itself.

    Weights: under FSDP the whole model gathered in the compute dtype on every GPU (once
    per ``generate`` call); under DDP with wider parameters, autocast's cast copies of
    the Linear / Conv weights. KV cache: ``engine_args.batch_size`` sequences (None: all
    local rollouts, or an eval batch if larger) of prompt + new tokens. Working memory:
    the prefill of those prompts, one block at a time, ``(3*a*d + 2I + 2h) * c`` per token
    plus the padding mask's additive form, and the float32 logits of the last position."""
    c = DTYPE_BYTES[recipe.model.dtype]
    args = engine_args(recipe)
    if recipe.parallel.strategy == "fsdp":
        weights = c * shape.params
    elif recipe.model.master_dtype != recipe.model.dtype:
        weights = c * shape.linear_params
    else:
        weights = 0
    seqs = args.get("batch_size") or max(work.rollouts, recipe.eval.batch_size)
    new = max(work.new_tokens, recipe.eval.max_new_tokens or 0)
    kv = kv_bytes_per_token(shape, c) * seqs * (work.prompt_tokens + new)
    p = work.prompt_tokens
    per_token = (3 * shape.heads * shape.head_dim + 2 * shape.intermediate + 2 * shape.hidden) * c
    prefill = seqs * p * per_token + seqs * p * p * c + 2 * seqs * shape.vocab * 4
    if shape.is_vision:
        prefill += vision_block_bytes(
            seqs * work.images_per_prompt * work.image_tokens * 4, shape, c
        )
    return {"weights": weights, "kv_cache": kv, "working": prefill}
