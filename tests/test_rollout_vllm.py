"""The vllm rollout engine's contract, against an in-process stand-in of vLLM's API
(``tests/vllm_standin.py``): what it sends vLLM, the batch it returns (laid out as the
hf engine's), its log-probs, weight sync, sleep/wake, argument checks, and the error
without vLLM. One GPU test runs the real vLLM where it is installed."""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings

import pytest
import torch
import vllm_standin

from mhpo_vl.embedded.tiny import task_rows
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts
from mhpo_vl.rollout import vllm as vllm_module
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.rollout.engine import RolloutEngine, resolve_old_logprobs
from mhpo_vl.rollout.hf import stop_token_ids, vision_token_ids
from mhpo_vl.rollout.vllm import VLLM_VERSION, VLLMEngine, hf_param_name, stream_weights

KEY = "rollout.engine_args"


@pytest.fixture(scope="module")
def policy():
    return load_policy("embedded:tiny-vl")


@pytest.fixture(scope="module")
def standin():
    with pytest.MonkeyPatch.context() as mp:
        yield vllm_standin.install(mp)


def make_engine(policy, **args):
    return VLLMEngine(policy, **VLLMEngine.check_args(args, KEY))


@pytest.fixture(scope="module")
def engine(policy, standin):
    return make_engine(policy)


@pytest.fixture(scope="module")
def rows():
    return task_rows("vision", "train", 3, seed=5)


@pytest.fixture(scope="module")
def prompts(rows):
    return build_prompts(rows)


def real_ids(batch, p):
    return batch.input_ids[p, : batch.prompt_len][
        batch.attention_mask[p, : batch.prompt_len].bool()
    ]


# --- what vLLM is asked


def test_llm_built_with_the_policys_model_dtype_and_limits(engine, policy):
    got = engine.llm.init_kwargs
    assert got["model"] == policy.model.name_or_path
    assert got["dtype"] == "float32" and got["seed"] == 0
    assert got["logprobs_mode"] == "raw_logprobs"
    assert got["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    assert got["mm_processor_kwargs"] == {"min_pixels": 784, "max_pixels": 7056}
    assert got["enable_sleep_mode"] is True and got["gpu_memory_utilization"] == 0.5
    assert got["tensor_parallel_size"] == 1 and got["enforce_eager"] is False
    assert got["max_model_len"] is None  # not passed: the model's own
    assert engine.llm.multiprocessing_env == "0"  # engine core in this process
    assert isinstance(engine, RolloutEngine) and engine.logprobs == "approximate"
    assert resolve_old_logprobs("auto", VLLMEngine.logprobs, 1.0) == "recompute"
    # the constructor pushed the policy's weights, every parameter once, as a stream
    names = [n for n, _, _ in engine.llm.weight_log]
    assert sorted(names) == sorted(n for n, _ in policy.model.named_parameters())
    assert engine.llm.weight_calls == ["generator"]  # one lazy stream, no state-dict copy


def test_requests_carry_our_tokens_and_images(engine, policy, prompts):
    before = len(engine.llm.requests)
    engine.generate(prompts, SamplingParams(n=2, max_new_tokens=4, top_k=7, top_p=0.9))
    sent = engine.llm.requests[before:]
    assert len(sent) == len(prompts)  # one request per prompt, n samples each
    ours = encode_prompts(policy, prompts)
    pad = policy.processor.image_token_id
    for p, (req, prompt) in enumerate(zip(sent, prompts, strict=True)):
        ids = req["prompt"]["prompt_token_ids"]
        assert ids.count(pad) == 1  # one placeholder per image: vLLM expands it
        assert req["prompt_token_ids"] == real_ids(ours, p).tolist()  # vLLM's expansion = ours
        (image,) = req["images"]
        original = prompt["images"][0].convert("RGB")
        assert image.size == original.size and image.tobytes() == original.tobytes()
        sp = req["params"]
        assert (sp.n, sp.temperature, sp.top_k, sp.top_p, sp.max_tokens) == (2, 1.0, 7, 0.9, 4)
        assert sp.logprobs == 0 and sp.detokenize is False
        assert sp.stop_token_ids == stop_token_ids(policy)
        assert sp.logit_bias == {i: -100.0 for i in vision_token_ids(policy)}


def test_prompt_mismatch_names_the_prompt(engine, prompts):
    saved = engine.llm.mm_processor_kwargs
    engine.llm.mm_processor_kwargs = {"max_pixels": 3136}  # vLLM would see fewer image tokens
    try:
        with pytest.raises(RuntimeError, match="prompt 0 differs from the trainer's encoding"):
            engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2))
    finally:
        engine.llm.mm_processor_kwargs = saved


