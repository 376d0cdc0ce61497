"""The reference rollout engine: transformers' ``generate`` with a KV cache, on any device.

Sampling is done by one logits processor of ours rather than by ``generate``'s own
knobs, for two reasons: a checkpoint's ``generation_config.json`` (Qwen-Instruct ships
``top_k=1``, ``repetition_penalty=1.05``) must not leak into RL sampling, and the
log-prob of each sampled token under the *untruncated* policy at the sampling
temperature must be recorded on the way (``RolloutBatch.sample_logprobs``), which is
what a re-forward with :func:`mhpo_vl.models.token_logprobs` gives.

The ``n`` samples of a prompt share it, image included, so by default each prompt is
prefilled once: one forward over the prompts (all but their last token) fills a KV
cache, the cache's rows are repeated ``n`` times, and ``generate`` continues from it
(see :class:`HFEngine`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
)
from transformers.cache_utils import Cache
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from mhpo_vl.batch import PER_TOKEN_KEYS, RolloutBatch, SamplingParams, join
from mhpo_vl.errors import UserError
from mhpo_vl.models.logprobs import positions_from_mask
from mhpo_vl.parallel.fsdp import gathered
from mhpo_vl.qwen import VISION_TOKENS
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.rollout.engine import check_arg_keys

if TYPE_CHECKING:
    from mhpo_vl.models import Policy


class SamplingProcessor(LogitsProcessor):
    """Records ``log softmax(logits / tau)`` of each chosen token, then suppresses the
    vision special tokens and applies temperature, top-k and top-p for sampling."""

    def __init__(self, params: SamplingParams, suppress_ids: Sequence[int]) -> None:
        self.tau = 1.0 if params.greedy else params.temperature
        self.greedy = params.greedy
        self.suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long)
        self.warpers = []
        if params.top_k > 0:
            self.warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(params.top_p))
        self._last: Tensor | None = None  # [b, V] log-probs of the previous step
        self.logprobs: list[Tensor] = []  # one [b] per generated token

    def record(self, chosen: Tensor) -> None:
        """Gather the previous step's log-prob of the token that was then chosen."""
        if self._last is not None:
            self.logprobs.append(self._last.gather(-1, chosen[:, None]).squeeze(-1))
            self._last = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self.record(input_ids[:, -1])
        x = scores.float() / self.tau
        self._last = torch.log_softmax(x, dim=-1)
        if len(self.suppress):
            x = x.index_fill(-1, self.suppress.to(x.device), float("-inf"))
        if not self.greedy:
            for warp in self.warpers:
                x = warp(input_ids, x)
        return x


def stop_token_ids(policy: Policy) -> list[int]:
    """Ids that end a completion: ``<|im_end|>``, the tokenizer's EOS, the model's EOS."""
    tok = policy.tokenizer
    ids = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    model_eos = getattr(policy.model.generation_config, "eos_token_id", None)
    ids.update(model_eos if isinstance(model_eos, list) else [model_eos])
    return sorted(i for i in ids if isinstance(i, int) and i != tok.unk_token_id)


def vision_token_ids(policy: Policy) -> list[int]:
    tok = policy.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [i for i in ids if isinstance(i, int) and i != tok.unk_token_id]


def response_mask_from(completion_ids: Tensor, stop_ids: Sequence[int]) -> Tensor:
    """[B, T] 1.0 up to and including the first stop token, 0.0 after it."""
    is_stop = torch.isin(completion_ids, torch.tensor(list(stop_ids), device=completion_ids.device))
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (stops_before == 0).float()


def _pad_right(tensors: Sequence[Tensor], value: float) -> Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat(
        [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors]
    )


