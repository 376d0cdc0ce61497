"""Tiny Qwen-VL / Qwen text models: processor, generation, and log-prob consistency.

Models here are random-init (no warm start) and small, so the whole file runs in
seconds; the real warm start is tested in test_models_warmstart.py (slow).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from mhpo_vl.embedded.tiny import build_embedded, parse_embedded, task_rows
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.models import logprobs as logprobs_mod
from mhpo_vl.qwen import VISION_TOKENS
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts
from mhpo_vl.rollout.encode import encode_prompts

SMALL = "sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0"


def _policy(tmp_path_factory, name: str):
    out = tmp_path_factory.mktemp(name.replace("?", "_").replace("&", "_").replace("=", "-"))
    build_embedded(parse_embedded(f"{name}?{SMALL}"), out)
    return load_policy(str(out))


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    return _policy(tmp_path_factory, "tiny-vl")


@pytest.fixture(scope="module")
def vision_rows():
    # free-form and multiple-choice rows have different prompt lengths -> left padding
    return task_rows("vision", "test", 6)


def _naive_logprobs(model, batch, temperature=1.0):
    """Full-sequence forward, full-vocabulary log_softmax, gather: the reference."""
    inputs = batch.model_inputs()
    if "image_grid_thw" not in inputs:
        inputs["position_ids"] = logprobs_mod.positions_from_mask(batch.attention_mask)
    logits = model(**inputs, use_cache=False).logits.float() / temperature
    T = batch.response_mask.shape[1]
    logp_all = torch.log_softmax(logits[:, -T - 1 : -1], dim=-1)
    targets = batch.input_ids[:, -T:]
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _rollout(policy, rows, n=2, max_new_tokens=6, seed=0, **kw):
    torch.manual_seed(seed)
    engine = HFEngine(policy, batch_size=kw.pop("batch_size", None))
    return engine.generate(
        build_prompts(rows), SamplingParams(n=n, max_new_tokens=max_new_tokens, **kw)
    )


def test_chat_template_and_image_pad_counts(vl, vision_rows):
    prompt = encode_prompts(vl, build_prompts(vision_rows))
    tok = vl.tokenizer
    text = tok.decode(prompt.input_ids[0][prompt.attention_mask[0].bool()])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    pads = (prompt.input_ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum(1)
    grid = prompt.extra["image_grid_thw"]
    merge = vl.processor.image_processor.merge_size
    assert pads.tolist() == (grid.prod(-1) // merge**2).tolist()
    assert pads.min() > 0
    assert prompt.images_per_row.tolist() == [1] * len(vision_rows)
    assert (prompt.attention_mask[:, 0] == 0).any(), "expected some left padding"
    assert (prompt.extra["mm_token_type_ids"] == 1).sum() == pads.sum()


def test_generate_never_emits_vision_tokens(vl, vision_rows):
    tok = vl.tokenizer
    ids = tok.convert_tokens_to_ids(VISION_TOKENS)
    bias = torch.zeros(len(tok))
    bias[ids] = 50.0  # make the vision tokens by far the most likely

    handle = vl.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        batch = _rollout(vl, vision_rows[:3], n=2, max_new_tokens=5)
    finally:
        handle.remove()
    assert not torch.isin(batch.completion_ids, torch.tensor(ids)).any()
    assert batch.response_lengths.min() > 0


def test_rows_are_prompt_major_and_masks_consistent(vl, vision_rows):
    tok = vl.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    bias = torch.zeros(len(tok))
    bias[end] = 4.0  # EOS likely enough to end rows at different lengths
    handle = vl.model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        batch = _rollout(vl, vision_rows[:3], n=4, max_new_tokens=8, batch_size=5)
    finally:
        handle.remove()
    lengths = batch.response_lengths.tolist()
    assert min(lengths) < max(lengths), "expected rows to end at different lengths"
    assert len(batch) == 12 and len(batch.completions) == 12
    S = batch.input_ids.shape[1]
    assert batch.prompt_len == S - batch.response_mask.shape[1]
    prompts = batch.input_ids[:, : batch.prompt_len]
    for p in range(3):
        assert (prompts[4 * p : 4 * p + 4] == prompts[4 * p]).all()
    assert not (prompts[0] == prompts[4]).all() or not (prompts[4] == prompts[8]).all()
    ended = 0
    for row, length, text in zip(batch.completion_ids, lengths, batch.completions, strict=True):
        stops = (row == end).nonzero().flatten().tolist()
        if stops:  # the mask covers the EOS token, then padding follows
            ended += 1
            assert length == stops[0] + 1
            assert (row[length:] == tok.pad_token_id).all()
        else:
            assert length == row.shape[0]
        assert text == tok.decode(row[:length], skip_special_tokens=True)
    assert ended > 0
    assert (batch.attention_mask[:, batch.prompt_len :] == batch.response_mask).all()
    assert (batch.sample_logprobs[batch.response_mask == 0] == 0).all()


def test_sample_logprobs_match_reforward(vl, vision_rows):
    batch = _rollout(vl, vision_rows, n=2, max_new_tokens=8, temperature=0.8, batch_size=4)
    with torch.no_grad():
        logp, _ = token_logprobs(vl.model, batch, temperature=0.8)
    mask = batch.response_mask
    assert mask.sum() > len(batch)
    assert ((logp - batch.sample_logprobs) * mask).abs().max() < 1e-4


def test_token_logprobs_equal_naive_full_softmax(vl, vision_rows, monkeypatch):
    batch = _rollout(vl, vision_rows[:4], n=2, max_new_tokens=6)
    monkeypatch.setattr(logprobs_mod, "CHUNK_ELEMENTS", 3 * len(vl.tokenizer))  # many chunks
    for temperature in (1.0, 0.7):
        with torch.no_grad():
            logp, ent = token_logprobs(vl.model, batch, temperature=temperature, with_entropy=True)
            ref_logp, ref_ent = _naive_logprobs(vl.model, batch, temperature)
        mask = batch.response_mask.bool()
        torch.testing.assert_close(logp[mask], ref_logp[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent[mask], ref_ent[mask], atol=1e-5, rtol=1e-5)


def test_gradients_match_naive_and_reach_vision_tower(vl, vision_rows, monkeypatch):
    batch = _rollout(vl, vision_rows[:3], n=2, max_new_tokens=4)
    monkeypatch.setattr(logprobs_mod, "CHUNK_ELEMENTS", 2 * len(vl.tokenizer))
    model = vl.model
    weights = [model.lm_head.weight, model.model.visual.patch_embed.proj.weight]

    def grads(fn):
        model.zero_grad()
        logp, ent = fn()
        ((logp + 0.1 * ent) * batch.response_mask).sum().backward()
        return [w.grad.clone() for w in weights]

    ours = grads(lambda: token_logprobs(model, batch, with_entropy=True))
    ref = grads(lambda: _naive_logprobs(model, batch))
    for a, b in zip(ours, ref, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_select_keeps_images_with_their_rows(vl, vision_rows):
    batch = _rollout(vl, vision_rows, n=2, max_new_tokens=5)
    idx = [7, 0, 3, 3, 10]
    sub = batch.select(idx)
    assert sub.completions == [batch.completions[i] for i in idx]
    patches = batch.extra["image_grid_thw"].prod(-1)
    assert sub.extra["pixel_values"].shape[0] == patches[idx].sum()
    start = int(patches[:3].sum())  # row 3's image is the 4th
    first_of_row3 = sub.extra["pixel_values"][patches[7] + patches[0] :][: patches[3]]
    assert torch.equal(first_of_row3, batch.extra["pixel_values"][start : start + patches[3]])
    with torch.no_grad():
        full, _ = token_logprobs(vl.model, batch)
        part, _ = token_logprobs(vl.model, sub)
    torch.testing.assert_close(part * sub.response_mask, full[idx] * sub.response_mask)


def test_greedy_is_deterministic_and_top_k_1_is_greedy(vl, vision_rows):
    greedy = _rollout(vl, vision_rows[:3], n=3, temperature=0.0)
    assert all(
        greedy.completions[3 * p] == greedy.completions[3 * p + j]
        for p in range(3)
        for j in range(3)
    )
    topk1 = _rollout(vl, vision_rows[:3], n=3, top_k=1, seed=5)
    assert topk1.completions == greedy.completions
    a = _rollout(vl, vision_rows[:3], n=3, seed=1)
    b = _rollout(vl, vision_rows[:3], n=3, seed=1)
    assert a.completions == b.completions and torch.equal(a.input_ids, b.input_ids)


def test_generate_restores_training_mode(vl, vision_rows):
    vl.model.train()
    _rollout(vl, vision_rows[:1], n=1, max_new_tokens=2)
    assert vl.model.training
    vl.model.eval()


def test_checkpoint_generation_config_does_not_leak(vl, vision_rows):
    """An Instruct checkpoint's top_k=1 / repetition penalty must not change sampling."""
    plain = _rollout(vl, vision_rows[:2], n=4, seed=3)
    gc = vl.model.generation_config
    saved = (gc.top_k, gc.repetition_penalty, gc.do_sample)
    gc.top_k, gc.repetition_penalty, gc.do_sample = 1, 3.0, False
    try:
        again = _rollout(vl, vision_rows[:2], n=4, seed=3)
    finally:
        gc.top_k, gc.repetition_penalty, gc.do_sample = saved
    assert again.completions == plain.completions


