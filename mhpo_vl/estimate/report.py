"""What ``mhpo-vl estimate`` prints, and the recipe file it reads: the recipe checked as
``mhpo-vl validate`` checks it (:func:`load_recipe_for_estimate`), the hardware named on
its ``# Hardware:`` header line (:func:`hardware_from_header`), and an :class:`Estimate`
rendered as a table of phases x parts (:func:`render_text`) or as JSON
(:func:`render_json`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mhpo_vl.config import DatasetSpec, Recipe
from mhpo_vl.errors import UserError
from mhpo_vl.estimate.memory import GB, round_gb
from mhpo_vl.estimate.model import load_model_shape
from mhpo_vl.estimate.phases import (
    DEFAULT_GPU_MEM_GB,
    GPUS_PER_NODE,
    PHASES,
    Estimate,
    estimate,
)

HARDWARE_LINE = re.compile(r"^#\s*Hardware:\s*(\d+)\s*x\s*(.*?)(\d+(?:\.\d+)?)\s*GB", re.I)


# ------------------------------------------------------------------------------ recipes


def hardware_from_header(path: str | Path) -> tuple[int, float] | None:
    """``(gpus, GB per GPU)`` from the recipe's ``# Hardware: 8x H100 80GB ...`` line."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = HARDWARE_LINE.match(line)
        if match:
            return int(match.group(1)), float(match.group(3))
    return None


