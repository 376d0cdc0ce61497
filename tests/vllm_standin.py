"""An in-process stand-in for the part of vLLM 0.33.0's offline API the ``vllm`` rollout
engine calls, rebuilt from vLLM's source so that the engine is tested against what vLLM
does, not against what the engine expects. Generation runs on a transformers model
underneath (CPU); everything the engine can see is in vLLM's names and shapes.

What it reproduces, and the vLLM file each rule was read from (paths in vLLM's repository
at ``v0.33.0``; the code here is written from scratch):

- **Arguments** (``vllm/entrypoints/llm.py`` ``LLM.__init__``, ``vllm/engine/arg_utils.py``
  ``EngineArgs``): ``LLM(model, **kwargs)`` takes the names in
  :data:`LLM_INIT_PARAMETERS` and :data:`ENGINE_ARGS_FIELDS` (committed below as data);
  any other name is the ``TypeError`` the ``EngineArgs`` dataclass raises. Every
  argument is recorded (``init_kwargs``); those the stand-in does not model are accepted
  and ignored, as most of them change only speed or memory.
- **Start-up** (``vllm/v1/worker/gpu_worker.py`` ``init_device``,
  ``vllm/v1/worker/utils.py`` ``request_memory``, ``vllm/utils/torch_utils.py``
  ``set_random_seed``): where CUDA is available, ``gpu_memory_utilization`` of the
  *total* memory must be *free* (vLLM's ``ValueError`` otherwise); the process-wide RNGs
  (python ``random``, numpy, torch CPU and CUDA) are seeded with ``seed``.
- **Context length** (``vllm/config/model.py`` ``_get_and_verify_max_len``,
  ``vllm/v1/core/kv_cache_planning.py`` auto-fit): ``max_model_len`` ``None`` or ``-1``
  become the model's own (``max_position_embeddings``; ``-1`` is vLLM's auto-fit to free
  memory, and on the stand-in the whole context "fits"); a larger value is vLLM's
  ``ValueError``. The effective value is ``llm.llm_engine.model_config.max_model_len``
  (also ``llm.model_config``), as in vLLM.
- **Length rules** (``vllm/v1/engine/input_processor.py`` ``_validate_prompt_len``,
  ``vllm/v1/core/sched/utils.py`` ``check_stop``): a prompt of ``max_model_len`` tokens
  or more is a ``VLLMValidationError`` that fails the whole ``generate`` call; a prompt
  plus ``max_tokens`` over ``max_model_len`` is accepted, and its completion is cut
  when prompt + output reaches ``max_model_len`` (``finish_reason="length"``).
- **Multimodal prompts** (``vllm/model_executor/models/qwen2_vl.py``
  ``Qwen2VLProcessingInfo``, ``vllm/multimodal/processing/processor.py``): the image
  processor is vLLM's own, loaded from the model directory (``AutoImageProcessor``, not
  the trainer's object), with ``mm_processor_kwargs`` ``min_pixels`` / ``max_pixels``
  overriding its ``size`` edges; each image's first ``<|image_pad|>`` placeholder is
  expanded into ``grid_t * grid_h * grid_w / merge_size**2`` tokens.
- **Weights** (``vllm/model_executor/models/{qwen2,qwen3,qwen2_vl,qwen2_5_vl,
  qwen3_vl}.py`` ``hf_to_vllm_mapper`` and ``load_weights``,
  ``vllm/model_executor/models/utils.py`` ``WeightsMapper`` and ``AutoWeightsLoader``,
  ``vllm/model_executor/layers/linear.py`` shard loaders,
  ``vllm/model_executor/model_loader/dummy_loader.py``): the model the worker holds has
  vLLM's parameter names and shapes: Hugging Face prefixes renamed, ``q/k/v_proj``
  stacked into ``qkv_proj`` and ``gate/up_proj`` into ``gate_up_proj`` (the vision
  tower's own rules per model), tied ``lm_head`` skipped, rotary ``inv_freq`` dropped,
  an unknown name a ``ValueError`` (an unexpected ``.bias`` is ignored, as vLLM does).
  ``load_weights`` takes checkpoint names, maps them and returns the set of vLLM names
  it loaded. ``load_format="dummy"`` starts every parameter at uniform(-1e-3, 1e-3),
  so a parameter no sync reaches stays visibly wrong. The stacked tensors are the
  storage the transformers model computes with (its ``q_proj`` etc. are views into
  them), so generation uses exactly what was loaded.
- **Sleep** (``vllm/entrypoints/llm.py`` ``sleep`` / ``wake_up``,
  ``vllm/v1/worker/gpu_worker.py``, ``vllm/v1/engine/core.py``): level 1 keeps the
  weights (offloaded) and drops the KV cache; level 2 discards both (the weights become
  NaN here until loaded again; buffers are kept, as vLLM saves them); sleeping clears the
  prefix and encoder caches; ``generate`` fails while anything sleeps, loading weights
  while the weights sleep.
- **Tensor parallelism under ``external_launcher``** (``vllm/config/parallel.py``,
  ``vllm/distributed/parallel_state.py`` ``initialize_model_parallel``,
  ``vllm/v1/executor/uniproc_executor.py`` ``ExecutorWithExternalLauncher``): the TP
  groups are consecutive blocks of ``tensor_parallel_size`` ranks of the torchrun world,
  every rank creates every group at build, and the engines of one group must get
  identical requests. vLLM would deadlock or produce garbage otherwise; the stand-in
  all-gathers a digest of each ``generate`` call's requests within the group and raises.
  It does not shard the model: every rank computes the whole model.
- **Sampling** (``vllm/v1/sample/sampler.py``, ``vllm/v1/sample/ops/topk_topp_sampler.py``,
  ``vllm/sampling_params.py``): raw log-probs are taken first, then logit bias,
  temperature, top-k, top-p; sampling draws from the process-wide torch generator (vLLM
  samples unseeded requests from its device's default generator, seeded at build).

Install it with :func:`install` (``sys.modules["vllm"]`` and ``["vllm.config"]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mhpo_vl.rollout.vllm import VLLM_VERSION

__version__ = VLLM_VERSION

# --- vLLM's argument names, as data

# The fields of the ``EngineArgs`` dataclass in vllm/engine/arg_utils.py at v0.33.0, in
# source order (every annotated class attribute: the dataclass's keyword arguments).
# Read off the source with Python's ast module; regenerate them for another release.
ENGINE_ARGS_FIELDS: frozenset[str] = frozenset(
    (
        "model", "enable_return_routed_experts", "return_sampling_mask", "model_weights",
        "served_model_name", "tokenizer", "hf_config_path", "runner", "convert",
        "skip_tokenizer_init", "enable_prompt_embeds", "tokenizer_mode", "trust_remote_code",
        "allowed_local_media_path", "allowed_media_domains", "download_dir",
        "safetensors_load_strategy", "safetensors_prefetch_num_threads",
        "safetensors_prefetch_block_size", "load_format", "config_format", "dtype",
        "kv_cache_dtype", "seed", "max_model_len", "cudagraph_capture_sizes",
        "max_cudagraph_capture_size", "ir_op_priority", "distributed_executor_backend",
        "pipeline_parallel_size", "master_addr", "master_port", "nnodes", "node_rank",
        "distributed_timeout_seconds", "cpu_distributed_timeout_seconds", "numa_bind",
        "numa_bind_nodes", "numa_bind_cpus", "device_ids", "tensor_parallel_size",
        "prefill_context_parallel_size", "decode_context_parallel_size", "dcp_comm_backend",
        "dcp_q_replicate", "dcp_kv_cache_interleave_size", "cp_kv_cache_interleave_size",
        "data_parallel_size", "data_parallel_rank", "data_parallel_start_rank",
        "data_parallel_size_local", "data_parallel_address", "data_parallel_rpc_port",
        "data_parallel_hybrid_lb", "data_parallel_external_lb",
        "data_parallel_multi_port_external_lb", "data_parallel_backend", "enable_hc_sp",
        "enable_expert_parallel", "enable_batch_sharded_sampling", "enable_ep_weight_filter",
        "moe_backend", "linear_backend", "sparse_indexer_topk_backend", "all2all_backend",
        "enable_elastic_ep", "elastic_ep_max_dp_size", "enable_dbo", "ubatch_size",
        "dbo_decode_token_threshold", "dp_sync_interval", "dbo_prefill_token_threshold",
        "disable_nccl_for_dp_synchronization", "eplb_config", "enable_eplb",
        "expert_placement_strategy", "_api_process_count", "_api_process_rank",
        "max_parallel_loading_workers", "block_size", "enable_prefix_caching",
        "prefix_caching_hash_algo", "prefix_cache_retention_interval",
        "disable_sliding_window", "disable_cascade_attn", "offload_backend",
        "cpu_offload_gb", "cpu_offload_params", "offload_group_size", "offload_num_in_group",
        "offload_prefetch_step", "offload_params", "gpu_memory_utilization",
        "kv_cache_memory_bytes", "max_num_batched_tokens", "max_num_scheduled_tokens",
        "long_prefill_token_threshold", "long_prefill_token_threshold_adaptive",
        "max_num_seqs", "max_num_active_seqs", "max_num_queued_reqs",
        "max_num_queued_tokens", "max_logprobs", "logprobs_mode", "use_fp64_gumbel",
        "enable_trace_replay", "disable_log_stats", "aggregate_engine_logging", "revision",
        "code_revision", "hf_token", "hf_overrides", "model_class_overrides",
        "tokenizer_revision", "quantization", "quantization_config",
        "allow_deprecated_quantization", "enforce_eager", "disable_custom_all_reduce",
        "enable_shm_tensor_arena", "language_model_only", "limit_mm_per_prompt",
        "enable_mm_embeds", "interleave_mm_strings", "media_io_kwargs",
        "mm_processor_kwargs", "mm_processor_cache_gb", "mm_processor_cache_type",
        "mm_hasher_algorithm", "mm_shm_cache_max_object_size_mb", "mm_encoder_only",
        "mm_encoder_tp_mode", "mm_encoder_attn_backend", "mm_encoder_attn_dtype",
        "mm_encoder_fp8_scale_path", "mm_encoder_fp8_scale_save_path",
        "mm_encoder_fp8_scale_save_margin", "io_processor_plugin", "renderer_num_workers",
        "skip_mm_profiling", "video_pruning_rate", "video_pruning_method", "mm_tensor_ipc",
        "mm_processor_device", "mm_ipc_gpu_memory_gb", "mm_device_do_normalize",
        "enable_lora", "max_loras", "max_lora_rank", "default_mm_loras",
        "fully_sharded_loras", "max_cpu_loras", "lora_dtype", "lora_target_modules",
        "enable_tower_connector_lora", "specialize_active_lora",
        "enable_mixed_moe_lora_format", "enable_moe_shared_loras", "max_lora_cls_labels",
        "ray_workers_use_nsight", "num_gpu_blocks_override", "model_loader_extra_config",
        "ignore_patterns", "enable_chunked_prefill", "disable_chunked_mm_input",
        "scheduler_reserve_full_isl", "prefill_schedule_interval", "watermark",
        "disable_hybrid_kv_cache_manager", "structured_outputs_config", "aux_output_config",
        "reasoning_parser", "reasoning_parser_plugin", "speculative_config", "spec_method",
        "spec_model", "spec_tokens", "watermark_config", "diffusion_config",
        "show_hidden_metrics_for_version", "otlp_traces_endpoint", "collect_detailed_traces",
        "per_request_spec_decode_metrics", "kv_cache_metrics", "kv_cache_metrics_sample",
        "custom_histogram_buckets", "cudagraph_metrics", "enable_layerwise_nvtx_tracing",
        "enable_mfu_metrics", "enable_logging_iteration_details", "jit_monitor_mode",
        "jit_monitor_verbose", "enable_mm_processor_stats", "scheduling_policy",
        "scheduler_cls", "pooler_config", "compilation_config", "attention_config",
        "engram_config", "mamba_config", "kernel_config", "enable_flashinfer_autotune",
        "monokernel", "worker_cls", "worker_extension_cls", "profiler_config",
        "logging_config", "log_level", "log_config_file", "kv_transfer_config",
        "kv_events_config", "ec_transfer_config", "ec_manager_config", "reasoning_config",
        "generation_config", "enable_sleep_mode", "sleep_mode_backend",
        "sleep_mode_offload_cudagraph", "sleep_preserve_parameter_names",
        "enable_cumem_allocator", "enable_nccl_comm_suspend", "override_generation_config",
        "model_impl", "attention_backend", "kv_cache_dtype_skip_layers", "mamba_cache_dtype",
        "mamba_ssm_cache_dtype", "mamba_block_size", "prefix_match_unit", "mamba_cache_mode",
        "enable_mamba_shared_prefix_checkpoint", "replayssm_buffer_len", "use_replayssm",
        "mamba_backend", "mamba_ssu_algorithm", "enable_mamba_cache_stochastic_rounding",
        "mamba_cache_philox_rounds", "additional_config", "use_tqdm_on_load",
        "pt_load_map_location", "logits_processors", "async_scheduling", "stream_interval",
        "kv_sharing_fast_prefill", "swa_bounded_replay", "optimization_level",
        "performance_mode", "fault_tolerance_config", "enable_fault_tolerance",
        "kv_offloading_size", "kv_offloading_backend", "tokens_only", "shutdown_timeout",
        "watchdog_config", "weight_transfer_config", "fail_on_environ_validation",
        "gdn_prefill_backend", "kda_prefill_backend", "kda_decode_backend",
    )
)  # fmt: skip
# The parameters of ``LLM.__init__`` in vllm/entrypoints/llm.py at v0.33.0 (``model``,
# then keyword-only; ``**kwargs`` goes on to ``EngineArgs``). All but ``chat_template``
# are ``EngineArgs`` fields too.
LLM_INIT_PARAMETERS: tuple[str, ...] = (
    "model", "runner", "convert", "tokenizer", "tokenizer_mode", "skip_tokenizer_init",
    "trust_remote_code", "allowed_local_media_path", "allowed_media_domains",
    "tensor_parallel_size", "dtype", "quantization", "revision", "tokenizer_revision",
    "chat_template", "seed", "gpu_memory_utilization", "cpu_offload_gb", "offload_group_size",
    "offload_num_in_group", "offload_prefetch_step", "offload_params", "enforce_eager",
    "enable_return_routed_experts", "return_sampling_mask", "disable_custom_all_reduce",
    "hf_token", "hf_overrides", "mm_processor_kwargs", "pooler_config",
    "structured_outputs_config", "profiler_config", "attention_config",
    "kv_cache_memory_bytes", "compilation_config", "quantization_config", "logits_processors",
    "spec_method", "spec_model", "spec_tokens",
)  # fmt: skip
# The defaults of the arguments the stand-in acts on (LLM.__init__'s where it has one,
# else the config class's: ModelConfig, CacheConfig, LoadConfig, ParallelConfig).
DEFAULTS: dict[str, Any] = {
    "tensor_parallel_size": 1,
    "dtype": "auto",
    "seed": 0,
    "gpu_memory_utilization": 0.92,
    "enforce_eager": False,
    "skip_tokenizer_init": False,
    "mm_processor_kwargs": None,
    "max_model_len": None,
    "enable_sleep_mode": False,
    "limit_mm_per_prompt": {},
    "logprobs_mode": "raw_logprobs",
    "max_logprobs": 20,
    "load_format": "auto",
    "distributed_executor_backend": None,
    "disable_log_stats": True,  # LLM.__init__ sets it unless given
}
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")
LOAD_FORMATS = ("auto", "safetensors", "dummy")  # the ones the stand-in implements
DTYPES = {
    "auto": torch.float32,
    "float": torch.float32,
    "float32": torch.float32,
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
PROMPT_KEYS = {"prompt", "prompt_token_ids", "multi_modal_data", "mm_processor_kwargs"}
SLEEP_TAGS = ("weights", "kv_cache", "scheduling")
DUMMY_RANGE = 1e-3  # dummy_loader: uniform(-1e-3, 1e-3) for float parameters
_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2


class VLLMValidationError(ValueError):
    """vLLM's error for bad sampling parameters or prompts (vllm/exceptions.py)."""


