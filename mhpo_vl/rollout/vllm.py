"""The vLLM rollout engine: vLLM's offline ``LLM`` colocated with the trainer.

Written and checked against ``VLLM_VERSION`` (below); another installed version gets a
warning at construction, since the calls here follow that version's source. ``vllm``
is imported only when the engine is built, so this module imports anywhere.

**What has run where.** None of this has run against real vLLM: this repository's
machines have no GPU, and vLLM 0.33 needs one. It is checked against vLLM 0.33.0's
source (the files listed below) and against ``tests/vllm_standin.py``, an in-process
stand-in rebuilt from that source (weight names and stacking, length rules, sleep
levels, RNG seeding, the argument set, tensor-parallel groups under torchrun), with
generation on a transformers model. ``tests/test_rollout_vllm.py`` has one test for the
real vLLM, run only where it is installed on a GPU.

What it does, and why:

- **Same inputs as the trainer.** Prompts are encoded by our own
  :func:`~mhpo_vl.rollout.encode.encode_prompts` (so the batch's prompt tensors and
  ``pixel_values`` are the HF processor's) and vLLM gets that token sequence, with each
  image's run of ``<|image_pad|>`` tokens folded back to the single placeholder vLLM's
  multimodal processor expands itself, plus the same PIL images. vLLM's image
  processor is pinned to ours (``min_pixels`` / ``max_pixels``), and the expanded
  prompt vLLM reports must equal ours token for token, else a ``RuntimeError`` names the
  prompt: a silent mismatch would train on rollouts of a different prompt.
- **Lengths.** vLLM refuses a prompt of ``max_model_len`` tokens or more with an error
  that fails the whole ``generate`` call, and cuts a completion where prompt + output
  reaches ``max_model_len`` (so a long prompt would silently get fewer new tokens than
  the hf engine gives it). Before calling vLLM, every prompt's expanded length +
  ``max_new_tokens`` is checked against the built engine's ``max_model_len``
  (``llm.llm_engine.model_config.max_model_len``: the resolved value, ``-1``'s auto-fit
  included), and a ``UserError`` names the prompt and the ways out.
- **Same sampling as the hf engine.** ``temperature``, ``top_p``, ``top_k`` (0 is off
  in both), the stop ids of :func:`~mhpo_vl.rollout.hf.stop_token_ids`, and the vision
  special tokens kept out of completions with a ``-100`` logit bias (vLLM's bound).
  Greedy (``temperature <= 0``) sends each prompt once (vLLM refuses ``n > 1`` without
  sampling) and repeats its completion ``n`` times.
- **Random numbers.** vLLM seeds every process-wide generator (python, numpy, torch CPU
  and CUDA) when it is built, and samples unseeded requests from the device's default
  generator. The trainer's generators are saved before ``vllm.LLM(...)`` and put back
  after it, and each ``generate`` swaps vLLM's own generator states in and the
  trainer's back out, so the trainer's draws (minibatch shuffling) do not depend on
  vLLM and vLLM's samples depend only on its seed. The seed is ``seed + rank //
  tensor_parallel_size``: different across data-parallel ranks (uncorrelated
  rollouts), the same within a tensor-parallel group (its engines must sample alike).
- **Log-probs** (``logprobs = "approximate"``): vLLM is built with
  ``logprobs_mode="raw_logprobs"``, i.e. ``log_softmax(logits)`` of its own forward,
  before the logit bias, temperature and top-k/top-p (``vllm/v1/sample/sampler.py``).
  That is the batch's convention (log-probs under the untruncated policy at the
  sampling temperature) at temperature 1 and for greedy decoding, whatever top-k/top-p.
  vLLM has no mode for a temperature other than 1 that keeps the convention:
  ``processed_logprobs`` applies the temperature *and* the truncation and the logit
  bias. So at another temperature ``sample_logprobs`` stay at temperature 1 (a warning
  says so once); that is also the temperature the trainer recomputes old log-probs at,
  so the rollout correction still compares like with like.
- **Weights** (:meth:`VLLMEngine.sync_weights`): the trained model's parameters are
  streamed one tensor at a time, under their Hugging Face checkpoint names, into
  vLLM's ``model.load_weights``, which renames them (each model's
  ``hf_to_vllm_mapper``), stacks ``q/k/v_proj`` into ``qkv_proj`` and ``gate/up_proj``
  into ``gate_up_proj`` and returns the names it loaded. Sharded parameters (DTensor)
  have their local shard moved to the compute device (``policy.device``: under FSDP2
  CPU offload the shards rest on the CPU, which NCCL cannot gather) and are gathered
  with ``full_tensor()`` (a collective: every rank calls ``sync_weights``); each is cast
  to the engine's dtype, and no full copy of the state dict is ever built. vLLM is
  built with ``load_format="dummy"`` (random weights, no checkpoint read: the first
  sync overwrites them all) unless ``extra: {load_format: auto}``; the first sync, and
  every sync after a level-2 sleep discarded the weights, sends every parameter and
  checks that vLLM's model has no parameter it did not load (a ``RuntimeError`` naming
  them where they would hold garbage, a warning under ``load_format: auto``, where they
  keep the checkpoint's values). Other syncs send only the parameters that train
  (``requires_grad``): a frozen vision tower does not change.
- **Memory** (:meth:`sleep` / :meth:`wake`): vLLM's sleep mode (on unless
  ``extra: {enable_sleep_mode: false}``). Level 1 offloads the weights to CPU and drops
  the KV cache; level 2 (the default) drops both. A sync while asleep wakes the weights
  alone (``wake_up(tags=["weights"])``) and :meth:`wake` then brings back the KV cache,
  the order vLLM documents for updating weights in sleep mode; a :meth:`wake` after a
  level-2 sleep with no sync since (the trainer's eval) syncs the last model given to
  :meth:`sync_weights` itself. ``gpu_memory_utilization`` is a share of the GPU's
  *total* memory that must be *free* when vLLM starts (after the policy and reference
  are loaded): the engine checks it first and names the ways out.
- **Processes.** The engine core runs in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Under torchrun vLLM joins the process group
  (``distributed_executor_backend="external_launcher"``): its tensor-parallel groups
  are consecutive blocks of ``tensor_parallel_size`` ranks, and the engines of a group
  must get identical requests, so :meth:`VLLMEngine.generate` all-gathers the group's
  prompts, generates them all and keeps this rank's share. Then every rank of a group
  must call ``generate`` equally often (:attr:`VLLMEngine.lockstep`). In-process
  workers (one GPU, or ``external_launcher``) read a lazy stream of weights; vLLM's
  worker processes (``tensor_parallel_size`` > 1 in one process) get CPU chunks of
  about ``SYNC_CHUNK_BYTES``.

vLLM source read for these calls (paths in vLLM's repository at ``v{VLLM_VERSION}``):
``vllm/entrypoints/llm.py`` (``LLM.__init__``, ``generate``, ``sleep``, ``wake_up``,
``collective_rpc``, ``reset_prefix_cache``, ``model_config``),
``vllm/engine/arg_utils.py`` (``EngineArgs``: ``max_model_len``, ``enable_sleep_mode``,
``limit_mm_per_prompt``, ``logprobs_mode``, ``load_format``), ``vllm/config/model.py``
(log-prob modes; ``max_model_len``: ``None`` and ``-1`` resolve to the model's own,
``-1`` then auto-fits), ``vllm/v1/core/kv_cache_planning.py`` (the auto-fit, written
back to ``model_config.max_model_len``), ``vllm/config/load.py`` and
``vllm/model_executor/model_loader/dummy_loader.py`` (``load_format="dummy"``),
``vllm/v1/engine/input_processor.py`` (``_validate_prompt_len``: a prompt of
``max_model_len`` tokens or more is an error) and ``vllm/v1/core/sched/utils.py``
(``check_stop``: a request ends when prompt + output reaches ``max_model_len``),
``vllm/v1/worker/gpu_worker.py`` (``init_device``: the seed, then the free-memory check;
``sleep`` / ``wake_up`` tags, ``get_model``), ``vllm/v1/worker/utils.py``
(``request_memory`` and its message), ``vllm/utils/torch_utils.py``
(``set_random_seed``), ``vllm/config/parallel.py`` and
``vllm/distributed/parallel_state.py`` (``external_launcher``: TP groups of consecutive
torchrun ranks), ``vllm/v1/executor/uniproc_executor.py``
(``ExecutorWithExternalLauncher``: the engines of a TP group must see the same
requests), ``vllm/v1/sample/sampler.py`` and
``vllm/v1/sample/ops/topk_topp_sampler.py`` (where each log-prob mode is taken),
``vllm/sampling_params.py`` (fields, ``top_k`` 0 = off, greedy needs ``n == 1``,
``temperature <= 2``), ``vllm/inputs/llm.py`` (``TokensPrompt``), ``vllm/outputs.py`` and
``vllm/logprobs.py`` (``RequestOutput``, ``CompletionOutput``, ``Logprob``),
``vllm/multimodal/processing/processor.py`` (placeholder expansion),
``vllm/model_executor/models/{qwen2,qwen3,qwen2_vl,qwen2_5_vl,qwen3_vl}.py``
(``load_weights``, ``hf_to_vllm_mapper``, ``min_pixels`` / ``max_pixels``),
``vllm/model_executor/models/utils.py`` (``WeightsMapper``, ``AutoWeightsLoader``: an
unknown name is a ``ValueError``, a tied ``lm_head`` is skipped, the loaded names are
returned), ``vllm/model_executor/layers/linear.py`` (stacked shard loaders),
``vllm/v1/engine/llm_engine.py`` and ``vllm/v1/engine/core.py`` (sleep clears the
prefix and encoder caches; ``reset_encoder_cache``), ``vllm/v1/worker/worker_base.py``,
``vllm/v1/serial_utils.py`` (``run_method``: a callable gets the worker) and
``vllm/envs.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mhpo_vl import rng
from mhpo_vl.batch import RolloutBatch, SamplingParams, join
from mhpo_vl.errors import UserError
from mhpo_vl.models.policy import DTYPES
from mhpo_vl.parallel import in_process_group
from mhpo_vl.parallel.fsdp import gather_full
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.rollout.engine import check_arg_keys
from mhpo_vl.rollout.hf import response_mask_from, stop_token_ids, vision_token_ids

if TYPE_CHECKING:
    from mhpo_vl.models import Policy

VLLM_VERSION = "0.33.0"
"""The vLLM release this engine's calls were written and checked against."""

