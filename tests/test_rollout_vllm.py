"""The vllm rollout engine's contract, against an in-process stand-in of vLLM 0.33.0
rebuilt from its source (``tests/vllm_standin.py``): what it sends vLLM, the batch it
returns (laid out as the hf engine's), its log-probs, weight sync in vLLM's names,
sleep/wake, lengths, random numbers, tensor parallelism under torchrun (a real
2-process run), argument checks, and the error without vLLM. One GPU test runs the real
vLLM where it is installed."""

from __future__ import annotations

import copy
import importlib.util
import random
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import vllm_standin

from mhpo_vl.embedded.tiny import task_rows
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts, check_section
from mhpo_vl.rollout import vllm as vllm_module
from mhpo_vl.rollout.encode import encode_prompts
from mhpo_vl.rollout.engine import RolloutEngine, resolve_old_logprobs
from mhpo_vl.rollout.hf import stop_token_ids, vision_token_ids
from mhpo_vl.rollout.vllm import VLLM_VERSION, VLLMEngine, hf_param_name, stream_weights
from mhpo_vl.validation import load_recipe

KEY = "rollout.engine_args"
ROOT = Path(__file__).resolve().parents[1]
MAX_LEN = 1024  # the tests' max_model_len (the tiny models' own is 4096)
GIB = 1 << 30


@pytest.fixture(scope="module")
def policy():
    return load_policy("embedded:tiny-vl")


@pytest.fixture(scope="module")
def standin():
    with pytest.MonkeyPatch.context() as mp:
        yield vllm_standin.install(mp)


def make_engine(policy, **args):
    return VLLMEngine(policy, **VLLMEngine.check_args({"max_model_len": MAX_LEN, **args}, KEY))


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


def prompt_lengths(policy, prompts):
    enc = encode_prompts(policy, prompts)
    return [int(enc.attention_mask[p].sum()) for p in range(len(prompts))]


def vllm_params(engine):
    return dict(engine.llm.worker.get_model().named_parameters())


class FakeGroup:
    def __init__(self, ranks):
        self.ranks = ranks


@pytest.fixture()
def fake_dist(monkeypatch):
    """``torch.distributed`` as seen by rank ``rank`` of ``world`` processes, in this one
    process: every rank's objects equal this one's in a gather."""

    def install(rank, world):
        d = torch.distributed
        monkeypatch.setattr(d, "is_initialized", lambda: True)
        monkeypatch.setattr(d, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(
            d, "get_rank", lambda group=None: rank if group is None else group.ranks.index(rank)
        )
        created = []

        def new_group(ranks, backend=None):
            created.append(list(ranks))
            return FakeGroup(list(ranks))

        def all_gather_object(out, obj, group=None):
            out[:] = [obj] * len(out)

        monkeypatch.setattr(d, "new_group", new_group)
        monkeypatch.setattr(d, "all_gather_object", all_gather_object)
        return created

    return install


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
    assert got["max_model_len"] == MAX_LEN and engine.max_model_len == MAX_LEN
    assert got["load_format"] == "dummy"  # no checkpoint read: the first sync fills it
    assert got["distributed_executor_backend"] is None and engine.lockstep is False
    assert engine.llm.multiprocessing_env == "0"  # engine core in this process
    assert isinstance(engine, RolloutEngine) and engine.logprobs == "approximate"
    assert resolve_old_logprobs("auto", VLLMEngine.logprobs, 1.0) == "recompute"
    # the constructor pushed the policy's weights, every parameter once, as a stream
    names = [n for n, _, _ in engine.llm.weight_log[:80]]
    assert sorted(names) == sorted(n for n, _ in policy.model.named_parameters())
    assert engine.llm.weight_calls[0] == "generator"  # one lazy stream, no state-dict copy
    assert engine.llm.loaded_log[0] == set(vllm_params(engine))  # vLLM loaded them all


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


def test_vllm_expands_images_with_its_own_processor(standin, prompts, monkeypatch):
    """vLLM loads its image processor from the model directory: the trainer's pixel
    bounds reach it only through mm_processor_kwargs."""
    small = load_policy("embedded:tiny-vl")
    small.processor.image_processor.size.longest_edge = 3136  # fewer image tokens than saved
    engine = make_engine(small)
    assert engine.llm.init_kwargs["mm_processor_kwargs"]["max_pixels"] == 3136
    batch = engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=2))
    assert engine.llm.requests[-1]["prompt_token_ids"] == real_ids(batch, 0).tolist()
    monkeypatch.setattr(vllm_module, "_pixel_limits", lambda policy: {})  # bounds not sent
    engine = make_engine(small)
    with pytest.raises(RuntimeError, match="prompt 0 differs from the trainer's encoding"):
        engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=2))


