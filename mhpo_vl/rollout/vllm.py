"""The vLLM rollout engine: vLLM's offline ``LLM`` colocated with the trainer.

Written and checked against ``VLLM_VERSION`` (below); another installed version gets a
warning at construction, since the calls here follow that version's source. ``vllm``
is imported only when the engine is built, so this module imports anywhere.

What it does, and why:

- **Same inputs as the trainer.** Prompts are encoded by our own
  :func:`~mhpo_vl.rollout.encode.encode_prompts` (so the batch's prompt tensors and
  ``pixel_values`` are the HF processor's) and vLLM gets that token sequence, with each
  image's run of ``<|image_pad|>`` tokens folded back to the single placeholder vLLM's
  multimodal processor expands itself, plus the same PIL images. vLLM's image
  processor is pinned to ours (``min_pixels`` / ``max_pixels``), and the expanded
  prompt vLLM reports must equal ours token for token, else a ``RuntimeError`` names the
  prompt: a silent mismatch would train on rollouts of a different prompt.
- **Same sampling as the hf engine.** ``temperature``, ``top_p``, ``top_k`` (0 is off
  in both), the stop ids of :func:`~mhpo_vl.rollout.hf.stop_token_ids`, and the vision
  special tokens kept out of completions with a ``-100`` logit bias (vLLM's bound).
  Greedy (``temperature <= 0``) sends each prompt once (vLLM refuses ``n > 1`` without
  sampling) and repeats its completion ``n`` times.
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
  streamed one tensor at a time into vLLM's ``model.load_weights``, which takes
  Hugging Face checkpoint names as they are for Qwen2/2.5/3-VL and Qwen2/3 (each
  model's ``hf_to_vllm_mapper`` or loader maps them). Sharded parameters (DTensor) are
  gathered with ``full_tensor()`` first (a collective: every rank calls
  ``sync_weights``), each is cast to the engine's dtype, and no full copy of the state
  dict is ever built. The constructor syncs once, so vLLM starts from the policy's
  weights rather than the checkpoint's.
- **Memory** (:meth:`sleep` / :meth:`wake`): vLLM's sleep mode (on unless
  ``extra: {enable_sleep_mode: false}``). Level 1 offloads the weights to CPU and drops
  the KV cache; level 2 drops both, so :meth:`sync_weights` must run before the next
  :meth:`wake`. A sync while asleep wakes the weights alone
  (``wake_up(tags=["weights"])``) and :meth:`wake` then brings back the KV cache, the
  order vLLM documents for updating weights in sleep mode.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set at
construction): with ``tensor_parallel_size`` 1 the weight loader then runs right here
and reads the trainer's tensors directly. With more, vLLM's worker processes get the
weights in CPU chunks of about ``SYNC_CHUNK_BYTES``.

vLLM source read for these calls (paths in vLLM's repository at ``v{VLLM_VERSION}``):
``vllm/entrypoints/llm.py`` (``LLM.__init__``, ``generate``, ``sleep``, ``wake_up``,
``collective_rpc``, ``reset_prefix_cache``), ``vllm/engine/arg_utils.py``
(``max_model_len``, ``enable_sleep_mode``, ``limit_mm_per_prompt``, ``logprobs_mode``),
``vllm/config/model.py`` (log-prob modes), ``vllm/v1/sample/sampler.py`` and
``vllm/v1/sample/ops/topk_topp_sampler.py`` (where each mode is taken),
``vllm/sampling_params.py`` (fields, ``top_k`` 0 = off, greedy needs ``n == 1``,
``temperature <= 2``), ``vllm/inputs/llm.py`` (``TokensPrompt``), ``vllm/outputs.py`` and
``vllm/logprobs.py`` (``RequestOutput``, ``CompletionOutput``, ``Logprob``),
``vllm/multimodal/processing/processor.py`` (placeholder expansion),
``vllm/model_executor/models/{qwen2,qwen3,qwen2_vl,qwen2_5_vl,qwen3_vl}.py``
(``load_weights`` and name mappers), ``vllm/model_executor/models/utils.py``
(``AutoWeightsLoader``: an unknown name is a ``ValueError``),
``vllm/v1/engine/llm_engine.py`` and ``vllm/v1/engine/core.py`` (sleep clears the
prefix and encoder caches; ``reset_encoder_cache``), ``vllm/v1/worker/gpu_worker.py``
and ``vllm/v1/worker/worker_base.py`` (``sleep`` / ``wake_up`` tags, ``get_model``),
``vllm/v1/executor/uniproc_executor.py``, ``vllm/v1/serial_utils.py`` (``run_method``:
a callable gets the worker) and ``vllm/envs.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mhpo_vl.batch import RolloutBatch, SamplingParams, join
from mhpo_vl.errors import UserError
from mhpo_vl.models.policy import DTYPES
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
VISION_LOGIT_BIAS = -100.0  # vLLM clamps logit biases to [-100, 100]
MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams refuses more
SYNC_CHUNK_BYTES = 512 << 20  # tensor-parallel sync: bytes per RPC to the worker processes
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# wrappers a trained model may sit in; their name parts are not in the checkpoint's names
_WRAPPER_PARTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")


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


def hf_param_name(name: str) -> str:
    """``name`` as it is in the Hugging Face checkpoint: without DDP's leading
    ``module.`` and the parts FSDP, activation checkpointing or ``torch.compile`` add."""
    if name.startswith("module."):
        name = name[len("module.") :]
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def stream_weights(
    model: torch.nn.Module, dtype: torch.dtype, device: torch.device | str | None = None
) -> Iterator[tuple[str, Tensor]]:
    """``(checkpoint name, tensor)`` for each parameter, one at a time: gathered when
    sharded (``full_tensor()``), detached, cast to ``dtype`` (and moved to ``device``)."""
    for name, param in model.named_parameters():
        tensor = param.detach()
        full_tensor = getattr(tensor, "full_tensor", None)
        if callable(full_tensor):
            tensor = full_tensor()
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


def _load_weights_on_worker(worker: Any, weights: Iterable[tuple[str, Tensor]]) -> int:
    """Run by vLLM on each worker (``collective_rpc`` passes the worker first): load
    ``weights`` into its model; vLLM's loader raises on a name it does not know."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        loaded = worker.get_model().load_weights(weights)
    return len(loaded) if loaded is not None else 0


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