MISSING_VLLM = (
    "rollout.engine 'vllm' needs the vllm package (pip install 'mhpo-vl[vllm]' on a CUDA machine)"
)
KEY = "rollout.engine_args"
NO_MAX_MODEL_LEN = (
    "{key}.max_model_len: must be set: the longest prompt (image tokens included) + "
    "rollout.max_new_tokens, or -1 for vLLM's fit to the free GPU memory (unset, vLLM "
    "sizes its KV cache for the model's full context, 128K-256K tokens for Qwen)"
)
VISION_LOGIT_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]
MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams refuses more
SYNC_CHUNK_BYTES = 512 << 20  # worker processes: bytes per RPC of the weight sync
DEFAULT_LOAD_FORMAT = "dummy"  # the constructor's first sync overwrites every weight
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# wrappers a trained model may sit in; their name parts are not in the checkpoint's names
_WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_GIB = float(1 << 30)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise UserError(MISSING_VLLM) from exc
    version = getattr(vllm, "__version__", None)
    if version != VLLM_VERSION:
        warnings.warn(
            f"vllm {version} is installed; the vllm rollout engine was written and checked "
            f"against vllm {VLLM_VERSION}, and the API it calls may differ",
            stacklevel=3,
        )
    return vllm


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if in_process_group():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --- weights


