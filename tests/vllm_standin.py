"""An in-process stand-in for the part of vLLM's offline API the ``vllm`` rollout engine
calls, built on transformers on CPU, so the engine's contract is tested without vLLM.

It keeps vLLM's names, keyword names, argument and return shapes and its checks that
matter to the adapter, and nothing more:

- ``LLM(model, *, ...)`` takes only keyword names vLLM's ``LLM`` / ``EngineArgs`` have
  (a typo is a ``TypeError``, as it is in vLLM), loads the Hugging Face model and its
  processor from ``model``, records every argument (``init_kwargs``) and the
  ``VLLM_ENABLE_V1_MULTIPROCESSING`` it saw;
- ``LLM.generate(prompts, sampling_params, *, use_tqdm, ...)`` takes ``TokensPrompt``
  dicts (``prompt_token_ids`` and optional ``multi_modal_data={"image": [...]}``),
  expands each ``<|image_pad|>`` placeholder into the image's tokens as vLLM's
  multimodal processor does (the first unexpanded placeholder per image; extra pad
  tokens stay, as they would), enforces ``limit_mm_per_prompt`` and ``max_model_len``,
  samples with vLLM's order (raw log-probs taken first, then logit bias, temperature,
  top-k, top-p), stops on EOS / ``stop_token_ids`` (stop token kept) and returns
  ``RequestOutput`` objects with ``outputs[j].token_ids`` and
  ``outputs[j].logprobs[t] = {token_id: Logprob(...)}`` per ``logprobs_mode``;
- ``SamplingParams`` takes only real field names and validates like vLLM (greedy needs
  ``n == 1``, ``temperature`` in [0, 2], ``top_k`` 0 or -1 is off, ...);
- ``sleep(level)`` / ``wake_up(tags)`` track what is asleep: ``generate`` fails while
  anything is, loading weights fails while the weights are, and a level-2 sleep
  really discards the weights (NaN) until they are loaded again;
- ``collective_rpc(method, timeout, args, kwargs)`` runs a callable with the worker
  first (``worker.get_model().load_weights(weights)`` stores each tensor into the
  model by its checkpoint name, and fails loudly on an unknown name or shape, or
  outside ``vllm.config.set_current_vllm_config``); ``reset_prefix_cache`` and
  ``llm_engine.reset_encoder_cache`` count their calls.

Install it with :func:`install` (``sys.modules["vllm"]`` and ``["vllm.config"]``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mhpo_vl.rollout.vllm import VLLM_VERSION

__version__ = VLLM_VERSION

LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")
DTYPES = {
    "auto": torch.float32,
    "float": torch.float32,
    "float32": torch.float32,
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# EngineArgs fields (vllm/engine/arg_utils.py) the stand-in accepts through **kwargs
ENGINE_ARGS = {
    "max_model_len": None,
    "enable_sleep_mode": False,
    "limit_mm_per_prompt": None,
    "logprobs_mode": "raw_logprobs",
    "max_logprobs": 20,
    "enable_prefix_caching": None,
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "disable_log_stats": True,
    "distributed_executor_backend": None,
    "load_format": "auto",
}
PROMPT_KEYS = {
    "prompt",
    "prompt_token_ids",
    "multi_modal_data",
    "mm_processor_kwargs",
    "cache_salt",
}
SLEEP_TAGS = ("weights", "kv_cache", "scheduling")
_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2


class VLLMValidationError(ValueError):
    """vLLM's error for bad sampling parameters or prompts (a ``ValueError``)."""


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


class RequestOutput:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        prompt_logprobs: Any,
        outputs: list[CompletionOutput],
        finished: bool,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished


class SamplingParams:
    """The fields of vLLM's ``SamplingParams`` this stand-in implements."""

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


# --- the model side: worker, model view, sampler


