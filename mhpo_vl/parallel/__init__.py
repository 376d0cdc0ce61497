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
from pathlib import Path
from typing import Any, NoReturn

import torch

from mhpo_vl import checkpoint
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

    def __init__(self, cfg: Any, timeout: float | None = None) -> None:
        from accelerate import Accelerator

        self.cfg = cfg
        init_process_group(cfg, timeout)
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

    def load(self, load: Callable[[Any], Any], weights: bool = True) -> Any:
        """A :class:`~mhpo_vl.models.Policy` loaded the way this strategy holds it;
        ``load(device)`` loads it onto ``device`` (``"meta"``: without weights).
        ``weights=False``: the weights come from a checkpoint next (:meth:`load_state`).
        Every process calls it."""
        if weights:
            return load(self.device)
        policy = load("meta")
        allocate_empty(policy.model, self.device)
        policy.device = self.device
        return policy

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

    def save_state(
        self, model: Any, optimizer: Any, folder: Path, hf_weights: bool = True
    ) -> dict[str, Any] | None:
        """Write this process's part of a checkpoint's model and optimizer into
        ``folder`` (a collective: every process calls it); the optimizer state for the
        main process to put in the trainer state, or None when it is written here.
        ``hf_weights``: also write the weights in Hugging Face format (what ``mhpo-vl
        eval``, vLLM and ``from_pretrained`` load) where that is not the format anyway."""
        raise NotImplementedError

    def load_state(
        self, model: Any, optimizer: Any, ckpt: Path, saved_optimizer: dict[str, Any] | None
    ) -> None:
        """Resume ``model`` and ``optimizer`` from ``ckpt``: from its sharded state when it
        has one (any strategy, any number of processes: it is resharded as it loads),
        else the optimizer from ``saved_optimizer`` (the weights were loaded with the
        model). A collective."""
        if checkpoint.is_sharded(ckpt):
            load_sharded(model, optimizer, ckpt / checkpoint.SHARDED_DIR)
        else:
            self.load_optimizer_state(model, optimizer, saved_optimizer)

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


def load_sharded(model: Any, optimizer: Any, path: Path) -> None:
    """Model and optimizer state from a ``torch.distributed.checkpoint`` folder written
    by :func:`save_sharded`, resharded to this run's layout as it loads."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def save_sharded(model: Any, optimizer: Any, path: Path) -> None:
    """Model and optimizer state as a ``torch.distributed.checkpoint`` folder: each
    process writes its own shards (nothing is gathered), a ``.metadata`` file maps them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))


def allocate_empty(model: torch.nn.Module, device: Any) -> None:
    """Real (uninitialized) memory on ``device`` for parameters built on the meta
    device; the buffers, computed when the model was built, are kept."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)


def backend_for(device_type: str, cpu_offload: bool) -> str:
    """The process group's backend: NCCL for CUDA tensors, gloo for CPU ones. Offloaded
    parameters and gradients are CPU tensors that some collectives reduce (the gradient
    norm's shards), which NCCL cannot: offload needs both backends in one group."""
    if device_type != "cuda":
        return "gloo"
    return "cuda:nccl,cpu:gloo" if cpu_offload else "nccl"


def init_process_group(cfg: Any, timeout: float | None = None) -> None:
    """Join the group ``torchrun`` / ``accelerate launch`` describes (``WORLD_SIZE`` > 1),
    on this process's GPU, with :func:`backend_for`'s backend and collectives that give
    up after ``timeout`` seconds (None: torch's default); nothing when the group is up
    already or there is one process. Each process records who it is for the others
    (:func:`.faults.register`)."""
    import datetime
    import os

    from mhpo_vl.parallel import faults

    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    limit = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
    join_group(backend=backend_for(device_type, cfg.cpu_offload), **limit)
    faults.register()


def join_group(**kwargs: Any) -> None:
    """``init_process_group(**kwargs)``; the group is left before the interpreter ends
    (``atexit``; :func:`exit_process` for a clean end)."""
    import atexit

    torch.distributed.init_process_group(**kwargs)
    atexit.register(_leave_group)


def _leave_group() -> None:
    dist = torch.distributed
    if dist.is_initialized():
        dist.destroy_process_group()


def in_process_group() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def exit_process(code: int) -> NoReturn:
    """End a process of a group with ``code``, skipping the interpreter's final clean-up.

    Gloo's worker threads destroy each collective's work object after the collective
    completes, and a work object holds tensors that Python owns: destroying them takes
    the GIL. If that happens while the interpreter is finalizing (the last collective
    just done, the process exiting), the thread is stopped inside C++ and the process
    aborts (``terminate called without an active exception``, SIGABRT): a finished run
    reported as a crash, on a loaded machine about one exit in thirty (a known PyTorch
    issue). Here everything that matters is done first (the group left, ``atexit``
    handlers run, logs and streams flushed), then the process ends at once."""
    import atexit
    import logging
    import os
    import sys

    _leave_group()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def build_parallel(cfg: Any, timeout: float | None = None) -> Parallel:
    """The recipe's ``parallel`` section -> its strategy, with the process group up
    (collectives give up after ``timeout`` seconds: ``trainer.collective_timeout``)."""
    from mhpo_vl.parallel import ddp, fsdp  # noqa: F401  (register the strategies)

    return STRATEGIES.get(cfg.strategy)(cfg, timeout)


__all__ = [
    "STRATEGIES",
    "Parallel",
    "backend_for",
    "build_parallel",
    "exit_process",
    "in_process_group",
    "trainable",
]