def test_too_many_images_is_a_user_error(engine, rows):
    (prompt,) = build_prompts(rows[:1])
    prompt["messages"][0]["content"].insert(0, {"type": "image"})
    prompt["images"] = prompt["images"] * 2
    with pytest.raises(UserError, match="max_images_per_prompt is 1"):
        engine.generate([prompt], SamplingParams(n=1, max_new_tokens=2))


def test_temperature_above_vllms_limit_is_a_user_error(engine, prompts):
    with pytest.raises(UserError, match="above vLLM's limit"):
        engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2, temperature=2.5))


# --- the batch


def test_layout_matches_the_hf_engine(engine, policy, prompts):
    params = SamplingParams(n=2, max_new_tokens=6)
    torch.manual_seed(0)
    ref = HFEngine(policy).generate(prompts, params)
    got = engine.generate(prompts, params)
    tok = policy.tokenizer
    assert len(got) == len(ref) == len(prompts) * 2
    assert got.prompt_len == ref.prompt_len and got.input_ids.dtype == ref.input_ids.dtype
    P = got.prompt_len
    assert torch.equal(got.input_ids[:, :P], ref.input_ids[:, :P])
    assert torch.equal(got.attention_mask[:, :P], ref.attention_mask[:, :P])
    assert set(got.extra) == set(ref.extra)
    for key, value in ref.extra.items():
        width = value.shape[1] if key == "mm_token_type_ids" else None
        other = got.extra[key]
        assert torch.equal(other[:, :P] if width else other, value[:, :P] if width else value), key
    assert torch.equal(got.images_per_row, ref.images_per_row)
    assert got.response_mask.dtype == ref.response_mask.dtype == torch.float32
    T = got.response_mask.shape[1]
    assert got.input_ids.shape == (len(got), P + T) and got.sample_logprobs.shape == (len(got), T)
    assert torch.equal(got.attention_mask[:, P:], got.response_mask.to(got.attention_mask))
    stops = set(stop_token_ids(policy))
    for r in range(len(got)):
        ids, mask = got.completion_ids[r].tolist(), got.response_mask[r]
        n = int(mask.sum())
        assert mask[:n].eq(1).all() and mask[n:].eq(0).all()  # 1 ... 1 0 ... 0
        kept = ids[:n]
        assert not stops & set(kept[:-1])  # no stop token before the last kept one
        assert kept[-1] in stops or n == T  # ends on a stop token, or at the length cap
        assert all(t == tok.pad_token_id for t in ids[n:])
        assert got.completions[r] == tok.decode(kept, skip_special_tokens=True)
        assert (got.sample_logprobs[r, n:] == 0).all() and (got.sample_logprobs[r, :n] < 0).all()
        assert not set(vision_token_ids(policy)) & set(kept)


def test_greedy_equals_the_hf_engines_greedy(engine, policy, prompts):
    params = SamplingParams(n=2, max_new_tokens=8, temperature=0.0)
    ref = HFEngine(policy).generate(prompts, params)
    got = engine.generate(prompts, params)
    assert engine.llm.requests[-1]["params"].n == 1  # vLLM refuses n > 1 when greedy
    assert torch.equal(got.input_ids, ref.input_ids)
    assert torch.equal(got.response_mask, ref.response_mask)
    assert got.completions == ref.completions
    torch.testing.assert_close(got.sample_logprobs, ref.sample_logprobs, atol=1e-4, rtol=0)


