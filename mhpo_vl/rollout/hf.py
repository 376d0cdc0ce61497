"""The reference rollout engine: transformers' ``generate`` with a KV cache, on any device.

Sampling is done by one logits processor of ours rather than by ``generate``'s own
knobs, for two reasons: a checkpoint's ``generation_config.json`` (Qwen-Instruct ships
``top_k=1``, ``repetition_penalty=1.05``) must not leak into RL sampling, and the
log-prob of each sampled token under the *untruncated* policy at the sampling
temperature must be recorded on the way (``RolloutBatch.sample_logprobs``), which is
what a re-forward with :func:`mhpo_vl.models.token_logprobs` gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from mhpo_vl.batch import RolloutBatch, SamplingParams, join
from mhpo_vl.errors import UserError
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


class HFEngine:
    """Batched ``generate`` on the policy's own model, in the policy's compute dtype.

    It shares the policy's weights, so :meth:`sync_weights`, :meth:`sleep` and
    :meth:`wake` have nothing to do, and its sampling log-probs are the policy's own
    (``logprobs = "exact"``). ``engine_args``:

    - ``batch_size``: sequences per ``generate`` call (None: all at once); bounds the
      KV cache's memory;
    - ``cache_implementation``: transformers' KV cache kind (None: its default dynamic
      cache; ``"static"`` preallocates it, which lets transformers compile the decoding
      step on GPU);
    - ``compile``: False stops transformers from compiling the decoding step even where
      it would (a static cache on GPU); True leaves that to transformers.
    """

    logprobs = "exact"
    ARGS: dict[str, Any] = {"batch_size": None, "cache_implementation": None, "compile": True}
    CACHES = ("dynamic", "static", "offloaded", "offloaded_static", "sliding_window", "hybrid")

    def __init__(
        self,
        policy: Policy,
        *,
        batch_size: int | None = None,
        cache_implementation: str | None = None,
        compile: bool = True,
    ) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.compile = compile

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
        if not isinstance(out["compile"], bool):
            raise UserError(f"{key}.compile: expected true or false, got {out['compile']!r}")
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
        prompt = prompt.select([p for p in range(len(prompts)) for _ in range(params.n)])
        B = len(prompt)
        step = self.batch_size or B
        completions, logprobs = [], []
        was_training = model.training
        model.eval()
        try:
            # sharded (FSDP): gather the weights once for the whole call, not per token
            with gathered(model), torch.no_grad(), self.policy.autocast():
                for start in range(0, B, step):
                    sub = prompt.select(range(start, min(B, start + step))).to(device)
                    ids, lps = self._generate(sub, params)
                    completions.append(ids)
                    logprobs.append(lps)
        finally:
            model.train(was_training)
        return self._assemble(prompt.to(device), completions, logprobs)

    def _generate(self, sub: RolloutBatch, params: SamplingParams) -> tuple[Tensor, Tensor]:
        model, tok = self.policy.model, self.policy.tokenizer
        stop_ids = stop_token_ids(self.policy)
        sampler = SamplingProcessor(params, vision_token_ids(self.policy))
        # sampling knobs neutral (ours does the sampling); unset when greedy, or generate warns
        knobs = {} if params.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        config = GenerationConfig(
            do_sample=not params.greedy,
            **knobs,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0],
            use_cache=True,
            **(
                {"cache_implementation": self.cache_implementation}
                if self.cache_implementation
                else {}
            ),
            **({} if self.compile else {"disable_compile": True}),
        )
        saved, model.generation_config = model.generation_config, config
        try:  # a clean config: nothing from the checkpoint's generation_config.json
            out = model.generate(
                **sub.model_inputs(),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        finally:
            model.generation_config = saved
        completion = out[:, sub.input_ids.shape[1] :]
        sampler.record(completion[:, -1])
        return completion, torch.stack(sampler.logprobs, dim=1)

    def _assemble(
        self, prompt: RolloutBatch, completions: list[Tensor], logprobs: list[Tensor]
    ) -> RolloutBatch:
        tok = self.policy.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
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