def test_too_many_images_is_a_user_error(engine, rows):
    (prompt,) = build_prompts(rows[:1])
    prompt["messages"][0]["content"].insert(0, {"type": "image"})
    prompt["images"] = prompt["images"] * 2
    with pytest.raises(UserError, match="prompt 0 has 2 images.*max_images_per_prompt is 1"):
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
    import warnings

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


# --- lengths


def test_standin_cuts_completions_at_max_model_len_like_vllm(standin):
    """vLLM's rules: a prompt of max_model_len tokens or more fails the whole call; a
    prompt + max_tokens over it is accepted and cut where prompt + output reaches it."""
    policy = load_policy("embedded:tiny-text")
    ids = encode_prompts(policy, build_prompts(task_rows("text", "train", 1))).input_ids
    ids = ids[0].tolist()
    path = policy.model.name_or_path
    sp = standin.SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
    llm = standin.LLM(path, max_model_len=len(ids) + 3)
    (out,) = llm.generate([{"prompt_token_ids": ids}], sp)
    assert len(out.outputs[0].token_ids) == 3 and out.outputs[0].finish_reason == "length"
    for limit in (len(ids), len(ids) - 1):  # at, then under, the prompt's length
        llm = standin.LLM(path, max_model_len=limit, load_format="dummy")
        with pytest.raises(standin.VLLMValidationError, match=f"maximum model length of {limit}"):
            llm.generate([{"prompt_token_ids": ids[:2]}, {"prompt_token_ids": ids}], sp)
        assert llm.requests == []  # the short prompt did not run either


def _long_prompts(prompts):
    """Two prompts, the second longer, carrying row ids."""
    short, long = copy.deepcopy(prompts[0]), copy.deepcopy(prompts[0])
    long["messages"][-1]["content"][-1]["text"] += " and then" * 20
    short["id"], long["id"] = "row-a", "row-b"
    return [short, long]


def test_a_prompt_at_max_model_len_is_a_user_error_naming_it(standin, policy, prompts):
    two = _long_prompts(prompts)
    short, long = prompt_lengths(policy, two)
    assert short + 2 < long
    engine = make_engine(policy, max_model_len=long)  # the long prompt leaves no room
    with pytest.raises(UserError) as info:
        engine.generate(two, SamplingParams(n=1, max_new_tokens=2))
    message = str(info.value)
    assert f"prompt 1 (row id 'row-b') has {long} tokens" in message
    assert f"{long + 2} > vLLM's max_model_len {long}" in message
    for way_out in ("rollout.engine_args.max_model_len", "rollout.max_new_tokens", "max_pixels"):
        assert way_out in message
    engine.generate(two[:1], SamplingParams(n=1, max_new_tokens=2))  # the short one fits


def test_a_completion_vllm_would_cut_is_a_user_error(standin, policy, prompts):
    (length,) = prompt_lengths(policy, prompts[:1])
    engine = make_engine(policy, max_model_len=length + 3)
    with pytest.raises(UserError, match=f"prompt 0 has {length} tokens .* {length + 4} > "):
        engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4))
    batch = engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=3))  # fits exactly
    assert batch.response_mask.shape[1] <= 3


def test_max_model_len_minus_one_is_vllms_own(standin, policy, prompts):
    engine = make_engine(policy, max_model_len=-1)
    assert engine.llm.init_kwargs["max_model_len"] == -1
    assert engine.max_model_len == 4096  # the tiny model's max_position_embeddings
    with pytest.raises(UserError, match="> vLLM's max_model_len 4096"):
        engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4096))


