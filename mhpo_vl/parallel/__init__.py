"""How training is spread over processes: the one place that knows the strategy.

``parallel.strategy`` in the recipe picks a :class:`Parallel` from :data:`STRATEGIES`:

- ``ddp`` (:mod:`.ddp`): every process holds the whole model; gradients are averaged
  (accelerate's DistributedDataParallel). The default, and what one process runs.
- ``fsdp`` (:mod:`.fsdp`): FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters,
  gradients and optimizer state are sharded over the processes, each decoder / vision
  block its own unit; optional CPU offload.

The trainer calls the methods below and never branches on the strategy. The process
group comes from ``torchrun`` / ``accelerate launch`` (one process without them): the
same recipe runs on 1, 2 or N processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mhpo_vl.registry import Registry

STRATEGIES: Registry[Any] = Registry("parallel strategy")


class Parallel:
    """The process group plus a strategy's model preparation, gradient handling and
    state dicts. Subclasses override the strategy-specific methods."""

    name = "base"
    # True when every process must run the same number of forwards (the sharded
    # weights are gathered collectively inside each forward): the trainer then keeps
    # the processes' rollout tries, micro-batches and eval batches in step
    lockstep = False

    def __init__(self, cfg: Any) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        init_process_group(cfg)
        # mixed_precision "no": the policy autocasts itself (Policy.autocast); a user's
        # accelerate config or ACCELERATE_MIXED_PRECISION must not wrap a second
        # autocast around it
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.grad_sync = resolve_grad_sync(cfg.grad_sync, self.name)

    # -------------------------------------------------------------- the process group

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def sum(self, value: float) -> float:
        """``value`` summed over the processes (float64 on the wire)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def max(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def gather(self, item: Any) -> list[Any]:
        """Every process's ``item`` (any picklable object), in rank order."""
        if self.world == 1:
            return [item]
        from accelerate.utils import gather_object

        return gather_object([item])

    # -------------------------------------------------------------- the strategy

    def prepare(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[list], torch.optim.Optimizer],
        compute_dtype: torch.dtype | None = None,
        unused_parameters: bool = False,
    ) -> tuple[Any, torch.optim.Optimizer, torch.optim.Optimizer]:
        """(the model to train, the optimizer to step, the raw optimizer a scheduler
        attaches to), with the optimizer over the trainable parameters.

        ``unused_parameters``: some trainable parameters may get no gradient in a step
        (a trainable vision tower, text-only rows): DDP must then search the graph for
        them after every backward, which costs a traversal per step otherwise saved."""
        raise NotImplementedError

    def unwrap(self, model: Any) -> torch.nn.Module:
        """The transformers model inside whatever wrapper :meth:`prepare` put on it."""
        return model

    def accumulate(self, model: Any, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's backward: gradients are reduced over the
        processes after it when it is the minibatch's ``last``, or after every
        micro-batch when ``parallel.grad_sync`` is ``micro_batch``."""
        raise NotImplementedError

    def syncs(self, last: bool) -> bool:
        """Whether this micro-batch's gradients are reduced (see :meth:`accumulate`)."""
        return last or self.grad_sync == "micro_batch"

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        """Clip the global gradient norm (over every shard) to ``max_norm``; the norm
        before clipping (NaN or inf when a gradient is not finite)."""
        raise NotImplementedError

    def bad_parameters(self, model: Any) -> list[str]:
        """Names of this process's parameters (or shards) holding NaN or inf."""
        return [n for n, p in model.named_parameters() if not torch.isfinite(_local(p)).all()]

    def model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        """Full (unsharded) weights for an HF-format save on the main process, or None
        to let ``save_pretrained`` read the model itself. A collective: every process
        calls it."""
        return None

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any]:
        """The optimizer's state as the main process saves it. A collective."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


def backend_for(device_type: str, cpu_offload: bool) -> str:
    """The process group's backend: NCCL for CUDA tensors, gloo for CPU ones. Offloaded
    parameters and gradients are CPU tensors that some collectives reduce (the gradient
    norm's shards), which NCCL cannot: offload needs both backends in one group."""
    if device_type != "cuda":
        return "gloo"
    return "cuda:nccl,cpu:gloo" if cpu_offload else "nccl"


def init_process_group(cfg: Any) -> None:
    """Join the group ``torchrun`` / ``accelerate launch`` describes (``WORLD_SIZE`` > 1),
    on this process's GPU, with :func:`backend_for`'s backend; nothing when the group is
    up already or there is one process."""
    import os

    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend_for(device_type, cfg.cpu_offload))


def resolve_grad_sync(setting: str, strategy: str) -> str:
    """``parallel.grad_sync`` as it runs: ``auto`` is ``micro_batch`` under fsdp (keep
    only gradient shards) and ``minibatch`` under ddp (its gradients are whole anyway)."""
    if setting != "auto":
        return setting
    return "micro_batch" if strategy == "fsdp" else "minibatch"


def _local(p: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's local shard; a plain tensor itself."""
    return p.to_local() if hasattr(p, "to_local") else p


def trainable(model: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    return (p for p in model.parameters() if p.requires_grad)


def build_parallel(cfg: Any) -> Parallel:
    """The recipe's ``parallel`` section -> its strategy, with the process group up."""
    from mhpo_vl.parallel import ddp, fsdp  # noqa: F401  (register the strategies)

    return STRATEGIES.get(cfg.strategy)(cfg)


__all__ = ["STRATEGIES", "Parallel", "backend_for", "build_parallel", "trainable"]
