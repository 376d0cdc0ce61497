"""The rollout-engine protocol: what every engine does, and how the trainer drives it.

An engine turns prompts into a :class:`~mhpo_vl.batch.RolloutBatch`. The trainer calls,
per step::

    engine.wake()                      # colocated engines: take the GPU memory back
    batch = engine.generate(prompts, sampling)
    engine.sleep()                     # free it for the update
    ... optimizer steps ...
    engine.sync_weights(model)         # the engine samples from the new policy next

and reads one declared capability, :attr:`RolloutEngine.logprobs`:

- ``"exact"``: ``batch.sample_logprobs`` are the trained policy's own log-probs of the
  sampled tokens (same weights, same kernels; only float rounding differs), so they can
  serve as the PPO ratio's old log-probs without a recompute (the ``hf`` engine);
- ``"approximate"``: the engine computes them with its own kernels and a copy of the
  weights (vLLM): the trainer recomputes old log-probs, and can correct the mismatch
  with truncated importance sampling (``algorithm.rollout_correction``);
- ``"none"``: no sampling log-probs at all.

``trainer.old_logprobs: auto`` follows from it (see :func:`resolve_old_logprobs`).

Engines are built by :func:`build_engine` from the recipe's ``rollout.engine`` (a name
in :data:`ENGINES`) and ``rollout.engine_args`` (a free mapping the engine checks itself
with its ``check_args``, so a typo names the bad key before any model loads).

Two optional parts, read with ``getattr``:

- an engine class may have a classmethod ``check_rollout(rollout, key)``: it checks its
  ``engine_args`` against the rest of the recipe's ``rollout`` section (``key`` is
  ``"rollout"``), e.g. vLLM's ``max_model_len`` against ``max_new_tokens``;
- an engine may have ``lockstep: bool``: when true, its ``generate`` is a collective
  across processes, so every process must call it the same number of times (the
  vllm engine's tensor-parallel groups under torchrun). Absent means false.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from mhpo_vl.batch import RolloutBatch, SamplingParams
from mhpo_vl.errors import UserError
from mhpo_vl.registry import Registry

if TYPE_CHECKING:
    from mhpo_vl.models import Policy

LogprobKind = Literal["exact", "approximate", "none"]
LOGPROB_KINDS = ("exact", "approximate", "none")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine."""

    logprobs: LogprobKind

    def generate(
        self, prompts: Sequence[Mapping[str, Any]], params: SamplingParams
    ) -> RolloutBatch:
        """``len(prompts) * params.n`` rollouts; row ``p * n + j`` is sample ``j`` of
        prompt ``p``, on the trainer's device."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the next ``generate`` sample from ``model``'s current weights."""
        ...

    def sleep(self) -> None:
        """Release what generation holds (KV cache, weights copy) until :meth:`wake`."""
        ...

    def wake(self) -> None:
        """Take back what :meth:`sleep` released, before ``generate``."""
        ...


class EngineFactory(Protocol):
    """A registered engine class: built from the policy and its checked ``engine_args``."""

    logprobs: LogprobKind

    def __call__(self, policy: Policy, **engine_args: Any) -> RolloutEngine: ...

    @staticmethod
    def check_args(args: Mapping[str, Any], key: str) -> dict[str, Any]:
        """The engine's arguments with defaults filled in; a ``UserError`` naming
        ``key.<arg>`` for an unknown argument or a bad value."""
        ...


ENGINES: Registry[Any] = Registry("rollout engine")


def build_engine(name: str, policy: Policy, engine_args: Mapping[str, Any]) -> RolloutEngine:
    factory = ENGINES.get(name)
    return factory(policy, **factory.check_args(engine_args, "rollout.engine_args"))


def resolve_old_logprobs(setting: str, engine_logprobs: str, temperature: float) -> str:
    """``trainer.old_logprobs`` as it will run: ``"rollout"`` or ``"recompute"``.

    ``auto`` uses the engine's sampling log-probs when they are exact and taken at
    temperature 1 (at another temperature they are of the tempered policy), else it
    recomputes. An explicit ``rollout`` that cannot be right is an error naming why.
    """
    if setting == "recompute":
        return "recompute"
    usable = engine_logprobs == "exact" and temperature == 1.0
    if setting == "auto":
        return "rollout" if usable else "recompute"
    if engine_logprobs != "exact":
        raise UserError(
            f"trainer.old_logprobs: 'rollout' needs an engine whose sampling log-probs are "
            f"exact; this engine's are {engine_logprobs!r}; use 'auto' or 'recompute'"
        )
    if temperature != 1.0:
        raise UserError(
            "trainer.old_logprobs: 'rollout' needs rollout.temperature 1.0 (the engine's "
            f"log-probs are at the sampling temperature, {temperature}); use 'recompute'"
        )
    return "rollout"


def check_arg_keys(args: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> None:
    """A ``UserError`` naming the first argument the engine does not take."""
    for name in args:
        if name not in defaults:
            valid = ", ".join(defaults) or "none"
            raise UserError(f"{key}.{name}: unknown engine argument; valid: {valid}")
