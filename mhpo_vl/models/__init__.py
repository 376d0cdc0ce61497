"""Policies: loading (hub, local, or the embedded tiny models), and token log-probs.

- :func:`load_policy` -> :class:`Policy` (model + image-only Qwen-VL processor or tokenizer)
- :func:`token_logprobs` -> per-token log-probs / entropies of a rollout batch's completions
- ``embedded:tiny-vl`` / ``embedded:tiny-text``: see :mod:`mhpo_vl.embedded.tiny`
"""

from mhpo_vl.models.logprobs import token_logprobs
from mhpo_vl.models.policy import Policy, load_policy

__all__ = ["Policy", "load_policy", "token_logprobs"]
