"""Truncated importance sampling (TIS) for rollouts sampled by another engine.

With a fast inference engine (vLLM) the tokens are drawn from the engine's copy of the
policy, ``pi_rollout``, computed with its own kernels, precision and batching, while
the trainer optimises its own forward of the same weights, ``pi_old``. The two agree
only up to numerics, and those small per-token differences compound over long
completions: the update is then off-policy without saying so, which biases the policy
gradient and can destabilise training.

Importance sampling re-weights each sample by how much more (or less) likely the
trainer's policy finds it than the distribution it was actually drawn from,
``w = pi_old / pi_rollout``. Truncating the weight at ``cap`` (``min(w, cap)``) bounds
its variance at the cost of a small bias, which is the usual trade of truncated IS.
Two granularities:

- ``"token"``: ``w_it = min(exp(old_it - rollout_it), cap)``, one weight per token;
- ``"sequence"``: ``w_i = min(exp(sum_t (old_it - rollout_it)), cap)``, the weight of
  the whole completion, repeated on each of its tokens;
- ``"none"``: no correction, every response token weighs 1.

Weights are 0 on padding for every level, detached (they scale the loss; no gradient
flows into them), and every log-ratio is clamped to ``[-LOG_RATIO_CLAMP,
LOG_RATIO_CLAMP]`` before an ``exp`` so that no weight or metric overflows.

The metrics describe the mismatch whatever the level (so it can be watched before a
correction is switched on):

- ``rollout/logprob_abs_diff_mean`` and ``rollout/logprob_abs_diff_max``: ``|old -
  rollout|`` over response tokens;
- ``rollout/kl``: the masked token mean of the k3 estimator of ``KL(pi_rollout ||
  pi_old)``, ``r - 1 - log r`` with ``log r = old - rollout``, which is unbiased for
  samples drawn from ``pi_rollout`` (as these are) and never negative;
- ``rollout/is_weight_mean``: the mean truncated weight (over tokens for ``"token"``,
  over non-empty sequences for ``"sequence"``, 1 for ``"none"``);
- ``rollout/is_capped_frac``: the fraction of tokens (``"token"``) or non-empty
  sequences (``"sequence"``) whose untruncated weight exceeded ``cap``, i.e. was cut;
  0 for ``"none"``.

Without any response token every metric is 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mhpo_vl.algorithms.base import LOG_RATIO_CLAMP, require

CORRECTION_LEVELS: tuple[str, ...] = ("none", "token", "sequence")
"""The valid ``level`` values of :func:`rollout_correction`."""

METRIC_KEYS: tuple[str, ...] = (
    "rollout/logprob_abs_diff_mean",
    "rollout/logprob_abs_diff_max",
    "rollout/kl",
    "rollout/is_weight_mean",
    "rollout/is_capped_frac",
)


def _check_args(old: Tensor, rollout: Tensor, mask: Tensor, level: str, cap: float) -> None:
    require(
        isinstance(level, str) and level in CORRECTION_LEVELS,
        f"rollout correction level must be one of {', '.join(CORRECTION_LEVELS)}, got {level!r}",
    )
    require(
        isinstance(cap, (int, float)) and not isinstance(cap, bool) and math.isfinite(cap),
        f"rollout correction cap must be a finite number, got {cap!r}",
    )
    require(cap >= 1.0, f"rollout correction cap must be >= 1, got {cap!r}")
    for name, t in (("old_logprobs", old), ("rollout_logprobs", rollout), ("mask", mask)):
        require(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    require(old.dim() == 2, f"old_logprobs must have shape [B, T], got {list(old.shape)}")
    for name, t in (("rollout_logprobs", rollout), ("mask", mask)):
        require(
            t.shape == old.shape,
            f"{name} must have the shape of old_logprobs {list(old.shape)}, got {list(t.shape)}",
        )
        require(
            t.device == old.device,
            f"{name} is on {t.device}, old_logprobs on {old.device}: place them together",
        )
    for name, t in (("old_logprobs", old), ("rollout_logprobs", rollout)):
        require(t.is_floating_point(), f"{name} must be floating point, got {t.dtype}")


def rollout_correction(
    old_logprobs_BT: Tensor,
    rollout_logprobs_BT: Tensor,
    mask_BT: Tensor,
    level: str,
    cap: float,
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights ``[B, T]`` of the trainer's log-probs
    ``old_logprobs_BT`` against the engine's ``rollout_logprobs_BT`` (detached, 0 on
    padding, in the log-probs' dtype but at least float32), and the mismatch metrics
    (see the module docstring).

    ``mask_BT`` marks response tokens (nonzero or True); whatever padding holds, even
    NaN, changes neither the weights nor the metrics. A ``UserError`` names a bad
    ``level``, a ``cap`` below 1, or tensors of different shapes or devices.
    """
    _check_args(old_logprobs_BT, rollout_logprobs_BT, mask_BT, level, cap)
    with torch.no_grad():
        dtype = torch.promote_types(
            torch.promote_types(old_logprobs_BT.dtype, rollout_logprobs_BT.dtype), torch.float32
        )
        keep = mask_BT.bool() if mask_BT.dtype != torch.bool else mask_BT
        keep_f = keep.to(dtype)
        # log(pi_old / pi_rollout) per token; padding is 0 whatever it held
        log_ratio = torch.where(
            keep,
            old_logprobs_BT.detach().to(dtype) - rollout_logprobs_BT.detach().to(dtype),
            0.0,
        )
        n_tokens = int(keep.sum().item())
        log_cap = math.log(cap)

        if level == "none":
            weights = keep_f.clone()
            weight_mean, capped_frac = 1.0, 0.0
        elif level == "token":
            log_w = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            weights = torch.exp(log_w.clamp(max=log_cap)) * keep_f
            capped = (log_w > log_cap) & keep
            weight_mean = float(weights.sum().item()) / max(n_tokens, 1)
            capped_frac = float(capped.sum().item()) / max(n_tokens, 1)
        else:  # sequence
            log_w_B = log_ratio.sum(dim=1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            w_B = torch.exp(log_w_B.clamp(max=log_cap))
            weights = w_B[:, None] * keep_f
            has_tokens = keep.any(dim=1)
            n_seq = int(has_tokens.sum().item())
            weight_mean = float(w_B[has_tokens].sum().item()) / max(n_seq, 1)
            capped_frac = float(((log_w_B > log_cap) & has_tokens).sum().item()) / max(n_seq, 1)

        if n_tokens == 0:
            metrics = dict.fromkeys(METRIC_KEYS, 0.0)
        else:
            abs_diff = log_ratio.abs()
            x = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            k3 = (torch.expm1(x) - x) * keep_f  # r - 1 - log r, >= 0
            metrics = {
                "rollout/logprob_abs_diff_mean": float(abs_diff.sum().item()) / n_tokens,
                "rollout/logprob_abs_diff_max": float(abs_diff.max().item()),
                "rollout/kl": float(k3.sum().item()) / n_tokens,
                "rollout/is_weight_mean": weight_mean,
                "rollout/is_capped_frac": capped_frac,
            }
    return weights.detach(), metrics
