"""The sizes one GPU works on (:class:`Workload`) and the bytes of the parts of a training
step that are formulas of the model and the recipe: activations, the log-prob path's
logits, the model state (parameters, gradients, AdamW's state), the gathered weights and
the rollout batch. What is assumed, and where it comes from, is written beside each
formula.

Units: ``GB`` means GiB (2**30 bytes), as ``nvidia-smi`` and PyTorch report memory; an
"80 GB" H100 has 79.6 of them, so leave some headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mhpo_vl.config import Recipe
from mhpo_vl.estimate.model import ModelShape

GB = 1 << 30
CHUNK_BYTES = (1 << 22) * 4
"""The float32 chunk :mod:`mhpo_vl.models.logprobs` works in (``CHUNK_ELEMENTS`` x 4)."""

DEFAULT_TEXT_PROMPT_TOKENS = 256
"""Prompt text tokens assumed when ``rollout.engine_args.max_model_len`` does not bound
the prompt (about a paragraph of question plus the chat template); image tokens come on
top, from ``data.max_pixels``."""

DEFAULT_IMAGE_TOKENS = 16384
"""Image tokens per image when ``data.max_pixels`` is not set: the Qwen-VL processors'
own cap (``max_pixels`` = 16384 merged patches)."""

# Bytes per element of the recipe's dtype names.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Qwen's vision MLP: saved [patches, I] tensors per block (see vision_block_bytes).
VISION_MLP_SAVED = {"qwen2_vl": 3, "qwen2_5_vl": 4, "qwen3_vl": 2}


def round_gb(n: float) -> float:
    """Bytes in GB, rounded to two decimals as the reports show them."""
    return round(n / GB, 2)


@dataclass(frozen=True)
class Workload:
    """The sizes one GPU works on, from the recipe and the GPU count.

    ``rollouts``: sequences this GPU rolls out per step (``prompts_per_step * G / gpus``);
    ``micro_rows``: completions in one update micro-batch; they are forwarded as
    ``sequences`` sequences of ``seq_len`` tokens (with the shared prefix: a group's
    prompt once, its completions packed behind it)."""

    gpus: int
    prompt_tokens: int
    prompt_source: str
    new_tokens: int
    rollouts: int
    minibatch_rows: int
    micro_rows: int
    sequences: int
    seq_len: int
    shared_prefix: bool
    images_per_prompt: int
    image_tokens: int  # merged tokens per image (patches are 4x)

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len

    @property
    def patches(self) -> int:
        """Vision patches of one micro-batch (one image set per sequence)."""
        return self.sequences * self.images_per_prompt * self.image_tokens * 4


def image_tokens(recipe: Recipe, shape: ModelShape) -> int:
    """Merged vision tokens per image: ``data.max_pixels / (patch * merge)**2`` (one token
    per 28x28 pixels for Qwen2/2.5-VL, 32x32 for Qwen3-VL); 0 for text models."""
    if not shape.is_vision:
        return 0
    unit = shape.patch_size * shape.merge_size
    pixels = recipe.data.max_pixels or shape.embedded_image_pixels
    if pixels is None:
        return DEFAULT_IMAGE_TOKENS
    return max(1, pixels // (unit * unit))


def engine_args(recipe: Recipe) -> dict[str, Any]:
    """``rollout.engine_args`` with the engine's defaults filled in (its own check_args)."""
    from mhpo_vl.rollout import ENGINES

    factory = ENGINES.get(recipe.rollout.engine)
    return factory.check_args(recipe.rollout.engine_args, "rollout.engine_args")


