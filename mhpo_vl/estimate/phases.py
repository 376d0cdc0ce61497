"""The phases of a training step, each one's parts added up per GPU, and :func:`estimate`.

Each phase's total is what is resident at its worst moment:

- ``load``: the policy is built on the meta device, sharded, and its weights loaded
  shard by shard, so a GPU holds its shard of the policy (and of the reference model)
  plus the largest single parameter in flight;
- ``engine``: vLLM is built after the models are loaded and needs
  ``gpu_memory_utilization`` x the GPU's memory *free* at that moment, so the trainer's
  resident memory then plus vLLM's share must fit (AdamW's state does not exist yet);
- ``rollout``: the trainer's resident state (now with AdamW's state) beside the awake
  engine (vLLM's whole share; or, with ``rollout.engine: hf``, the weights in the compute
  dtype, the KV cache and the prefill's working memory);
- ``update``: the worst moment of a micro-batch's forward and backward, of the end of the
  backward, or of the optimizer step, while vLLM sleeps.

The figures are tensors allocated. Two things on a real GPU are outside them: PyTorch's
caching allocator keeps freed blocks reserved (the vllm engine releases them,
``torch.cuda.empty_cache()``, before vLLM wakes, or they would count against its share),
and fragmentation usually reserves 5-10% more than is allocated. What is not a
tensor of ours is a constant: :data:`CUDA_RUNTIME_GB` (CUDA context, cuBLAS and NCCL
workspaces), and vLLM's working memory and CUDA graphs (:mod:`mhpo_vl.estimate.engines`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mhpo_vl.config import Recipe
from mhpo_vl.errors import UserError
from mhpo_vl.estimate.engines import VllmPlan, hf_generation, vllm_plan
from mhpo_vl.estimate.memory import (
    DTYPE_BYTES,
    GB,
    Activations,
    State,
    Workload,
    activations,
    batch_bytes,
    gathered_bytes,
    grad_temporary,
    logits_bytes,
    round_gb,
    state,
    workload,
)
from mhpo_vl.estimate.model import ModelShape

DEFAULT_GPU_MEM_GB = 80.0

CUDA_RUNTIME_GB = 1.0
"""Per GPU, outside PyTorch's tensors: the CUDA context (~0.5 GB on an H100), cuBLAS
workspaces and NCCL's communication buffers."""

GPUS_PER_NODE = 8

PHASES = ("load", "engine", "rollout", "update")


@dataclass
class Estimate:
    """The memory model of one recipe on one hardware setup (bytes unless named _gb)."""

    recipe_name: str
    shape: ModelShape
    work: Workload
    gpus: int
    gpu_mem_gb: float
    strategy: str
    checkpointing: bool
    trainable: int
    phases: dict[str, dict[str, int]]
    update_step: str  # which moment of the update is its worst
    activations: Activations
    state: State
    vllm: VllmPlan | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {name: sum(parts.values()) for name, parts in self.phases.items()}

    @property
    def peak_phase(self) -> str:
        totals = self.totals
        return max(totals, key=lambda k: totals[k])

    @property
    def peak(self) -> int:
        return self.totals[self.peak_phase]

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_mem_gb * GB and not self.problems

    @property
    def cpu_ram_per_node(self) -> int:
        per_gpu = self.state.cpu + (self.vllm.cpu if self.vllm else 0)
        return per_gpu * min(self.gpus, GPUS_PER_NODE)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)