# --- outputs and sampling parameters (vllm/outputs.py, vllm/logprobs.py,
# vllm/sampling_params.py)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


class SamplingParams:
    """The fields of vLLM's ``SamplingParams`` this stand-in implements, validated as
    vLLM validates them."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        logprobs: int | None = None,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        logit_bias: dict[int, float] | None = None,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {n}.")
        if temperature < 0.0 or temperature > 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {top_p}.")
        if not isinstance(top_k, int) or top_k < -1:
            raise VLLMValidationError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        if max_tokens is not None and max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {max_tokens}.")
        if logprobs is not None and logprobs != -1 and logprobs < 0:
            raise VLLMValidationError(f"logprobs must be non-negative or -1, got {logprobs}.")
        stop_token_ids = list(dict.fromkeys(stop_token_ids or []))
        if not all(isinstance(t, int) for t in stop_token_ids):
            raise VLLMValidationError(
                f"stop_token_ids must contain only integers, got {stop_token_ids}."
            )
        if 0 < temperature < _MAX_TEMP:
            temperature = _MAX_TEMP
        if temperature < _SAMPLING_EPS:  # greedy
            top_p, top_k = 1.0, 0
            if n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {n}.")
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.seed, self.stop_token_ids, self.ignore_eos = seed, stop_token_ids, ignore_eos
        self.max_tokens, self.logprobs, self.detokenize = max_tokens, logprobs, detokenize
        self.skip_special_tokens, self.logit_bias = skip_special_tokens, logit_bias

    @property
    def _greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    def digest_fields(self) -> tuple:
        """What makes two requests' sampling the same (for the TP-group check)."""
        return (
            self.n, self.temperature, self.top_p, self.top_k, self.seed,
            tuple(self.stop_token_ids), self.ignore_eos, self.max_tokens, self.logprobs,
            tuple(sorted((self.logit_bias or {}).items())),
        )  # fmt: skip