def test_max_model_len_must_exceed_max_new_tokens():
    def section(length, new):
        return SimpleNamespace(
            engine="vllm", engine_args={"max_model_len": length}, max_new_tokens=new,
            temperature=1.0,
        )  # fmt: skip

    trainer = SimpleNamespace(old_logprobs="auto")
    with pytest.raises(UserError, match=r"rollout.engine_args.max_model_len: 512 leaves no room"):
        check_section(section(512, 512), trainer)
    check_section(section(513, 512), trainer)
    check_section(section(-1, 512), trainer)  # auto-fit: checked per prompt at generate
    hf = SimpleNamespace(engine="hf", engine_args={}, max_new_tokens=512, temperature=1.0)
    check_section(hf, trainer)  # the hf engine has no such hook
    overrides = ["rollout.engine=vllm", "rollout.engine_args={max_model_len: 64}"]
    with pytest.raises(
        UserError, match="max_model_len: 64 leaves no room.*max_new_tokens \\(64\\)"
    ):
        load_recipe("recipes/tiny/mhpo.yaml", [*overrides, "rollout.max_new_tokens=64"])


def test_too_little_free_gpu_memory_is_a_user_error(policy, standin, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30 * GIB, 80 * GIB))
    with pytest.raises(UserError) as info:
        make_engine(policy, gpu_memory_utilization=0.5)
    message = str(info.value)
    assert message.startswith("rollout.engine_args.gpu_memory_utilization: vLLM needs 0.5")
    for text in ("80.00 GiB (40.00 GiB) free", "30.00 GiB is free", "at most 0.37"):
        assert text in message
    for way_out in ("parallel.strategy: fsdp", "parallel.cpu_offload", "mhpo-vl estimate"):
        assert way_out in message
    # exactly enough: vLLM starts (the CUDA generators are faked away: no GPU here)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    make_engine(policy, gpu_memory_utilization=0.5)


# --- weights


