"""``parallel.strategy: ddp``: a whole model per process, gradients averaged by
accelerate's DistributedDataParallel (nothing to wrap with one process)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.parallel import STRATEGIES, Parallel, trainable


@STRATEGIES.register("ddp")
class DDP(Parallel):
    name = "ddp"

    def prepare(
        self,
        model: torch.nn.Module,
        make_optimizer: Callable[[list], torch.optim.Optimizer],
        compute_dtype: torch.dtype | None = None,
        unused_parameters: bool = False,
    ) -> tuple[Any, torch.optim.Optimizer, torch.optim.Optimizer]:
        from accelerate.utils import DistributedDataParallelKwargs

        self.accelerator.ddp_handler = DistributedDataParallelKwargs(
            find_unused_parameters=unused_parameters
        )
        raw = make_optimizer(list(trainable(model)))
        # the model is already on self.device (load_policy put it there): accelerate must
        # not move it to a device of its own choosing
        model.to(self.device)
        wrapped, optimizer = self.accelerator.prepare(model, raw, device_placement=[False, False])
        return wrapped, optimizer, raw

    def unwrap(self, model: Any) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def accumulate(self, model: Any, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.syncs(last) else self.accelerator.no_sync(model)

    def save_state(
        self, model: Any, optimizer: Any, folder: Path, hf_weights: bool = True
    ) -> dict[str, Any] | None:
        """The main process writes the weights in Hugging Face format (every process has
        them all) and returns the optimizer's state (the same on every process)."""
        if not self.is_main:
            return None
        self.unwrap(model).save_pretrained(folder, safe_serialization=True)
        return optimizer.state_dict()

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(list(trainable(model)), max_norm))
