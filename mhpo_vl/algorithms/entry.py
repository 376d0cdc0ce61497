"""The one entry point the trainer calls: :func:`policy_loss`.

It looks the loss up by name, checks its parameters, masks and broadcasts the inputs,
adds the optional KL term, aggregates, and reduces the diagnostics to floats. The trainer
never branches on a loss name; everything a loss needs is in its registration.

Metrics (floats, over the response tokens of this call only, each token weighing the same):

- ``ratio_mean``, ``ratio_min``, ``ratio_max``: of ``r = exp(d)``, ``d`` clamped to
  ``[-20, 20]`` as in the losses (so ``ratio_max <= e^20``);
- ``ratio_out_frac``: fraction of tokens with ``r < 0.8`` or ``r > 1.28``;
- per loss, the masked mean of each diagnostic the loss returns: ``clip_frac`` (grpo,
  dapo, gspo, cispo; see ``losses.py`` for when a clip counts as active), ``dual_clip_frac``
  (with ``clip_c``), ``seq_ratio_mean`` (gspo: ``s_i``, token-weighted), ``psi_mean``,
  ``zeta_mean``, ``survival_weight_mean = mean exp(-zeta)`` (the mhpo family);
- ``kl_mean``: mean of the chosen estimator ``k`` (not times ``kl_coef``), whenever
  ``ref_logprobs`` is given, even with ``kl_coef = 0``.

With no response token at all, every metric is NaN and the loss is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mhpo_vl.algorithms import losses as _losses  # noqa: F401  (registers the baselines)
from mhpo_vl.algorithms import mhpo as _mhpo  # noqa: F401  (registers the mhpo family)
from mhpo_vl.algorithms.aggregation import Count, aggregate, check_aggregation
from mhpo_vl.algorithms.base import (
    POLICY_LOSSES,
    Diagnostics,
    LossInputs,
    check_same_device,
    check_same_shape,
    require,
)
from mhpo_vl.algorithms.kl import check_kl_estimator, kl_penalty

RATIO_OUT_LOW, RATIO_OUT_HIGH = 0.8, 1.28
"""``ratio_out_frac`` counts tokens with ``r`` outside ``[RATIO_OUT_LOW, RATIO_OUT_HIGH]``."""


@dataclass(frozen=True)
class PolicyLossOutput:
    """What :func:`policy_loss` returns."""

    loss: Tensor
    """The aggregated scalar loss; differentiable in ``logprobs``."""
    metrics: dict[str, float]
    """Diagnostics for logging (see the module docstring)."""
    loss_BT: Tensor
    """The per-token loss [B, T] before aggregation, KL term included, 0 at padding."""
    agg: str
    """The aggregation actually used (the loss's default when none was asked for)."""


def policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    agg: str | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    num_tokens: Count | None = None,
    num_seqs: Count | None = None,
    max_len: int | None = None,
    token_weights: Tensor | None = None,
    **hyper: Any,
) -> PolicyLossOutput:
    """The policy loss ``name`` on one (micro-)batch.

    ``logprobs`` [B, T] (with grad), ``old_logprobs`` [B, T] and ``ref_logprobs`` [B, T]
    (detached here), ``advantages`` [B] or [B, T], ``mask`` [B, T] (0/1 or bool).
    ``agg`` defaults to the loss's own aggregation; ``num_tokens`` / ``num_seqs`` /
    ``max_len`` are passed to :func:`~mhpo_vl.algorithms.aggregation.aggregate`.
    ``hyper`` are the loss's parameters; an unknown loss, parameter, aggregation or KL
    estimator is a ``ValueError`` naming it and listing the valid ones. The per-token
    loss is ``w_it * L_it + kl_coef * k_it``, where ``token_weights`` ``w`` [B, T]
    (detached; default 1) reweight the policy term, e.g. the truncated importance
    weights of :func:`~mhpo_vl.algorithms.correction.rollout_correction`.
    """
    spec = POLICY_LOSSES.get(name)
    params = spec.resolve(hyper)
    agg = spec.agg if agg is None else agg
    check_aggregation(agg)
    check_kl_estimator(kl_estimator)
    require(kl_coef >= 0, f"kl_coef must be >= 0, got {kl_coef}")
    require(kl_coef == 0 or ref_logprobs is not None, "kl_coef > 0 needs ref_logprobs")
    inputs = LossInputs.build(logprobs, old_logprobs, advantages, mask)
    loss_BT, diagnostics = spec.fn(inputs, **params)
    if token_weights is not None:
        check_same_shape(inputs.logprobs_BT, token_weights=token_weights)
        check_same_device(inputs.logprobs_BT, token_weights=token_weights)
        w_BT = torch.where(inputs.keep_BT, token_weights.detach().to(loss_BT.dtype), 0.0)
        loss_BT = loss_BT * w_BT
    kl_BT = None
    if ref_logprobs is not None:
        kl_BT = _masked_kl(inputs, ref_logprobs, kl_estimator)
        if kl_coef != 0:
            loss_BT = loss_BT + kl_coef * kl_BT
    loss = aggregate(
        loss_BT, inputs.keep_BT, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    return PolicyLossOutput(loss, loss_metrics(inputs, diagnostics, kl_BT), loss_BT, agg)


def _masked_kl(inputs: LossInputs, ref_logprobs_BT: Tensor, estimator: str) -> Tensor:
    """``kl_penalty`` with the reference zeroed at padding, like the other inputs."""
    check_same_shape(inputs.logprobs_BT, ref_logprobs=ref_logprobs_BT)
    check_same_device(inputs.logprobs_BT, ref_logprobs=ref_logprobs_BT)
    ref_BT = ref_logprobs_BT.detach().to(inputs.logprobs_BT.dtype)
    ref_BT = torch.where(inputs.keep_BT, ref_BT, 0.0)
    return kl_penalty(inputs.logprobs_BT, ref_BT, estimator)


@torch.no_grad()
def loss_metrics(
    inputs: LossInputs, diagnostics: Diagnostics, kl_BT: Tensor | None
) -> dict[str, float]:
    """The float metrics of one call (module docstring), with a single device sync."""
    keep_BT = inputs.keep_BT
    stat_dtype = torch.promote_types(inputs.mask_BT.dtype, torch.float32)  # no bf16 sums
    mask_N = inputs.mask_BT.reshape(-1).to(stat_dtype)
    num_tokens = mask_N.sum()

    def mean(values_BT: Tensor) -> Tensor:
        # inputs are zeroed at padding, so diagnostics are finite there and dot() is safe
        if values_BT.dtype == torch.bool:
            return (values_BT & keep_BT).sum() / num_tokens
        return torch.dot(values_BT.detach().reshape(-1).to(mask_N.dtype), mask_N) / num_tokens

    log_ratio_BT = inputs.log_ratio_BT.detach()
    ratio_BT = log_ratio_BT.exp()
    values = {
        "ratio_mean": mean(ratio_BT),
        "ratio_min": torch.where(keep_BT, log_ratio_BT, torch.inf).amin().exp(),
        "ratio_max": torch.where(keep_BT, log_ratio_BT, -torch.inf).amax().exp(),
        "ratio_out_frac": mean((ratio_BT < RATIO_OUT_LOW) | (ratio_BT > RATIO_OUT_HIGH)),
    }
    values.update({key: mean(value_BT) for key, value_BT in diagnostics.items()})
    if kl_BT is not None:
        values["kl_mean"] = mean(kl_BT)
    stacked = torch.stack([v.to(torch.float64) for v in values.values()])
    stacked = torch.where(num_tokens > 0, stacked, torch.nan)  # no token: no data
    return dict(zip(values, stacked.tolist(), strict=True))
