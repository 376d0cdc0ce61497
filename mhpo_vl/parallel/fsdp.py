"""``parallel.strategy: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each block the model declares unsplittable (transformers' ``_no_split_modules``: the
decoder layers and the vision blocks) becomes one FSDP unit, then the root takes the
rest (embeddings, norm, head, the vision merger). Parameters stay in the master dtype
(float32) and are gathered in the compute dtype for forwards (``MixedPrecisionPolicy``),
gradients are reduced in float32. ``parallel.cpu_offload`` keeps parameters, gradients
and optimizer state on the CPU between uses; ``parallel.reshard_after_forward: false``
keeps gathered weights through the backward (more memory, fewer all-gathers).

Checkpoints hold full weights (HF format, so every checkpoint is also an export) and the
full optimizer state; a resumed run shards them the same way and continues exactly.
Every forward gathers weights collectively, so every process must run the same number
of forwards (:attr:`lockstep`): the trainer keeps rollouts, micro-batches and eval in
step. Generation is the exception: :func:`gathered` gathers every unit once for a whole
``generate`` call (not once per decoded token), so its forwards need no collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mhpo_vl.parallel import STRATEGIES, Parallel, backend_for, trainable


def _full_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


@STRATEGIES.register("fsdp")
class FSDP(Parallel):
    name = "fsdp"
    lockstep = True

    def prepare(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[list], torch.optim.Optimizer],
        compute_dtype: torch.dtype | None = None,
        unused_parameters: bool = False,
    ) -> tuple[Any, torch.optim.Optimizer, torch.optim.Optimizer]:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            fully_shard,
        )

        if not torch.distributed.is_initialized():  # one process: a group of one
            torch.distributed.init_process_group(
                backend_for(self.device.type, self.cfg.cpu_offload),
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

    def model_state(self, model: Any) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_options(cpu_offload=True))
        # Tied weights (lm_head = embed_tokens) are one parameter but come back gathered
        # twice: keep the first name only, as save_pretrained does for unsharded models.
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if first.setdefault(id(p), name) != name:
                state.pop(name, None)
        return state

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_full_options())


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