def _to_json(est: Estimate) -> dict[str, Any]:
    s, w = est.shape, est.work
    parts: dict[str, float] = {}
    for phase in est.phases.values():
        for k, v in phase.items():
            parts[k] = max(parts.get(k, 0.0), round_gb(v))
    out: dict[str, Any] = {
        "recipe": est.recipe_name,
        "model": {
            "path": s.name,
            "config_source": s.source,
            "type": s.model_type,
            "parameters": s.params,
            "trainable": est.trainable,
            "vision": s.vision_params,
            "language": s.language_params,
            "embeddings": s.embedding_params,
        },
        "gpus": est.gpus,
        "gpu_mem_gb": est.gpu_mem_gb,
        "strategy": est.strategy,
        "workload": dataclasses.asdict(w),
        "phases": {
            name: {**{k: round_gb(v) for k, v in p.items()}, "total": round_gb(sum(p.values()))}
            for name, p in est.phases.items()
        },
        "parts_gb": parts,
        "update_step": est.update_step,
        "activations_gb": {
            "checkpointing_on": round_gb(est.activations.backward_peak(True)),
            "checkpointing_off": round_gb(est.activations.backward_peak(False)),
            "applies": "on" if est.checkpointing else "off",
        },
        "peak_gb": round_gb(est.peak),
        "peak_phase": est.peak_phase,
        "fits": est.fits,
        "problems": est.problems,
        "cpu_ram_per_node_gb": round_gb(est.cpu_ram_per_node),
        "notes": est.notes,
    }
    if est.vllm is not None:
        v = est.vllm
        out["vllm"] = {
            "share_gb": round_gb(v.share),
            "weights_gb": round_gb(v.weights),
            "working_gb": round_gb(v.working + v.cuda_graphs),
            "kv_cache_gb": round_gb(v.kv_cache),
            "max_model_len": v.max_model_len,
            "sequence_kv_gb": round_gb(v.seq_bytes),
            "concurrent_sequences": v.concurrent,
            "sleep_level": v.sleep_level,
        }
    return out


def _runtime() -> dict[str, int]:
    return {"runtime": int(CUDA_RUNTIME_GB * GB)}


def _resident(st: State, with_optimizer: bool) -> dict[str, int]:
    parts = {"parameters": st.params, "ddp_buckets": st.ddp_buckets, "reference": st.reference}
    if with_optimizer:
        parts["optimizer"] = st.optimizer
    return parts


def load_phase(recipe: Recipe, shape: ModelShape, st: State) -> dict[str, int]:
    """The policy's shard (and the reference's), plus the largest parameter in flight
    (in the master dtype; on the GPU even under offload, where it is sharded to CPU)."""
    m = DTYPE_BYTES[recipe.model.master_dtype]
    return {
        **_runtime(),
        "parameters": st.params,
        "reference": st.reference,
        "load_buffer": m * shape.largest_param,
    }


def update_phase(
    recipe: Recipe, shape: ModelShape, work: Workload, st: State, vllm: VllmPlan | None
) -> tuple[dict[str, int], str, Activations]:
    """The update's worst moment among: the start of a micro-batch's backward (all its
    activations, the logits and their gradient), a block's backward (plus one block
    recomputed under checkpointing and FSDP's reduce-scatter of a unit), the end of the
    backward (FSDP's root unit reduce-scattered) and the optimizer step. Gradients are
    counted from the start: from the second micro-batch on they exist throughout."""
    c = DTYPE_BYTES[recipe.model.dtype]
    ckpt = recipe.model.gradient_checkpointing
    acts = activations(recipe, shape, work)
    common = {
        **_runtime(),
        **_resident(st, with_optimizer=True),
        "gradients": st.grads,
        "batch": batch_bytes(shape, work),
        "vllm": vllm.asleep if vllm else 0,
    }
    fsdp = recipe.parallel.strategy == "fsdp"
    gathered = gathered_bytes(recipe, shape)
    unit = max(shape.block_params, default=0)
    steps = {
        "backward start": {
            **common,
            "gathered_weights": gathered,
            "activations": acts.forward_peak(ckpt),
            "logits": logits_bytes(recipe, shape, work),
            "grad_temp": grad_temporary(recipe, shape),
        },
        "block backward": {
            **common,
            "gathered_weights": gathered,
            "activations": acts.backward_peak(ckpt),
            "fsdp_reduce": (c + 4) * unit if fsdp else 0,
        },
        "optimizer step": {**common, "optimizer_step": st.optimizer_step},
    }
    if fsdp:
        steps["backward end"] = {
            **common,
            "gathered_weights": c * shape.root_params,
            "fsdp_reduce": (c + 4) * shape.root_params,
        }
    worst = max(steps, key=lambda k: sum(steps[k].values()))
    return steps[worst], worst, acts


