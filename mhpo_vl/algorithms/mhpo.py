"""MHPO, the paper's method, and its three ablations.

MHPO (Wang et al. 2026, arXiv 2603.16929) replaces PPO's hard clip by two smooth parts:

- the Log-Fidelity Modulator (LFM) ``psi = c * tanh(d / c)``, a bounded map of the
  log-ratio that behaves like ``log r`` near ``r = 1`` and keeps every gradient below
  ``e^c |A|`` (the paper's Theorem 1);
- the Decoupled Hazard Penalty (DHP) ``zeta = (s(sg psi) / lam_pos)^k_pos +
  (s(-sg psi) / lam_neg)^k_neg``, Weibull cumulative hazards on either side of the shift.

``L = -exp(psi - zeta) * A``. By default (``dhp_gradient: detached``) ``zeta`` is
computed on a stop-gradient copy of ``psi`` (semi-gradient): ``exp(-zeta)``, the survival
weight, only scales a token's gradient, so ``dL/dlogp = -A exp(psi - zeta) sech^2(d / c)``
and the sign of the update never flips. The paper's text does not settle whether the
gradient flows through the hazard; ``dhp_gradient: full`` lets it, which multiplies the
gradient by ``1 - dzeta/dpsi``: for A > 0 it turns into a restoring force past r ~ 3.4
(softplus shift), and for A < 0 it pushes contraction harder. Same loss value either way.
``detached`` is the default because it is the robust one: in the CPU study (3 seeds,
docs/results.md) ``full`` collapsed on every seed at twice the lr with 4 off-policy
updates per batch, where ``detached`` held; with the shipped recipe they are within noise.

Why there are two shifts: the paper, as read, uses ``s = softplus``, which makes
``zeta(r=1) = (ln2)^1.5 + (ln2/0.8)^2 ~ 1.328`` (weight ``~0.265`` on-policy); ``relu``
gives ``zeta(r=1) = 0`` and the plain policy gradient on-policy. Both are implemented,
``softplus`` is the default, and ``survival_weight_mean`` is logged to tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mhpo_vl.algorithms.base import Diagnostics, LossInputs, register_policy_loss, require

SHIFTS: dict[str, Callable[[Tensor], Tensor]] = {"softplus": F.softplus, "relu": torch.relu}
"""The shift ``s`` of the hazard penalty, by the name the ``shift`` parameter takes."""


def log_fidelity_modulator(log_ratio_BT: Tensor, c: float) -> Tensor:
    """LFM: ``psi = c * tanh(d / c)``, in ``(-c, c)``, ``~ d`` for small ``d``."""
    require(c > 0, f"c must be > 0, got {c}")
    return c * torch.tanh(log_ratio_BT / c)


DHP_GRADIENTS = ("detached", "full")
"""How the gradient meets the hazard ``zeta`` (the ``dhp_gradient`` parameter):
``detached`` (semi-gradient, the default) or ``full`` (through ``psi`` inside ``zeta``)."""


def decoupled_hazard_penalty(
    psi_BT: Tensor,
    *,
    k_pos: float,
    lam_pos: float,
    k_neg: float,
    lam_neg: float,
    shift: str,
    gradient: str = "detached",
) -> Tensor:
    """DHP: ``zeta = (s(psi)/lam_pos)^k_pos + (s(-psi)/lam_neg)^k_neg`` (>= 0).

    ``gradient="detached"``: ``psi`` enters as ``sg(psi)``, so ``zeta`` never receives a
    gradient (semi-gradient): the survival weight ``exp(-zeta)`` only scales a token's
    gradient. ``"full"``: the gradient also flows through ``zeta``, which multiplies
    ``dL/dlogp`` by ``1 - dzeta/dpsi``; the value is the same. ``full`` needs ``k >= 1``
    (below, ``d/dpsi s(psi)^k`` is unbounded where ``s`` reaches 0, as ``relu`` does).
    """
    require(shift in SHIFTS, f"unknown shift {shift!r}; valid names: {', '.join(SHIFTS)}")
    require(
        gradient in DHP_GRADIENTS,
        f"unknown dhp_gradient {gradient!r}; valid names: {', '.join(DHP_GRADIENTS)}",
    )
    require(min(k_pos, k_neg) > 0, f"k_pos, k_neg must be > 0, got {k_pos}, {k_neg}")
    require(
        gradient == "detached" or min(k_pos, k_neg) >= 1,
        f"dhp_gradient 'full' needs k_pos, k_neg >= 1, got {k_pos}, {k_neg}",
    )
    require(min(lam_pos, lam_neg) > 0, f"lam_pos, lam_neg must be > 0, got {lam_pos}, {lam_neg}")
    s = SHIFTS[shift]
    if gradient == "detached":
        psi_BT = psi_BT.detach()  # sg(psi): the hazard scales the gradient, never redirects it
    return (s(psi_BT) / lam_pos).pow(k_pos) + (s(-psi_BT) / lam_neg).pow(k_neg)


def modulated_loss(psi_BT: Tensor, zeta_BT: Tensor, adv_BT: Tensor) -> tuple[Tensor, Diagnostics]:
    """``L = -exp(psi - zeta) * A`` and the MHPO diagnostics (psi, zeta, survival weight)."""
    diagnostics = {
        "psi_mean": psi_BT,
        "zeta_mean": zeta_BT,
        "survival_weight_mean": torch.exp(-zeta_BT),
    }
    return -torch.exp(psi_BT - zeta_BT) * adv_BT, diagnostics


@register_policy_loss("mhpo", agg="seq-mean-token-mean")
def mhpo(
    inputs: LossInputs,
    *,
    c: float = 1.5,
    k_pos: float = 1.5,
    lam_pos: float = 1.0,
    k_neg: float = 2.0,
    lam_neg: float = 0.8,
    shift: str = "softplus",
    dhp_gradient: str = "detached",
) -> tuple[Tensor, Diagnostics]:
    """MHPO: LFM then DHP, ``L = -exp(psi - zeta) * A`` (paper defaults; the gradient
    through ``zeta`` as ``dhp_gradient`` says, see :func:`decoupled_hazard_penalty`)."""
    psi_BT = log_fidelity_modulator(inputs.log_ratio_BT, c)
    zeta_BT = decoupled_hazard_penalty(
        psi_BT, k_pos=k_pos, lam_pos=lam_pos, k_neg=k_neg, lam_neg=lam_neg, shift=shift,
        gradient=dhp_gradient,
    )  # fmt: skip
    return modulated_loss(psi_BT, zeta_BT, inputs.advantages_BT)


@register_policy_loss("mhpo_lfm_only", agg="seq-mean-token-mean")
def mhpo_lfm_only(inputs: LossInputs, *, c: float = 1.5) -> tuple[Tensor, Diagnostics]:
    """Ablation without the hazard: ``zeta = 0``, ``L = -exp(psi) * A``.

    Its gradient ``-A e^psi sech^2(d/c)`` has magnitude at most ``e^c |A|`` (Theorem 1).
    """
    psi_BT = log_fidelity_modulator(inputs.log_ratio_BT, c)
    return modulated_loss(psi_BT, torch.zeros_like(psi_BT), inputs.advantages_BT)


@register_policy_loss("mhpo_dhp_only", agg="seq-mean-token-mean")
def mhpo_dhp_only(
    inputs: LossInputs,
    *,
    k_pos: float = 1.5,
    lam_pos: float = 1.0,
    k_neg: float = 2.0,
    lam_neg: float = 0.8,
    shift: str = "softplus",
    dhp_gradient: str = "detached",
) -> tuple[Tensor, Diagnostics]:
    """Ablation without the modulator: ``psi = d`` (no tanh), ``zeta`` on ``d``."""
    psi_BT = inputs.log_ratio_BT
    zeta_BT = decoupled_hazard_penalty(
        psi_BT, k_pos=k_pos, lam_pos=lam_pos, k_neg=k_neg, lam_neg=lam_neg, shift=shift,
        gradient=dhp_gradient,
    )  # fmt: skip
    return modulated_loss(psi_BT, zeta_BT, inputs.advantages_BT)


@register_policy_loss("mhpo_symmetric", agg="seq-mean-token-mean")
def mhpo_symmetric(
    inputs: LossInputs,
    *,
    c: float = 1.5,
    k_pos: float = 1.5,
    lam_pos: float = 1.0,
    shift: str = "softplus",
    dhp_gradient: str = "detached",
) -> tuple[Tensor, Diagnostics]:
    """Ablation with one hazard for both sides: ``k_neg = k_pos``, ``lam_neg = lam_pos``.

    Only ``k_pos`` and ``lam_pos`` are parameters (passing ``k_neg`` is an error), so a
    recipe cannot make the "symmetric" loss asymmetric by accident.
    """
    return mhpo(
        inputs, c=c, k_pos=k_pos, lam_pos=lam_pos, k_neg=k_pos, lam_neg=lam_pos, shift=shift,
        dhp_gradient=dhp_gradient,
    )  # fmt: skip
