"""Test tiers: ``slow`` (real CLI runs on the tiny model) and ``gpu`` (needs CUDA).

``pytest`` runs everything this machine can; tests marked ``gpu`` are skipped where
``torch.cuda.is_available()`` is false. ``pytest -m gpu`` runs the GPU tier alone.
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