def test_sample_logprobs_match_the_trainers_recompute(engine, policy, prompts):
    for params in (
        SamplingParams(n=2, max_new_tokens=8, temperature=1.0),
        SamplingParams(n=2, max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.8),
    ):
        batch = engine.generate(prompts, params)
        assert batch.response_mask.sum() > len(batch)
        with torch.no_grad():
            logp, _ = token_logprobs(policy.model, batch)
        mask = batch.response_mask
        torch.testing.assert_close(batch.sample_logprobs, logp * mask, atol=1e-4, rtol=0)


def test_other_temperatures_report_temperature_one_logprobs_with_a_warning(
    engine, policy, prompts, monkeypatch
):
    monkeypatch.setattr(engine, "_warned_temperature", False)
    with pytest.warns(UserWarning, match="at temperature 1"):
        batch = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6, temperature=0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per engine
        engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2, temperature=0.7))
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model, batch)
    torch.testing.assert_close(batch.sample_logprobs, logp * batch.response_mask, atol=1e-4, rtol=0)


def test_text_model(standin):
    policy = load_policy("embedded:tiny-text")
    engine = make_engine(policy)
    assert "limit_mm_per_prompt" not in engine.llm_kwargs
    prompts = build_prompts(task_rows("text", "train", 2))
    batch = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6))
    assert "multi_modal_data" not in engine.llm.requests[-1]["prompt"]
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model, batch)
    torch.testing.assert_close(batch.sample_logprobs, logp * batch.response_mask, atol=1e-4, rtol=0)


# --- weights


def test_sync_weights_pushes_the_trained_weights(engine, policy, prompts):
    trained = copy.deepcopy(policy.model)
    name, param = next((n, p) for n, p in trained.named_parameters() if n.endswith("q_proj.weight"))
    with torch.no_grad():
        param.add_(0.5)
    vllm_param = dict(engine.llm.model.named_parameters())[name]
    assert not torch.equal(vllm_param, param)
    resets = (engine.llm.prefix_cache_resets, engine.llm.llm_engine.encoder_cache_resets)
    start = len(engine.llm.weight_log)
    try:
        engine.sync_weights(trained)
        assert torch.equal(vllm_param, param)
        log = engine.llm.weight_log[start:]
        assert len(log) == len(list(trained.parameters()))
        assert {dtype for _, dtype, _ in log} == {torch.float32}  # the engine's dtype
        # caches computed with the old weights are dropped
        assert engine.llm.prefix_cache_resets == resets[0] + 1
        assert engine.llm.llm_engine.encoder_cache_resets == resets[1] + 1
    finally:
        engine.sync_weights(policy.model)
    assert torch.equal(vllm_param, dict(policy.model.named_parameters())[name])