class _Model:
    """What ``worker.get_model()`` returns: ``load_weights`` by checkpoint name."""

    def __init__(self, llm: LLM) -> None:
        self._llm = llm

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        llm = self._llm
        if not _current_config or _current_config[-1] is not llm.vllm_config:
            raise AssertionError("Current vLLM config is not set")
        if "weights" in llm.asleep:
            raise RuntimeError("load_weights while the weights are asleep (unmapped memory)")
        llm.weight_calls.append(type(weights).__name__)
        params = dict(llm.model.named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise ValueError(f"There is no module or parameter named {name!r}")
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ValueError(
                        f"{name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}"
                    )
                llm.weight_log.append((name, tensor.dtype, tensor.device.type))
                params[name].copy_(tensor)
                loaded.add(name)
        return loaded


class _Worker:
    def __init__(self, llm: LLM) -> None:
        self.vllm_config = llm.vllm_config
        self._model = _Model(llm)

    def get_model(self) -> _Model:
        return self._model


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


class _Engine:
    """``LLM.llm_engine``: the one method the adapter calls on it."""

    def __init__(self) -> None:
        self.encoder_cache_resets = 0

    def reset_encoder_cache(self) -> None:
        self.encoder_cache_resets += 1


# --- LLM


class LLM:
    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.92,
        enforce_eager: bool = False,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(ENGINE_ARGS))
        if unknown:
            raise TypeError(
                f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}"
            )
        from mhpo_vl.models import load_policy

        self.init_kwargs = {
            "model": model,
            "tokenizer": tokenizer,
            "skip_tokenizer_init": skip_tokenizer_init,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enforce_eager": enforce_eager,
            "mm_processor_kwargs": mm_processor_kwargs,
            **{**ENGINE_ARGS, **kwargs},
        }
        self.engine_args = {**ENGINE_ARGS, **kwargs}
        self.multiprocessing_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if tensor_parallel_size != 1:
            raise NotImplementedError("the stand-in runs one worker")
        if self.engine_args["logprobs_mode"] not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}")
        dtype_name = {v: k for k, v in DTYPES.items() if k in ("float32", "float16", "bfloat16")}
        policy = load_policy(model, dtype=dtype_name[DTYPES[dtype]])
        self.model, self.processor, self.is_vision = (
            policy.model,
            policy.processor,
            policy.is_vision,
        )
        self.model.eval()
        self.tokenizer = policy.tokenizer
        self.seed = seed
        self.mm_processor_kwargs = dict(mm_processor_kwargs or {})
        self.vllm_config = object()
        self.llm_engine = _Engine()
        self.worker = _Worker(self)
        self.asleep: set[str] = set()
        self.sleep_calls: list[int] = []
        self.wake_calls: list[list[str] | None] = []
        self.prefix_cache_resets = 0
        self.weight_log: list[tuple[str, torch.dtype, str]] = []  # (name, dtype, device)
        self.weight_calls: list[str] = []  # the type of each load_weights argument
        self.requests: list[dict[str, Any]] = []
        self.rpc_calls = 0
        self._generate_calls = 0

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
        if level == 2:  # weights discarded: garbage until loaded again
            with torch.no_grad():
                for p in self.model.parameters():
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
        self._generate_calls += 1
        outputs = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + self._generate_calls)
            for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
                outputs.append(self._run(str(i), prompt, sp))
        return outputs

    def _inputs(self, prompt: Mapping[str, Any]) -> tuple[list[int], dict[str, Any], list[Any]]:
        unknown = set(prompt) - PROMPT_KEYS
        if unknown:
            raise TypeError(f"unknown prompt keys {sorted(unknown)}")
        if "prompt_token_ids" not in prompt:
            raise NotImplementedError("the stand-in takes token prompts only")
        ids = [int(t) for t in prompt["prompt_token_ids"]]
        vocab = self.model.get_input_embeddings().weight.shape[0]
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
        image_processor = self.processor.image_processor
        kwargs = {}
        pixels = {**self.mm_processor_kwargs, **(prompt.get("mm_processor_kwargs") or {})}
        if pixels:
            size = image_processor.size
            kwargs["size"] = {
                "shortest_edge": pixels.get("min_pixels", size.shortest_edge),
                "longest_edge": pixels.get("max_pixels", size.longest_edge),
            }
        enc = image_processor(images=images, return_tensors="pt", **kwargs)
        merge = image_processor.merge_size**2
        pad_id = self.processor.image_token_id
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
            "mm_token_type_ids": torch.tensor(self.processor.create_mm_token_type_ids([expanded])),
        }
        return expanded, extra, images

    def _run(self, request_id: str, prompt: Mapping[str, Any], sp: SamplingParams) -> RequestOutput:
        ids, extra, images = self._inputs(prompt)
        max_len = self.engine_args["max_model_len"]
        max_tokens = sp.max_tokens or 16
        if max_len is not None and len(ids) + max_tokens > max_len:
            raise VLLMValidationError(f"prompt ({len(ids)}) + max_tokens > max_model_len {max_len}")
        self.requests.append(
            {"prompt": prompt, "prompt_token_ids": ids, "images": images, "params": sp}
        )
        tok = self.tokenizer
        stops = set(sp.stop_token_ids)
        eos = tok.eos_token_id
        if not sp.ignore_eos:
            stops.add(eos)
            gen_eos = self.model.generation_config.eos_token_id
            stops.update(
                gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
            )
        n = sp.n
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([ids] * n),
            "attention_mask": torch.ones(n, len(ids), dtype=torch.long),
        }
        if extra:
            inputs["pixel_values"] = extra["pixel_values"].repeat(n, 1)
            inputs["image_grid_thw"] = extra["image_grid_thw"].repeat(n, 1)
            inputs["mm_token_type_ids"] = extra["mm_token_type_ids"].repeat(n, 1)
        sampler = _Sampler(sp, self.engine_args["logprobs_mode"])
        knobs = {} if sp._greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        gen_config = GenerationConfig(
            do_sample=not sp._greedy,
            **knobs,
            max_new_tokens=max_tokens,
            eos_token_id=sorted(stops),
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
        )
        saved, self.model.generation_config = self.model.generation_config, gen_config
        try:
            with torch.no_grad():
                out = self.model.generate(
                    **inputs,
                    generation_config=gen_config,
                    logits_processor=LogitsProcessorList([sampler]),
                )
        finally:
            self.model.generation_config = saved
        completions = []
        for j in range(n):
            row = out[j, len(ids) :].tolist()
            length = next((t + 1 for t, x in enumerate(row) if x in stops), len(row))
            row = row[:length]
            logprobs = None
            if sp.logprobs is not None:
                logprobs = []
                for t, token in enumerate(row):
                    dist = sampler.steps[t][j]
                    entry = {
                        token: Logprob(float(dist[token]), int((dist > dist[token]).sum()) + 1)
                    }
                    if sp.logprobs > 0:
                        top = torch.topk(dist, sp.logprobs)
                        for rank, (v, k) in enumerate(
                            zip(top.values, top.indices, strict=True), start=1
                        ):
                            entry.setdefault(int(k), Logprob(float(v), rank))
                    logprobs.append(entry)
            stopped = bool(row) and row[-1] in stops
            completions.append(
                CompletionOutput(
                    index=j,
                    text=tok.decode(row, skip_special_tokens=sp.skip_special_tokens)
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
            )
        return RequestOutput(
            request_id=request_id,
            prompt=prompt.get("prompt"),
            prompt_token_ids=ids,
            prompt_logprobs=None,
            outputs=completions,
            finished=True,
        )


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