def hf_param_name(name: str) -> str:
    """``name`` as it is in the Hugging Face checkpoint: without DDP's leading
    ``module.`` and the parts FSDP, activation checkpointing or ``torch.compile`` add."""
    if name.startswith("module."):
        name = name[len("module.") :]
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def stream_weights(
    model: torch.nn.Module,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    *,
    gather_device: torch.device | str | None = None,
    trainable_only: bool = False,
) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint name, tensor)`` for each parameter (only those with
    ``requires_grad`` when ``trainable_only``), one at a time: sharded ones gathered on
    ``gather_device`` (see :func:`gather_full`), then detached, cast to ``dtype`` and
    moved to ``device`` (None: where they are)."""
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        tensor = gather_full(param.detach(), gather_device)
        yield hf_param_name(name), tensor.to(device=device, dtype=dtype)


def _chunks(
    weights: Iterable[tuple[str, Tensor]], max_bytes: int
) -> Iterator[list[tuple[str, Tensor]]]:
    chunk: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in weights:
        chunk.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _load_weights_on_worker(worker: Any, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
    """Run by vLLM on each worker (``collective_rpc`` passes the worker first): load
    ``weights`` into its model; the names vLLM loaded (vLLM's own names). vLLM's loader
    raises on a name it does not know."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        loaded = worker.get_model().load_weights(weights)
    return set(loaded or ())


def _param_names_on_worker(worker: Any) -> set[str]:
    """The names of every parameter of the worker's model (vLLM's names)."""
    return {name for name, _ in worker.get_model().named_parameters()}


# --- random numbers


# --- checks


def _release_cached_memory() -> None:
    """Hand the blocks torch's caching allocator keeps (freed by the update's
    activations) back to the GPU, where vLLM's own allocator can take them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_free_memory(device: torch.device, share: float) -> None:
    """vLLM wants ``share`` of the GPU's *total* memory *free* when it starts
    (``vllm/v1/worker/utils.py`` ``request_memory``); say so before vLLM does, with the
    ways out. No-op without CUDA."""
    if not torch.cuda.is_available():
        return
    index = device.index if device.type == "cuda" and device.index is not None else None
    if index is None:
        index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    need = math.ceil(total * share)
    if free >= need:
        return
    raise UserError(
        f"{KEY}.gpu_memory_utilization: vLLM needs {share} of GPU {index}'s "
        f"{total / _GIB:.2f} GiB ({need / _GIB:.2f} GiB) free at start, but "
        f"{free / _GIB:.2f} GiB is free once the policy (and reference) are loaded; "
        f"lower gpu_memory_utilization (at most {math.floor(free / total * 100) / 100}), "
        "shard the trainer (parallel.strategy: fsdp, parallel.cpu_offload: true), or see "
        "`mhpo-vl estimate`"
    )


def _check_max_model_len(length: Any, key: str) -> None:
    if length is None:
        raise UserError(NO_MAX_MODEL_LEN.format(key=key))
    if not (_is_int(length, 1) or (_is_int(length, -1) and length == -1)):
        raise UserError(
            f"{key}.max_model_len: must be an integer >= 1, or -1 (vLLM's fit to the free "
            f"GPU memory), got {length!r}"
        )


def _tp_groups(tp: int, rank: int, world: int) -> Any:
    """This rank's tensor-parallel group, as vLLM forms them under ``external_launcher``
    (``vllm/distributed/parallel_state.py``: consecutive blocks of ``tp`` torchrun
    ranks). Every rank creates every group, as ``torch.distributed.new_group``
    requires. Gloo: the group only exchanges prompts (CPU objects)."""
    if world % tp:
        raise UserError(
            f"{KEY}.tensor_parallel_size: {tp} does not divide the {world} processes (under "
            f"torchrun each tensor-parallel group is {tp} consecutive ranks)"
        )
    mine = None
    for start in range(0, world, tp):
        ranks = list(range(start, start + tp))
        group = torch.distributed.new_group(ranks, backend="gloo")
        if rank in ranks:
            mine = group
    return mine


# --- prompts


def _pixel_limits(policy: Policy) -> dict[str, int]:
    """The policy's image processor's pixel bounds, as vLLM's ``mm_processor_kwargs``."""
    image_processor = getattr(policy.processor, "image_processor", None)
    size = getattr(image_processor, "size", None)

    def size_value(key: str) -> Any:
        value = getattr(size, key, None)
        if value is None and isinstance(size, Mapping):
            value = size.get(key)
        return value

    out = {}
    for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = getattr(image_processor, key, None) or size_value(edge)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    return out


def _fold_image_pads(ids: list[int], pad_id: int) -> list[int]:
    """Each run of ``pad_id`` as one token: the prompt before image-token expansion."""
    return [t for i, t in enumerate(ids) if t != pad_id or i == 0 or ids[i - 1] != pad_id]


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _empty_batch(device: torch.device) -> RolloutBatch:
    """No rows (a rank with no prompts of its own in a lockstep call)."""
    empty = torch.zeros(0, 0, dtype=torch.long, device=device)
    return RolloutBatch(
        input_ids=empty,
        attention_mask=empty.clone(),
        response_mask=torch.zeros(0, 0, device=device),
        sample_logprobs=torch.zeros(0, 0, device=device),
    )


@dataclass
class _Request:
    """One prompt as vLLM gets it, with what the checks before ``generate`` name."""

    request: dict[str, Any]  # vLLM's TokensPrompt
    length: int  # the expanded prompt's tokens (ours; vLLM's must equal them)
    images: int
    label: str  # "prompt 3 (row id 'x') of rank 1"


class VLLMEngine:
    """Rollouts from vLLM's ``LLM`` in this process (see the module docstring).

    ``engine_args``:

    - ``gpu_memory_utilization`` (0 < x <= 1, default 0.5): vLLM's share of the GPU's
      total memory for weights, activations and KV cache, which must be free when it
      starts; the trainer needs the rest;
    - ``tensor_parallel_size`` (>= 1, default 1); under torchrun it must divide the
      number of processes;
    - ``max_model_len`` (required): the longest prompt + completion, or -1 for vLLM's
      fit to the free GPU memory;
    - ``enforce_eager`` (default false): no CUDA graphs (faster start, slower decode);
    - ``sleep_level`` (1 or 2, default 2): what :meth:`sleep` frees (see the module
      docstring);
    - ``max_images_per_prompt`` (>= 1, default 1): vLLM's ``limit_mm_per_prompt``;
    - ``seed`` (default 0): vLLM's seed on rank 0; rank ``r`` gets
      ``seed + r // tensor_parallel_size``;
    - ``extra`` (default ``{}``): more keyword arguments for ``vllm.LLM`` as they are
      (``enable_sleep_mode``, ``enable_prefix_caching``, ``max_num_seqs``,
      ``load_format`` (default ``dummy``), ...), except those set from the arguments
      above or by the engine itself.

    :attr:`lockstep` is true when the engines of several processes form a
    tensor-parallel group: every process must then call :meth:`generate` the same
    number of times (with any number of prompts, none included).
    """

    logprobs = "approximate"
    ARGS: dict[str, Any] = {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": None,  # required: check_args refuses None
        "enforce_eager": False,
        "sleep_level": 2,
        "max_images_per_prompt": 1,
        "seed": 0,
        "extra": {},
    }
    # vllm.LLM arguments the engine sets itself, so extra may not (value: where from)
    MANAGED: dict[str, str] = {
        "model": "the policy's model",
        "dtype": "the policy's compute dtype",
        "logprobs_mode": "the engine (raw_logprobs)",
        "gpu_memory_utilization": "gpu_memory_utilization",
        "tensor_parallel_size": "tensor_parallel_size",
        "max_model_len": "max_model_len",
        "enforce_eager": "enforce_eager",
        "seed": "seed",
        "limit_mm_per_prompt": "max_images_per_prompt",
        "mm_processor_kwargs": "the policy's image processor",
        "skip_tokenizer_init": "the engine",
    }

    def __init__(
        self,
        policy: Policy,
        *,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        sleep_level: int = 2,
        max_images_per_prompt: int = 1,
        seed: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        vllm = _import_vllm()
        _check_max_model_len(max_model_len, KEY)
        self.policy = policy
        self.vllm = vllm
        self.sleep_level = sleep_level
        self.tensor_parallel_size = tensor_parallel_size
        self.max_images_per_prompt = max_images_per_prompt
        self.dtype: torch.dtype = policy.compute_dtype or policy.param_dtype
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"vllm engine: unsupported compute dtype {self.dtype}")
        rank, world = rank_world()
        self.rank = rank
        ours = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "max_images_per_prompt": max_images_per_prompt,
            "seed": seed,
        }
        kwargs = self._llm_kwargs(policy, ours, dict(extra or {}), rank, world)
        backend = kwargs.get("distributed_executor_backend")
        self.lockstep = backend == "external_launcher" and tensor_parallel_size > 1
        self._tp_group = _tp_groups(tensor_parallel_size, rank, world) if self.lockstep else None
        # in-process workers (one GPU, or each rank's own under torchrun) read a lazy stream
        self._stream_sync = backend == "external_launcher" or (
            tensor_parallel_size == 1 and backend in (None, "uni")
        )
        _release_cached_memory()
        _check_free_memory(policy.device, gpu_memory_utilization)
        self.llm = self._build(vllm, kwargs)
        self.llm_kwargs = kwargs
        self.stop_ids = stop_token_ids(policy)
        self.logit_bias = {i: VISION_LOGIT_BIAS for i in vision_token_ids(policy)}
        self._asleep = False
        self._weights_awake = True
        self._weights_whole = False  # vLLM holds every parameter of the trained model
        self._discarded = False  # a level-2 sleep discarded vLLM's weights since
        self._model: Any = policy.model  # the last model synced: wake() re-syncs it
        self._warned_temperature = False
        self.sync_weights(policy.model)

    def _build(self, vllm: Any, kwargs: dict[str, Any]) -> Any:
        """``vllm.LLM(**kwargs)``, the engine core in this process (the weight loader then
        reads our tensors), and the trainer's generators as they were: vLLM seeds every
        process-wide generator at build. vLLM's own states are kept for ``generate``."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        trainer_rng = rng.Snapshot.capture()
        try:
            llm = vllm.LLM(**kwargs)
            self._rng = rng.Snapshot.capture()  # vLLM's own, as its build left them
        finally:
            trainer_rng.restore()
        return llm

    def _llm_kwargs(
        self,
        policy: Policy,
        args: Mapping[str, Any],
        llm_args: dict[str, Any],
        rank: int,
        world: int,
    ) -> dict[str, Any]:
        """``vllm.LLM``'s keyword arguments: those from the engine's ``args``, then
        ``extra``'s (``llm_args``)."""
        self.sleep_mode = bool(llm_args.pop("enable_sleep_mode", True))
        tp = args["tensor_parallel_size"]
        kwargs: dict[str, Any] = {
            "model": getattr(policy.model, "name_or_path", None) or policy.path,
            "dtype": DTYPE_NAMES[self.dtype],
            # ranks of one tensor-parallel group share a seed, the groups differ
            "seed": args["seed"] + (rank // tp if world > 1 else 0),
            "gpu_memory_utilization": args["gpu_memory_utilization"],
            "tensor_parallel_size": tp,
            "max_model_len": args["max_model_len"],
            "enforce_eager": args["enforce_eager"],
            "enable_sleep_mode": self.sleep_mode,
            "logprobs_mode": "raw_logprobs",
            "load_format": DEFAULT_LOAD_FORMAT,
        }
        if policy.is_vision:
            kwargs["limit_mm_per_prompt"] = {"image": args["max_images_per_prompt"], "video": 0}
            pixels = _pixel_limits(policy)
            if pixels:
                kwargs["mm_processor_kwargs"] = pixels
        if world > 1:
            # launched by torchrun / accelerate: vLLM joins the existing process group
            # (each rank drives its own GPU; tensor-parallel groups are formed from ranks)
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(llm_args)
        return kwargs

    @classmethod
    def check_args(cls, args: Mapping[str, Any], key: str) -> dict[str, Any]:
        check_arg_keys(args, cls.ARGS, key)
        out = {**cls.ARGS, **args}
        share = out["gpu_memory_utilization"]
        if not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1):
            raise UserError(
                f"{key}.gpu_memory_utilization: must be a number in (0, 1], got {share!r}"
            )
        for name in ("tensor_parallel_size", "max_images_per_prompt"):
            if not _is_int(out[name], 1):
                raise UserError(f"{key}.{name}: must be an integer >= 1, got {out[name]!r}")
        _check_max_model_len(out["max_model_len"], key)
        if not isinstance(out["enforce_eager"], bool):
            raise UserError(
                f"{key}.enforce_eager: expected true or false, got {out['enforce_eager']!r}"
            )
        if not _is_int(out["sleep_level"], 1) or out["sleep_level"] > 2:
            raise UserError(f"{key}.sleep_level: must be 1 or 2, got {out['sleep_level']!r}")
        if not _is_int(out["seed"], 0):
            raise UserError(f"{key}.seed: must be an integer >= 0, got {out['seed']!r}")
        out["extra"] = cls._check_extra(out["extra"], key)
        return out

    @classmethod
    def _check_extra(cls, extra: Any, key: str) -> dict[str, Any]:
        if extra is None:
            extra = {}
        if not isinstance(extra, Mapping):
            raise UserError(f"{key}.extra: must be a mapping of vllm.LLM arguments, got {extra!r}")
        for name, value in extra.items():
            if not isinstance(name, str):
                raise UserError(f"{key}.extra: argument names must be strings, got {name!r}")
            if name in cls.MANAGED:
                source = cls.MANAGED[name]
                where = f"{key}.{source}" if source in cls.ARGS else source
                raise UserError(f"{key}.extra.{name}: set by the engine from {where}")
            if name == "enable_sleep_mode" and not isinstance(value, bool):
                raise UserError(
                    f"{key}.extra.enable_sleep_mode: expected true or false, got {value!r}"
                )
        return dict(extra)

    @classmethod
    def check_rollout(cls, rollout: Any, key: str) -> None:
        """Cross-check ``engine_args`` with the rest of the recipe's ``rollout`` section:
        a positive ``max_model_len`` must leave room for a prompt after
        ``max_new_tokens``."""
        length = cls.check_args(rollout.engine_args, f"{key}.engine_args")["max_model_len"]
        new = rollout.max_new_tokens
        if length > 0 and length <= new:
            raise UserError(
                f"{key}.engine_args.max_model_len: {length} leaves no room for the prompt; it "
                f"must exceed {key}.max_new_tokens ({new}) by the longest prompt (image "
                "tokens included)"
            )

    # --- generation

    @property
    def max_model_len(self) -> int:
        """The built engine's own ``max_model_len`` (``-1`` resolved by vLLM's fit)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def generate(
        self, prompts: Sequence[Mapping[str, Any]], params: SamplingParams
    ) -> RolloutBatch:
        """``len(prompts) * params.n`` rollouts; row ``p * n + j`` is sample ``j`` of
        prompt ``p``, on the policy's device. Under :attr:`lockstep` every rank of the
        tensor-parallel group must call it, and vLLM generates all their prompts."""
        if self._asleep:
            raise RuntimeError("vllm engine: generate() while asleep; call wake() first")
        self._check_temperature(params)
        policy = self.policy
        prompt = encode_prompts(policy, prompts) if prompts else None
        expected = [
            prompt.input_ids[p][prompt.attention_mask[p].bool()].tolist()
            for p in range(len(prompts))
        ]
        mine = [self._request(p, ids, prompts[p]) for p, ids in enumerate(expected)]
        everyone, offset = self._gather(mine)
        outputs = self._run(everyone, params)[offset : offset + len(prompts)]
        if prompt is None:  # lockstep: this rank took part with nothing of its own
            return _empty_batch(policy.device)
        samples = self._samples(outputs, expected, params)
        prompt = prompt.select([p for p in range(len(prompts)) for _ in range(params.n)])
        return self._assemble(prompt.to(policy.device), samples, policy.device)

    def _run(self, requests: list[_Request], params: SamplingParams) -> list[Any]:
        """vLLM's outputs for ``requests`` (checked first), in their order."""
        if not requests:
            return []
        self._check_requests(requests, params.max_new_tokens)
        with self._vllm_rng():
            outputs = self.llm.generate(
                [r.request for r in requests], self._sampling_params(params), use_tqdm=False
            )
        if len(outputs) != len(requests):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(requests)} prompts")
        return list(outputs)

    def _check_temperature(self, params: SamplingParams) -> None:
        if not params.greedy and params.temperature > MAX_TEMPERATURE:
            raise UserError(
                f"vllm engine: temperature {params.temperature} is above vLLM's limit "
                f"{MAX_TEMPERATURE}"
            )
        if not params.greedy and params.temperature != 1.0 and not self._warned_temperature:
            self._warned_temperature = True
            warnings.warn(
                "vllm engine: sample_logprobs are vLLM's log-probs at temperature 1 (its "
                f"raw_logprobs), not at the sampling temperature {params.temperature}",
                stacklevel=3,
            )

    def _request(self, p: int, ids: list[int], prompt: Mapping[str, Any]) -> _Request:
        label = f"prompt {p}"
        if prompt.get("id") is not None:
            label += f" (row id {prompt['id']!r})"
        if self.lockstep:
            label += f" of rank {self.rank}"
        images = [img.convert("RGB") for img in prompt.get("images") or []]
        if not images:
            return _Request({"prompt_token_ids": ids}, len(ids), 0, label)
        pad_id = getattr(self.policy.processor, "image_token_id", None)
        if pad_id is None:
            pad_id = self.policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        request = {
            "prompt_token_ids": _fold_image_pads(ids, pad_id),
            "multi_modal_data": {"image": images},
        }
        return _Request(request, len(ids), len(images), label)

    def _gather(self, mine: list[_Request]) -> tuple[list[_Request], int]:
        """Every request of this tensor-parallel group, in rank order, and where this
        rank's start (the engines of a group must all run the same requests)."""
        if self._tp_group is None:
            return mine, 0
        dist = torch.distributed
        shares: list[Any] = [None] * self.tensor_parallel_size
        dist.all_gather_object(shares, mine, group=self._tp_group)
        offset = sum(len(share) for share in shares[: dist.get_rank(self._tp_group)])
        return [r for share in shares for r in share], offset

    def _check_requests(self, requests: Sequence[_Request], max_new_tokens: int) -> None:
        """What vLLM would refuse or silently cut, as a ``UserError`` naming the prompt."""
        limit = self.max_model_len
        for r in requests:
            if r.images > self.max_images_per_prompt:
                raise UserError(
                    f"vllm engine: {r.label} has {r.images} images; {KEY}."
                    f"max_images_per_prompt is {self.max_images_per_prompt}"
                )
            if r.length + max_new_tokens > limit:
                raise UserError(
                    f"vllm engine: {r.label} has {r.length} tokens (image tokens included) "
                    f"and asks for {max_new_tokens} new ones: {r.length + max_new_tokens} > "
                    f"vLLM's max_model_len {limit} (vLLM would refuse it or cut its "
                    f"completion); raise {KEY}.max_model_len, or lower rollout.max_new_tokens "
                    "(eval.max_new_tokens in eval) or data.max_pixels"
                )

    @contextlib.contextmanager
    def _vllm_rng(self) -> Iterator[None]:
        """vLLM's generator states in (its samples depend only on its seed), the
        trainer's back out after."""
        trainer = rng.Snapshot.capture()
        self._rng.restore()
        try:
            yield
        finally:
            self._rng = rng.Snapshot.capture()
            trainer.restore()

    def _sampling_params(self, params: SamplingParams) -> Any:
        greedy = params.greedy
        return self.vllm.SamplingParams(
            n=1 if greedy else params.n,
            temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p,
            top_k=0 if greedy else params.top_k,
            max_tokens=params.max_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=list(self.stop_ids),
            logit_bias=dict(self.logit_bias) or None,
            detokenize=False,  # completions are decoded by our tokenizer
        )

    def _samples(
        self, outputs: Sequence[Any], expected: list[list[int]], params: SamplingParams
    ) -> list[tuple[list[int], list[float]]]:
        samples: list[tuple[list[int], list[float]]] = []
        wanted = 1 if params.greedy else params.n
        for p, out in enumerate(outputs):
            self._check_prompt(p, expected[p], out.prompt_token_ids)
            completions = sorted(out.outputs, key=lambda c: c.index)
            if len(completions) != wanted:
                raise RuntimeError(
                    f"vllm returned {len(completions)} completions for prompt {p}, "
                    f"expected {wanted}"
                )
            for c in completions * (params.n if params.greedy else 1):
                samples.append(self._sample(p, c))
        return samples

    @staticmethod
    def _check_prompt(p: int, ours: list[int], theirs: Sequence[int] | None) -> None:
        theirs = list(theirs or [])
        if theirs != ours:
            at = _first_difference(ours, theirs)
            raise RuntimeError(
                f"vllm engine: prompt {p} differs from the trainer's encoding at token {at} "
                f"({len(theirs)} tokens from vLLM, {len(ours)} ours: vLLM's "
                f"{theirs[at : at + 5]} vs ours {ours[at : at + 5]}); vLLM must see the same "
                "prompt and image size (check the image processor's min/max pixels)"
            )

    @staticmethod
    def _sample(p: int, completion: Any) -> tuple[list[int], list[float]]:
        ids = [int(t) for t in completion.token_ids]
        entries = completion.logprobs
        if entries is None or len(entries) != len(ids):
            raise RuntimeError(
                f"vllm engine: prompt {p}: vLLM returned "
                f"{'no' if entries is None else len(entries)} log-probs for {len(ids)} tokens"
            )
        logprobs = []
        for t, (token, entry) in enumerate(zip(ids, entries, strict=True)):
            if entry is None or token not in entry:
                raise RuntimeError(
                    f"vllm engine: prompt {p}: no log-prob for sampled token {token} at {t}"
                )
            logprobs.append(float(entry[token].logprob))
        return ids, logprobs

    def _assemble(
        self,
        prompt: RolloutBatch,
        samples: list[tuple[list[int], list[float]]],
        device: torch.device,
    ) -> RolloutBatch:
        tok = self.policy.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        B, T = len(samples), max((len(ids) for ids, _ in samples), default=0)
        completion = torch.full((B, T), pad_id, dtype=torch.long)
        logprobs = torch.zeros(B, T)
        generated = torch.zeros(B, T)
        for r, (ids, lps) in enumerate(samples):
            completion[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[r, : len(lps)] = torch.tensor(lps)
            generated[r, : len(ids)] = 1.0
        mask = response_mask_from(completion, self.stop_ids) * generated
        completion = completion.masked_fill(mask == 0, pad_id)
        return join(
            prompt,
            completion.to(device),
            mask.to(device),
            tok.batch_decode(completion, skip_special_tokens=True),
            (logprobs * mask).to(device),
        )

    # --- weights and memory

    def sync_weights(self, model: Any) -> None:
        """Load ``model``'s current parameters into vLLM, one tensor at a time (see the
        module docstring): all of them when vLLM does not hold them all yet (the first
        sync, and after a level-2 sleep), else those that train. Every rank calls it when
        the model is sharded."""
        self._model = model
        if self._asleep and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        whole = not self._weights_whole
        loaded = self._send(
            stream_weights(
                model,
                self.dtype,
                "cpu" if not self._stream_sync else None,
                gather_device=self.policy.device,
                trainable_only=not whole,
            )
        )
        if whole:
            self._check_all_loaded(loaded)
            self._weights_whole, self._discarded = True, False
        if not self._asleep:
            # cached prompt KV and vision-encoder outputs were computed with the old weights
            # (sleep clears both, so a sync while asleep needs nothing more)
            self.llm.reset_prefix_cache()
            self.llm.llm_engine.reset_encoder_cache()

    def _send(self, weights: Iterator[tuple[str, Tensor]]) -> set[str]:
        """Into every worker's model; the vLLM names loaded."""
        if self._stream_sync:  # the worker is in this process: stream
            batches: Iterable[Any] = [weights]
        else:  # worker processes: CPU chunks, each pickled to every worker
            batches = _chunks(weights, SYNC_CHUNK_BYTES)
        loaded: set[str] = set()
        for batch in batches:
            for names in self.llm.collective_rpc(_load_weights_on_worker, args=(batch,)):
                loaded |= names
        return loaded

    def _check_all_loaded(self, loaded: set[str]) -> None:
        """Every parameter vLLM's model has came from the trained model: a
        ``RuntimeError`` naming those that did not where they hold garbage (the dummy
        loader's random values, or discarded by a level-2 sleep), a warning where they
        keep the checkpoint's values (``load_format`` ``auto``)."""
        names: set[str] = set()
        for worker_names in self.llm.collective_rpc(_param_names_on_worker):
            names |= worker_names
        missing = sorted(names - loaded)
        if not missing:
            return
        load_format = self.llm_kwargs.get("load_format", "auto")
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        message = (
            f"vllm engine: the weight sync loaded {len(names) - len(missing)} of vLLM's "
            f"{len(names)} parameters; never loaded"
        )
        if self._discarded:
            raise RuntimeError(f"{message} (discarded by sleep level 2): {shown}")
        if load_format == "dummy":
            raise RuntimeError(f"{message} (still the dummy loader's random values): {shown}")
        warnings.warn(
            f"{message} (they keep the {load_format!r} checkpoint's values): {shown}",
            stacklevel=3,
        )

    def sleep(self) -> None:
        """Free vLLM's GPU memory (``llm.sleep(level=sleep_level)``); a no-op without
        sleep mode or when already asleep."""
        if not self.sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = True
        self._weights_awake = False
        if self.sleep_level == 2:  # the weights are discarded
            self._weights_whole, self._discarded = False, True

    def wake(self) -> None:
        """Take the memory back (``llm.wake_up``); a no-op when awake. After a level-2
        sleep with no sync since, the weights are gone: the last model synced is synced
        again first (under FSDP a collective: every rank wakes at the same points)."""
        if not self._asleep:
            return
        _release_cached_memory()  # before vLLM takes its weights and KV cache back
        if not self._weights_whole:
            self.sync_weights(self._model)
        self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
        self._asleep = False
        self._weights_awake = True
