"""What every policy loss shares: the registry, the loss spec, and the clamped log-ratio.

A policy loss is a function ``fn(inputs, *, <hyper>=<default>, ...)`` that takes a
:class:`LossInputs` and returns ``(loss_BT, diagnostics)``: the per-token loss ``L_it`` of
the spec (before aggregation) and a dict of per-token diagnostic tensors keyed by the
metric they become (``clip_frac``, ``psi_mean``, ...; boolean or float), which the entry
point reduces to masked means. Its keyword-only
defaults *are* its documented parameters; registering it with :func:`register_policy_loss`
records them together with the loss's default aggregation, so adding a loss touches only
the file that defines it.

Notation (the paper's): ``d_it = logp_it - old_it`` clamped to ``[-20, 20]``,
``r_it = exp(d_it)``, ``A_it`` the advantage broadcast over the tokens of its sequence.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from mhpo_vl.errors import UserError
from mhpo_vl.registry import Registry

LOG_RATIO_CLAMP = 20.0
"""``d`` is clamped to ``[-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP]`` before any exp (spec)."""

Diagnostics = dict[str, Tensor]
LossFn = Callable[..., tuple[Tensor, Diagnostics]]


@dataclass(frozen=True)
class LossInputs:
    """The per-token tensors every loss reads, already checked, broadcast and masked.

    Masked positions (``mask_BT == 0``) hold ``0`` in ``logprobs_BT``, ``log_ratio_BT``
    and ``advantages_BT`` whatever the caller put there, so padding can change neither a
    loss value nor a gradient (even NaN or inf padding).
    """

    logprobs_BT: Tensor  # log pi_theta, carries gradient
    log_ratio_BT: Tensor  # d = clamp(logp - old, -20, 20), carries gradient
    advantages_BT: Tensor  # A_it, no gradient
    mask_BT: Tensor  # 1.0 on response tokens, 0.0 on padding, in the loss dtype
    keep_BT: Tensor  # the same mask as booleans

    @classmethod
    def build(
        cls, logprobs_BT: Tensor, old_logprobs_BT: Tensor, advantages: Tensor, mask_BT: Tensor
    ) -> LossInputs:
        """Check shapes and devices, broadcast ``advantages`` ([B] or [B, T]) and zero
        masked slots."""
        check_same_shape(logprobs_BT, old_logprobs=old_logprobs_BT, mask=mask_BT)
        check_same_device(logprobs_BT, old_logprobs=old_logprobs_BT, advantages=advantages)
        check_same_device(logprobs_BT, mask=mask_BT)
        dtype = logprobs_BT.dtype
        keep_BT = mask_BT if mask_BT.dtype == torch.bool else mask_BT.bool()
        logprobs_BT = torch.where(keep_BT, logprobs_BT, 0.0)
        # old and advantages are data, not parameters: they never receive gradient.
        old_BT = torch.where(keep_BT, old_logprobs_BT.detach().to(dtype), 0.0)
        adv_BT = broadcast_advantages(advantages.detach().to(dtype), logprobs_BT.shape)
        return cls(
            logprobs_BT=logprobs_BT,
            log_ratio_BT=clamped_log_ratio(logprobs_BT, old_BT),
            advantages_BT=torch.where(keep_BT, adv_BT, 0.0),
            mask_BT=keep_BT.to(dtype),
            keep_BT=keep_BT,
        )


def clamped_log_ratio(logprobs_BT: Tensor, old_logprobs_BT: Tensor) -> Tensor:
    """``d = clamp(logp - old, -20, 20)``: the spec's only clamp, for numerical safety.

    Gradient convention: ``torch.clamp`` passes the gradient unchanged on the closed
    interval ``[-20, 20]`` (boundary included) and gives zero outside it. So in the normal
    range every loss has its exact gradient, and beyond ``|d| > 20`` (ratios below 2e-9 or
    above 4.9e8) the gradient is the true derivative of the clamped value, i.e. zero for the
    losses that read ``d``. We chose this over a straight-through clamp because it keeps
    the gradient consistent with the value (finite differences agree) and because a
    straight-through ``e^20`` weight on a token that far off-policy is exactly the
    instability the paper is about.
    """
    return torch.clamp(logprobs_BT - old_logprobs_BT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def broadcast_advantages(advantages: Tensor, shape_BT: torch.Size) -> Tensor:
    """``A_i`` of shape [B] broadcast to [B, T]; an [B, T] tensor is returned as is."""
    if advantages.shape == shape_BT:
        return advantages
    if advantages.dim() == 1 and advantages.shape[0] == shape_BT[0]:
        return advantages[:, None].expand(shape_BT)
    raise UserError(
        f"advantages must have shape [B]={[shape_BT[0]]} or [B, T]={list(shape_BT)}, "
        f"got {list(advantages.shape)}"
    )


def check_same_shape(reference_BT: Tensor, **others: Tensor) -> None:
    """Raise a ``ValueError`` unless ``reference_BT`` is 2-D and every other tensor matches."""
    if reference_BT.dim() != 2:
        raise UserError(f"logprobs must have shape [B, T], got {list(reference_BT.shape)}")
    for name, tensor in others.items():
        if tensor.shape != reference_BT.shape:
            raise UserError(
                f"{name} must have the shape of logprobs {list(reference_BT.shape)}, "
                f"got {list(tensor.shape)}"
            )


def check_same_device(reference_BT: Tensor, **others: Tensor | None) -> None:
    """Raise a ``UserError`` naming every tensor that is not on ``reference_BT``'s device
    (``logprobs``'s): a loss never moves its inputs, the caller places them once."""
    wrong = [
        f"{name} on {tensor.device}"
        for name, tensor in others.items()
        if tensor is not None and tensor.device != reference_BT.device
    ]
    if wrong:
        raise UserError(
            f"policy loss inputs on different devices: logprobs on {reference_BT.device}, "
            f"{', '.join(wrong)}"
        )


def require(condition: bool, message: str) -> None:
    """Raise a ``UserError`` (a ``ValueError``) with ``message`` unless ``condition``."""
    if not condition:
        raise UserError(message)


@dataclass(frozen=True)
class LossSpec:
    """A registered policy loss: its function, default aggregation and parameter defaults."""

    name: str
    fn: LossFn
    agg: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults overridden by ``hyper``; an unknown key is a ``ValueError`` naming it."""
        return resolve_hyper(f"policy loss {self.name!r}", self.defaults, hyper)

    def __call__(self, inputs: LossInputs, **hyper: Any) -> tuple[Tensor, Diagnostics]:
        """Run the loss with the defaults overridden by ``hyper``."""
        return self.fn(inputs, **self.resolve(hyper))


POLICY_LOSSES: Registry[LossSpec] = Registry("policy loss")


def resolve_hyper(owner: str, defaults: Mapping[str, Any], hyper: Mapping[str, Any]) -> dict:
    """``defaults`` overridden by ``hyper``; a key not in ``defaults`` is a ``UserError``
    (a ``ValueError``) naming it, ``owner`` and the valid parameters."""
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        raise UserError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for {owner}; "
            f"valid parameters: {', '.join(defaults) or '(none)'}"
        )
    return {**defaults, **hyper}


def keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` and their defaults, in declaration order."""
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def register_policy_loss(name: str, *, agg: str, **overrides: Any) -> Callable[[LossFn], LossFn]:
    """Register ``fn`` as policy loss ``name`` with default aggregation ``agg``.

    The parameters and their defaults are ``fn``'s keyword-only arguments; ``overrides``
    replace some defaults, so one function can be registered twice (``dapo`` is ``grpo``
    with ``clip_high=0.28``).
    """

    def add(fn: LossFn) -> LossFn:
        defaults = keyword_defaults(fn)
        assert set(overrides) <= set(defaults), f"{name}: unknown overrides {overrides}"
        spec = LossSpec(name, fn, agg, MappingProxyType({**defaults, **overrides}))
        POLICY_LOSSES.register(name, spec)
        return fn

    return add