def test_sync_weights_maps_wrapped_names_and_fails_on_unknown_ones(engine, policy):
    class DDPLike(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    engine.sync_weights(DDPLike(policy.model))  # "module." prefix stripped
    with pytest.raises(ValueError, match="no module or parameter named 'weight'"):
        engine.sync_weights(torch.nn.Linear(2, 2))
    engine.sync_weights(policy.model)


def test_sync_to_worker_processes_sends_cpu_chunks(engine, policy, monkeypatch):
    monkeypatch.setattr(vllm_module, "SYNC_CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(engine, "_stream_sync", False)  # as with tensor_parallel_size > 1
    calls, start = len(engine.llm.weight_calls), len(engine.llm.weight_log)
    engine.sync_weights(policy.model)
    sent = engine.llm.weight_calls[calls:]
    assert len(sent) > 1 and set(sent) == {"list"}  # bounded chunks, not one copy
    log = engine.llm.weight_log[start:]
    assert len(log) == len(list(policy.model.parameters()))
    assert {device for _, _, device in log} == {"cpu"}


def test_stream_weights_gathers_shards_casts_and_is_lazy():
    gathered = []

    class Shard:  # what a DTensor offers: detach() and a collective full_tensor()
        def __init__(self, value):
            self.value = value

        def detach(self):
            return self

        def full_tensor(self):
            gathered.append(self.value)
            return torch.full((2,), self.value)

    class Sharded:
        def named_parameters(self):
            yield "_orig_mod.model._fsdp_wrapped_module.layers.0.w", Shard(1.0)
            yield "module.lm_head._checkpoint_wrapped_module.weight", Shard(2.0)

    stream = stream_weights(Sharded(), torch.bfloat16)
    assert gathered == []  # nothing gathered before it is consumed
    name, tensor = next(stream)
    assert gathered == [1.0] and name == "model.layers.0.w" and tensor.dtype == torch.bfloat16
    assert next(stream)[0] == "lm_head.weight"
    assert hf_param_name("module.model.module.x") == "model.module.x"  # only DDP's leading one


# --- memory


def test_sleep_and_wake(policy, standin, prompts):
    engine = make_engine(policy)
    llm = engine.llm
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompts, greedy)
    engine.wake()  # awake already: nothing
    assert llm.wake_calls == []
    engine.sleep()
    engine.sleep()
    assert llm.sleep_calls == [1]
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts, greedy)
    engine.sync_weights(policy.model)  # wakes the weights alone, then loads them
    assert llm.wake_calls == [["weights"]] and llm.asleep == {"kv_cache"}
    engine.wake()
    engine.wake()
    assert llm.wake_calls == [["weights"], ["kv_cache"]] and not llm.asleep
    after = engine.generate(prompts, greedy)
    assert torch.equal(after.input_ids, before.input_ids)
    engine.sleep()
    engine.wake()  # level 1 keeps the weights: no sync needed
    assert llm.wake_calls[-1] is None and not llm.asleep


def test_sleep_level_2_needs_a_sync_before_wake(policy, standin, prompts):
    engine = make_engine(policy, sleep_level=2)
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompts, greedy)
    engine.sleep()
    assert engine.llm.sleep_calls == [2]
    with pytest.raises(RuntimeError, match="sync_weights"):
        engine.wake()
    engine.sync_weights(policy.model)
    engine.wake()
    assert all(torch.isfinite(p).all() for p in engine.llm.model.parameters())
    assert torch.equal(engine.generate(prompts, greedy).input_ids, before.input_ids)


def test_without_sleep_mode_sleep_and_wake_do_nothing(policy, standin, prompts):
    engine = make_engine(policy, extra={"enable_sleep_mode": False})
    assert engine.llm.init_kwargs["enable_sleep_mode"] is False
    engine.sleep()  # the stand-in raises if vLLM's sleep is called without sleep mode
    engine.wake()
    assert engine.llm.sleep_calls == [] and engine.llm.wake_calls == []
    engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2))


# --- arguments and the missing package


