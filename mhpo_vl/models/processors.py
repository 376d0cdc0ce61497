"""Qwen-VL processors that work with and without torchvision.

Without torchvision, transformers' video processors are placeholders, so the stock
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` (and
``AutoProcessor``, which then silently returns only the tokenizer) cannot be built.
RL on images never needs video, so the subclasses here drop the video processor and
keep everything else: the PIL image processor, the tokenizer, the chat template, the
image-token expansion. With torchvision installed the stock processors are used.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def _token_attr(tokenizer: Any, name: str, default: str) -> tuple[str, int]:
    token = getattr(tokenizer, name, None) or default
    token_id = getattr(tokenizer, f"{name}_id", None)
    return token, token_id if token_id is not None else tokenizer.convert_tokens_to_ids(token)


def _image_only_init(self: Any, image_processor: Any, tokenizer: Any, chat_template: Any) -> None:
    """What the stock ``__init__`` does, minus the video processor."""
    self.image_token, self.image_token_id = _token_attr(tokenizer, "image_token", "<|image_pad|>")
    self.video_token, self.video_token_id = _token_attr(tokenizer, "video_token", "<|video_pad|>")
    self.vision_start_token, self.vision_start_token_id = _token_attr(
        tokenizer, "vision_start_token", "<|vision_start|>"
    )
    self.vision_end_token, self.vision_end_token_id = _token_attr(
        tokenizer, "vision_end_token", "<|vision_end|>"
    )
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video processor (works without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _image_only_init(self, image_processor, tokenizer, chat_template)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (works without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _image_only_init(self, image_processor, tokenizer, chat_template)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the video processor (works without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        _image_only_init(self, image_processor, tokenizer, chat_template)


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
}


@functools.cache
def has_torchvision() -> bool:
    """True when torchvision imports (an installed but broken one counts as absent)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision built for another torch fails in many ways
        return False
    return True


def load_vl_processor(path: str, model_type: str, **kwargs: Any) -> ProcessorMixin:
    """The stock processor when torchvision is importable, the image-only one otherwise."""
    if has_torchvision():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **kwargs)
    return IMAGE_ONLY_PROCESSORS[model_type].from_pretrained(path, **kwargs)
