"""The ``hf`` engine prefills each prompt once per group (``engine_args.prefill_once``,
the default) and decodes its ``n`` samples from copies of that KV cache: the same
rollouts as the old path (``prefill_once: false``, every prompt repeated ``n`` times),
on tiny random-init models of the three Qwen-VL architectures and a Qwen2 text model,
with the vision tower and the prompt's tokens run once per prompt."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from mhpo_vl.batch import PER_TOKEN_KEYS, SamplingParams
from mhpo_vl.embedded.tiny import build_embedded, parse_embedded, task_rows
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.models.policy import vision_tower
from mhpo_vl.rollout import HFEngine, build_prompts
from mhpo_vl.rollout.encode import encode_prompts

SMALL = "sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0"
ARCHS = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen2"]
N = 3  # samples per prompt
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _build(tmp_path_factory: Any, arch: str) -> tuple[Any, list[dict[str, Any]]]:
    name = "tiny-text" if arch == "qwen2" else "tiny-vl"
    out = tmp_path_factory.mktemp(arch)
    build_embedded(parse_embedded(f"{name}?{SMALL}&arch={arch}"), out)
    # random-init models rarely stop early: completions run to the token limit
    return load_policy(str(out)), task_rows("text" if arch == "qwen2" else "vision", "test", 4)


@pytest.fixture(scope="module", params=ARCHS)
def case(request, tmp_path_factory):
    return _build(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    return _build(tmp_path_factory, "qwen2_5_vl")


def _rollouts(policy, rows, params, *, seed=0, **engine_args):
    torch.manual_seed(seed)
    return HFEngine(policy, **engine_args).generate(build_prompts(rows), params)


def _old_and_new(policy, rows, params, **engine_args):
    old = _rollouts(policy, rows, params, prefill_once=False, **engine_args)
    new = _rollouts(policy, rows, params, prefill_once=True, **engine_args)
    return old, new


def _assert_same_rollouts(new, old):
    """Token for token the same rows, laid out the same; log-probs to float rounding."""
    assert torch.equal(new.input_ids, old.input_ids)
    assert torch.equal(new.attention_mask, old.attention_mask)
    assert torch.equal(new.response_mask, old.response_mask)
    assert new.completions == old.completions
    assert new.extra.keys() == old.extra.keys()
    for key, value in old.extra.items():
        assert torch.equal(new.extra[key], value), key
    torch.testing.assert_close(new.sample_logprobs, old.sample_logprobs, atol=1e-5, rtol=0)


def _assert_logprobs_match_reforward(policy, batch, temperature):
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model, batch, temperature=temperature)
    mask = batch.response_mask
    assert mask.sum() > len(batch)
    assert ((logp - batch.sample_logprobs) * mask).abs().max() < 1e-4


def test_greedy_is_the_old_path_token_for_token(case):
    """Greedy decodes one row per prompt and repeats it: the old path's n identical rows."""
    policy, rows = case
    old, new = _old_and_new(policy, rows, SamplingParams(n=N, max_new_tokens=6, temperature=0))
    _assert_same_rollouts(new, old)
    assert (new.attention_mask[:, 0] == 0).any()  # left padding exercised


def test_sampling_matches_a_reforward_and_the_old_path_under_one_seed(case):
    """The sampler's log-probs are the policy's (a re-forward's, as on the old path), and
    with the rows in the same order the generator's draws are the same: same tokens."""
    policy, rows = case
    params = SamplingParams(n=N, max_new_tokens=6, temperature=1.3, top_k=40, top_p=0.95)
    old, new = _old_and_new(policy, rows, params)
    _assert_logprobs_match_reforward(policy, new, 1.3)
    _assert_same_rollouts(new, old)


def test_prompt_part_is_the_repeated_encoding(vl):
    """Rows ``p * n + j``: the prompt part and its extras are ``encode_prompts`` repeated;
    completions right-padded with the response mask on them."""
    policy, rows = vl
    batch = _rollouts(policy, rows, SamplingParams(n=N, max_new_tokens=5))
    enc = encode_prompts(policy, build_prompts(rows))
    enc = enc.select([p for p in range(len(rows)) for _ in range(N)])
    P, T = enc.input_ids.shape[1], batch.response_mask.shape[1]
    assert batch.prompt_len == P and batch.input_ids.shape == (len(rows) * N, P + T)
    assert torch.equal(batch.input_ids[:, :P], enc.input_ids)
    assert torch.equal(batch.attention_mask[:, :P], enc.attention_mask)
    assert torch.equal(batch.attention_mask[:, P:], batch.response_mask.long())
    assert torch.equal(batch.images_per_row, enc.images_per_row)
    for key, value in enc.extra.items():
        got = batch.extra[key][:, :P] if key in PER_TOKEN_KEYS else batch.extra[key]
        assert torch.equal(got, value), key


@contextmanager
def _counting(model) -> Iterator[dict[str, list]]:
    """Records the vision tower's input patches per call, the token embedding's input
    shapes, and the batch size of every ``generate`` call."""
    seen: dict[str, list] = {"patches": [], "embedded": [], "generate": []}

    def tower_hook(module, args, kwargs):
        pixels = args[0] if args else kwargs["hidden_states"]
        seen["patches"].append(pixels.shape[0])

    def embed_hook(module, args):
        seen["embedded"].append(tuple(args[0].shape))

    real_generate = model.generate

    def generate(**kwargs):
        seen["generate"].append(kwargs["input_ids"].shape[0])
        return real_generate(**kwargs)

    handles = [model.get_input_embeddings().register_forward_pre_hook(embed_hook)]
    if hasattr(getattr(model, "model", None), "visual"):
        handles.append(vision_tower(model).register_forward_pre_hook(tower_hook, with_kwargs=True))
    model.generate = generate
    try:
        yield seen
    finally:
        del model.generate
        for h in handles:
            h.remove()