def _cache_kwarg(model: Any) -> str:
    """The name the model's forward takes its KV cache by: ``cache`` (transformers 5.x,
    which deprecates ``past_key_values``) or ``past_key_values`` (earlier releases)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _rope_model(model: Any) -> Any | None:
    """The inner module of a Qwen-VL model that computes and keeps the multimodal RoPE
    state (``get_rope_index``, ``rope_deltas``); None for a text model."""
    inner = getattr(model, "model", None)
    if hasattr(inner, "get_rope_index") and hasattr(inner, "rope_deltas"):
        return inner
    return None


def prompt_positions(model: Any, prompt: RolloutBatch) -> tuple[Tensor, Tensor | None]:
    """The position ids ``generate`` gives the left-padded prompts, and the mRoPE deltas.

    Text models: ``[k, S]``, 0 at each row's first real token; no deltas. Qwen-VL models:
    ``get_rope_index``'s ``[3, k, S]`` (3D positions on the image tokens) and ``[k, 1]``
    deltas (a text token after the prompt sits at its text position plus its row's
    delta); without images, the text positions on all three axes and zero deltas."""
    text = positions_from_mask(prompt.attention_mask)
    rope = _rope_model(model)
    if rope is None:
        return text, None
    if "image_grid_thw" not in prompt.extra:
        zeros = torch.zeros(len(prompt), 1, dtype=torch.long, device=text.device)
        return text[None].expand(3, -1, -1), zeros
    args = {"input_ids": prompt.input_ids, "attention_mask": prompt.attention_mask, **prompt.extra}
    accepted = inspect.signature(rope.get_rope_index).parameters
    return rope.get_rope_index(**{k: v for k, v in args.items() if k in accepted})


@dataclass
class Prefill:
    """Prompts run once through the model: the KV cache of all but their last token, and
    what decoding from it needs. Never modified: each ``generate`` call copies the rows
    it needs into a cache of its own (:meth:`HFEngine._cache_rows`)."""

    input_ids: Tensor  # [k, S] the whole prompts, left-padded
    attention_mask: Tensor  # [k, S]
    positions: Tensor  # [k, S] (text) or [3, k, S] (mRoPE): the whole prompts' positions
    rope_deltas: Tensor | None  # [k, 1] (mRoPE models)
    cache: Cache  # k rows, S - 1 tokens


Plan = list[tuple[list[int], list[list[int]]]]


class HFEngine:
    """Batched ``generate`` on the policy's own model, in the policy's compute dtype.

    It shares the policy's weights, so :meth:`sync_weights`, :meth:`sleep` and
    :meth:`wake` have nothing to do, and its sampling log-probs are the policy's own
    (``logprobs = "exact"``). ``engine_args``:

    - ``batch_size``: sequences per ``generate`` call (None: all at once); bounds the
      KV cache's memory. With ``prefill_once`` a call holds whole groups of ``n``
      (``batch_size // n`` prompts) where a group fits, else part of one group;
    - ``cache_implementation``: transformers' KV cache kind (None: its default dynamic
      cache; ``"static"`` preallocates it, which lets transformers compile the decoding
      step on GPU);
    - ``compile``: False stops transformers from compiling the decoding step even where
      it would (a static cache on GPU); True leaves that to transformers;
    - ``prefill_once`` (default true): each prompt is run through the model (and its
      image through the vision tower) once, not once per sample. false: the old path,
      the prompts repeated ``n`` times and ``generate`` run on the repeated batch.

    **Prefill once.** The prompts, each once (``batch_size // n`` at a time, or one at
    a time where a group is split over calls), go through one forward without their
    last token into a dynamic KV cache, with the positions ``generate`` would give them
    (left-padding aware; Qwen-VL's mRoPE from ``get_rope_index``). Each ``generate``
    call then gets a new cache of ``cache_implementation``'s kind holding its rows of
    that cache (a prompt's row once per sample), the whole prompts as ``input_ids``,
    their position ids and, for Qwen-VL, ``rope_deltas`` repeated the same way; no
    ``pixel_values``, so no image is encoded again. ``generate`` runs each row's last
    prompt token and decodes as before (our sampler, stop ids, a static cache's
    compiled step). Greedy decodes one row per prompt and repeats it ``n`` times.

    What changes against ``prefill_once: false``: the first step's logits come from a
    one-token forward over the cache, not from the full prompt forward, so logits and
    ``sample_logprobs`` differ by float rounding (about 1e-6 in float32 on the tiny
    models). What does not: the rows, their order and the ``[b, V]`` distribution each
    step samples from, with one ``torch.multinomial`` per call and step. Where the calls
    are the old path's (``batch_size`` None, a multiple of ``n`` or a divisor of ``n``)
    one seed gives the same draws, hence the same tokens, unless a rounding difference
    moves a draw across a boundary of the cumulative distribution (never seen in the
    tests, float32; likelier in bfloat16). Other batch sizes cut the calls elsewhere
    (the old path's calls cross groups), so the generator is consumed in another order:
    other samples from the same distributions.
    """

    logprobs = "exact"
    ARGS: dict[str, Any] = {
        "batch_size": None,
        "cache_implementation": None,
        "compile": True,
        "prefill_once": True,
    }
    CACHES = ("dynamic", "static", "offloaded", "offloaded_static", "sliding_window", "hybrid")

    def __init__(
        self,
        policy: Policy,
        *,
        batch_size: int | None = None,
        cache_implementation: str | None = None,
        compile: bool = True,
        prefill_once: bool = True,
    ) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.compile = compile
        self.prefill_once = prefill_once
        self._static_len = 0  # the longest static cache so far: one size, fewer recompiles

    @classmethod
    def check_args(cls, args: Mapping[str, Any], key: str) -> dict[str, Any]:
        check_arg_keys(args, cls.ARGS, key)
        out = {**cls.ARGS, **args}
        size = out["batch_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise UserError(f"{key}.batch_size: must be None or an integer >= 1, got {size!r}")
        cache = out["cache_implementation"]
        if cache is not None and cache not in cls.CACHES:
            raise UserError(
                f"{key}.cache_implementation: must be one of {', '.join(cls.CACHES)}, got {cache!r}"
            )
        for flag in ("compile", "prefill_once"):
            if not isinstance(out[flag], bool):
                raise UserError(f"{key}.{flag}: expected true or false, got {out[flag]!r}")
        return out

    def sync_weights(self, model: Any) -> None:
        """Nothing to do: generation runs on the trained model itself."""

    def sleep(self) -> None:
        """Nothing held between calls."""

    def wake(self) -> None:
        """Nothing to take back."""

    def generate(
        self, prompts: Sequence[Mapping[str, Any]], params: SamplingParams
    ) -> RolloutBatch:
        """``len(prompts) * params.n`` rollouts; row ``p * n + j`` is sample ``j`` of prompt ``p``."""
        model = self.policy.model
        device = self.policy.device  # where forwards run (not where offloaded weights rest)
        prompt = encode_prompts(self.policy, prompts)
        run = self._grouped if self.prefill_once else self._repeated
        rope = _rope_model(model)
        saved_deltas = None if rope is None else rope.rope_deltas
        was_training = model.training
        model.eval()
        try:
            # sharded (FSDP): gather the weights once for the whole call, not per token
            with gathered(model), torch.no_grad(), self.policy.autocast():
                completions, logprobs = run(prompt, params, device)
        finally:
            model.train(was_training)
            if rope is not None:
                rope.rope_deltas = saved_deltas
        rows = prompt.select([p for p in range(len(prompt)) for _ in range(params.n)])
        return self._assemble(rows.to(device), completions, logprobs)

    def _repeated(
        self, prompt: RolloutBatch, params: SamplingParams, device: torch.device
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``prefill_once: false``: every prompt repeated ``n`` times, ``generate`` on
        ``batch_size`` rows at a time (each row's prompt and image prefilled again)."""
        rows = prompt.select([p for p in range(len(prompt)) for _ in range(params.n)])
        B = len(rows)
        step = self.batch_size or B
        completions, logprobs = [], []
        for start in range(0, B, step):
            sub = rows.select(range(start, min(B, start + step))).to(device)
            ids, lps = self._generate(sub.model_inputs(), params)
            completions.append(ids)
            logprobs.append(lps)
        return completions, logprobs

    def _grouped(
        self, prompt: RolloutBatch, params: SamplingParams, device: torch.device
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Each prompt prefilled once, its ``n`` samples decoded from copies of its cache
        (greedy: one sample decoded, repeated ``n`` times)."""
        copies = 1 if params.greedy else params.n
        completions, logprobs = [], []
        for prompts, calls in self._plan(len(prompt), copies):
            prefill = self._prefill(prompt.select(prompts).to(device))
            for rows in calls:
                ids, lps = self._decode(prefill, rows, params)
                completions.append(ids)
                logprobs.append(lps)
        if copies == params.n:
            return completions, logprobs
        ids = _pad_right(completions, self._pad_id()).repeat_interleave(params.n, dim=0)
        return [ids], [_pad_right(logprobs, 0.0).repeat_interleave(params.n, dim=0)]

    def _plan(self, prompts: int, copies: int) -> Plan:
        """Prefill units and their ``generate`` calls: ``[(prompt indices, [the unit's
        rows of each call])]``, in prompt-major row order. A call has at most
        ``batch_size`` rows: whole groups of ``copies`` where one fits, else part of one
        prompt's group (that prompt then is a unit of its own, prefilled once for all
        its calls)."""
        step = self.batch_size or prompts * copies
        if step >= copies:
            per = step // copies
            units = [list(range(s, min(prompts, s + per))) for s in range(0, prompts, per)]
            return [(u, [[i for i in range(len(u)) for _ in range(copies)]]) for u in units]
        calls = [[0] * min(step, copies - s) for s in range(0, copies, step)]
        return [([p], calls) for p in range(prompts)]

    def _prefill(self, prompt: RolloutBatch) -> Prefill:
        """One forward over ``prompt`` (on the device; images included) without its last
        token, into a dynamic KV cache. The last token is left to ``generate``, which
        needs an uncached token to start from; its logits, per sample row, are the first
        sampling step's."""
        model = self.policy.model
        last = prompt.input_ids[:, -1]
        if torch.isin(last, torch.tensor(vision_token_ids(self.policy), device=last.device)).any():
            raise ValueError("a prompt ends in a vision token: decoding cannot start from it")
        positions, deltas = prompt_positions(model, prompt)
        extra = {k: v[:, :-1] if k in PER_TOKEN_KEYS else v for k, v in prompt.extra.items()}
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        model(
            input_ids=prompt.input_ids[:, :-1],
            attention_mask=prompt.attention_mask[:, :-1],
            position_ids=positions[..., :-1],
            **extra,
            **{_cache_kwarg(model): cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return Prefill(prompt.input_ids, prompt.attention_mask, positions, deltas, cache)

    def _decode(
        self, prefill: Prefill, rows: Sequence[int], params: SamplingParams
    ) -> tuple[Tensor, Tensor]:
        """``generate`` on rows ``rows`` of ``prefill`` (a row repeated once per sample),
        continuing from their cache: the whole prompts as ``input_ids`` (``generate``
        runs the uncached last token), their positions, and for Qwen-VL their
        ``rope_deltas`` on the model, repeated as the rows are."""
        model = self.policy.model
        idx = torch.tensor(list(rows), dtype=torch.long, device=prefill.input_ids.device)
        rope = _rope_model(model)
        if rope is not None and prefill.rope_deltas is not None:
            rope.rope_deltas = prefill.rope_deltas[idx.to(prefill.rope_deltas.device)]
        width = prefill.input_ids.shape[1] + params.max_new_tokens
        inputs = {
            "input_ids": prefill.input_ids[idx],
            "attention_mask": prefill.attention_mask[idx],
            "position_ids": prefill.positions.index_select(-2, idx.to(prefill.positions.device)),
            _cache_kwarg(model): self._cache_rows(prefill.cache, idx, width),
        }
        return self._generate(inputs, params)

    def _cache_rows(self, source: Cache, rows: Tensor, max_len: int) -> Cache:
        """A new cache of ``cache_implementation``'s kind holding rows ``rows`` of
        ``source`` (an index repeated: that prompt's cache repeated along the batch).
        Copied rather than repeated in place (``Cache.batch_repeat_interleave``): one
        prefill may feed several calls (a group split by ``batch_size``), and transformers'
        static layers have no batch repeat."""
        config = self.policy.model.config.get_text_config(decoder=True)
        kind = self.cache_implementation or "dynamic"
        offload = kind.startswith("offloaded")
        if kind in ("dynamic", "offloaded"):
            cache: Cache = DynamicCache(config=config, offloading=offload)
        else:
            self._static_len = max(self._static_len, max_len)
            cache = StaticCache(config=config, max_cache_len=self._static_len, offloading=offload)
        filled = {"cache_position": torch.arange(source.get_seq_length(), device=rows.device)}
        for i, layer in enumerate(source.layers):
            cache.update(layer.keys[rows], layer.values[rows], i, cache_kwargs=filled)
        return cache

    def _pad_id(self) -> int:
        tok = self.policy.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else 0

    def _generate(self, inputs: dict[str, Any], params: SamplingParams) -> tuple[Tensor, Tensor]:
        """transformers' ``generate`` on ``inputs`` with our sampler and nothing of the
        checkpoint's generation config: the completions ``[b, T]`` and their sampling
        log-probs ``[b, T]``. Given a cache in ``inputs``, it continues from it (then
        ``cache_implementation`` is that cache's kind already)."""
        model, tok = self.policy.model, self.policy.tokenizer
        stop_ids = stop_token_ids(self.policy)
        sampler = SamplingProcessor(params, vision_token_ids(self.policy))
        # sampling knobs neutral (ours does the sampling); unset when greedy, or generate warns
        knobs = {} if params.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        has_cache = "cache" in inputs or "past_key_values" in inputs
        cache_kind = self.cache_implementation if not has_cache else None
        config = GenerationConfig(
            do_sample=not params.greedy,
            **knobs,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0],
            use_cache=True,
            **({"cache_implementation": cache_kind} if cache_kind else {}),
            **({} if self.compile else {"disable_compile": True}),
        )
        saved, model.generation_config = model.generation_config, config
        try:  # a clean config: nothing from the checkpoint's generation_config.json
            out = model.generate(
                **inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        finally:
            model.generation_config = saved
        completion = out[:, inputs["input_ids"].shape[1] :]
        sampler.record(completion[:, -1])
        return completion, torch.stack(sampler.logprobs, dim=1)

    def _assemble(
        self, prompt: RolloutBatch, completions: list[Tensor], logprobs: list[Tensor]
    ) -> RolloutBatch:
        tok = self.policy.tokenizer
        pad_id = self._pad_id()
        completion = _pad_right(completions, pad_id)
        mask = response_mask_from(completion, stop_token_ids(self.policy))
        completion = completion.masked_fill(mask == 0, pad_id)
        return join(
            prompt,
            completion,
            mask,
            tok.batch_decode(completion, skip_special_tokens=True),
            _pad_right(logprobs, 0.0) * mask,
        )
