"""Random number generators: what a run draws from, saved, restored and forked together.

A step draws from the CPU generator (minibatch shuffling) and, on an accelerator, from
the device's own generator (sampling in ``generate`` runs on the device). Exact resume
and an eval that does not change training both need the device's generator handled
like the CPU's, so every helper here takes the process's device. Device generators are
reached through ``torch.get_device_module(device.type)``, the interface CUDA and every
other torch backend implement, so nothing here is CUDA-specific.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _device_module(device: torch.device | None) -> Any:
    """The torch module of ``device``'s type (``torch.cuda``), None for the CPU."""
    if device is None or torch.device(device).type in ("cpu", "meta"):
        return None
    return torch.get_device_module(torch.device(device).type)


def seed(value: int) -> None:
    """Seed torch's CPU generator and every device generator (``torch.manual_seed``),
    Python's ``random`` and numpy's global generator."""
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def state(device: torch.device | None = None) -> dict[str, Any]:
    """The generators this process draws from: Python, numpy, torch's CPU one, and
    ``device``'s own (only this process's device: each rank saves its own)."""
    out = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    module = _device_module(device)
    if module is not None:
        out["device"] = {"type": device.type, "state": module.get_rng_state(device)}
    return out


def restore(saved: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back what :func:`state` returned (a device state of another device type, as
    when a GPU run resumes on the CPU, is left alone)."""
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    module = _device_module(device)
    dev = saved.get("device")
    if module is not None and dev is not None and dev["type"] == device.type:
        module.set_rng_state(dev["state"], device)


def fork(device: torch.device | None = None) -> contextlib.AbstractContextManager:
    """A context that leaves the CPU generator and the generators of every device of
    ``device``'s type (default: the current accelerator, if any) as it found them.
    Every device, not only this one: ``torch.manual_seed`` inside reseeds them all."""
    if device is None:
        device = torch.accelerator.current_accelerator()
    module = _device_module(device)
    if module is None:
        return torch.random.fork_rng(devices=[])
    devices = list(range(module.device_count()))
    return torch.random.fork_rng(devices=devices, device_type=torch.device(device).type)


@dataclass
class Snapshot:
    """Every process-wide generator at once: Python's, numpy's, torch's CPU one and
    those of every device of the current accelerator (``torch.cuda``'s on a GPU node).
    For code that reseeds them all (vLLM's constructor), to put them back after."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    devices: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> Snapshot:
        module = _device_module(torch.accelerator.current_accelerator())
        devices = module.get_rng_state_all() if module is not None else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), devices)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.devices is not None:
            _device_module(torch.accelerator.current_accelerator()).set_rng_state_all(self.devices)
