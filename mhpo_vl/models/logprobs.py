"""Per-token log-probabilities (and entropies) of a batch's completion tokens.

Memory is the point: a full-vocabulary float32 ``log_softmax`` over ``[B, T, V]`` is
``B * T * 152k * 4`` bytes for Qwen (2.4 GB for B=8, T=512), and autograd keeps it for
the backward pass. Here the forward keeps only the completion positions' logits
(``logits_to_keep = T + 1``), and works through them in chunks of ``T``: each chunk is
converted to float32, reduced to ``logp = logit[y] / tau - logsumexp(logits / tau)``
(and the entropy) and dropped. The backward is written by hand (:class:`_LogprobEntropy`):
it recomputes one chunk's softmax at a time and writes that chunk's gradient straight
into one logits-sized gradient buffer, so besides the logits and their gradient at
most one float32 chunk exists at a time, forward or backward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mhpo_vl.models.prefix import plan, positions_from_mask, shared_prefix_logits

if TYPE_CHECKING:
    from mhpo_vl.batch import RolloutBatch

__all__ = ["completion_logits", "logprobs_from_logits", "positions_from_mask", "token_logprobs"]

CHUNK_ELEMENTS = 1 << 22  # float32 elements per chunk (16 MB)


def _chunk_stats(
    logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy or zeros, logsumexp) of one chunk, in float32 (float64 stays)."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        x = x / temperature
    lse = torch.logsumexp(x, dim=-1)
    logp = x.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(logp), lse
    entropy = lse - (torch.softmax(x, dim=-1) * x).sum(-1)  # H = lse - E_p[x]
    return logp, entropy, lse


class _LogprobEntropy(torch.autograd.Function):
    """``(logp, entropy)`` of ``softmax(logits / tau)`` with a chunked, hand-written
    backward: ``d logp_y / dx = onehot(y) - p`` and ``dH / dx = -p (log p + H)`` with
    ``x = logits / tau``, each chunk's gradient written into one preallocated buffer.
    Entropies are computed only when asked for (zeros otherwise, which then get no
    gradient)."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, targets: Tensor, temperature: float, step: int, entropy: bool
    ):
        B, T, _ = logits.shape
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.empty(B, T, dtype=dtype, device=logits.device)
        ent, lse = torch.empty_like(logp), torch.empty_like(logp)
        for start in range(0, T, step):
            sl = slice(start, start + step)
            lp, h, l_ = _chunk_stats(logits[:, sl], targets[:, sl], temperature, entropy)
            logp[:, sl], ent[:, sl], lse[:, sl] = lp, h, l_
        ctx.save_for_backward(logits, targets, lse, ent)
        ctx.temperature, ctx.step = temperature, step
        ctx.mark_non_differentiable(*([] if entropy else [ent]))
        ctx.set_materialize_grads(False)  # an unused output's gradient is None, not zeros
        return logp, ent

    @staticmethod
    def backward(ctx: Any, g_logp: Tensor | None, g_ent: Tensor | None):
        logits, targets, lse, ent = ctx.saved_tensors
        tau, step = ctx.temperature, ctx.step
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[1], step):
            sl = slice(start, start + step)
            x = logits[:, sl].to(lse.dtype, copy=True)
            if tau != 1.0:
                x.div_(tau)
            log_p = x.sub_(lse[:, sl, None])  # in place: x is not needed any more
            p = log_p.exp()
            coef = torch.zeros_like(lse[:, sl, None])
            if g_ent is not None:  # dH/dx = -p (log p + H)
                coef = log_p.add_(ent[:, sl, None]).mul_(g_ent[:, sl, None])
            if g_logp is not None:  # d logp_y / dx = onehot(y) - p
                coef = coef + g_logp[:, sl, None]
            chunk = p.mul_(coef).neg_()
            if g_logp is not None:
                chunk.scatter_add_(-1, targets[:, sl, None], g_logp[:, sl, None].to(chunk.dtype))
            grad[:, sl] = chunk.div_(tau) if tau != 1.0 else chunk
        return grad, None, None, None, None


def logprobs_from_logits(
    logits: Tensor, targets: Tensor, *, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``log softmax(logits / temperature)[targets]`` for ``logits [B, T, V]`` (and the
    entropies), chunked over T; differentiable without float32 copies of the logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    B, T, V = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, B * V))
    if torch.is_grad_enabled() and logits.requires_grad:
        logp, ent = _LogprobEntropy.apply(logits, targets, temperature, step, with_entropy)
        return logp, ent if with_entropy else None
    logps, ents = [], []
    for start in range(0, T, step):
        sl = slice(start, start + step)
        lp, ent, _ = _chunk_stats(logits[:, sl], targets[:, sl], temperature, with_entropy)
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
    groups: list[list[int]] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, T]`` of ``batch``'s completion tokens under ``model`` at
    ``temperature`` (and entropies ``[B, T]`` if asked), differentiable.

    ``shared_prefix``: rows with the same prompt are forwarded as one packed sequence
    (:mod:`mhpo_vl.models.prefix`; the same values, the prompt and image encoded once),
    where the model's attention allows it and packing saves work (:func:`~mhpo_vl.
    models.prefix.plan`); ``groups``: that plan, made by the caller (it forwards them
    packed whatever ``shared_prefix`` says).
    Values on padding positions (``response_mask == 0``) are meaningless; mask them.
    ``model`` may be wrapped (DDP): it is called, never unwrapped.
    """
    T = batch.response_mask.shape[1]
    targets = batch.input_ids[:, batch.input_ids.shape[1] - T :]
    if groups is None and shared_prefix:
        groups = plan(model, batch)
    if groups is not None:
        logits = shared_prefix_logits(model, batch, groups)
    else:
        logits = completion_logits(model, batch)
    return logprobs_from_logits(logits, targets, temperature=temperature, with_entropy=with_entropy)
