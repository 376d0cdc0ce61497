"""Per-token KL estimators to a reference policy.

Schulman's estimators of ``KL(pi_theta || pi_ref)`` from samples of ``pi_theta``
(J. Schulman, "Approximating KL divergence", 2020), with ``x = ref - logp``:

- ``k1 = -x``: unbiased, high variance, can be negative;
- ``k2 = x^2 / 2``: biased, low variance, >= 0;
- ``k3 = exp(x) - x - 1``: unbiased, low variance, >= 0 (the GRPO default).

``x`` is clamped to ``[-20, 20]`` for all three (one definition of ``x``; only ``k3``
needs it, for its exp). The entry point adds ``kl_coef * k`` to the per-token loss; the
coefficient is 0 by default, and then no reference model is needed at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mhpo_vl.algorithms.base import LOG_RATIO_CLAMP, check_same_shape
from mhpo_vl.errors import UserError

_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": lambda x: -x,
    "k2": lambda x: 0.5 * x.square(),
    "k3": lambda x: torch.expm1(x) - x,  # exp(x) - 1 - x, accurate near x = 0
}

KL_ESTIMATORS: tuple[str, ...] = tuple(_ESTIMATORS)
"""The valid ``estimator`` names of :func:`kl_penalty`."""


def check_kl_estimator(estimator: str) -> None:
    """Raise a ``ValueError`` naming ``estimator`` and listing the valid ones unless valid."""
    if estimator not in _ESTIMATORS:
        raise UserError(
            f"unknown KL estimator {estimator!r}; valid names: {', '.join(KL_ESTIMATORS)}"
        )


def kl_penalty(logprobs_BT: Tensor, ref_logprobs_BT: Tensor, estimator: str = "k3") -> Tensor:
    """The per-token KL estimate [B, T] between the policy and the reference.

    The gradient flows into ``logprobs_BT`` only; the reference is detached.
    """
    check_kl_estimator(estimator)
    check_same_shape(logprobs_BT, ref_logprobs=ref_logprobs_BT)
    x_BT = ref_logprobs_BT.detach().to(logprobs_BT.dtype) - logprobs_BT
    return _ESTIMATORS[estimator](x_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