def workload(
    recipe: Recipe, shape: ModelShape, gpus: int, prompt_tokens: int | None = None
) -> Workload:
    """The per-GPU sizes of ``recipe`` on ``gpus`` GPUs. Prompt tokens: ``prompt_tokens``
    if given, else ``max_model_len - max_new_tokens`` (the prompt budget vLLM enforces)
    when set, else :data:`DEFAULT_TEXT_PROMPT_TOKENS` plus the prompt's image tokens."""
    r, t = recipe.rollout, recipe.trainer
    args = engine_args(recipe)
    per_prompt = args.get("max_images_per_prompt", 1) if shape.is_vision else 0
    img = image_tokens(recipe, shape)
    if prompt_tokens is not None:
        prompt, source = prompt_tokens, "--prompt-tokens"
    elif (args.get("max_model_len") or 0) > 0:
        prompt = args["max_model_len"] - r.max_new_tokens
        source = f"max_model_len {args['max_model_len']:,} - max_new_tokens"
    else:
        prompt = DEFAULT_TEXT_PROMPT_TOKENS + per_prompt * img
        source = f"default: {DEFAULT_TEXT_PROMPT_TOKENS} text" + (" + image" if img else "")
    G = r.group_size
    rollouts = math.ceil(t.prompts_per_step * G / gpus)
    minibatch = math.ceil(rollouts / t.minibatches)
    micro = min(t.micro_batch_size or minibatch, minibatch)
    shared = t.shared_prefix and rollouts % G == 0
    if shared and micro >= G:
        sequences, seq_len = micro // G, prompt + G * r.max_new_tokens
        micro = sequences * G
    elif shared:
        sequences, seq_len = 1, prompt + micro * r.max_new_tokens
    else:
        sequences, seq_len = micro, prompt + r.max_new_tokens
    return Workload(
        gpus, prompt, source, r.max_new_tokens, rollouts, minibatch, micro, sequences,
        seq_len, shared, per_prompt, img,
    )  # fmt: skip


# ------------------------------------------------------------------------------ activations


def block_activation_bytes(
    tokens: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    compute: int,
    residual: int,
    *,
    mlp_saved: int = 4,
    qk_norm: bool = False,
    masked: bool = True,
) -> int:
    """Bytes autograd keeps for the backward of one transformer block over ``tokens``.

    With ``h`` hidden, ``I`` intermediate, ``a`` / ``k`` query / key-value heads of width
    ``d``, ``c`` bytes of the compute dtype and ``r`` bytes of the residual stream (the
    parameters' dtype under DDP, where autocast leaves the stream in float32; ``c`` under
    FSDP, whose forward runs on weights gathered in ``c``), per token::

        r*h                        the block's input (all that checkpointing keeps)
      + (4*[r<4] + r)*h            input RMSNorm: float32 copy, normalized output
      + n_qkv*c*h                  q/k/v inputs: one shared tensor when r == c, else
                                   three autocast casts (autocast casts per op)
      + (2c + 4*[c<4])*(a+k)*d     Qwen3's q/k RMSNorms (0 otherwise)
      + 3*c*a*d                    SDPA's q, k, v: with an attention mask transformers
                                   repeats k/v to all a heads (c*(a+2k)*d without one)
      + 2*c*a*d + 4*a              SDPA's output, its contiguous copy for o_proj, and
                                   the float32 log-sum-exp
      + r*h + (4*[r<4] + r)*h      the residual after attention and the second RMSNorm
      + n_mlp*c*h                  gate/up inputs (1 or 2 tensors, as for q/k/v)
      + m*c*I                      MLP: gated SiLU keeps gate, act, up and their product
                                   (m = 4); a plain MLP its hidden and activation (2-3)

    SDPA (flash / memory-efficient kernels) keeps no ``[L, L]`` attention scores; the
    additive float mask SDPA derives from a boolean mask is counted separately
    (:func:`mask_bytes`)."""
    h, c, r = hidden, compute, residual
    f32_copy = 4 if r < 4 else 0
    n_qkv, n_mlp = (1, 1) if r == c else (3, 2)
    attn_qkv = 3 * heads * head_dim if masked else (heads + 2 * kv_heads) * head_dim
    per_token = (
        r * h
        + (f32_copy + r) * h
        + n_qkv * c * h
        + ((2 * c + (4 if c < 4 else 0)) * (heads + kv_heads) * head_dim if qk_norm else 0)
        + c * attn_qkv
        + 2 * c * heads * head_dim
        + 4 * heads
        + r * h
        + (f32_copy + r) * h
        + n_mlp * c * h
        + mlp_saved * c * intermediate
    )
    return tokens * per_token


def mask_bytes(sequences: int, seq_len: int, compute: int) -> tuple[int, int]:
    """``(boolean mask, additive mask per layer)``: the ``[n, 1, L, L]`` boolean mask
    (the shared-prefix block mask of :mod:`mhpo_vl.models.prefix`, or transformers'
    padding mask) lives through the forward and backward, one byte per entry; SDPA turns
    it into an additive mask in the compute dtype in every layer, and the memory-efficient
    kernel keeps that for its backward: ``c * n * L**2`` per layer."""
    entries = sequences * seq_len * seq_len
    return entries, compute * entries


