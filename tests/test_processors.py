"""Qwen-VL processors: one loading path that returns a whole processor, and saved
directories that transformers' stock AutoProcessor (and so vLLM) resolves."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import ProcessorMixin
from transformers.models.auto.processing_auto import processor_class_from_name

from mhpo_vl import checkpoint
from mhpo_vl.embedded import tiny
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy
from mhpo_vl.models.processors import (
    IMAGE_ONLY_PROCESSORS,
    VIDEO_PROCESSOR_TYPES,
    check_processor,
    has_torchvision,
    load_vl_processor,
)
from mhpo_vl.rollout.encode import encode_prompts

SMALL = "sft_steps=0&bpe_rows=100&sft_rows=40&sft_val_rows=0"
STOCK = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny random-init model per Qwen-VL architecture, saved as the builder saves it."""
    root = tmp_path_factory.mktemp("vl")
    out = {}
    for arch in STOCK:
        cfg = tiny.parse_embedded(f"tiny-vl?{SMALL}&arch={arch}")
        tiny.build_embedded(cfg, root / arch)
        out[arch] = root / arch
    return out


def _prompt() -> dict:
    image = Image.new("RGB", (56, 84), (200, 30, 30))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "How many red squares?"}],
        }
    ]
    return {"messages": messages, "images": [image]}


@pytest.mark.parametrize("arch", list(STOCK))
def test_loaded_processor_is_whole_and_expands_images(built, arch):
    policy = load_policy(str(built[arch]))
    proc = policy.processor
    assert isinstance(proc, ProcessorMixin)
    assert type(proc).__name__ == STOCK[arch]
    assert type(proc).__mro__[1] is processor_class_from_name(STOCK[arch])
    assert proc.image_processor is not None and proc.tokenizer is policy.tokenizer
    assert "<|im_start|>" in proc.chat_template
    enc = encode_prompts(policy, [_prompt()])
    grid = enc.extra["image_grid_thw"]
    merge = proc.image_processor.merge_size
    n_pad = int((enc.input_ids == proc.image_token_id).sum())
    assert n_pad == int(grid.prod()) // merge**2 > 0


@pytest.mark.parametrize("arch", list(STOCK))
def test_saved_directory_names_the_stock_classes(built, arch):
    """processor_config.json / tokenizer_config.json name a class AutoProcessor resolves,
    and there is a video processor section the stock processor can build from."""
    config = json.loads((built[arch] / "processor_config.json").read_text())
    assert processor_class_from_name(config["processor_class"]).__name__ == STOCK[arch]
    tok_config = json.loads((built[arch] / "tokenizer_config.json").read_text())
    assert tok_config["processor_class"] == STOCK[arch]
    video = config["video_processor"]
    assert video["video_processor_type"] == VIDEO_PROCESSOR_TYPES[arch]
    image = config["image_processor"]
    for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
        assert video[key] == image[key], key
    from transformers.video_processing_utils import BaseVideoProcessor

    found, _ = BaseVideoProcessor.get_video_processor_dict(str(built[arch]))
    assert found == video  # what AutoVideoProcessor reads


def test_checkpoint_round_trip_keeps_the_processor(built, tmp_path):
    policy = load_policy(str(built["qwen2_5_vl"]))
    path = checkpoint.save_checkpoint(
        tmp_path, 3, policy.model, policy.processor, {"step": 3}, keep_last=1
    )
    config = json.loads((path / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor" and "video_processor" in config
    again = load_policy(str(path))
    a, b = encode_prompts(policy, [_prompt()]), encode_prompts(again, [_prompt()])
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.extra["pixel_values"], b.extra["pixel_values"])


def test_hub_layout_directory_loads(built, tmp_path):
    """The hub's layout (preprocessor_config.json + tokenizer + chat_template.json, no
    processor_config.json), as Qwen/Qwen2.5-VL-7B-Instruct ships it."""
    src = built["qwen2_5_vl"]
    ours = load_policy(str(src)).processor
    hub = tmp_path / "hub"
    hub.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(src / name, hub / name)
    ours.image_processor.save_pretrained(hub)
    ours.tokenizer.save_pretrained(hub)
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": ours.chat_template}))
    assert not (hub / "processor_config.json").exists()
    assert (hub / "preprocessor_config.json").exists()
    policy = load_policy(str(hub))
    a = encode_prompts(policy, [_prompt()])
    b = encode_prompts(load_policy(str(src)), [_prompt()])
    assert torch.equal(a.input_ids, b.input_ids)


def test_directory_without_image_processor_config_is_a_user_error(built, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(built["qwen2_5_vl"] / name, bare / name)
    with pytest.raises(UserError, match=str(bare)):
        load_vl_processor(str(bare), "qwen2_5_vl")


def test_a_tokenizer_is_not_accepted_as_a_processor(built):
    """What the stock AutoProcessor returned on the GPU machine: a bare tokenizer."""
    tokenizer = load_policy(str(built["qwen2_vl"])).tokenizer
    with pytest.raises(UserError, match="returned a Qwen2Tokenizer.*not a Qwen-VL processor"):
        check_processor(tokenizer, "some/dir")


def test_processor_without_chat_template_is_named(built):
    proc = load_policy(str(built["qwen2_vl"])).processor
    proc.chat_template = None
    with pytest.raises(UserError, match="some/dir.*no chat template"):
        check_processor(proc, "some/dir")


def test_unknown_model_type_is_a_user_error():
    with pytest.raises(UserError, match="llava"):
        load_vl_processor("x", "llava")


@pytest.mark.skipif(not has_torchvision(), reason="needs torchvision (the GPU machines' image)")
@pytest.mark.parametrize("arch", list(STOCK))
def test_stock_autoprocessor_loads_our_directory(built, arch):
    """Where torchvision is installed: transformers' AutoProcessor (what vLLM and users
    call) builds the stock processor from our directory and encodes like ours."""
    from transformers import AutoProcessor

    stock = AutoProcessor.from_pretrained(str(built[arch]))
    assert type(stock) is processor_class_from_name(STOCK[arch])
    assert stock.video_processor is not None
    policy = load_policy(str(built[arch]))
    prompt = _prompt()
    text = stock.apply_chat_template(prompt["messages"], tokenize=False, add_generation_prompt=True)
    enc = stock(text=[text], images=prompt["images"], return_tensors="pt")
    ours = encode_prompts(policy, [prompt])
    assert torch.equal(enc["input_ids"], ours.input_ids)


def test_image_only_classes_cover_every_vl_type():
    assert set(IMAGE_ONLY_PROCESSORS) == set(STOCK) == set(VIDEO_PROCESSOR_TYPES)