@pytest.mark.parametrize(
    ("model_type", "hf_name", "vllm_name", "shard"),
    [
        ("qwen2", "model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.qkv_proj.bias", "k"),
        ("qwen2", "model.layers.3.mlp.up_proj.weight", "model.layers.3.mlp.gate_up_proj.weight", 1),
        ("qwen2", "lm_head.weight", "lm_head.weight", None),
        ("qwen3", "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.q_norm.weight", None),
        ("qwen3", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.qkv_proj.weight", "q"),
        ("qwen2_vl", "model.visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.qkv.weight", None),
        ("qwen2_vl", "model.visual.blocks.0.mlp.fc1.weight", "visual.blocks.0.mlp.fc1.weight", None),
        ("qwen2_vl", "model.layers.0.mlp.gate_proj.weight", "language_model.model.layers.0.mlp.gate_up_proj.weight", 0),
        ("qwen2_vl", "lm_head.weight", "language_model.lm_head.weight", None),
        ("qwen2_5_vl", "model.visual.blocks.1.mlp.gate_proj.bias", "visual.blocks.1.mlp.gate_up_proj.bias", 0),
        ("qwen2_5_vl", "model.visual.merger.mlp.2.weight", "visual.merger.mlp.2.weight", None),
        ("qwen2_5_vl", "model.language_model.layers.0.self_attn.v_proj.weight", "language_model.model.layers.0.self_attn.qkv_proj.weight", "v"),
        ("qwen2_5_vl", "model.language_model.embed_tokens.weight", "language_model.model.embed_tokens.weight", None),
        ("qwen3_vl", "model.visual.blocks.0.mlp.linear_fc1.weight", "visual.blocks.0.mlp.linear_fc1.weight", None),
        ("qwen3_vl", "model.visual.deepstack_merger_list.0.norm.weight", "visual.deepstack_merger_list.0.norm.weight", None),
        ("qwen3_vl", "model.language_model.layers.0.mlp.up_proj.weight", "language_model.model.layers.0.mlp.gate_up_proj.weight", 1),
        ("qwen3_vl", "model.language_model.rotary_emb.inv_freq", None, None),
    ],
)  # fmt: skip
def test_standin_maps_checkpoint_names_as_vllm_does(model_type, hf_name, vllm_name, shard):
    """Hand-checked against each model's hf_to_vllm_mapper in vLLM 0.33.0."""
    got = vllm_standin.map_name(vllm_standin.LAYOUTS[model_type], hf_name)
    assert got == (None if vllm_name is None else (vllm_name, shard))


def _tiny_config(model_type):
    import transformers as tf

    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=256,
    )  # fmt: skip
    vision = dict(depth=1, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if model_type == "qwen2":
        return tf.Qwen2Config(**text)
    if model_type == "qwen3":
        return tf.Qwen3Config(**text, head_dim=8)
    if model_type == "qwen2_vl":
        return tf.Qwen2VLConfig(
            text_config=text, vision_config={**vision, "embed_dim": 32, "hidden_size": 32}
        )
    if model_type == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            text_config=text,
            vision_config={
                **vision, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 32,
                "fullatt_block_indexes": [0],
            },
        )  # fmt: skip
    return tf.Qwen3VLConfig(
        text_config={**text, "head_dim": 8},
        vision_config={
            **vision, "depth": 2, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
            "out_hidden_size": 32, "deepstack_visual_indexes": [1], "num_position_embeddings": 16,
        },
    )  # fmt: skip


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_standin_loads_each_architecture_stacked(model_type, tmp_path, standin):
    """A dummy-loaded stand-in takes a Hugging Face model's parameters by checkpoint name:
    every vLLM parameter loaded, q/k/v and gate/up stacked in order."""
    import transformers as tf

    config = _tiny_config(model_type)
    config.save_pretrained(tmp_path)
    llm = standin.LLM(str(tmp_path), load_format="dummy")
    vllm_model = llm.worker.get_model()
    params = dict(vllm_model.named_parameters())
    assert all(p.abs().max() <= 1e-3 for p in params.values())  # the dummy loader's range
    lm = "model." if model_type in ("qwen2", "qwen3") else "language_model.model."
    qkv = params[f"{lm}layers.0.self_attn.qkv_proj.weight"]
    assert tuple(qkv.shape) == (32 + 16 + 16, 32)  # 4 heads x 8, then 2 kv heads x 8 twice
    assert vllm_model.shards(f"{lm}layers.0.self_attn.qkv_proj.weight") == {
        "q": (0, 32), "k": (32, 16), "v": (48, 16)
    }  # fmt: skip
    assert tuple(params[f"{lm}layers.0.mlp.gate_up_proj.weight"].shape) == (128, 32)
    hf = getattr(tf, vllm_standin._HF_CLASSES[model_type])._from_config(config)
    hf_params = dict(hf.named_parameters())
    with vllm_standin.set_current_vllm_config(llm.vllm_config):
        loaded = vllm_model.load_weights(hf.named_parameters())
    assert loaded == set(params)
    prefix = "model." if model_type in ("qwen2", "qwen3") else "model.language_model."
    q, k, v = (hf_params[f"{prefix}layers.0.self_attn.{x}_proj.weight"] for x in "qkv")
    assert torch.equal(qkv, torch.cat([q, k, v]))
    gate, up = (hf_params[f"{prefix}layers.0.mlp.{x}_proj.weight"] for x in ("gate", "up"))
    assert torch.equal(params[f"{lm}layers.0.mlp.gate_up_proj.weight"], torch.cat([gate, up]))


