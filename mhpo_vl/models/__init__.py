"""Policies: loading (hub, local, or the embedded tiny models), and token log-probs."""

from mhpo_vl.models.logprobs import token_logprobs
from mhpo_vl.models.policy import Policy, load_policy

__all__ = ["Policy", "load_policy", "token_logprobs"]