@dataclass(frozen=True)
class Activations:
    """Bytes of one update micro-batch's activations, with and without checkpointing."""

    kept_checkpointed: int  # block inputs + what lies outside the blocks
    kept_full: int  # every block's saved tensors
    recompute: int  # one block re-run during the backward (checkpointing only)
    backward_work: int  # gradients inside one block's backward
    mask: int  # the boolean attention mask (in both)

    def kept(self, checkpointing: bool) -> int:
        return self.kept_checkpointed if checkpointing else self.kept_full

    def forward_peak(self, checkpointing: bool) -> int:
        return self.kept(checkpointing) + self.mask

    def backward_peak(self, checkpointing: bool) -> int:
        extra = self.recompute if checkpointing else 0
        return self.kept(checkpointing) + self.mask + extra + self.backward_work


def _residual_bytes(recipe: Recipe) -> int:
    m = recipe.model
    if recipe.parallel.strategy == "fsdp":
        return DTYPE_BYTES[m.dtype]
    return DTYPE_BYTES[m.master_dtype]


def vision_block_bytes(patches: int, shape: ModelShape, compute: int) -> int:
    """One vision block over ``patches``, the same terms as :func:`block_activation_bytes`
    at the tower's width (heads attend within an image: no mask, no repeated k/v), with
    the tower's MLP: Qwen2-VL's QuickGELU keeps 3 ``[patches, I]`` tensors, Qwen2.5-VL's
    gated SiLU 4, Qwen3-VL's tanh-GELU 2."""
    hv = shape.vision_hidden
    heads = shape.vision_heads
    return block_activation_bytes(
        patches, hv, shape.vision_intermediate, heads, heads, hv // heads, compute, compute,
        mlp_saved=VISION_MLP_SAVED[shape.model_type], masked=False,
    )  # fmt: skip


def activations(recipe: Recipe, shape: ModelShape, work: Workload) -> Activations:
    """A micro-batch's activations for the update (formulas in the called functions).

    Without checkpointing every block keeps :func:`block_activation_bytes` plus its
    additive mask; with it, each block keeps only its input (``r * h`` per token) and,
    during the backward, one block is recomputed in full. Outside the blocks: the final
    RMSNorm (``(2r + 4*[r<4]) * h`` per token). A frozen vision tower keeps nothing (no
    tensor in it requires a gradient). The backward of a block adds the residual
    stream's gradient and its MLP's intermediate gradients: ``(2r*h + 3c*I)`` per token."""
    c = DTYPE_BYTES[recipe.model.dtype]
    r = _residual_bytes(recipe)
    tokens = work.tokens
    boolean, bias = mask_bytes(work.sequences, work.seq_len, c)
    block = block_activation_bytes(
        tokens, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads,
        shape.head_dim, c, r, qk_norm=shape.qk_norm,
    ) + bias  # fmt: skip
    outside = tokens * shape.hidden * (2 * r + (4 if r < 4 else 0))
    vision_full = vision_kept = vision_block = 0
    if shape.is_vision and not recipe.model.freeze_vision:
        vision_block = vision_block_bytes(work.patches, shape, c)
        vision_full = shape.vision_layers * vision_block
        vision_kept = shape.vision_layers * work.patches * shape.vision_hidden * c
    kept_ckpt = shape.layers * tokens * shape.hidden * r + vision_kept + outside
    kept_full = shape.layers * block + vision_full + outside
    work_bytes = tokens * (2 * r * shape.hidden + 3 * c * shape.intermediate)
    return Activations(kept_ckpt, kept_full, max(block, vision_block), work_bytes, boolean)


def logits_bytes(recipe: Recipe, shape: ModelShape, work: Workload) -> int:
    """The log-prob path's memory: the completion positions' logits ``[mb, T, V]`` in the
    compute dtype, their gradient buffer of the same size, and one float32 chunk
    (:mod:`mhpo_vl.models.logprobs`)."""
    c = DTYPE_BYTES[recipe.model.dtype]
    return 2 * c * work.micro_rows * work.new_tokens * shape.vocab + CHUNK_BYTES


# ------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class State:
    """Per-GPU bytes of the model state (GPU) and what offloading keeps in CPU RAM."""

    params: int
    grads: int
    optimizer: int
    optimizer_step: int  # AdamW's temporary during the step
    ddp_buckets: int
    reference: int
    cpu: int  # CPU RAM per GPU process


