"""load_policy: user errors name the path; embedded models build once, reproducibly."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mhpo_vl.embedded import tiny
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy
from mhpo_vl.models.processors import IMAGE_ONLY_PROCESSORS, has_torchvision

SMALL = "sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MHPO_VL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("path", ["/no/such/model", "./missing-model", "a/b/c", "nothing"])
def test_nonexistent_path_is_a_user_error_naming_it(path):
    with pytest.raises(UserError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"model not found: {path} (model.path or --model); ")


def test_file_or_configless_dir_is_a_user_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="weights.bin"):
        load_policy(str(f))
    with pytest.raises(UserError, match=str(tmp_path)):
        load_policy(str(tmp_path))


def test_hub_id_offline_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="NoSuchOrg/no-such-model"):
        load_policy("NoSuchOrg/no-such-model")


def test_bad_embedded_names_and_options():
    with pytest.raises(UserError, match="tiny-xl"):
        load_policy("embedded:tiny-xl")
    with pytest.raises(UserError, match="bogus"):
        tiny.parse_embedded("tiny-vl?bogus=1")
    with pytest.raises(UserError, match="sft_steps"):
        tiny.parse_embedded("tiny-vl?sft_steps=many")
    with pytest.raises(UserError, match="arch"):
        tiny.parse_embedded("tiny-text?arch=qwen2_5_vl&task=vision&arch=llama")
    assert tiny.parse_embedded("tiny-vl?sft_steps=3&sft_lr=0.01").sft_lr == 0.01


def test_bad_dtype_is_a_user_error():
    with pytest.raises(UserError, match="float64"):
        load_policy("embedded:tiny-vl", dtype="float64")


def test_embedded_is_built_once_and_cached(cache):
    name = f"tiny-vl?{SMALL}"
    first = tiny.ensure_embedded(name)
    assert first.is_relative_to(cache) and (first / "build_info.json").exists()
    stamp = os.stat(first / "build_info.json").st_mtime_ns
    policy = load_policy(f"embedded:{name}")
    assert os.stat(first / "build_info.json").st_mtime_ns == stamp  # not rebuilt
    assert policy.is_vision and policy.path == f"embedded:{name}"
    assert policy.tokenizer is policy.processor.tokenizer
    if not has_torchvision():
        assert type(policy.processor) is IMAGE_ONLY_PROCESSORS["qwen2_5_vl"]
    # another config, another directory; no temporary directories left behind
    other = tiny.ensure_embedded(f"tiny-vl?{SMALL}&hidden=64")
    assert other != first
    assert sorted(p.name for p in first.parent.iterdir() if p.is_dir()) == sorted(
        [first.name, other.name]
    )


def test_text_policy_processor_is_the_tokenizer(cache):
    policy = load_policy(f"embedded:tiny-text?{SMALL}")
    assert not policy.is_vision
    assert policy.processor is policy.tokenizer
    assert policy.tokenizer.padding_side == "left"
    assert type(policy.model).__name__ == "Qwen2ForCausalLM"


def test_warm_start_is_reproducible(tmp_path):
    """Same config, two builds from scratch: identical weights (and a changed model)."""
    cfg = tiny.parse_embedded(
        "tiny-vl?sft_steps=3&sft_batch=4&bpe_rows=100&sft_rows=40&sft_val_rows=8&sft_eval_every=2"
    )
    rng_before = torch.get_rng_state()
    tiny.build_embedded(cfg, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    tiny.build_embedded(cfg, tmp_path / "b")
    tiny.build_embedded(cfg.replace(sft_steps=0), tmp_path / "c")
    a, b, c = (load_policy(str(tmp_path / d)).model.state_dict() for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    info = json.loads((tmp_path / "a" / "build_info.json").read_text())
    assert info["sft_steps_run"] == 3 and info["final_sft_loss"] > 0
    assert 0.0 <= info["val_accuracy"] <= 1.0


def test_freeze_vision_and_gradient_checkpointing(cache):
    policy = load_policy(
        f"embedded:tiny-vl?{SMALL}", freeze_vision=True, gradient_checkpointing=True
    )
    visual = policy.model.model.visual
    assert not any(p.requires_grad for p in visual.parameters())
    assert all(p.requires_grad for n, p in policy.model.named_parameters() if "visual" not in n)
    model = policy.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
