"""Scenarios of the strict-device tier: the real trainer on the fake accelerator of
:mod:`fake_accelerator`, one fresh process each (``run_isolated``).

Each scenario trains through :func:`mhpo_vl.trainer.train` exactly as the CLI does, with
the process's device set to ``fakegpu:<device>`` (the one thing patched: what
``torch.cuda`` would report on a GPU node), and returns plain data for the test to
check: the last metrics, where every parameter, gradient and optimizer state ended up,
and digests of the checkpoint's weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import fake_accelerator as fake

ROOT = Path(__file__).resolve().parents[1]
QUIET = [
    "trainer.progress_bar=false", "trainer.report_to=[]", "trainer.num_threads=1",
    "eval.size=8", "trainer.prompts_per_step=2", "rollout.group_size=4",
]  # fmt: skip


def _placement(run: Any, device: Any, offloaded: bool = False) -> dict[str, list[str]]:
    """Names of the parameters, gradients and optimizer states not on ``device`` (none
    are checked when offloaded: they rest on the CPU)."""
    if offloaded:
        return {}
    misplaced: dict[str, list[str]] = {"parameters": [], "gradients": [], "optimizer": []}
    for name, p in run.model.named_parameters():
        if not fake.on_device(p, device.index):
            misplaced["parameters"].append(name)
        if p.grad is not None and not fake.on_device(p.grad, device.index):
            misplaced["gradients"].append(name)
    for i, state in enumerate(run.optimizer.state.values()):
        for key, value in state.items():
            if key != "step" and not fake.on_device(value, device.index):
                misplaced["optimizer"].append(f"{i}.{key}")
    return misplaced


def _digests(ckpt: Path) -> dict[str, str]:
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    return {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in weights.items()}


def _zeros_in_loss() -> None:
    """A loss term built with ``torch.zeros(shape)``, no device, inside the loss."""
    import torch

    from mhpo_vl import algorithms

    real = algorithms.policy_loss

    def policy_loss(name: str, logprobs: Any, *args: Any, **kwargs: Any) -> Any:
        out = real(name, logprobs, *args, **kwargs)
        extra = (torch.zeros(logprobs.shape) * logprobs).sum()
        return type(out)(out.loss + extra, out.metrics, out.loss_BT, out.agg)

    algorithms.policy_loss = policy_loss


def _load_without_map_location() -> None:
    """Resume reading the trainer state onto the devices it was saved from."""
    import torch

    from mhpo_vl import checkpoint

    checkpoint.load_state = lambda ckpt: torch.load(
        ckpt / checkpoint.STATE_FILE, weights_only=False
    )


def _device_from_parameters() -> None:
    """The engine putting batches where the first parameter is (the CPU when offloaded)."""
    from mhpo_vl.rollout.hf import HFEngine

    real = HFEngine.generate

    def generate(self: Any, prompts: Any, params: Any) -> Any:
        saved, self.policy.device = self.policy.device, next(self.policy.model.parameters()).device
        try:
            return real(self, prompts, params)
        finally:
            self.policy.device = saved

    HFEngine.generate = generate


BUGS = {
    "zeros_in_loss": _zeros_in_loss,
    "load_without_map_location": _load_without_map_location,
    "device_from_parameters": _device_from_parameters,
}
"""Bugs a test reintroduces, to show the tier fails on them."""


def offload(model: Any, device: Any) -> Any:
    """FSDP2 CPU offload's placement, without collectives: each module that owns
    parameters becomes a unit (an ``FSDPModule``, as ``fully_shard`` makes it) whose
    parameters rest on the CPU; its forward runs on device copies of them (gradients
    flow back to the CPU ones), and ``unshard()`` / ``reshard()`` register device
    copies on the module and take them away again, as FSDP2's do. Buffers stay on the
    device, where ``fully_shard`` puts them. ``next(model.parameters()).device`` is then
    the CPU, as under real offload."""
    import inspect
    from types import SimpleNamespace

    import torch
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.utils.stateless import _reparametrize_module

    class Unit(FSDPModule):
        def _get_fsdp_state(self) -> Any:
            return self._offload_state

        def unshard(self, async_op: bool = False) -> None:
            self._resting = {n: p for n, p in self._parameters.items() if p is not None}
            for name, p in self._resting.items():
                self._parameters[name] = torch.nn.Parameter(p.detach().to(device), False)

        def reshard(self) -> None:  # idempotent, as FSDP2's is
            self._parameters.update(self.__dict__.pop("_resting", {}))

    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.to(device)
        own = dict(module.named_parameters(recurse=False))
        if not own and module is not model:  # the root is a unit, as fully_shard makes it
            continue
        for p in own.values():
            with torch.no_grad():
                torch.utils.swap_tensors(p, torch.nn.Parameter(p.cpu(), p.requires_grad))
        forward = module.forward

        def on_device(*args: Any, _m: Any = module, _f: Any = forward, **kwargs: Any) -> Any:
            params = dict(_m.named_parameters(recurse=False))
            if all(p.device.type == device.type for p in params.values()):  # unsharded
                return _f(*args, **kwargs)
            moved = {n: p.to(device) for n, p in params.items()}
            with _reparametrize_module(_m, moved):
                return _f(*args, **kwargs)

        on_device.__signature__ = inspect.signature(forward)  # generate reads the root's
        module.forward = on_device
        module.__class__ = type(f"Offloaded{type(module).__name__}", (Unit, type(module)), {})
        module._offload_state = SimpleNamespace(
            _lazy_init=lambda: None, _fsdp_param_groups=[SimpleNamespace(post_forward_mesh_info=1)]
        )
    assert next(model.parameters()).device == torch.device("cpu")
    return model


def train(
    recipe: str,
    out: str,
    overrides: list[str] = (),
    device: int = 0,
    bug: str | None = None,
    offloaded: bool = False,
) -> dict[str, Any]:
    """Train ``recipe`` on ``fakegpu`` as GPU ``device`` of a node, as the CLI would.

    ``bug``: a name in :data:`BUGS`, reintroduced first. ``offloaded``: the policy's
    parameters rest on the CPU between forwards (:func:`offload`)."""
    with fake.install(device) as dev:
        import mhpo_vl.parallel as parallel
        from mhpo_vl.trainer import train as run_training
        from mhpo_vl.training import state
        from mhpo_vl.validation import load_recipe

        parallel.Parallel.device = property(lambda self: dev)
        if bug:
            BUGS[bug]()
        if offloaded:
            from mhpo_vl.parallel.ddp import DDP

            real_prepare = DDP.prepare

            def prepare(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
                _, optimizer, raw = real_prepare(self, model, *args, **kwargs)
                return offload(model, dev), optimizer, raw

            DDP.prepare = prepare
        runs = []
        real_setup = state.setup

        def setup(cfg: Any) -> Any:
            runs.append(real_setup(cfg))
            return runs[-1]

        import mhpo_vl.trainer as trainer

        trainer.setup = setup
        cfg = load_recipe(str(ROOT / recipe), [*QUIET, f"trainer.output_dir={out}", *overrides])
        metrics = run_training(cfg)
        run = runs[-1]
        ckpts = sorted(Path(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        return {
            "metrics": metrics,
            "misplaced": _placement(run, dev, offloaded),
            "device": str(run.policy.device),
            "node_gpu": fake.OWN_DEVICE[0],
            "start_step": run.start_step,
            "digests": _digests(ckpts[-1]) if ckpts else {},
            "allocated": list(fake.MODULE.allocated),
        }


def device_rng_untouched_by_eval(recipe: str, out: str) -> dict[str, bool]:
    """Whether evaluating changes the device's generator (it must not: training
    sampling draws from it after eval)."""
    import torch

    with fake.install(0) as dev:
        import mhpo_vl.parallel as parallel
        from mhpo_vl.training.evaluation import evaluate
        from mhpo_vl.training.state import setup
        from mhpo_vl.validation import load_recipe

        parallel.Parallel.device = property(lambda self: dev)
        cfg = load_recipe(
            str(ROOT / recipe),
            [*QUIET, f"trainer.output_dir={out}", "eval.temperature=1.0"],
        )
        run = setup(cfg)
        cpu, device = torch.get_rng_state(), fake.MODULE.get_rng_state(0)
        evaluate(run)
        return {
            "cpu": torch.equal(cpu, torch.get_rng_state()),
            "device": torch.equal(device, fake.MODULE.get_rng_state(0)),
        }
