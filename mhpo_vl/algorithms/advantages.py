"""Group-relative advantage estimators over rewards ``R`` [P, G].

P prompts, G sampled responses each. Every estimator compares a response with its own
group; the trainer broadcasts the result over the response's tokens.

- ``grpo``: ``(R - mean_g R) / (std_g R + eps)``, Bessel-corrected std, ``eps = 1e-6``
  (Shao et al. 2024, DeepSeekMath, outcome supervision).
- ``dr_grpo``: ``R - mean_g R`` (Liu et al. 2025, "Understanding R1-Zero-like training":
  no std, which biases towards too-easy and too-hard groups).
- ``rloo``: ``G/(G-1) * (R - mean_g R)``, which is ``R_i`` minus the mean of the *other*
  G-1 rewards (Ahmadian et al. 2024, REINFORCE leave-one-out).

A group whose rewards are all exactly equal carries no signal: its advantages are set to
exactly ``0`` (no rounding residue from the mean) and it is counted, so the trainer can
log the zero-variance fraction (and DAPO's dynamic sampling can drop it). ``G = 1`` is a
``ValueError`` for every estimator: a one-response group has no baseline (and RLOO's
``G/(G-1)`` is undefined); use ``G >= 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mhpo_vl.algorithms.base import keyword_defaults, require, resolve_hyper
from mhpo_vl.registry import Registry

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


@dataclass(frozen=True)
class AdvantageResult:
    """Advantages [P, G], which groups had all-equal rewards ([P] bool) and how many."""

    advantages_PG: Tensor
    zero_var_P: Tensor
    num_zero_var_groups: int

    @property
    def zero_var_frac(self) -> float:
        """The fraction of groups with all-equal rewards (zero advantage)."""
        return self.num_zero_var_groups / max(self.advantages_PG.shape[0], 1)


def _centered(rewards_PG: Tensor) -> Tensor:
    return rewards_PG - rewards_PG.mean(dim=-1, keepdim=True)


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards_PG: Tensor, *, eps: float = 1e-6) -> Tensor:
    """``(R - mean) / (std + eps)`` per group, std with Bessel's correction (G - 1)."""
    return _centered(rewards_PG) / (rewards_PG.std(dim=-1, correction=1, keepdim=True) + eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards_PG: Tensor) -> Tensor:
    """``R - mean`` per group: Dr. GRPO drops the std normalisation."""
    return _centered(rewards_PG)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards_PG: Tensor) -> Tensor:
    """``G/(G-1) * (R - mean)``, i.e. each reward minus the mean of the other G-1."""
    group_size = rewards_PG.shape[-1]
    return _centered(rewards_PG) * (group_size / (group_size - 1))


def compute_advantages(name: str, rewards_PG: Tensor, **hyper: Any) -> AdvantageResult:
    """Run advantage estimator ``name`` on ``rewards_PG`` [P, G] with parameters ``hyper``.

    Unknown names or parameters, a tensor that is not [P, G] with ``G >= 2``, or a
    non-finite reward raise a ``ValueError`` naming the problem. Integer or boolean rewards
    are promoted to the default float dtype. No gradient flows (rewards are data).
    """
    fn = ADVANTAGES.get(name)
    params = resolve_hyper(f"advantage estimator {name!r}", keyword_defaults(fn), hyper)
    require(rewards_PG.dim() == 2, f"rewards must be [P, G], got {list(rewards_PG.shape)}")
    require(
        rewards_PG.shape[1] >= 2,
        f"advantage {name!r} needs a group size G >= 2, got rewards {list(rewards_PG.shape)}",
    )
    dtype = rewards_PG.dtype if rewards_PG.is_floating_point() else torch.get_default_dtype()
    rewards_PG = rewards_PG.detach().to(torch.float64)  # a huge reward's square fits
    require(bool(torch.isfinite(rewards_PG).all()), "rewards must be finite (got NaN or inf)")
    zero_var_P = (rewards_PG == rewards_PG[:, :1]).all(dim=-1)
    advantages_PG = fn(rewards_PG, **params).masked_fill(zero_var_P[:, None], 0.0).to(dtype)
    _require_signal(rewards_PG, advantages_PG, zero_var_P)
    return AdvantageResult(advantages_PG, zero_var_P, int(zero_var_P.sum()))


def _require_signal(rewards_PG: Tensor, advantages_PG: Tensor, zero_var_P: Tensor) -> None:
    """A group whose rewards differ must get finite advantages that are not all 0: finite
    rewards too large for the arithmetic (a std that overflows, a difference beyond the
    advantage dtype) would otherwise train on nothing, or on inf, without a word."""
    lost = ~zero_var_P & ~(torch.isfinite(advantages_PG).all(-1) & (advantages_PG != 0).any(-1))
    if bool(lost.any()):
        g = int(lost.nonzero()[0, 0])
        show = ", ".join(f"{x:.3g}" for x in rewards_PG[g].tolist()[:8])
        require(
            False,
            f"rewards too large for the advantage arithmetic: {int(lost.sum())} group(s) "
            f"with differing rewards got advantages that are not finite or all 0 (group {g}: "
            f"rewards [{show}]); scale the rewards (rewards[].weight) to a sane range",
        )
