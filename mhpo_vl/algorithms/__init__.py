"""Policy losses, advantage estimators, aggregation and KL: pure torch, no I/O.

The trainer calls :func:`policy_loss` (losses looked up
by name in :data:`POLICY_LOSSES`) and :func:`compute_advantages` (:data:`ADVANTAGES`).
Adding a loss is one function registered with :func:`register_policy_loss` in its own
module, imported below.
"""

from mhpo_vl.algorithms.advantages import ADVANTAGES, AdvantageResult, compute_advantages
from mhpo_vl.algorithms.aggregation import AGGREGATIONS, aggregate
from mhpo_vl.algorithms.base import POLICY_LOSSES, LossInputs, LossSpec, register_policy_loss
from mhpo_vl.algorithms.correction import rollout_correction
from mhpo_vl.algorithms.entry import PolicyLossOutput, policy_loss
from mhpo_vl.algorithms.kl import KL_ESTIMATORS, kl_penalty
from mhpo_vl.algorithms.section import check_section

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageResult",
    "LossInputs",
    "LossSpec",
    "PolicyLossOutput",
    "aggregate",
    "check_section",
    "compute_advantages",
    "kl_penalty",
    "policy_loss",
    "register_policy_loss",
    "rollout_correction",
]