def test_check_args_fills_defaults():
    assert VLLMEngine.check_args({}, KEY) == {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": None,
        "enforce_eager": False,
        "sleep_level": 1,
        "max_images_per_prompt": 1,
        "seed": 0,
        "extra": {},
    }
    got = VLLMEngine.check_args({"max_model_len": 4096, "extra": {"max_num_seqs": 8}}, KEY)
    assert got["max_model_len"] == 4096 and got["extra"] == {"max_num_seqs": 8}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"gpu_memory": 0.5}, f"{KEY}.gpu_memory: unknown engine argument"),
        ({"gpu_memory_utilization": 0}, f"{KEY}.gpu_memory_utilization: must be a number in"),
        ({"gpu_memory_utilization": 1.5}, f"{KEY}.gpu_memory_utilization"),
        ({"gpu_memory_utilization": True}, f"{KEY}.gpu_memory_utilization"),
        ({"tensor_parallel_size": 0}, f"{KEY}.tensor_parallel_size: must be an integer >= 1"),
        ({"tensor_parallel_size": 2.0}, f"{KEY}.tensor_parallel_size"),
        ({"max_model_len": 0}, f"{KEY}.max_model_len: must be None or an integer"),
        ({"enforce_eager": "yes"}, f"{KEY}.enforce_eager: expected true or false"),
        ({"sleep_level": 3}, f"{KEY}.sleep_level: must be 1 or 2"),
        ({"sleep_level": True}, f"{KEY}.sleep_level"),
        ({"sleep_level": 1.0}, f"{KEY}.sleep_level"),
        ({"max_images_per_prompt": 0}, f"{KEY}.max_images_per_prompt"),
        ({"seed": -1}, f"{KEY}.seed"),
        ({"extra": [1]}, f"{KEY}.extra: must be a mapping"),
        ({"extra": {"dtype": "float16"}}, f"{KEY}.extra.dtype: set by the engine"),
        ({"extra": {"max_model_len": 8}}, f"{KEY}.extra.max_model_len: .*{KEY}.max_model_len"),
        ({"extra": {"logprobs_mode": "processed_logprobs"}}, f"{KEY}.extra.logprobs_mode"),
        ({"extra": {"enable_sleep_mode": 1}}, f"{KEY}.extra.enable_sleep_mode"),
    ],
)
def test_check_args_errors_name_the_key(args, message):
    with pytest.raises(UserError, match=message):
        VLLMEngine.check_args(args, KEY)


def test_extra_reaches_vllm_and_typos_fail(policy, standin):
    with pytest.raises(TypeError, match="max_num_seq"):
        make_engine(policy, extra={"max_num_seq": 4})  # vLLM has max_num_seqs


def test_missing_vllm_is_a_user_error(policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UserError) as info:
        VLLMEngine(policy)
    assert str(info.value) == (
        "rollout.engine 'vllm' needs the vllm package "
        "(pip install 'mhpo-vl[vllm]' on a CUDA machine)"
    )


def test_module_imports_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails
    spec = importlib.util.find_spec("mhpo_vl.rollout.vllm")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a fresh copy of the module, run without vllm
    assert module.VLLMEngine.logprobs == "approximate"


def test_another_vllm_version_warns(policy, standin, monkeypatch):
    monkeypatch.setattr(standin, "__version__", "0.1.0")
    with pytest.warns(UserWarning, match=f"vllm 0.1.0 is installed.*{VLLM_VERSION}"):
        make_engine(policy)


# --- the real vLLM (GPU machines with vllm installed)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_real_vllm_on_the_tiny_model(monkeypatch):
    for name in ("vllm", "vllm.config"):  # the stand-in may be installed for this module
        monkeypatch.delitem(sys.modules, name, raising=False)
    policy = load_policy(
        "embedded:tiny-vl", dtype="bfloat16", master_dtype="float32", device="cuda"
    )
    engine = make_engine(policy, gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=1024)
    assert engine.vllm is not vllm_standin
    prompts = build_prompts(task_rows("vision", "test", 4))
    params = SamplingParams(n=2, max_new_tokens=8, temperature=1.0)
    batch = engine.generate(prompts, params)
    assert batch.input_ids.device.type == "cuda" and len(batch) == 8
    with torch.no_grad(), policy.autocast():
        logp, _ = token_logprobs(policy.model, batch)
    diff = ((logp - batch.sample_logprobs) * batch.response_mask).abs()
    assert diff.sum() / batch.response_mask.sum() < 0.05, diff.max()
    engine.sleep()
    engine.sync_weights(policy.model)
    engine.wake()
    greedy = SamplingParams(n=1, max_new_tokens=8, temperature=0.0)
    ours = engine.generate(prompts, greedy).completions
    theirs = HFEngine(policy).generate(prompts, greedy).completions
    # bfloat16 kernels differ: a near-tie may break the other way in one row
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) >= len(prompts) - 1
