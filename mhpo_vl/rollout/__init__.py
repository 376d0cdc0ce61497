"""Rollout engines behind one protocol (:mod:`.engine`): prompts in, a
:class:`~mhpo_vl.batch.RolloutBatch` out.

``ENGINES`` maps a recipe's ``rollout.engine`` to an engine class built with
``(policy, **rollout.engine_args)``. ``hf`` (transformers ``generate``) runs anywhere;
``vllm`` imports vLLM only when built (GPU, optional extra).
"""

from __future__ import annotations

from typing import Any

from mhpo_vl.batch import RolloutBatch, SamplingParams
from mhpo_vl.data.templates import build_prompts
from mhpo_vl.errors import UserError
from mhpo_vl.rollout.engine import (
    ENGINES,
    RolloutEngine,
    build_engine,
    resolve_old_logprobs,
)
from mhpo_vl.rollout.hf import HFEngine
from mhpo_vl.rollout.vllm import VLLMEngine

ENGINES.register("hf", HFEngine)
ENGINES.register("vllm", VLLMEngine)  # imports vllm only when built


def check_section(rollout: Any, trainer: Any) -> None:
    """Check the recipe's ``rollout`` section: the engine's name and its ``engine_args``
    (and, for an engine with a ``check_rollout`` hook, its arguments against the rest of
    the section), and that ``trainer.old_logprobs`` can be honoured by that engine."""
    ENGINES.check("rollout.engine", rollout.engine)
    factory = ENGINES.get(rollout.engine)
    factory.check_args(rollout.engine_args, "rollout.engine_args")
    check_rollout = getattr(factory, "check_rollout", None)
    if check_rollout is not None:
        check_rollout(rollout, "rollout")
    try:
        resolve_old_logprobs(trainer.old_logprobs, factory.logprobs, rollout.temperature)
    except UserError as exc:
        raise UserError(f"{exc} (rollout.engine {rollout.engine!r})") from None


__all__ = [
    "ENGINES",
    "HFEngine",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingParams",
    "VLLMEngine",
    "build_engine",
    "build_prompts",
    "check_section",
    "resolve_old_logprobs",
]