def test_sync_weights_pushes_the_trained_weights(engine, policy):
    trained = copy.deepcopy(policy.model)
    name = "model.language_model.layers.0.self_attn.k_proj.weight"
    param = dict(trained.named_parameters())[name]
    with torch.no_grad():
        param.add_(0.5)
    # vLLM stacks q (8 heads x 16), k and v (4 x 16 each): k is rows 128..191
    qkv = vllm_params(engine)["language_model.model.layers.0.self_attn.qkv_proj.weight"]
    assert qkv.shape == (256, 128) and not torch.equal(qkv[128:192], param)
    resets = (engine.llm.prefix_cache_resets, engine.llm.llm_engine.encoder_cache_resets)
    start = len(engine.llm.weight_log)
    try:
        engine.sync_weights(trained)
        assert torch.equal(qkv[128:192], param)
        log = engine.llm.weight_log[start:]
        assert len(log) == len(list(trained.parameters()))
        assert {dtype for _, dtype, _ in log} == {torch.float32}  # the engine's dtype
        # caches computed with the old weights are dropped
        assert engine.llm.prefix_cache_resets == resets[0] + 1
        assert engine.llm.llm_engine.encoder_cache_resets == resets[1] + 1
    finally:
        engine.sync_weights(policy.model)
    assert torch.equal(qkv[128:192], dict(policy.model.named_parameters())[name])


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
    monkeypatch.setattr(engine, "_stream_sync", False)  # as with worker processes
    calls, start = len(engine.llm.weight_calls), len(engine.llm.weight_log)
    engine.sync_weights(policy.model)
    sent = engine.llm.weight_calls[calls:]
    assert len(sent) > 1 and set(sent) == {"list"}  # bounded chunks, not one copy
    log = engine.llm.weight_log[start:]
    assert len(log) == len(list(policy.model.parameters()))
    assert {device for _, _, device in log} == {"cpu"}


def test_a_first_sync_that_misses_a_vllm_parameter_names_it(standin):
    policy = load_policy("embedded:tiny-vl")
    norm = policy.model.model.language_model.norm
    weight = norm._parameters.pop("weight")  # a model that lacks a parameter vLLM has
    norm.register_buffer("weight", weight.detach())
    with pytest.raises(RuntimeError) as info:
        make_engine(policy)
    message = str(info.value)
    loaded, total = map(
        int, re.search(r"loaded (\d+) of vLLM's (\d+) parameters", message).groups()
    )
    assert total - loaded == 1
    assert message.endswith(
        "never loaded (still the dummy loader's random values): language_model.model.norm.weight"
    )
    with pytest.warns(UserWarning, match="keep the 'auto' checkpoint's values.*model.norm"):
        engine = make_engine(policy, extra={"load_format": "auto"}, sleep_level=2)
    engine.sleep()  # a level-2 sleep discards what the checkpoint had given
    with pytest.raises(RuntimeError, match=r"\(discarded by sleep level 2\): language_model"):
        engine.wake()


def test_load_format_is_dummy_unless_extra_says_otherwise(policy, standin, prompts):
    engine = make_engine(policy, extra={"load_format": "auto"})
    assert engine.llm.init_kwargs["load_format"] == "auto"
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    ref = HFEngine(policy).generate(prompts, greedy)
    assert engine.generate(prompts, greedy).completions == ref.completions


def test_frozen_parameters_are_sent_only_when_vllm_lacks_them(standin):
    policy = load_policy("embedded:tiny-vl", freeze_vision=True)
    frozen = {n for n, p in policy.model.named_parameters() if not p.requires_grad}
    every = {n for n, _ in policy.model.named_parameters()}
    assert frozen and all(n.startswith("model.visual.") for n in frozen)

    def sent_by(action):
        start = len(engine.llm.weight_log)
        action()
        return {n for n, _, _ in engine.llm.weight_log[start:]}

    engine = make_engine(policy, sleep_level=1)
    assert {n for n, _, _ in engine.llm.weight_log} == every  # the first sync: everything
    assert sent_by(lambda: engine.sync_weights(policy.model)) == every - frozen
    engine.sleep()  # level 1 keeps them
    assert sent_by(lambda: engine.sync_weights(policy.model)) == every - frozen
    engine.wake()
    engine.sleep_level = 2
    engine.sleep()  # level 2 discards them
    assert sent_by(lambda: engine.sync_weights(policy.model)) == every
    engine.wake()
    assert all(torch.isfinite(p).all() for p in vllm_params(engine).values())