def rollout_phase(
    recipe: Recipe, shape: ModelShape, work: Workload, st: State, vllm: VllmPlan | None
) -> dict[str, int]:
    """The trainer's resident state beside the awake engine."""
    parts = {**_runtime(), **_resident(st, with_optimizer=True), "batch": batch_bytes(shape, work)}
    if vllm is not None:
        parts["vllm"] = vllm.share
        return parts
    gen = hf_generation(recipe, shape, work)
    parts["gathered_weights"] = gen["weights"]
    parts["kv_cache"] = gen["kv_cache"]
    parts["generation"] = gen["working"]
    return parts


def engine_phase(st: State, vllm: VllmPlan | None) -> dict[str, int]:
    """vLLM's construction: the trainer's state then (no AdamW state yet) plus the share
    vLLM requires free; nothing for the hf engine."""
    if vllm is None:
        return {}
    return {**_runtime(), **_resident(st, with_optimizer=False), "vllm": vllm.share}


def _problems(est_vllm: VllmPlan | None, work: Workload) -> list[str]:
    out = []
    if est_vllm is not None:
        v = est_vllm
        if v.kv_cache <= 0:
            out.append(
                f"vLLM's share ({v.share / GB:.1f} GB) does not hold its weights "
                f"({v.weights / GB:.1f} GB) and working memory "
                f"({(v.working + v.cuda_graphs) / GB:.1f} GB): raise gpu_memory_utilization "
                "or tensor_parallel_size"
            )
        elif v.concurrent < 1:
            out.append(
                f"vLLM's KV cache ({v.kv_cache / GB:.1f} GB) holds no sequence of "
                f"max_model_len {v.max_model_len:,} tokens ({v.seq_bytes / GB:.1f} GB): "
                "lower max_model_len or raise gpu_memory_utilization"
            )
    if work.prompt_tokens < work.images_per_prompt * work.image_tokens:
        out.append(
            f"the prompt budget ({work.prompt_tokens:,} tokens) is below the image tokens "
            f"({work.images_per_prompt} x {work.image_tokens:,}): raise max_model_len or "
            "lower data.max_pixels"
        )
    if work.prompt_tokens < 1:
        out.append("no prompt budget: max_model_len must exceed rollout.max_new_tokens")
    return out


def estimate(
    recipe: Recipe,
    shape: ModelShape,
    gpus: int = 1,
    gpu_mem_gb: float = DEFAULT_GPU_MEM_GB,
    prompt_tokens: int | None = None,
) -> Estimate:
    """The memory model of ``recipe`` with model ``shape`` on ``gpus`` GPUs of
    ``gpu_mem_gb`` GB each."""
    if gpus < 1:
        raise UserError(f"--gpus: must be >= 1, got {gpus}")
    if not gpu_mem_gb > 0:
        raise UserError(f"--gpu-mem: must be > 0, got {gpu_mem_gb}")
    if prompt_tokens is not None and prompt_tokens < 1:
        raise UserError(f"--prompt-tokens: must be >= 1, got {prompt_tokens}")
    work = workload(recipe, shape, gpus, prompt_tokens)
    st = state(recipe, shape, gpus)
    vllm = vllm_plan(recipe, shape, gpu_mem_gb) if recipe.rollout.engine == "vllm" else None
    update, worst, acts = update_phase(recipe, shape, work, st, vllm)
    phases = {
        "load": load_phase(recipe, shape, st),
        "engine": engine_phase(st, vllm),
        "rollout": rollout_phase(recipe, shape, work, st, vllm),
        "update": update,
    }
    notes = []
    if vllm is not None:
        kept = sum(update.values()) - vllm.asleep + vllm.share
        notes.append(
            "the rollout column counts on the update's freed blocks going back to the GPU "
            f"before vLLM wakes (the engine empties torch's cache); kept reserved, they and "
            f"vLLM would need {kept / GB:.1f} GB"
        )
    if recipe.parallel.cpu_offload:
        notes.append("parameters, gradients and AdamW state in CPU RAM (parallel.cpu_offload)")
    return Estimate(
        recipe.name, shape, work, gpus, gpu_mem_gb, recipe.parallel.strategy,
        recipe.model.gradient_checkpointing, shape.trainable(recipe.model.freeze_vision), phases, worst, acts, st, vllm,
        _problems(vllm, work), notes,
    )  # fmt: skip
