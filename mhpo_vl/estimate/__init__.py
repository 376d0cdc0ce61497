"""Will it fit? A per-GPU memory model of a recipe's training job, before any GPU is rented.

``mhpo-vl estimate RECIPE`` adds up, per GPU and per phase of a step (load, engine,
rollout, update), what the training job holds: parameters, gradients, AdamW state,
activations, the log-prob working memory, the frozen reference model, the colocated vLLM
engine, and says whether the largest phase fits in the GPU's memory. Everything is
computed from first principles and the model's real ``config.json``: the model is built
on the meta device (no weights, no download) and its parameters are counted; the widths
of its layers give the activations.

Modules, each importing only those above it:

- :mod:`~mhpo_vl.estimate.model`: the model's config found, the model built on the meta
  device and counted (:class:`ModelShape`);
- :mod:`~mhpo_vl.estimate.memory`: the per-GPU workload and the bytes of activations,
  logits, model state, gathered weights and the rollout batch;
- :mod:`~mhpo_vl.estimate.engines`: the rollout engine's memory (vLLM's share, hf
  ``generate``);
- :mod:`~mhpo_vl.estimate.phases`: the phases of a step and :func:`estimate`;
- :mod:`~mhpo_vl.estimate.report`: the recipe file read, and the text and JSON reports.
"""

from __future__ import annotations

from mhpo_vl.estimate.engines import hf_generation, kv_bytes_per_token, vllm_plan
from mhpo_vl.estimate.memory import (
    GB,
    activations,
    batch_bytes,
    block_activation_bytes,
    gathered_bytes,
    grad_sync,
    logits_bytes,
    mask_bytes,
    state,
    workload,
)
from mhpo_vl.estimate.model import ModelShape, describe_model, load_model_shape, model_config
from mhpo_vl.estimate.phases import DEFAULT_GPU_MEM_GB, estimate
from mhpo_vl.estimate.report import (
    estimate_recipe_file,
    hardware_from_header,
    load_recipe_for_estimate,
    render_json,
    render_text,
)

__all__ = [
    "DEFAULT_GPU_MEM_GB",
    "GB",
    "ModelShape",
    "activations",
    "batch_bytes",
    "block_activation_bytes",
    "describe_model",
    "estimate",
    "estimate_recipe_file",
    "gathered_bytes",
    "grad_sync",
    "hardware_from_header",
    "hf_generation",
    "kv_bytes_per_token",
    "load_model_shape",
    "load_recipe_for_estimate",
    "logits_bytes",
    "mask_bytes",
    "model_config",
    "render_json",
    "render_text",
    "state",
    "vllm_plan",
    "workload",
]