def test_stream_weights_is_lazy_and_names_as_the_checkpoint():
    drawn = []

    class Wrapped(torch.nn.Module):
        def named_parameters(self):
            for name in ("_orig_mod.model._fsdp_wrapped_module.layers.0.w",
                         "module.lm_head._checkpoint_wrapped_module.weight"):  # fmt: skip
                drawn.append(name)
                yield name, torch.nn.Parameter(torch.ones(2))

    stream = stream_weights(Wrapped(), torch.bfloat16)
    assert drawn == []  # nothing read before it is consumed
    name, tensor = next(stream)
    assert len(drawn) == 1 and name == "model.layers.0.w" and tensor.dtype == torch.bfloat16
    assert next(stream)[0] == "lm_head.weight"
    assert hf_param_name("module.model.module.x") == "model.module.x"  # only DDP's leading one


@pytest.fixture()
def gloo_group(tmp_path):
    """A real 1-process gloo group and a CPU device mesh over it."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_weights_are_gathered_on_the_compute_device(gloo_group, monkeypatch):
    """FSDP2 CPU offload: shards rest on the CPU; the gather must run on the compute
    device (an NCCL group cannot all-gather CPU tensors). The compute device here is
    ``meta``, made distinguishable from the shards' CPU."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    model = torch.nn.Linear(4, 2)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, p in list(model.named_parameters()):
        setattr(
            model, name, torch.nn.Parameter(distribute_tensor(p.detach(), gloo_group, [Shard(0)]))
        )
    model.bias.requires_grad_(False)
    gathered_on = []
    original = DTensor.full_tensor

    def spy(self, *args, **kwargs):
        gathered_on.append(self.to_local().device.type)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DTensor, "full_tensor", spy)
    out = dict(stream_weights(model, torch.float32, gather_device=torch.device("meta")))
    assert gathered_on == ["meta", "meta"] and {t.device.type for t in out.values()} == {"meta"}
    gathered_on.clear()
    out = dict(stream_weights(model, torch.float32, gather_device="cpu"))
    assert gathered_on == ["cpu", "cpu"]
    for name, value in expected.items():
        assert torch.equal(out[name], value)
    assert list(stream_weights(model, torch.float32, trainable_only=True))[0][0] == "weight"
    assert len(list(stream_weights(model, torch.float32, trainable_only=True))) == 1


def test_sync_gathers_on_the_policys_device(engine, policy, monkeypatch):
    seen = []
    original = vllm_module.stream_weights

    def spy(*args, **kwargs):
        seen.append(kwargs["gather_device"])
        return original(*args, **kwargs)

    monkeypatch.setattr(vllm_module, "stream_weights", spy)
    monkeypatch.setattr(policy, "device", torch.device("cpu", 0))  # as cuda:0 would be
    engine.sync_weights(policy.model)
    assert seen == [torch.device("cpu", 0)]


# --- memory


def test_sleep_and_wake(policy, standin, prompts):
    engine = make_engine(policy, sleep_level=1)
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


def test_sleep_level_2_then_wake_resyncs_the_last_model(policy, standin, prompts):
    """The trainer's eval wakes and sleeps with no sync in between: after a level-2
    sleep the next wake must bring the weights back itself."""
    engine = make_engine(policy, sleep_level=2)
    llm = engine.llm
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompts, greedy)
    engine.sleep()  # the step's update
    engine.sync_weights(policy.model)
    engine.wake()  # eval
    engine.generate(prompts, greedy)
    engine.sleep()
    assert llm.sleep_calls == [2, 2]
    start = len(llm.weight_log)
    engine.wake()  # the next step: the weights were discarded since the last sync
    assert len(llm.weight_log) - start == 80  # every parameter again
    assert all(torch.isfinite(p).all() for p in vllm_params(engine).values())
    assert torch.equal(engine.generate(prompts, greedy).input_ids, before.input_ids)
    trained = copy.deepcopy(policy.model)  # the last model synced is the one restored
    with torch.no_grad():
        trained.lm_head.weight.mul_(2.0)  # tied: the embedding vLLM holds
    engine.sync_weights(trained)
    engine.sleep()
    engine.wake()
    embed = vllm_params(engine)["language_model.model.embed_tokens.weight"]
    assert torch.equal(embed, trained.lm_head.weight)