def _prefilled_tokens(seen: dict[str, list]) -> int:
    """Tokens embedded by forwards over more than one position (prefills)."""
    return sum(b * s for b, s in seen["embedded"] if s > 1)


@pytest.mark.parametrize("batch_size", [None, 6, 2])
def test_vision_tower_and_prompt_tokens_run_once_per_prompt(vl, batch_size):
    """Every prompt's image goes through the vision tower once, its tokens (all but the
    last) through the language model once; decoding runs one token per row. The old
    path runs both n times. ``batch_size`` 2 < n splits each group over two calls: still
    one prefill per prompt."""
    policy, rows = vl
    enc = encode_prompts(policy, build_prompts(rows))
    patches, (P, S) = enc.extra["pixel_values"].shape[0], enc.input_ids.shape
    params = SamplingParams(n=N, max_new_tokens=4)
    counts = {}
    for once in (True, False):
        with _counting(policy.model) as seen:
            _rollouts(policy, rows, params, batch_size=batch_size, prefill_once=once)
        counts[once] = seen
        assert max(seen["generate"]) <= (batch_size or P * N)
    new, old = counts[True], counts[False]
    assert sum(new["patches"]) == patches
    assert _prefilled_tokens(new) == P * (S - 1)
    assert {s for _, s in new["embedded"] if s > 1} == {S - 1}  # decoding: 1 token a row
    assert sum(old["patches"]) == N * patches
    assert _prefilled_tokens(old) == N * P * S


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5, 6])
def test_batch_size_bounds_each_call(vl, batch_size):
    """Calls of whole groups where a group fits (6: two prompts a call; 4 and 5: one),
    part of one group where it does not (2: calls of 2 + 1; 1: one row a call)."""
    policy, rows = vl
    params = SamplingParams(n=N, max_new_tokens=5, temperature=1.0)
    with _counting(policy.model) as seen:
        batch = _rollouts(policy, rows, params, batch_size=batch_size)
    expected = {1: [1] * 12, 2: [2, 1] * 4, 4: [3] * 4, 5: [3] * 4, 6: [6, 6]}[batch_size]
    assert seen["generate"] == expected
    assert len(batch) == len(rows) * N
    _assert_logprobs_match_reforward(policy, batch, 1.0)
    greedy = SamplingParams(n=N, max_new_tokens=5, temperature=0)
    old, new = _old_and_new(policy, rows, greedy, batch_size=batch_size)
    _assert_same_rollouts(new, old)


@pytest.mark.parametrize("batch_size", [1, 3, 6])
def test_calls_cut_where_the_old_path_cuts_keep_the_draws(vl, batch_size):
    """``batch_size`` a multiple or a divisor of n: the calls are the old path's, so the
    sampled tokens under one seed are too."""
    policy, rows = vl
    params = SamplingParams(n=N, max_new_tokens=5)
    old, new = _old_and_new(policy, rows, params, batch_size=batch_size)
    _assert_same_rollouts(new, old)


def test_static_cache_is_filled_from_the_prefill(vl):
    """``cache_implementation: static``: the repeated prefill copied into a preallocated
    cache gives what the dynamic one gives, sampled and greedy."""
    policy, rows = vl
    for params in (SamplingParams(n=N, max_new_tokens=6), SamplingParams(n=N, temperature=0)):
        dynamic = _rollouts(policy, rows, params)
        static = _rollouts(policy, rows, params, cache_implementation="static", compile=False)
        _assert_same_rollouts(static, dynamic)


def test_model_state_is_left_as_found(vl):
    """Training mode and the model's stored mRoPE deltas are what they were before."""
    policy, rows = vl
    model = policy.model
    model.train()
    model.model.rope_deltas = None
    _rollouts(policy, rows[:2], SamplingParams(n=2, max_new_tokens=3))
    assert model.training and model.model.rope_deltas is None
    model.eval()


def test_prefill_once_is_an_engine_argument():
    assert HFEngine.check_args({}, "rollout.engine_args")["prefill_once"] is True
    args = HFEngine.check_args({"prefill_once": False}, "rollout.engine_args")
    assert args["prefill_once"] is False
    with pytest.raises(UserError, match="rollout.engine_args.prefill_once: expected true or"):
        HFEngine.check_args({"prefill_once": "no"}, "rollout.engine_args")


def test_bench_script_probes_count_what_ran(vl):
    """``scripts/bench_generate.py``'s probes: the prefill tokens and vision time of one
    call (its timings are printed, never asserted)."""
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPTS / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    policy, rows = vl
    seen, out = bench.timed(
        HFEngine(policy), build_prompts(rows[:2]), SamplingParams(n=2, max_new_tokens=2)
    )
    assert seen["prefill_tokens"] == 2 * (out.prompt_len - 1)
    assert seen["vision_s"] > 0 and seen["wall_s"] >= seen["vision_s"]
