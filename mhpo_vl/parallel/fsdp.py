"""``parallel.strategy: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each block the model declares unsplittable (transformers' ``_no_split_modules``: the
decoder layers and the vision blocks) becomes one FSDP unit, then the root takes the
rest (embeddings, norm, head, the vision merger). Parameters stay in the master dtype
(float32) and are gathered in the compute dtype for forwards (``MixedPrecisionPolicy``),
gradients are reduced in float32. ``parallel.cpu_offload`` keeps parameters, gradients
and optimizer state on the CPU between uses; ``parallel.reshard_after_forward: false``
keeps gathered weights through the backward (more memory, fewer all-gathers).

Nothing is ever whole on one process. Loading (:meth:`FSDP.load`): every process builds
the model on the meta device and shards it; the main process alone reads the weights
(into CPU memory) and broadcasts them one tensor at a time, each process keeping its
shards. Checkpoints (:meth:`FSDP.save_state`) hold the sharded training state as
``torch.distributed.checkpoint`` writes it (each process its own shards of the weights
and optimizer state), which any number of processes can resume from; Hugging Face format
weights are gathered one tensor at a time and written file by file, at the final step
(``trainer.hf_weights``), or from any checkpoint by ``mhpo-vl export``. Every forward gathers weights collectively, so every process must run the same number
of forwards (:attr:`lockstep`): the trainer keeps rollouts, micro-batches and eval in
step. Generation is the exception: :func:`gathered` gathers every unit once for a whole
``generate`` call (not once per decoded token), so its forwards need no collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import checkpoint
from mhpo_vl.models.policy import keep_weight_names, weight_names
from mhpo_vl.parallel import (
    STRATEGIES,
    Parallel,
    allocate_empty,
    backend_for,
    join_group,
    save_sharded,
    trainable,
)


@STRATEGIES.register("fsdp")
class FSDP(Parallel):
    name = "fsdp"
    lockstep = True

    def load(self, load: Callable[[Any], Any], weights: bool = True) -> Any:
        """Every process builds the model without weights (meta device), shards it, and
        receives its shards of the weights, broadcast one tensor at a time from the main
        process, which alone reads the checkpoint (into CPU memory). No process ever
        holds more than its shards plus one full tensor on its GPU. ``weights=False``:
        the shards are allocated but not filled (a resume loads them from a sharded
        checkpoint next)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        policy = load("meta")
        self.shard(policy.model, policy.compute_dtype)
        # memory for the shards first (offloaded ones rest on the CPU), then the weights
        # copied into it: assigning new tensors instead would untie tied weights
        allocate_empty(policy.model, "cpu" if self.cfg.cpu_offload else self.device)
        if weights:
            full = {}
            if self.is_main:
                whole = load("cpu").model
                full = whole.state_dict()
                keep_weight_names(policy.model, weight_names(whole))
                del whole
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(policy.model, full, options=options)
            del full
        policy.device = self.device
        return policy

    def shard(self, model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
        """``fully_shard`` each block the model declares unsplittable, then the root; the
        weights are gathered in ``compute_dtype`` for forwards, gradients reduced in
        float32. Parameters on the meta device stay there (see :meth:`load`)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        if not torch.distributed.is_initialized():  # one process: a group of one
            join_group(
                backend=backend_for(self.device.type, self.cfg.cpu_offload),
                init_method="tcp://127.0.0.1:0", rank=0, world_size=1,
            )  # fmt: skip
        compute = compute_dtype or next(model.parameters()).dtype
        kwargs: dict[str, Any] = {
            "reshard_after_forward": self.cfg.reshard_after_forward,
            "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32),
        }
        if self.cfg.cpu_offload:
            # pinned host memory needs an accelerator; on a CPU-only machine it is a no-op
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)

    def prepare(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[list], torch.optim.Optimizer],
        compute_dtype: torch.dtype | None = None,
        unused_parameters: bool = False,
    ) -> tuple[Any, torch.optim.Optimizer, torch.optim.Optimizer]:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):  # loaded whole, not through load()
            self.shard(model, compute_dtype)
        optimizer = make_optimizer(list(trainable(model)))
        return model, optimizer, optimizer

    def accumulate(self, model: Any, last: bool) -> contextlib.AbstractContextManager:
        # micro_batch: reduce-scatter after each backward, so no process ever holds more
        # than its gradient shard; minibatch: whole float32 gradients until the last one
        model.set_requires_gradient_sync(self.syncs(last))
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        params = [p for p in trainable(model) if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        if hasattr(norm, "full_tensor"):  # a DTensor: the shards' norms combined
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    def save_state(
        self, model: Any, optimizer: Any, folder: Path, hf_weights: bool = True
    ) -> dict[str, Any] | None:
        """Each process writes its own shards of the weights and optimizer state
        (``torch.distributed.checkpoint``: nothing is gathered); the main process the
        model's config. With ``hf_weights``, the weights in Hugging Face format too,
        gathered one tensor at a time (:func:`write_hf_weights`)."""
        save_sharded(model, optimizer, folder / checkpoint.SHARDED_DIR)
        if self.is_main:
            model.config.save_pretrained(folder)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(folder)
        if hf_weights:
            write_hf_weights(model, folder, self.is_main, self.device)
        return None

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)


@contextlib.contextmanager
def gathered(model: Any) -> Iterator[None]:
    """The whole model unsharded (in the compute dtype) for the ``with`` block: every
    FSDP unit all-gathered once, kept through every forward inside, resharded at the
    end. For ``generate``: decoding runs one forward per token, and without this each
    would all-gather every layer again. It also registers the unsharded parameters on
    the modules, so ``model.device`` (which transformers' ``generate`` moves inputs to)
    is the compute device even when the shards rest on the CPU (``cpu_offload``).
    Costs a full copy of the weights in the compute dtype on every process meanwhile.
    A no-op for a model that is not sharded. Every process must enter it together."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    model._get_fsdp_state()._lazy_init()  # the root is settled before anything changes
    groups = [g for m in units for g in m._get_fsdp_state()._fsdp_param_groups]
    # post_forward_mesh_info is what set_reshard_after_forward sets (None: keep the
    # weights after forward); saved and put back per group, the root's special case too
    saved = [g.post_forward_mesh_info for g in groups]
    for g in groups:
        g.post_forward_mesh_info = None
    try:
        for m in units:
            m.unshard()
        yield
    finally:
        for m in units:
            m.reshard()
        for g, info in zip(groups, saved, strict=True):
            g.post_forward_mesh_info = info


def hf_names(model: torch.nn.Module, state: dict[str, Any]) -> list[str]:
    """The names of ``state`` to write in Hugging Face format: a tied weight (the LM
    head sharing the embedding) is one parameter under two names, written once, under
    its first name, as ``save_pretrained`` does."""
    first: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            tied.add(name)
    return [name for name in state if name not in tied]


def hf_writer(model: Any, folder: Path, sizes: list[tuple[str, int]]) -> Any:
    """A :class:`~mhpo_vl.checkpoint.SafetensorsWriter` for ``model``'s tensors of these
    ``(name, bytes)``, under the names its checkpoint had (see ``weight_names``)."""
    from transformers.core_model_loading import revert_weight_conversion

    return checkpoint.SafetensorsWriter(
        folder,
        checkpoint.plan_shards(sizes),
        rename=lambda tensors: revert_weight_conversion(model, tensors),
    )


def write_hf_weights(model: Any, folder: Path, is_main: bool, device: torch.device) -> None:
    """The model's weights in Hugging Face format, gathered one tensor at a time (never
    the whole model: each process holds its shards plus one full tensor, the main one
    at most one file's tensors on the CPU) and written file by file by the main process.
    A collective. A write error on the main process is raised after the last gather,
    so that the other processes are not left waiting in one."""
    state = model.state_dict()
    names = hf_names(model, state)
    sizes = [(n, state[n].numel() * state[n].element_size()) for n in names]
    writer = hf_writer(model, folder, sizes) if is_main else None
    error: Exception | None = None
    for name in names:
        full = gather_full(state[name], device)
        if writer is not None and error is None:
            try:
                writer.add(name, full)
            except Exception as exc:  # raised below, once every gather is done
                error = exc
        del full
    if writer is not None and error is None:
        writer.finish()
    if error is not None:
        raise error


def gather_full(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """A sharded tensor's (DTensor's) full value, its local shard moved to ``device``
    first: offloaded shards rest on the CPU, and an NCCL group cannot all-gather CPU
    tensors. A collective. Any other tensor is returned as it is."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor
    local = tensor.to_local()
    if device is not None and not _on(local, torch.device(device)):
        tensor = DTensor.from_local(
            local.to(device), tensor.device_mesh, tensor.placements,
            run_check=False, shape=tensor.shape, stride=tensor.stride(),
        )  # fmt: skip
    return tensor.full_tensor()


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    here = tensor.device
    return here.type == device.type and (device.index is None or here.index == device.index)
