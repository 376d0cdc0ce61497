"""Aggregation: how a per-token loss ``L`` [B, T] under mask ``M`` becomes one scalar.

Which aggregation is in use changes the algorithm:

- ``token-mean``: ``sum(L*M) / N_tok`` (DAPO): every token weighs the same.
- ``seq-mean-token-mean``: ``(1/N_seq) sum_i sum_t L*M / sum_t M`` (GRPO, MHPO's paper
  objective): every sequence weighs the same, its tokens share that weight.
- ``seq-mean-token-sum``: ``(1/N_seq) sum_i sum_t L*M``: longer sequences weigh more.
- ``seq-mean-token-sum-norm``: ``sum(L*M) / (N_seq * T_max)`` (Dr. GRPO): a constant
  normaliser, so no length bias.

**Global counts.** One optimizer step is usually split into micro-batches (gradient
accumulation) and processes. Pass ``num_tokens`` (the number of response tokens, for
``token-mean``) or ``num_seqs`` (the number of non-empty sequences, for the ``seq-mean-*``
modes) of the *whole step*: each micro-batch then returns its share, and the sum of the
micro-batch values equals the full-batch value. (Under DDP, which *averages* gradients
over the W processes, pass the global count divided by W, i.e. multiply the loss by W.)
Left out, both counts are those of the tensors given, i.e. the plain mean over this batch.

**Empty sequences.** ``N_seq`` defaults to the number of rows with at least one response
token: an all-padding row (e.g. a micro-batch filler) neither adds to the loss nor dilutes
it. An all-padding batch aggregates to ``0``.

**T_max.** ``seq-mean-token-sum-norm`` divides by ``max_len``, the configured maximum
response length. Left out, it is the tensor's ``T``, which is only right when batches are
padded to the configured length; pass ``max_len`` when micro-batches are padded to their
own longest response, or splitting changes the result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mhpo_vl.errors import UserError

Count = int | float | Tensor
_AggFn = Callable[[Tensor, Tensor, Count | None, Count | None, int | None], Tensor]


def _nonzero(count: Tensor) -> Tensor:
    """``count`` with 0 replaced by 1, so an empty batch or row aggregates to 0, not NaN."""
    return count.masked_fill(count == 0, 1)


def _positive(name: str, count: Count) -> Count:
    if not isinstance(count, Tensor) and not count > 0:
        raise UserError(f"{name} must be positive, got {count}")
    return count


def _seq_count(lengths_B: Tensor, num_seqs: Count | None) -> Tensor | Count:
    """``num_seqs`` if given, else the number of rows holding at least one token."""
    if num_seqs is not None:
        return _positive("num_seqs", num_seqs)
    return _nonzero((lengths_B > 0).sum().to(lengths_B.dtype))


# Each aggregator gets the loss already zeroed at padding and the response lengths [B].
def _token_mean(loss_BT, lengths_B, num_tokens, num_seqs, max_len) -> Tensor:
    total = loss_BT.sum()
    if num_tokens is not None:
        return total / _positive("num_tokens", num_tokens)
    return total / _nonzero(lengths_B.sum())


def _seq_mean_token_mean(loss_BT, lengths_B, num_tokens, num_seqs, max_len) -> Tensor:
    per_seq_B = loss_BT.sum(-1) / _nonzero(lengths_B)
    return per_seq_B.sum() / _seq_count(lengths_B, num_seqs)


def _seq_mean_token_sum(loss_BT, lengths_B, num_tokens, num_seqs, max_len) -> Tensor:
    return loss_BT.sum() / _seq_count(lengths_B, num_seqs)


def _seq_mean_token_sum_norm(loss_BT, lengths_B, num_tokens, num_seqs, max_len) -> Tensor:
    t_max = loss_BT.shape[-1] if max_len is None else _positive("max_len", max_len)
    return loss_BT.sum() / (_seq_count(lengths_B, num_seqs) * t_max)


_AGGREGATORS: dict[str, _AggFn] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}

AGGREGATIONS: tuple[str, ...] = tuple(_AGGREGATORS)
"""The valid ``mode`` names of :func:`aggregate`."""


def check_aggregation(mode: str) -> None:
    """Raise a ``ValueError`` naming ``mode`` and listing the valid ones unless it is valid."""
    if mode not in _AGGREGATORS:
        raise UserError(f"unknown aggregation {mode!r}; valid names: {', '.join(AGGREGATIONS)}")


def aggregate(
    loss_BT: Tensor,
    mask_BT: Tensor,
    mode: str,
    *,
    num_tokens: Count | None = None,
    num_seqs: Count | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce the per-token loss ``loss_BT`` over the tokens where ``mask_BT`` is 1.

    ``mode`` is one of :data:`AGGREGATIONS` (see the module docstring for the formulas).
    The mask is 0/1 (bool or float; any nonzero entry is a response token); padded slots
    are zeroed with ``torch.where``, so whatever they hold (even NaN) changes neither the
    value nor the gradient.
    ``num_tokens`` / ``num_seqs`` are the global counts of the optimizer step (only the one
    the mode uses is read); ``max_len`` is ``T_max`` for ``seq-mean-token-sum-norm``.
    """
    check_aggregation(mode)
    if loss_BT.shape != mask_BT.shape or loss_BT.dim() != 2:
        raise UserError(
            f"aggregate needs loss and mask of one shape [B, T], got "
            f"{list(loss_BT.shape)} and {list(mask_BT.shape)}"
        )
    keep_BT = mask_BT if mask_BT.dtype == torch.bool else mask_BT.bool()
    # where, not multiply: a NaN or inf in a padded slot must not leak into the sum.
    masked_BT = torch.where(keep_BT, loss_BT, 0.0)
    lengths_B = keep_BT.sum(-1).to(loss_BT.dtype)
    return _AGGREGATORS[mode](masked_BT, lengths_B, num_tokens, num_seqs, max_len)
