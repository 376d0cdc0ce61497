"""Per-token log-probabilities (and entropies) of a batch's completion tokens.

Memory is the point: a full-vocabulary float32 ``log_softmax`` over ``[B, T, V]`` is
``B * T * 152k * 4`` bytes for Qwen (2.4 GB for B=8, T=512), and autograd keeps it for
the backward pass. Here the forward keeps only the completion positions' logits
(``logits_to_keep = T + 1``), and each chunk of ``T`` computes
``logp = logit[y] / tau - logsumexp(logits / tau)`` in float32 under activation
checkpointing, so at most one float32 chunk exists at a time, forward or backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mhpo_vl.models.prefix import (
    positions_from_mask,
    prompt_groups,
    shared_prefix_logits,
    supported,
)

if TYPE_CHECKING:
    from mhpo_vl.batch import RolloutBatch

__all__ = ["completion_logits", "logprobs_from_logits", "positions_from_mask", "token_logprobs"]

CHUNK_ELEMENTS = 1 << 26  # float32 elements per chunk (256 MB)


def _chunk_stats(
    logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float64 stays float64
    if temperature != 1.0:
        x = x / temperature
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    entropy = lse - (torch.softmax(x, dim=-1) * x).sum(-1)  # H = lse - E_p[x]
    return logp, entropy


def logprobs_from_logits(
    logits: Tensor, targets: Tensor, *, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``log softmax(logits / temperature)[targets]`` for ``logits [B, T, V]``, chunked over T."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    B, T, V = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, B * V))
    recompute = torch.is_grad_enabled() and logits.requires_grad
    logps, ents = [], []
    for start in range(0, T, step):
        args = (logits[:, start : start + step], targets[:, start : start + step])
        if recompute:  # keep only the (model-dtype) logits for backward, not float32 copies
            lp, ent = checkpoint(
                _chunk_stats, *args, temperature, with_entropy, use_reentrant=False
            )
        else:
            lp, ent = _chunk_stats(*args, temperature, with_entropy)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps, dim=1) if logps else logits.new_zeros(B, 0, dtype=torch.float32)
    if not with_entropy:
        return logp, None
    return logp, torch.cat(ents, dim=1) if ents else torch.zeros_like(logp)


def completion_logits(model: torch.nn.Module, batch: RolloutBatch) -> Tensor:
    """Logits ``[B, T, V]`` predicting each completion token (only those positions)."""
    T = batch.response_mask.shape[1]
    inputs = batch.model_inputs()
    if "image_grid_thw" not in inputs:
        # no images: positions must follow the left padding, as generate's did
        inputs["position_ids"] = positions_from_mask(batch.attention_mask)
    out = model(**inputs, use_cache=False, logits_to_keep=T + 1)
    return out.logits[:, :-1]  # position S-T-1+t predicts completion token t


def token_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    shared_prefix: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, T]`` of ``batch``'s completion tokens under ``model`` at
    ``temperature`` (and entropies ``[B, T]`` if asked), differentiable.

    ``shared_prefix``: rows with the same prompt are forwarded as one packed sequence
    (:mod:`mhpo_vl.models.prefix`; the same values, the prompt and image encoded once),
    where the model's attention allows it and some prompt repeats.
    Values on padding positions (``response_mask == 0``) are meaningless; mask them.
    ``model`` may be wrapped (DDP): it is called, never unwrapped.
    """
    T = batch.response_mask.shape[1]
    targets = batch.input_ids[:, batch.input_ids.shape[1] - T :]
    groups = prompt_groups(batch) if shared_prefix and supported(model) else None
    if groups is not None and len(groups) < len(batch):
        logits = shared_prefix_logits(model, batch, groups)
    else:
        logits = completion_logits(model, batch)
    return logprobs_from_logits(logits, targets, temperature=temperature, with_entropy=with_entropy)