@pytest.mark.parametrize("name", ["tiny-vl?arch=qwen2_vl", "tiny-vl?arch=qwen3_vl", "tiny-text"])
def test_other_architectures_logprobs_match(tmp_path_factory, name):
    """Qwen2-VL, Qwen3-VL (interleaved mRoPE, deepstack) and Qwen2 text: same contract."""
    sep = "&" if "?" in name else "?"
    out = tmp_path_factory.mktemp("arch")
    cfg = parse_embedded(f"{name}{sep}{SMALL}")
    build_embedded(cfg, out)
    policy = load_policy(str(out))
    rows = task_rows(cfg.task, "test", 4)
    batch = _rollout(policy, rows, n=2, max_new_tokens=6, temperature=1.2)
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model, batch, temperature=1.2)
        ref, _ = _naive_logprobs(policy.model, batch, 1.2)
    mask = batch.response_mask
    assert (batch.attention_mask[:, 0] == 0).any()
    assert ((logp - batch.sample_logprobs) * mask).abs().max() < 1e-4
    assert ((logp - ref) * mask).abs().max() < 1e-5


def test_bf16_autocast_keeps_float32_parameters_and_consistent_logprobs(tmp_path_factory):
    """Mixed precision as trained: float32 parameters, bfloat16 compute under autocast;
    the engine's sampling log-probs and a re-forward agree to bfloat16 accuracy."""
    out = tmp_path_factory.mktemp("bf16")
    build_embedded(parse_embedded(f"tiny-vl?{SMALL}"), out)
    policy = load_policy(str(out), dtype="bfloat16", master_dtype="float32")
    assert policy.param_dtype == torch.float32 and policy.compute_dtype == torch.bfloat16
    batch = _rollout(policy, task_rows("vision", "test", 4), n=2, max_new_tokens=6)
    with torch.no_grad(), policy.autocast():
        logp, _ = token_logprobs(policy.model, batch)
        fp32_logits_dtype = policy.model(**batch.model_inputs(), use_cache=False).logits.dtype
    assert fp32_logits_dtype == torch.bfloat16  # the matmuls really ran in bfloat16
    mask = batch.response_mask
    assert ((logp - batch.sample_logprobs) * mask).abs().max() < 0.1
    pure = load_policy(str(out), dtype="bfloat16")
    assert pure.param_dtype == torch.bfloat16
    assert isinstance(pure.autocast(), type(contextlib.nullcontext()))