# --- vllm.config


_current_config: list[Any] = []


@contextlib.contextmanager
def set_current_vllm_config(vllm_config: Any) -> Iterator[None]:
    _current_config.append(vllm_config)
    try:
        yield
    finally:
        _current_config.pop()


config = types.ModuleType("vllm.config")
config.set_current_vllm_config = set_current_vllm_config


# --- weight names: each model's WeightsMapper, as data


@dataclass(frozen=True)
class Layout:
    """How one architecture's checkpoint names become vLLM's.

    ``prefixes``: the model's top-level ``WeightsMapper.orig_to_new_prefix``, applied in
    turn (each rule to the result of the previous, as ``WeightsMapper`` does).
    ``modules``: ``(vLLM module prefix, stacked rules)``; a name under that prefix goes
    to that module's own ``load_weights``, whose mapper applies ``orig_to_new_stacked``
    rules ``(substring, stacked substring, shard id)`` to the name relative to it.
    ``lm_head`` / ``embed``: the names of the tied pair, when the config ties them."""

    prefixes: tuple[tuple[str, str], ...]
    modules: tuple[tuple[str, tuple[tuple[str, str, Any], ...]], ...]
    lm_head: str
    embed: str


# Qwen2Model.hf_to_vllm_mapper (vllm/model_executor/models/qwen2.py); Qwen3Model and the
# language models inside the VL models inherit it.
LM_STACKED = (
    (".q_proj", ".qkv_proj", "q"),
    (".k_proj", ".qkv_proj", "k"),
    (".v_proj", ".qkv_proj", "v"),
    (".gate_proj", ".gate_up_proj", 0),
    (".up_proj", ".gate_up_proj", 1),
)
# Qwen2VLForConditionalGeneration / Qwen2_5_VL...: checkpoints after transformers 4.52
# (model.language_model., model.visual.) and the original layout (model., lm_head.)
VL_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)
LAYOUTS: dict[str, Layout] = {
    "qwen2": Layout((), (("model.", LM_STACKED),), "lm_head.weight", "model.embed_tokens.weight"),
    "qwen3": Layout((), (("model.", LM_STACKED),), "lm_head.weight", "model.embed_tokens.weight"),
    "qwen2_vl": Layout(  # Qwen2VisionTransformer.hf_to_vllm_mapper (qwen2_vl.py)
        VL_PREFIXES,
        (
            ("visual.", ((".q_proj", ".qkv", "q"), (".k_proj", ".qkv", "k"), (".v_proj", ".qkv", "v"))),
            ("language_model.model.", LM_STACKED),
        ),
        "language_model.lm_head.weight",
        "language_model.model.embed_tokens.weight",
    ),
    "qwen2_5_vl": Layout(  # Qwen2_5_VisionTransformer.hf_to_vllm_mapper (qwen2_5_vl.py)
        VL_PREFIXES,
        (
            (
                "visual.",
                (
                    (".attn.q.", ".attn.qkv.", "q"),
                    (".attn.k.", ".attn.qkv.", "k"),
                    (".attn.v.", ".attn.qkv.", "v"),
                    (".mlp.gate_proj.", ".mlp.gate_up_proj.", 0),
                    (".mlp.up_proj.", ".mlp.gate_up_proj.", 1),
                ),
            ),
            ("language_model.model.", LM_STACKED),
        ),
        "language_model.lm_head.weight",
        "language_model.model.embed_tokens.weight",
    ),
    "qwen3_vl": Layout(  # Qwen3_VisionTransformer / Qwen3VLForConditionalGeneration
        (
            ("model.visual.", "visual."),
            ("lm_head.", "language_model.lm_head."),
            ("model.language_model.", "language_model.model."),
        ),
        (
            ("visual.", (("attn.q.", "attn.qkv.", "q"), ("attn.k.", "attn.qkv.", "k"), ("attn.v.", "attn.qkv.", "v"))),
            ("language_model.model.", LM_STACKED),
        ),
        "language_model.lm_head.weight",
        "language_model.model.embed_tokens.weight",
    ),
}  # fmt: skip
# AutoWeightsLoader.REMOVE_UNUSED_ROTARY_EMBEDS_MAPPER: names dropped before loading
DROPPED = ("rotary_pos_emb.inv_freq", "rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")  # fmt: skip
SHARD_ORDER = {"q": 0, "k": 1, "v": 2, 0: 0, 1: 1}
_HF_CLASSES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


