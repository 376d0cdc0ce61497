"""Test tiers: ``slow`` (real CLI runs on the tiny model), ``strict_device`` (the
training step on a fake accelerator, ``tests/fake_accelerator.py``) and ``gpu`` (needs
CUDA).

``pytest`` runs everything this machine can; tests marked ``gpu`` are skipped where
``torch.cuda.is_available()`` is false. ``pytest -m gpu`` runs the GPU tier alone.

Every test not marked ``gpu`` runs on the CPU, on a GPU machine too: which tests touch
CUDA must not be an accident of the hardware. For each of them CUDA is hidden from the
test's own code (``torch.cuda.is_available()`` is false) and from the processes it
starts (``CUDA_VISIBLE_DEVICES`` is empty).
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the gpu tier: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _on_the_cpu(request, monkeypatch):
    """Pin every test outside the gpu tier to the CPU (see the module docstring)."""
    if "gpu" in request.keywords:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
