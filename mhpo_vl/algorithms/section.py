"""The recipe's ``algorithm`` section, checked by the subsystem that runs it.

Names (loss, advantage, aggregation, KL estimator) must be registered here, and the
loss's parameters must be ones it takes, with values it accepts: the loss runs once on
a 1x1 batch at validation, so its own range checks (``c > 0``, ...) answer before any
model loads.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mhpo_vl.algorithms.advantages import ADVANTAGES
from mhpo_vl.algorithms.aggregation import AGGREGATIONS
from mhpo_vl.algorithms.base import POLICY_LOSSES, LossInputs
from mhpo_vl.algorithms.kl import KL_ESTIMATORS
from mhpo_vl.checks import OneOf, is_number
from mhpo_vl.errors import UserError


def check_section(algorithm: Any) -> None:
    """Check ``algorithm`` (an ``AlgorithmConfig``); normalizes ``algorithm.loss``'s values."""
    if "name" not in algorithm.loss:
        raise UserError("algorithm.loss.name is missing (e.g. mhpo, grpo, dapo)")
    POLICY_LOSSES.check("algorithm.loss.name", algorithm.loss["name"])
    algorithm.loss = check_loss(algorithm.loss)
    ADVANTAGES.check("algorithm.advantage", algorithm.advantage)
    if algorithm.agg is not None:
        _one_of("algorithm.agg", algorithm.agg, AGGREGATIONS)
    _one_of("algorithm.kl_estimator", algorithm.kl_estimator, KL_ESTIMATORS)


def _one_of(key: str, value: str, valid: tuple[str, ...]) -> None:
    problem = OneOf(tuple(valid)).problem(value)
    if problem:
        raise UserError(f"{key}: {problem}")


def check_loss(loss: dict[str, Any]) -> dict[str, Any]:
    """``algorithm.loss`` with its parameters checked against the registered loss.

    A parameter whose default is a number must be a finite number (``None`` too where the
    default is ``None``: "off"); YAML strings such as ``3e-4`` become floats. No
    registered loss takes an infinite parameter (their docstrings), so none is allowed.
    Then the loss runs once on a 1x1 batch, so its own range checks (``c > 0``, ...)
    answer here rather than at the first training step.
    """
    params = {k: v for k, v in loss.items() if k != "name"}
    spec = POLICY_LOSSES.get(loss["name"])
    try:
        spec.resolve(params)
    except UserError as exc:
        raise UserError(f"algorithm.loss: {exc}") from None
    params = {k: _loss_param(f"algorithm.loss.{k}", v, spec.defaults[k]) for k, v in params.items()}
    _dry_run_loss(spec, params)
    return {"name": loss["name"], **params}


def _loss_param(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{key}: expected str, got {value!r}")
        return value
    if default is not None and not is_number(default):
        return value
    if value is None and default is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"{key}: expected a number, got {value!r}") from None
    if not is_number(value) or not math.isfinite(value):
        raise UserError(f"{key}: must be a finite number, got {value!r}")
    return value


def _dry_run_loss(spec: Any, params: dict[str, Any]) -> None:
    zeros = torch.zeros(1, 1)
    inputs = LossInputs.build(zeros, zeros, torch.zeros(1), torch.ones(1, 1))
    try:
        spec(inputs, **params)
    except UserError as exc:
        raise UserError(f"algorithm.loss ({spec.name}): {exc}") from None