def state(recipe: Recipe, shape: ModelShape, gpus: int) -> State:
    """Parameters in ``model.master_dtype``, gradients in the same dtype, AdamW's two
    states per trainable parameter, divided over the GPUs under FSDP.

    - ``parallel.grad_sync: minibatch`` under FSDP: full unsharded float32 gradients
      accumulate on every GPU (4 bytes per trainable parameter, not divided);
    - DDP over 2+ GPUs: its reducer keeps gradient buckets, a second copy of the
      gradients (``gradient_as_bucket_view`` is off in accelerate's defaults);
    - ``parallel.cpu_offload``: parameters, sharded gradients and optimizer state live
      in CPU RAM, the optimizer steps there;
    - the optimizer step (foreach AdamW, PyTorch's default on CUDA) allocates one
      temporary the size of the parameters it steps (``sqrt(v)``);
    - the frozen reference model (``algorithm.kl_coef > 0``): compute dtype, sharded
      like the policy (in CPU RAM too under offload)."""
    m = DTYPE_BYTES[recipe.model.master_dtype]
    c = DTYPE_BYTES[recipe.model.dtype]
    p = recipe.parallel
    fsdp = p.strategy == "fsdp"
    share = gpus if fsdp else 1
    trainable = shape.trainable(recipe.model.freeze_vision)
    params = m * shape.params // share
    grads = m * trainable // share
    optimizer = 2 * m * trainable // share
    ref = c * shape.params // share if recipe.algorithm.kl_coef > 0 else 0
    minibatch = fsdp and grad_sync(recipe) == "minibatch"
    buckets = m * trainable if p.strategy == "ddp" and gpus > 1 else 0
    if p.cpu_offload:
        cpu = params + grads + optimizer + ref
        gpu_grads = 4 * trainable if minibatch else 0
        return State(0, gpu_grads, 0, 0, 0, 0, cpu)
    if minibatch:
        grads = 4 * trainable
    return State(params, grads, optimizer, m * trainable // share, buckets, ref, 0)


def grad_sync(recipe: Recipe) -> str:
    """``parallel.grad_sync`` as it runs: ``auto`` is ``micro_batch`` under FSDP and
    ``minibatch`` under DDP."""
    sync = recipe.parallel.grad_sync
    if sync == "auto":
        return "micro_batch" if recipe.parallel.strategy == "fsdp" else "minibatch"
    return sync


def gathered_bytes(recipe: Recipe, shape: ModelShape) -> int:
    """Compute-dtype copies of the weights the update's forward and backward use.

    FSDP: the root unit (embeddings, head, norms, vision merger) stays gathered through
    the forward and backward; the block units are gathered one at a time with one
    prefetched (2 x the largest) when ``reshard_after_forward``, all of them otherwise.
    DDP with parameters wider than the compute dtype: autocast casts every Linear / Conv
    weight once and keeps the copy until the forward ends (its cast cache), so the
    backward starts with a compute-dtype copy of them all."""
    c = DTYPE_BYTES[recipe.model.dtype]
    if recipe.parallel.strategy == "fsdp":
        if not recipe.parallel.reshard_after_forward:
            return c * shape.params
        largest = max(shape.block_params, default=0)
        return c * (shape.root_params + 2 * largest)
    if recipe.model.master_dtype != recipe.model.dtype:
        return c * shape.linear_params
    return 0


def grad_temporary(recipe: Recipe, shape: ModelShape) -> int:
    """The head's weight gradient, computed whole before it is added to ``.grad`` (or,
    under FSDP, reduce-scattered): the largest parameter in the master dtype under DDP,
    in the compute dtype under FSDP (gathered weights get compute-dtype gradients)."""
    if recipe.parallel.strategy == "fsdp":
        return DTYPE_BYTES[recipe.model.dtype] * shape.largest_param
    return DTYPE_BYTES[recipe.model.master_dtype] * shape.largest_param


def batch_bytes(shape: ModelShape, work: Workload) -> int:
    """The step's rollouts held on the GPU: float32 ``pixel_values`` of every row's
    images (``3 * temporal_patch * patch**2`` values per patch) and the token tensors."""
    per_patch = shape.in_channels * shape.temporal_patch * shape.patch_size**2 * 4
    patches = work.rollouts * work.images_per_prompt * work.image_tokens * 4
    tokens = work.rollouts * (work.prompt_tokens + work.new_tokens) * (8 + 8 + 4)
    return patches * per_patch + tokens