def map_name(layout: Layout, name: str) -> tuple[str, Any] | None:
    """A checkpoint name as vLLM loads it: ``(vLLM name, shard id or None)``, or None
    for a name vLLM drops."""
    if any(part in name for part in DROPPED):
        return None
    for old, new in layout.prefixes:
        if name.startswith(old):
            name = new + name[len(old) :]
    shard = None
    for module, rules in layout.modules:
        if name.startswith(module):
            rest = name[len(module) :]
            for old, new, shard_id in rules:
                if old in rest:
                    rest, shard = rest.replace(old, new, 1), shard_id
            return module + rest, shard
    return name, None


class VllmModel:
    """What ``worker.get_model()`` returns: vLLM's parameters (names and shapes) over the
    transformers model's storage, and ``load_weights`` by checkpoint name."""

    def __init__(self, llm: LLM, hf_model: torch.nn.Module, model_type: str) -> None:
        self._llm = llm
        self.layout = LAYOUTS[model_type]
        config = hf_model.config
        text = getattr(config, "text_config", None) or config
        tied = getattr(config, "tie_word_embeddings", None)
        self.tied = bool(tied if tied is not None else getattr(text, "tie_word_embeddings", False))
        # vLLM name -> (parameter, {shard id: (start, length)} for stacked ones)
        self._params: dict[str, tuple[torch.nn.Parameter, dict[Any, tuple[int, int]]]] = {}
        self._stack(hf_model)

    def _stack(self, hf_model: torch.nn.Module) -> None:
        """Build vLLM's parameters from the transformers model's: stacked ones get fresh
        storage and the transformers parameters become views into it."""
        groups: dict[str, list[tuple[Any, str, torch.nn.Parameter]]] = {}
        for hf_name, param in hf_model.named_parameters():
            mapped = map_name(self.layout, hf_name)
            if mapped is None:
                raise AssertionError(f"{hf_name}: a parameter vLLM drops")
            name, shard = mapped
            groups.setdefault(name, []).append((shard, hf_name, param))
        for name, members in groups.items():
            if len(members) == 1 and members[0][0] is None:
                self._params[name] = (members[0][2], {})
                continue
            members.sort(key=lambda m: SHARD_ORDER[m[0]])
            stacked = torch.nn.Parameter(
                torch.cat([p.detach() for _, _, p in members]), requires_grad=False
            )
            shards, start = {}, 0
            for shard, hf_name, param in members:
                length = param.shape[0]
                shards[shard] = (start, length)
                module_name, _, attr = hf_name.rpartition(".")
                view = torch.nn.Parameter(stacked.data[start : start + length], requires_grad=False)
                setattr(hf_model.get_submodule(module_name), attr, view)
                start += length
            self._params[name] = (stacked, shards)

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for name, (param, _) in self._params.items():
            yield name, param

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for _, param in self.named_parameters():
            yield param

    def shards(self, name: str) -> dict[Any, tuple[int, int]]:
        """The ``(start, length)`` rows of each shard of a stacked parameter."""
        return dict(self._params[name][1])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        llm = self._llm
        if not _current_config or _current_config[-1] is not llm.vllm_config:
            raise AssertionError("Current vLLM config is not set")
        if "weights" in llm.asleep:
            raise RuntimeError("load_weights while the weights are asleep (unmapped memory)")
        llm.weight_calls.append(type(weights).__name__)
        loaded: set[str] = set()
        skipped_alias = False
        with torch.no_grad():
            for hf_name, tensor in weights:
                llm.weight_log.append((hf_name, tensor.dtype, tensor.device.type))
                mapped = map_name(self.layout, hf_name)
                if mapped is None:
                    continue
                name, shard = mapped
                if self.tied and name == self.layout.lm_head:
                    skipped_alias = True  # AutoWeightsLoader skips a tied alias
                    continue
                if name not in self._params:
                    if name.endswith(".bias") and name[: -len("bias")] + "weight" in self._params:
                        continue  # AutoWeightsLoader ignores unexpected biases
                    raise ValueError(
                        f"There is no module or parameter named {name!r} in "
                        f"{type(self).__name__} (checkpoint name {hf_name!r})"
                    )
                self._load_one(name, shard, tensor)
                loaded.add(name)
        if skipped_alias and self.layout.embed not in loaded:
            raise ValueError(
                f"{self.layout.lm_head!r} was skipped because it is tied to "
                f"{self.layout.embed!r}, but {self.layout.embed!r} was not found in the "
                "checkpoint, so the tied weight is uninitialized."
            )
        llm.loaded_log.append(loaded)
        return loaded

    def _load_one(self, name: str, shard: Any, tensor: torch.Tensor) -> None:
        param, shards = self._params[name]
        target = param.data
        if shard is not None:
            if shard not in shards:
                raise AssertionError(f"{name}: no shard {shard!r} (has {sorted(shards)})")
            start, length = shards[shard]
            target = target[start : start + length]
        if tuple(target.shape) != tuple(tensor.shape):
            raise AssertionError(
                f"Attempted to load weight ({tensor.shape}) into parameter ({target.shape})"
            )
        target.copy_(tensor)