def test_without_sleep_mode_sleep_and_wake_do_nothing(policy, standin, prompts):
    engine = make_engine(policy, extra={"enable_sleep_mode": False})
    assert engine.llm.init_kwargs["enable_sleep_mode"] is False
    engine.sleep()  # the stand-in raises if vLLM's sleep is called without sleep mode
    engine.wake()
    assert engine.llm.sleep_calls == [] and engine.llm.wake_calls == []
    engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2))


# --- random numbers


def _rng_snapshot():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def _seed_trainer(value):
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def test_vllm_leaves_the_trainers_random_numbers_alone(policy, standin, prompts):
    """vLLM seeds every process-wide generator at build and samples from them."""
    _seed_trainer(123)
    expected = _rng_snapshot()
    _seed_trainer(123)
    engine = make_engine(policy, seed=5)
    assert _rng_snapshot() == expected
    _seed_trainer(123)
    engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6))
    assert _rng_snapshot() == expected


def test_samples_follow_the_engines_seed_and_rank(policy, standin, prompts, fake_dist):
    params = SamplingParams(n=2, max_new_tokens=8)
    first = make_engine(policy)
    torch.manual_seed(1)
    a = first.generate(prompts, params).completions
    second = make_engine(policy)  # the same seed: the same samples, whatever the trainer's
    torch.manual_seed(2)
    assert second.generate(prompts, params).completions == a
    fake_dist(rank=1, world=2)  # another data-parallel rank: its own seed and samples
    other = make_engine(policy)
    assert other.llm.init_kwargs["seed"] == 1
    assert other.generate(prompts, params).completions != a


@pytest.mark.parametrize(
    ("rank", "world", "tp", "seed"), [(3, 4, 1, 13), (3, 4, 2, 11), (2, 4, 2, 11)]
)
def test_each_tensor_parallel_group_gets_its_own_seed(
    policy, standin, fake_dist, rank, world, tp, seed
):
    created = fake_dist(rank=rank, world=world)
    engine = make_engine(policy, seed=10, tensor_parallel_size=tp)
    assert engine.llm.init_kwargs["seed"] == seed
    assert engine.llm.init_kwargs["distributed_executor_backend"] == "external_launcher"
    assert engine.lockstep is (tp > 1)
    if tp > 1:  # every rank creates every group (the engine's, then vLLM's): [0, 1], [2, 3]
        assert created == [[0, 1], [2, 3]] * 2


# --- tensor parallelism under torchrun


def test_external_launcher_streams_weights_with_tensor_parallelism(
    policy, standin, fake_dist, prompts
):
    fake_dist(rank=0, world=2)
    engine = make_engine(policy, tensor_parallel_size=2)
    assert engine.llm.weight_calls == ["generator"]  # the worker is in this process
    batch = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=2))
    # the fake gather hands this rank's prompts back as the other rank's: 2 x 3 requests
    assert len(batch) == len(prompts) and len(engine.llm.requests) == 2 * len(prompts)


def test_tensor_parallel_size_must_divide_the_processes(policy, standin, fake_dist):
    fake_dist(rank=0, world=3)
    with pytest.raises(UserError, match="tensor_parallel_size: 2 does not divide the 3"):
        make_engine(policy, tensor_parallel_size=2)


@pytest.mark.slow
def test_a_tensor_parallel_group_generates_every_ranks_prompts(tmp_path):
    """Two real processes (gloo), one TP group: both engines must get the group's
    requests (the stand-in compares them), each rank keeps its own rows."""
    with socket.socket() as s:  # a free port (a fixed one may be taken on a shared machine)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), str(ROOT / "tests" / "vllm_tp_worker.py"),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "ok rank 0" in res.stdout and "ok rank 1" in res.stdout


# --- arguments and the missing package


