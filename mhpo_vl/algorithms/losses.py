"""The GRPO-family baselines the MHPO paper compares against.

Each function returns the per-token loss ``L_it`` [B, T] and its per-token diagnostics,
keyed by the metric name they become (the entry point takes their masked mean).

``clip_frac`` counts the tokens whose gradient the clip cuts (PPO-style clips: the
clipped branch is selected, so the token's gradient is zero) or truncates (CISPO: the
importance weight is capped). For the PPO clip that is ``A > 0 and r > 1 + clip_high``
or ``A < 0 and r < 1 - clip_low`` (plus ``A < 0 and r > clip_c`` with the dual clip);
tokens with ``A = 0`` never count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mhpo_vl.algorithms.base import Diagnostics, LossInputs, register_policy_loss, require


def _check_clip(clip_low: float | None, clip_high: float) -> None:
    require(clip_high >= 0, f"clip_high must be >= 0, got {clip_high}")
    if clip_low is not None:
        require(0 <= clip_low <= 1, f"clip_low must be in [0, 1], got {clip_low}")


def clipped_surrogate(
    ratio_BT: Tensor, adv_BT: Tensor, low: float, high: float
) -> tuple[Tensor, Tensor]:
    """``max(-A*r, -A*clip(r, low, high))`` (PPO, Schulman et al. 2017, eq. 7, as a loss)
    and the boolean [B, T] map of tokens where the clipped branch cuts the gradient."""
    loss_BT = torch.maximum(-adv_BT * ratio_BT, -adv_BT * ratio_BT.clamp(low, high))
    clipped_BT = ((adv_BT > 0) & (ratio_BT > high)) | ((adv_BT < 0) & (ratio_BT < low))
    return loss_BT, clipped_BT


@register_policy_loss("dapo", agg="token-mean", clip_high=0.28)
@register_policy_loss("grpo", agg="seq-mean-token-mean")
def ppo_clip(
    inputs: LossInputs,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
) -> tuple[Tensor, Diagnostics]:
    """GRPO's token-level PPO clip (Shao et al. 2024, DeepSeekMath eq. 3, as a loss).

    ``L = max(-A*r, -A*clip(r, 1-clip_low, 1+clip_high))``; with the dual clip ``clip_c``
    (Ye et al. 2020; off by default, 3.0 is usual) tokens with ``A < 0`` are further
    capped: ``L = min(L, -A*clip_c)``. Registered as ``grpo`` (0.2 / 0.2) and as ``dapo``
    (clip-higher, Yu et al. 2025: 0.2 / 0.28, ``token-mean``); DAPO's dynamic sampling and
    overlong shaping live in the pipeline, not here.
    """
    _check_clip(clip_low, clip_high)
    require(clip_c is None or clip_c > 1, f"clip_c must be > 1 (or None), got {clip_c}")
    ratio_BT = inputs.log_ratio_BT.exp()
    adv_BT = inputs.advantages_BT
    loss_BT, clipped_BT = clipped_surrogate(ratio_BT, adv_BT, 1 - clip_low, 1 + clip_high)
    diagnostics: Diagnostics = {}
    if clip_c is not None:
        negative_BT = adv_BT < 0
        loss_BT = torch.where(negative_BT, torch.minimum(loss_BT, -adv_BT * clip_c), loss_BT)
        dual_BT = negative_BT & (ratio_BT > clip_c)  # the cap -A*clip_c is selected
        clipped_BT = clipped_BT | dual_BT
        diagnostics["dual_clip_frac"] = dual_BT
    diagnostics["clip_frac"] = clipped_BT
    return loss_BT, diagnostics


@register_policy_loss("gspo", agg="seq-mean-token-mean")
def gspo(
    inputs: LossInputs, *, clip_low: float = 3e-4, clip_high: float = 4e-4
) -> tuple[Tensor, Diagnostics]:
    """GSPO, sequence-level ratio (Zheng et al. 2025, its "GSPO-token" variant).

    ``log s_i = sum_t M*d_it / |y_i|`` (the clamped ``d``); token form
    ``log s_it = logp_it - sg(logp_it) + sg(log s_i)``, whose value is ``s_i`` and whose
    gradient in ``logp_it`` is ``s_i``; ``L = max(-A*s, -A*clip(s, 1-clip_low, 1+clip_high))``.
    With ``seq-mean-token-mean`` and a per-sequence ``A`` this is exactly the gradient of
    the sequence-level objective. The gradient flows through ``logp`` itself, so the
    ``[-20, 20]`` clamp on ``d`` limits only ``s``'s value. An empty sequence has ``s = 1``.
    """
    _check_clip(clip_low, clip_high)
    mask_BT = inputs.mask_BT
    log_s_B = inputs.log_ratio_BT.sum(-1) / mask_BT.sum(-1).clamp_min(1)  # d is 0 on padding
    logp_BT = inputs.logprobs_BT
    seq_ratio_BT = (logp_BT - logp_BT.detach() + log_s_B.detach()[:, None]).exp()
    loss_BT, clipped_BT = clipped_surrogate(
        seq_ratio_BT, inputs.advantages_BT, 1 - clip_low, 1 + clip_high
    )
    return loss_BT, {"clip_frac": clipped_BT, "seq_ratio_mean": seq_ratio_BT}


@register_policy_loss("sapo", agg="seq-mean-token-mean")
def sapo(
    inputs: LossInputs, *, tau_pos: float = 1.0, tau_neg: float = 1.05
) -> tuple[Tensor, Diagnostics]:
    """SAPO's soft sigmoid gate instead of a hard clip (Gao et al. 2025, Soft Adaptive PO).

    ``tau = tau_pos if A > 0 else tau_neg``; ``L = -(4/tau) * sigma(tau*(r-1)) * A``.
    The gate's slope at ``r = 1`` is ``(4/tau) * tau * sigma'(0) = 1``, so on-policy the
    gradient is the plain policy gradient ``-A``; far from ``r = 1`` it decays smoothly.
    """
    require(tau_pos > 0 and tau_neg > 0, f"tau_pos, tau_neg must be > 0, got {tau_pos}, {tau_neg}")
    adv_BT = inputs.advantages_BT
    tau_BT = torch.where(adv_BT > 0, adv_BT.new_tensor(tau_pos), adv_BT.new_tensor(tau_neg))
    gate_BT = (4 / tau_BT) * torch.sigmoid(tau_BT * (inputs.log_ratio_BT.exp() - 1))
    return -gate_BT * adv_BT, {}


@register_policy_loss("cispo", agg="token-mean")
def cispo(
    inputs: LossInputs, *, clip_high: float = 5.0, clip_low: float | None = None
) -> tuple[Tensor, Diagnostics]:
    """CISPO: a clipped, stop-gradient importance weight on REINFORCE (MiniMax-M1 report, 2025).

    ``L = -sg(min(r, 1+clip_high)) * A * logp`` (and ``max(., 1-clip_low)`` when
    ``clip_low`` is set; unset by default). Unlike the PPO clip, no token loses its
    gradient: the weight is only truncated. The value itself is a surrogate (it contains
    ``logp``); only its gradient ``-sg(w) * A`` is meaningful. ``clip_frac`` counts the
    truncated weights regardless of the sign of ``A``.
    """
    _check_clip(clip_low, clip_high)
    ratio_BT = inputs.log_ratio_BT.detach().exp()
    low = None if clip_low is None else 1 - clip_low
    weight_BT = ratio_BT.clamp(min=low, max=1 + clip_high)
    truncated_BT = ratio_BT > 1 + clip_high
    if low is not None:
        truncated_BT = truncated_BT | (ratio_BT < low)
    return -weight_BT * inputs.advantages_BT * inputs.logprobs_BT, {"clip_frac": truncated_BT}