def load_recipe_for_estimate(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe checked as ``mhpo-vl validate`` checks it (keys, types, ranges, names,
    engine and loss arguments, cross-key rules), except what the estimate does not use
    and a planner may not have yet: that the data files exist (they are usually prepared
    on the GPU machine) and that ``trainer.output_dir`` is writable."""
    from mhpo_vl.config import build_recipe, check_cross_rules, check_values, read_recipe_yaml
    from mhpo_vl.validation import check_sections

    try:
        recipe = build_recipe(read_recipe_yaml(path), overrides)
        check_values(recipe)
        placeholder = dataclasses.replace(
            recipe.data, train=DatasetSpec("synthetic_vision"), eval=None
        )
        check_sections(dataclasses.replace(recipe, data=placeholder))
        check_cross_rules(recipe)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return recipe


def estimate_recipe_file(
    path: str | Path,
    overrides: list[str] | None = None,
    gpus: int | None = None,
    gpu_mem_gb: float | None = None,
    prompt_tokens: int | None = None,
) -> Estimate:
    """:func:`estimate` of a recipe file; ``gpus`` and ``gpu_mem_gb`` default to its
    ``# Hardware:`` header line, else 1 GPU of :data:`DEFAULT_GPU_MEM_GB`."""
    recipe = load_recipe_for_estimate(path, overrides)
    header = hardware_from_header(path)
    if gpus is None:
        gpus = header[0] if header else 1
    if gpu_mem_gb is None:
        gpu_mem_gb = header[1] if header else DEFAULT_GPU_MEM_GB
    shape = load_model_shape(recipe.model.path, recipe.model.trust_remote_code)
    return estimate(recipe, shape, gpus, gpu_mem_gb, prompt_tokens)


# ------------------------------------------------------------------------------ output

PART_LABELS = {
    "runtime": "CUDA runtime",
    "parameters": "parameters",
    "gradients": "gradients",
    "optimizer": "AdamW state",
    "optimizer_step": "AdamW step temporary",
    "ddp_buckets": "DDP gradient buckets",
    "reference": "reference model",
    "load_buffer": "parameter being loaded",
    "gathered_weights": "gathered / cast weights",
    "fsdp_reduce": "FSDP reduce-scatter",
    "activations": "activations",
    "logits": "logits + gradient",
    "grad_temp": "head gradient temporary",
    "batch": "rollout batch",
    "kv_cache": "KV cache (hf)",
    "generation": "generation working",
    "vllm": "vLLM",
}


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def render_json(est: Estimate) -> str:
    """:meth:`Estimate.to_json` as indented JSON text (one trailing newline)."""
    return json.dumps(est.to_json(), indent=2) + "\n"


def _header_lines(est: Estimate, recipe_path: str) -> list[str]:
    s, w = est.shape, est.work
    split = (
        f"language {_billions(s.language_params)}, embeddings/head {_billions(s.embedding_params)}"
    )
    if s.is_vision:
        split = f"vision {_billions(s.vision_params)}, " + split
    lines = [
        f"{recipe_path}: {s.name} ({s.source}), {_billions(s.params)} parameters ({split}); "
        f"{_billions(est.trainable)} trainable",
        f"{est.gpus} GPU(s) x {est.gpu_mem_gb:g} GB, {est.strategy}; per GPU {w.rollouts} "
        f"rollouts a step, {w.minibatch_rows} per minibatch, micro-batches of {w.micro_rows}",
    ]
    seq = f"{w.prompt_tokens:,} prompt tokens ({w.prompt_source}) + {w.new_tokens:,} new"
    if w.shared_prefix:
        seq += (
            f"; shared prefix: {w.sequences} packed sequence(s) of {w.seq_len:,} tokens "
            "per micro-batch"
        )
    else:
        seq += f"; {w.sequences} sequences of {w.seq_len:,} tokens per micro-batch"
    if s.is_vision:
        seq += f"; {w.image_tokens:,} tokens ({4 * w.image_tokens:,} patches) per image"
    lines.append(seq)
    if est.vllm is not None:
        v = est.vllm
        lines.append(
            f"vLLM share {round_gb(v.share):g} GB: weights {round_gb(v.weights):g}, working + CUDA graphs "
            f"{round_gb(v.working + v.cuda_graphs):g}, KV cache {round_gb(v.kv_cache):g} GB = "
            f"{v.concurrent} sequence(s) of max_model_len {v.max_model_len:,} "
            f"({round_gb(v.seq_bytes):g} GB each); sleep level {v.sleep_level}"
        )
    return lines


def _table(est: Estimate) -> list[str]:
    used = [k for k in PART_LABELS if any(p.get(k) for p in est.phases.values())]
    width = max(len(PART_LABELS[k]) for k in used) + 2
    head = "per GPU (GB)".ljust(width) + "".join(f"{name:>10}" for name in PHASES)
    rows = [head]
    for key in used:
        cells = []
        for name in PHASES:
            phase = est.phases[name]
            cells.append(f"{round_gb(phase[key]):>10.2f}" if key in phase else f"{'-':>10}")
        rows.append(PART_LABELS[key].ljust(width) + "".join(cells))
    totals = "".join(
        f"{round_gb(sum(est.phases[n].values())):>10.2f}" if est.phases[n] else f"{'-':>10}"
        for n in PHASES
    )
    rows.append("total".ljust(width) + totals)
    return rows


def render_text(est: Estimate, recipe_path: str = "") -> str:
    """The human-readable report: model, workload, the phase x part table, the verdict."""
    a = est.activations
    lines = _header_lines(est, recipe_path or est.recipe_name)
    lines += ["", *_table(est), ""]
    lines.append(
        f"update: worst at {est.update_step}; a micro-batch's activations peak at "
        f"{round_gb(a.backward_peak(True)):g} GB with gradient checkpointing, "
        f"{round_gb(a.backward_peak(False)):g} GB without ({'on' if est.checkpointing else 'off'} "
        "here)"
    )
    if est.cpu_ram_per_node:
        nodes = min(est.gpus, GPUS_PER_NODE)
        why = []
        if est.state.cpu:
            why.append(f"offloaded model state: {round_gb(est.state.cpu * nodes):g}")
        if est.vllm is not None and est.vllm.cpu:
            why.append(f"vLLM's weights asleep at level 1: {round_gb(est.vllm.cpu * nodes):g}")
        lines.append(f"CPU RAM per node: {round_gb(est.cpu_ram_per_node):g} GB ({', '.join(why)})")
    lines += [f"note: {n}" for n in est.notes]
    lines += [f"problem: {p}" for p in est.problems]
    room = est.gpu_mem_gb - est.peak / GB
    verdict = "fits" if est.fits else "does NOT fit"
    lines.append(
        f"peak {round_gb(est.peak):g} GB in {est.peak_phase}: {verdict} in {est.gpu_mem_gb:g} GB "
        f"({room:+.1f} GB)"
    )
    return "\n".join(lines) + "\n"