class _Worker:
    def __init__(self, llm: LLM) -> None:
        self.vllm_config = llm.vllm_config
        self._llm = llm

    def get_model(self) -> VllmModel:
        return self._llm.vllm_model


class _Sampler(LogitsProcessor):
    """vLLM's sampler order on one request's ``n`` rows: log-probs per ``mode`` (raw:
    before anything), then logit bias, then (sampling only) temperature, top-k, top-p."""

    def __init__(self, sp: SamplingParams, mode: str) -> None:
        self.sp, self.mode = sp, mode
        self.steps: list[torch.Tensor] = []  # [n, V] reported values per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sp = self.sp
        logits = scores.float().clone()
        raw = logits.clone()
        if sp.logit_bias:
            ids = torch.tensor(list(sp.logit_bias), dtype=torch.long)
            bias = torch.tensor([min(100.0, max(-100.0, b)) for b in sp.logit_bias.values()])
            logits[:, ids] += bias
        if not sp._greedy:
            logits = logits / sp.temperature
            if sp.top_k > 0:
                kth = torch.topk(logits, min(sp.top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if sp.top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=False)
                cumulative = sorted_logits.softmax(-1).cumsum(-1)
                drop = cumulative <= 1 - sp.top_p
                drop[:, -1] = False
                logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        reported = {
            "raw_logits": raw,
            "raw_logprobs": torch.log_softmax(raw, -1),
            "processed_logits": logits,
            "processed_logprobs": torch.log_softmax(logits, -1),
        }[self.mode]
        self.steps.append(reported)
        return logits


@dataclass
class ModelConfig:
    """The part of vLLM's ``ModelConfig`` the engine reads."""

    model: str
    max_model_len: int
    original_max_model_len: int | None
    seed: int


class _Engine:
    """``LLM.llm_engine``: its ``model_config`` and the cache reset the adapter calls."""

    def __init__(self, model_config: ModelConfig) -> None:
        self.model_config = model_config
        self.encoder_cache_resets = 0

    def reset_encoder_cache(self) -> None:
        self.encoder_cache_resets += 1


# --- start-up rules


def set_random_seed(seed: int | None) -> None:
    """vllm/utils/torch_utils.py ``set_random_seed``: every process-wide RNG."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def request_memory(gpu_memory_utilization: float) -> None:
    """vllm/v1/worker/utils.py ``request_memory``: the share of the device's *total*
    memory must be free at start-up."""
    if not torch.cuda.is_available():
        return
    free, total = torch.cuda.mem_get_info()
    requested = math.ceil(total * gpu_memory_utilization)
    if free < requested:
        raise ValueError(
            f"Free memory on device cuda ({free / 2**30:.2f}/{total / 2**30:.2f} GiB) on "
            f"startup is less than desired GPU memory utilization "
            f"({gpu_memory_utilization}, {requested / 2**30:.2f} GiB). Decrease GPU memory "
            "utilization or reduce GPU memory used by other processes."
        )


def derived_max_model_len(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.max_position_embeddings)


def resolve_max_model_len(requested: int | None, derived: int) -> int:
    """vllm/config/model.py: None or -1 (auto-fit; the whole context fits here) take the
    model's own length; more than it is an error."""
    if requested is None or requested == -1:
        return derived
    if requested < -1:
        raise ValueError(f"max_model_len must be >= -1, got {requested}")
    if requested > derived:
        raise ValueError(
            f"User-specified max_model_len ({requested}) is greater than the derived "
            f"max_model_len (max_position_embeddings={derived} or model_max_length=None in "
            "model's config.json). To allow overriding this maximum, set the env var "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
        )
    return requested


def tp_group(tp: int) -> tuple[Any, list[int]] | None:
    """This rank's TP group under ``external_launcher`` and its ranks: consecutive blocks
    of ``tp`` ranks of the torchrun world (``initialize_model_parallel``). Every rank
    creates every group, as ``torch.distributed.new_group`` requires."""
    dist = torch.distributed
    if tp == 1:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("external_launcher needs a torch.distributed process group")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % tp:
        raise RuntimeError(f"shape '[-1, 1, 1, 1, {tp}]' is invalid for input of size {world}")
    mine = None
    for start in range(0, world, tp):
        ranks = list(range(start, start + tp))
        group = dist.new_group(ranks, backend="gloo")
        if rank in ranks:
            mine = (group, ranks)
    return mine


def _load_hf_model(path: str, dtype: torch.dtype, load_format: str) -> tuple[Any, str]:
    import transformers
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(path)
    model_type = hf_config.model_type
    if model_type not in LAYOUTS:
        raise ValueError(f"the stand-in models {sorted(LAYOUTS)}, not {model_type!r}")
    cls = getattr(transformers, _HF_CLASSES[model_type])
    if load_format == "dummy":  # the dummy loader reads no checkpoint, only config.json
        model = cls._from_config(hf_config, dtype=dtype)
    else:
        model = cls.from_pretrained(path, dtype=dtype)
    return model.eval(), model_type


# --- LLM


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - ENGINE_ARGS_FIELDS - set(LLM_INIT_PARAMETERS))
        if unknown:
            raise TypeError(
                f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}"
            )
        args = {**DEFAULTS, **kwargs}
        self.init_kwargs = {"model": model, **args}
        self.engine_args = args
        self.multiprocessing_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self._check_args(args)
        tp = args["tensor_parallel_size"]
        self.tp = None
        if args["distributed_executor_backend"] == "external_launcher":
            # vllm/config/parallel.py sets it; ExecutorWithExternalLauncher asserts it
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            self.tp = tp_group(tp)
        set_random_seed(args["seed"])  # gpu_worker.init_device: seed, then the memory check
        request_memory(args["gpu_memory_utilization"])
        self.model_path = model
        self.hf_model, self.model_type = _load_hf_model(
            model, DTYPES[args["dtype"]], args["load_format"]
        )
        self.is_vision = self.model_type.endswith("_vl")
        length = resolve_max_model_len(
            args["max_model_len"], derived_max_model_len(self.hf_model.config)
        )
        self.model_config = ModelConfig(model, length, args["max_model_len"], args["seed"])
        self.llm_engine = _Engine(self.model_config)
        self.vllm_config = types.SimpleNamespace(model_config=self.model_config)
        self.vllm_model = VllmModel(self, self.hf_model, self.model_type)
        if args["load_format"] == "dummy":
            self._dummy_weights()
        self.mm_processor_kwargs = dict(args["mm_processor_kwargs"] or {})
        self.worker = _Worker(self)
        self.asleep: set[str] = set()
        self.sleep_calls: list[int] = []
        self.wake_calls: list[list[str] | None] = []
        self.prefix_cache_resets = 0
        self.weight_log: list[tuple[str, torch.dtype, str]] = []  # (name, dtype, device)
        self.weight_calls: list[str] = []  # the type of each load_weights argument
        self.loaded_log: list[set[str]] = []  # what each load_weights call returned
        self.requests: list[dict[str, Any]] = []
        self.rpc_calls = 0
        self._tokenizer: Any = None
        self._image_processor: Any = None

    @staticmethod
    def _check_args(args: Mapping[str, Any]) -> None:
        if args["dtype"] not in DTYPES:
            raise ValueError(f"unknown dtype {args['dtype']!r}")
        share = args["gpu_memory_utilization"]
        if not 0 < share <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {share}")
        if args["logprobs_mode"] not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}")
        if args["load_format"] not in LOAD_FORMATS:
            raise NotImplementedError(f"the stand-in loads {LOAD_FORMATS}")
        if not isinstance(args["tensor_parallel_size"], int) or args["tensor_parallel_size"] < 1:
            raise ValueError("tensor_parallel_size must be >= 1")

    def _dummy_weights(self) -> None:
        """dummy_loader.py: random values (a private generator, like vLLM's fixed seed)."""
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in self.vllm_model.parameters():
                noise = torch.rand(p.shape, generator=gen) * 2 * DUMMY_RANGE - DUMMY_RANGE
                p.copy_(noise)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return self._tokenizer

    @property
    def image_processor(self) -> Any:
        """vLLM's own image processor, from the model directory."""
        if self._image_processor is None:
            from transformers import AutoImageProcessor

            self._image_processor = AutoImageProcessor.from_pretrained(self.model_path)
        return self._image_processor

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # memory

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if not self.engine_args["enable_sleep_mode"]:
            raise ValueError("Sleep mode is not enabled (enable_sleep_mode=True)")
        if level not in (0, 1, 2) or mode not in ("abort", "wait", "keep"):
            raise ValueError(f"bad sleep level {level!r} or mode {mode!r}")
        self.sleep_calls.append(level)
        if level == 0:
            self.asleep |= {"scheduling"}
            return
        self.asleep |= {"weights", "kv_cache"}
        self.prefix_cache_resets += 1  # sleeping clears the prefix and encoder caches
        self.llm_engine.encoder_cache_resets += 1
        if level == 2:  # weights discarded (buffers saved): garbage until loaded again
            with torch.no_grad():
                for p in self.vllm_model.parameters():
                    p.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        if tags is not None and not set(tags) <= set(SLEEP_TAGS):
            raise ValueError(f"wake_up tags must be in {SLEEP_TAGS}, got {tags}")
        self.wake_calls.append(None if tags is None else list(tags))
        self.asleep -= set(SLEEP_TAGS if tags is None else tags)
        return not self.asleep

    def reset_prefix_cache(
        self, reset_running_requests: bool = False, reset_connector: bool = False
    ) -> bool:
        self.prefix_cache_resets += 1
        return True

    def collective_rpc(
        self,
        method: Any,
        timeout: float | None = None,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        self.rpc_calls += 1
        if isinstance(method, str):
            return [getattr(self.worker, method)(*args, **(kwargs or {}))]
        return [method(self.worker, *args, **(kwargs or {}))]

    def apply_model(self, func: Any) -> list[Any]:
        return [func(self.worker.get_model())]

    # generation

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        lora_request: Any = None,
        priority: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError(f"generate() while asleep ({sorted(self.asleep)})")
        prompts = [prompts] if isinstance(prompts, Mapping) else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            [sampling_params] * len(prompts)
            if isinstance(sampling_params, SamplingParams)
            else list(sampling_params)
        )
        if len(params) != len(prompts) or not all(isinstance(p, SamplingParams) for p in params):
            raise ValueError("sampling_params: one SamplingParams, or one per prompt")
        # every request is processed and validated before any runs: one bad prompt fails
        # the whole call (LLM._validate_and_add_requests)
        inputs = [self._inputs(prompt) for prompt in prompts]
        for ids, _, _ in inputs:
            self._validate_prompt_len(len(ids))
        self._check_tp_group(inputs, params)
        return [
            self._run(str(i), prompt, sp, *inp)
            for i, (prompt, sp, inp) in enumerate(zip(prompts, params, inputs, strict=True))
        ]

    def _validate_prompt_len(self, length: int) -> None:
        """input_processor.py ``_validate_prompt_len`` for a decoder prompt."""
        limit = self.model_config.max_model_len
        if length == 0:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if length > limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {length}) is longer than the maximum model "
                f"length of {limit}. Make sure that `max_model_len` is no smaller than the "
                "number of text tokens plus multimodal tokens."
            )
        if length == limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {length}) plus the number of requested output "
                f"tokens (at least 1) is longer than the maximum model length of {limit}."
            )

    def _check_tp_group(self, inputs: list[tuple], params: list[SamplingParams]) -> None:
        """The engines of one TP group must run identical requests (external_launcher):
        compare a digest of this call's requests across the group."""
        if self.tp is None:
            return
        group, ranks = self.tp
        digest = hashlib.sha256()
        for (ids, _, images), sp in zip(inputs, params, strict=True):
            digest.update(repr((ids, sp.digest_fields())).encode())
            for image in images:
                digest.update(image.tobytes())
        seen: list[Any] = [None] * len(ranks)
        torch.distributed.all_gather_object(seen, digest.hexdigest(), group=group)
        if len(set(seen)) != 1:
            raise RuntimeError(
                f"external_launcher: the engines of TP group {ranks} were given different "
                "requests; every rank of a TP group must call generate() with the same ones"
            )

    def _inputs(self, prompt: Mapping[str, Any]) -> tuple[list[int], dict[str, Any], list[Any]]:
        unknown = set(prompt) - PROMPT_KEYS
        if unknown:
            raise TypeError(f"unknown prompt keys {sorted(unknown)}")
        if "prompt_token_ids" not in prompt:
            raise NotImplementedError("the stand-in takes token prompts only")
        ids = [int(t) for t in prompt["prompt_token_ids"]]
        vocab = self.hf_model.get_input_embeddings().weight.shape[0]
        if any(not 0 <= t < vocab for t in ids):
            raise VLLMValidationError("Token id out of vocabulary")
        mm = dict(prompt.get("multi_modal_data") or {})
        if set(mm) - {"image"}:
            raise NotImplementedError(f"modalities {sorted(mm)}")
        images = mm.get("image") or []
        images = [images] if not isinstance(images, (list, tuple)) else list(images)
        if not images:
            return ids, {}, []
        if not self.is_vision:
            raise ValueError("multi_modal_data given to a text-only model")
        limit = (self.engine_args["limit_mm_per_prompt"] or {}).get("image", 999)
        if len(images) > limit:
            raise VLLMValidationError(f"At most {limit} image(s) may be provided in one prompt.")
        return self._expand(ids, images, prompt.get("mm_processor_kwargs") or {})

    def _expand(
        self, ids: list[int], images: list[Any], request_kwargs: Mapping[str, Any]
    ) -> tuple[list[int], dict[str, Any], list[Any]]:
        """Each image's first placeholder -> its run of image tokens (vLLM's processor)."""
        image_processor = self.image_processor
        pixels = {**self.mm_processor_kwargs, **request_kwargs}
        size = {}  # qwen2_vl.py: min_pixels / max_pixels override the size edges
        for edge, key in (("shortest_edge", "min_pixels"), ("longest_edge", "max_pixels")):
            value = pixels.get(key)
            size[edge] = value if value is not None else getattr(image_processor.size, edge)
        enc = image_processor(images=images, return_tensors="pt", size=size)
        merge = image_processor.merge_size**2
        pad_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        expanded, cursor = [], 0
        for grid in enc["image_grid_thw"]:
            try:
                at = ids.index(pad_id, cursor)
            except ValueError:
                raise RuntimeError(
                    f"Expected there to be {len(images)} prompt placeholders corresponding to "
                    f"{len(images)} image items"
                ) from None
            expanded += ids[cursor:at] + [pad_id] * (int(grid.prod()) // merge)
            cursor = at + 1
        expanded += ids[cursor:]
        extra = {
            "pixel_values": enc["pixel_values"],
            "image_grid_thw": enc["image_grid_thw"],
            # which positions are image tokens: the model's mRoPE positions follow them
            "mm_token_type_ids": torch.tensor([[int(t == pad_id) for t in expanded]]),
        }
        return expanded, extra, images

    def _stops(self, sp: SamplingParams) -> set[int]:
        stops = set(sp.stop_token_ids)
        if not sp.ignore_eos:
            stops.add(self.tokenizer.eos_token_id)
            gen_eos = self.hf_model.generation_config.eos_token_id
            stops.update(
                gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
            )
        return stops

    def _run(
        self,
        request_id: str,
        prompt: Mapping[str, Any],
        sp: SamplingParams,
        ids: list[int],
        extra: dict[str, Any],
        images: list[Any],
    ) -> RequestOutput:
        self.requests.append(
            {"prompt": prompt, "prompt_token_ids": ids, "images": images, "params": sp}
        )
        room = self.model_config.max_model_len - len(ids)  # check_stop: prompt + output
        max_tokens = room if sp.max_tokens is None else min(sp.max_tokens, room)
        stops = self._stops(sp)
        sampler = _Sampler(sp, self.engine_args["logprobs_mode"])
        out = self._hf_generate(ids, extra, sp, max_tokens, stops, sampler)
        completions = [
            self._completion(j, out[j, len(ids) :].tolist(), sp, stops, sampler)
            for j in range(sp.n)
        ]
        return RequestOutput(
            request_id=request_id,
            prompt=prompt.get("prompt"),
            prompt_token_ids=ids,
            prompt_logprobs=None,
            outputs=completions,
            finished=True,
        )

    def _hf_generate(
        self,
        ids: list[int],
        extra: dict[str, Any],
        sp: SamplingParams,
        max_tokens: int,
        stops: set[int],
        sampler: _Sampler,
    ) -> torch.Tensor:
        """The transformers model samples (from the process-wide torch generator)."""
        n, tok = sp.n, self.tokenizer
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([ids] * n),
            "attention_mask": torch.ones(n, len(ids), dtype=torch.long),
        }
        if extra:
            inputs["pixel_values"] = extra["pixel_values"].repeat(n, 1)
            inputs["image_grid_thw"] = extra["image_grid_thw"].repeat(n, 1)
            inputs["mm_token_type_ids"] = extra["mm_token_type_ids"].repeat(n, 1)
        knobs = {} if sp._greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen_config = GenerationConfig(
            do_sample=not sp._greedy,
            **knobs,
            max_new_tokens=max_tokens,
            eos_token_id=sorted(stops) or None,
            pad_token_id=pad,
        )
        model = self.hf_model
        saved, model.generation_config = model.generation_config, gen_config
        try:
            with torch.no_grad():
                return model.generate(
                    **inputs,
                    generation_config=gen_config,
                    logits_processor=LogitsProcessorList([sampler]),
                )
        finally:
            model.generation_config = saved

    def _completion(
        self, j: int, row: list[int], sp: SamplingParams, stops: set[int], sampler: _Sampler
    ) -> CompletionOutput:
        length = next((t + 1 for t, x in enumerate(row) if x in stops), len(row))
        row = row[:length]
        logprobs = None if sp.logprobs is None else self._logprobs(j, row, sp, sampler)
        stopped = bool(row) and row[-1] in stops
        eos = self.tokenizer.eos_token_id
        return CompletionOutput(
            index=j,
            text=self.tokenizer.decode(row, skip_special_tokens=sp.skip_special_tokens)
            if sp.detokenize
            else "",
            token_ids=row,
            cumulative_logprob=None
            if logprobs is None
            else sum(e[x].logprob for e, x in zip(logprobs, row, strict=True)),
            logprobs=logprobs,
            finish_reason="stop" if stopped else "length",
            stop_reason=row[-1] if stopped and row[-1] != eos else None,
        )

    @staticmethod
    def _logprobs(
        j: int, row: list[int], sp: SamplingParams, sampler: _Sampler
    ) -> list[dict[int, Logprob]]:
        out = []
        for t, token in enumerate(row):
            dist = sampler.steps[t][j]
            entry = {token: Logprob(float(dist[token]), int((dist > dist[token]).sum()) + 1)}
            if sp.logprobs and sp.logprobs > 0:
                top = torch.topk(dist, sp.logprobs)
                for rank, (v, k) in enumerate(zip(top.values, top.indices, strict=True), 1):
                    entry.setdefault(int(k), Logprob(float(v), rank))
            out.append(entry)
        return out


def install(monkeypatch: Any) -> types.ModuleType:
    """Make ``import vllm`` (and ``vllm.config``) give this stand-in for one test."""
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.config", config)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the engine must set it
    return module


__all__ = [
    "LLM",
    "CompletionOutput",
    "Logprob",
    "RequestOutput",
    "SamplingParams",
    "VLLMValidationError",
    "install",
]
