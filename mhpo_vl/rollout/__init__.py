"""Rollout engines behind one interface: prompts in, a :class:`RolloutBatch` out.

``ENGINES`` maps a recipe's ``rollout.engine`` to a class taking ``(policy, **kwargs)``
with ``generate(prompts, params) -> RolloutBatch``. ``hf`` (transformers ``generate``)
runs anywhere; ``vllm`` is imported only when asked for (GPU, optional extra).
"""

from __future__ import annotations

from typing import Any

from mhpo_vl.data.templates import build_prompts
from mhpo_vl.registry import Registry
from mhpo_vl.rollout.batch import RolloutBatch, SamplingParams
from mhpo_vl.rollout.hf import HFEngine

ENGINES: Registry[Any] = Registry("rollout engine")
ENGINES.register("hf", HFEngine)


__all__ = ["ENGINES", "HFEngine", "RolloutBatch", "SamplingParams", "build_prompts"]