def test_check_args_fills_defaults():
    assert VLLMEngine.check_args({"max_model_len": 2048}, KEY) == {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "max_model_len": 2048,
        "enforce_eager": False,
        "sleep_level": 2,
        "max_images_per_prompt": 1,
        "seed": 0,
        "extra": {},
    }
    got = VLLMEngine.check_args({"max_model_len": -1, "extra": {"max_num_seqs": 8}}, KEY)
    assert got["max_model_len"] == -1 and got["extra"] == {"max_num_seqs": 8}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"gpu_memory": 0.5}, f"{KEY}.gpu_memory: unknown engine argument"),
        ({"gpu_memory_utilization": 0}, f"{KEY}.gpu_memory_utilization: must be a number in"),
        ({"gpu_memory_utilization": 1.5}, f"{KEY}.gpu_memory_utilization"),
        ({"gpu_memory_utilization": True}, f"{KEY}.gpu_memory_utilization"),
        ({"tensor_parallel_size": 0}, f"{KEY}.tensor_parallel_size: must be an integer >= 1"),
        ({"tensor_parallel_size": 2.0}, f"{KEY}.tensor_parallel_size"),
        ({"max_model_len": None}, f"{KEY}.max_model_len: must be set: the longest prompt .* -1"),
        ({"max_model_len": 0}, f"{KEY}.max_model_len: must be an integer >= 1, or -1"),
        ({"max_model_len": -2}, f"{KEY}.max_model_len: must be an integer >= 1, or -1"),
        ({"max_model_len": True}, f"{KEY}.max_model_len: must be an integer"),
        ({"max_model_len": 512.0}, f"{KEY}.max_model_len: must be an integer"),
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
        VLLMEngine.check_args({"max_model_len": 1024, **args}, KEY)


def test_missing_max_model_len_is_refused():
    with pytest.raises(UserError, match=f"{KEY}.max_model_len: must be set"):
        VLLMEngine.check_args({}, KEY)


def test_extra_reaches_vllm_and_typos_fail(policy, standin):
    extra = {
        "kv_cache_memory_bytes": 1 << 30,
        "compilation_config": {"level": 0},
        "max_num_seqs": 8,
        "enable_prefix_caching": True,
    }
    got = make_engine(policy, extra=extra).llm.init_kwargs
    assert {k: got[k] for k in extra} == extra
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_num_seq'"):
        make_engine(policy, extra={"max_num_seq": 4})  # vLLM has max_num_seqs


def test_standin_takes_vllms_argument_names():
    """The names committed in the stand-in, spot-checked by hand against vLLM 0.33.0's
    EngineArgs and LLM.__init__."""
    fields, init = vllm_standin.ENGINE_ARGS_FIELDS, vllm_standin.LLM_INIT_PARAMETERS
    assert len(fields) == 259 and len(init) == 40
    assert {"kv_cache_memory_bytes", "compilation_config", "load_format", "seed"} <= fields
    assert {"sleep_preserve_parameter_names", "distributed_executor_backend"} <= fields
    assert set(init) - fields == {"chat_template"} and init[0] == "model"
    assert "max_num_seq" not in fields


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
    engine = make_engine(policy, gpu_memory_utilization=0.3, enforce_eager=True)
    assert engine.vllm is not vllm_standin
    prompts = build_prompts(task_rows("vision", "test", 4))
    params = SamplingParams(n=2, max_new_tokens=8, temperature=1.0)
    batch = engine.generate(prompts, params)
    assert batch.input_ids.device.type == "cuda" and len(batch) == 8
    with torch.no_grad(), policy.autocast():
        logp, _ = token_logprobs(policy.model, batch)
    diff = ((logp - batch.sample_logprobs) * batch.response_mask).abs()
    assert diff.sum() / batch.response_mask.sum() < 0.05, diff.max()
    engine.sleep()  # level 2: the weights are discarded
    engine.wake()  # and synced again from the policy
    greedy = SamplingParams(n=1, max_new_tokens=8, temperature=0.0)
    ours = engine.generate(prompts, greedy).completions
    theirs = HFEngine(policy).generate(prompts, greedy).completions
    # bfloat16 kernels differ: a near-tie may break the other way in one row
    assert sum(a == b for a, b in zip(ours, theirs, strict=True)) >= len(prompts) - 1