class VLLMEngine:
    """Rollouts from vLLM's ``LLM`` in this process (see the module docstring).

    ``engine_args``:

    - ``gpu_memory_utilization`` (0 < x <= 1, default 0.5): vLLM's share of the GPU for
      weights, activations and KV cache; the trainer needs the rest;
    - ``tensor_parallel_size`` (>= 1, default 1);
    - ``max_model_len`` (None: the model's own): the longest prompt + completion;
    - ``enforce_eager`` (default false): no CUDA graphs (faster start, slower decode);
    - ``sleep_level`` (1 or 2, default 1): what :meth:`sleep` frees (see the module
      docstring);
    - ``max_images_per_prompt`` (>= 1, default 1): vLLM's ``limit_mm_per_prompt``;
    - ``seed`` (default 0): vLLM's sampling seed;
    - ``extra`` (default ``{}``): more keyword arguments for ``vllm.LLM`` as they are
      (``enable_sleep_mode``, ``enable_prefix_caching``, ``max_num_seqs``,
      ``trust_remote_code``, ...), except those set from the arguments above or by the
      engine itself.
    """

    logprobs = "approximate"
    ARGS: dict[str, Any] = {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": None,
        "enforce_eager": False,
        "sleep_level": 1,
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
        sleep_level: int = 1,
        max_images_per_prompt: int = 1,
        seed: int = 0,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        vllm = _import_vllm()
        self.policy = policy
        self.vllm = vllm
        self.sleep_level = sleep_level
        self.tensor_parallel_size = tensor_parallel_size
        self.max_images_per_prompt = max_images_per_prompt
        llm_args = dict(extra or {})
        self.sleep_mode = bool(llm_args.pop("enable_sleep_mode", True))
        self.dtype: torch.dtype = policy.compute_dtype or policy.param_dtype
        if self.dtype not in DTYPE_NAMES:
            raise UserError(f"vllm engine: unsupported compute dtype {self.dtype}")
        kwargs: dict[str, Any] = {
            "model": getattr(policy.model, "name_or_path", None) or policy.path,
            "dtype": DTYPE_NAMES[self.dtype],
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": enforce_eager,
            "enable_sleep_mode": self.sleep_mode,
            "logprobs_mode": "raw_logprobs",
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if policy.is_vision:
            kwargs["limit_mm_per_prompt"] = {"image": max_images_per_prompt, "video": 0}
            pixels = _pixel_limits(policy)
            if pixels:
                kwargs["mm_processor_kwargs"] = pixels
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # launched by torchrun / accelerate: vLLM joins the existing process group
            # (each rank drives its own GPU; tensor-parallel groups are formed from ranks)
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(llm_args)
        # in-process workers (vLLM's "uni" executor for one GPU) can read a lazy stream
        self._stream_sync = tensor_parallel_size == 1 and llm_args.get(
            "distributed_executor_backend"
        ) in (None, "uni", "external_launcher")
        # the engine core in this process: the weight loader then reads our tensors
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.llm = vllm.LLM(**kwargs)
        self.llm_kwargs = kwargs
        self.stop_ids = stop_token_ids(policy)
        self.logit_bias = {i: VISION_LOGIT_BIAS for i in vision_token_ids(policy)}
        self._asleep = False
        self._weights_awake = True
        self._synced_since_sleep = True
        self._warned_temperature = False
        self.sync_weights(policy.model)

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
        length = out["max_model_len"]
        if length is not None and not _is_int(length, 1):
            raise UserError(f"{key}.max_model_len: must be None or an integer >= 1, got {length!r}")
        if not isinstance(out["enforce_eager"], bool):
            raise UserError(
                f"{key}.enforce_eager: expected true or false, got {out['enforce_eager']!r}"
            )
        if not _is_int(out["sleep_level"], 1) or out["sleep_level"] > 2:
            raise UserError(f"{key}.sleep_level: must be 1 or 2, got {out['sleep_level']!r}")
        if not _is_int(out["seed"], 0):
            raise UserError(f"{key}.seed: must be an integer >= 0, got {out['seed']!r}")
        extra = out["extra"]
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
        out["extra"] = dict(extra)
        return out

    # --- generation

    def generate(
        self, prompts: Sequence[Mapping[str, Any]], params: SamplingParams
    ) -> RolloutBatch:
        """``len(prompts) * params.n`` rollouts; row ``p * n + j`` is sample ``j`` of
        prompt ``p``, on the policy model's device."""
        if self._asleep:
            raise RuntimeError("vllm engine: generate() while asleep; call wake() first")
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
                stacklevel=2,
            )
        policy = self.policy
        device = next(policy.model.parameters()).device
        prompt = encode_prompts(policy, prompts)
        expected = [
            prompt.input_ids[p][prompt.attention_mask[p].bool()].tolist()
            for p in range(len(prompts))
        ]
        requests = [self._request(p, ids, prompts[p]) for p, ids in enumerate(expected)]
        outputs = self.llm.generate(requests, self._sampling_params(params), use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts")
        samples: list[tuple[list[int], list[float]]] = []
        for p, out in enumerate(outputs):
            self._check_prompt(p, expected[p], out.prompt_token_ids)
            completions = sorted(out.outputs, key=lambda c: c.index)
            wanted = 1 if params.greedy else params.n
            if len(completions) != wanted:
                raise RuntimeError(
                    f"vllm returned {len(completions)} completions for prompt {p}, "
                    f"expected {wanted}"
                )
            for c in completions * (params.n if params.greedy else 1):
                samples.append(self._sample(p, c))
        prompt = prompt.select([p for p in range(len(prompts)) for _ in range(params.n)])
        return self._assemble(prompt.to(device), samples, device)

    def _request(self, p: int, ids: list[int], prompt: Mapping[str, Any]) -> dict[str, Any]:
        images = [img.convert("RGB") for img in prompt.get("images") or []]
        if not images:
            return {"prompt_token_ids": ids}
        if len(images) > self.max_images_per_prompt:
            raise UserError(
                f"prompt {p} has {len(images)} images; rollout.engine_args."
                f"max_images_per_prompt is {self.max_images_per_prompt}"
            )
        pad_id = getattr(self.policy.processor, "image_token_id", None)
        if pad_id is None:
            pad_id = self.policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        return {
            "prompt_token_ids": _fold_image_pads(ids, pad_id),
            "multi_modal_data": {"image": images},
        }

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
        module docstring). Every rank calls it when the model is sharded."""
        if self._asleep and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        if self._stream_sync:  # the worker is in this process: stream
            self.llm.collective_rpc(
                _load_weights_on_worker, args=(stream_weights(model, self.dtype),)
            )
        else:  # worker processes: CPU chunks, each pickled to every worker
            weights = stream_weights(model, self.dtype, device="cpu")
            for chunk in _chunks(weights, SYNC_CHUNK_BYTES):
                self.llm.collective_rpc(_load_weights_on_worker, args=(chunk,))
        if not self._asleep:
            # cached prompt KV and vision-encoder outputs were computed with the old weights
            # (sleep clears both, so a sync while asleep needs nothing more)
            self.llm.reset_prefix_cache()
            self.llm.llm_engine.reset_encoder_cache()
        self._synced_since_sleep = True

    def sleep(self) -> None:
        """Free vLLM's GPU memory (``llm.sleep(level=sleep_level)``); a no-op without
        sleep mode or when already asleep."""
        if not self.sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = True
        self._weights_awake = False
        self._synced_since_sleep = False

    def wake(self) -> None:
        """Take the memory back (``llm.wake_up``); a no-op when awake. After a level-2
        sleep the weights are gone: :meth:`sync_weights` must come first."""
        if not self._asleep:
            return
        if self.sleep_level == 2 and not self._synced_since_sleep:
            raise RuntimeError(
                "vllm engine: sleep_level 2 discarded vLLM's weights; call "
                "sync_weights(model) before wake()"
            )
        self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
        self._asleep = False
        self._weights_awake = True
