"""Qwen-VL processors: one loading path, with or without torchvision.

RL on images never needs video, but transformers' stock ``Qwen2VLProcessor`` /
``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` always build a video processor, and video
processors need torchvision. Without it, the stock classes cannot be built and
``AutoProcessor`` silently hands back a bare tokenizer; with it, ``AutoProcessor`` does
the same on any directory that lacks a video processor config.

So we load every Qwen-VL directory, on every machine, through image-only subclasses of
the stock classes (same image processor, tokenizer, chat template and image-token
expansion; no video processor), and check that what came back is a whole processor.
The image processor itself is whatever transformers picks (its torchvision-backed
"fast" class where torchvision is installed, the PIL one otherwise).

What we save must load anywhere too: the subclasses carry the stock class's name (it is
what ``save_pretrained`` writes as ``processor_class``, and what ``AutoProcessor`` and
vLLM resolve), and ``processor_config.json`` gets a ``video_processor`` section, so the
stock ``AutoProcessor`` loads our checkpoints where torchvision is installed.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from mhpo_vl.errors import UserError

# The video processor class transformers maps each model type to (its auto mapping).
VIDEO_PROCESSOR_TYPES = {
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
}
# Image-processor settings the video processor shares (the rest take the class defaults).
_SHARED_VISION_KEYS = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")


def _token_attr(tokenizer: Any, name: str, default: str) -> tuple[str, int]:
    token = getattr(tokenizer, name, None) or default
    token_id = getattr(tokenizer, f"{name}_id", None)
    return token, token_id if token_id is not None else tokenizer.convert_tokens_to_ids(token)


def _image_only_init(
    self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **_
) -> None:
    """What the stock ``__init__`` does, minus the video processor. (The signature names
    the processor's parts: transformers reads them from it.)"""
    self.image_token, self.image_token_id = _token_attr(tokenizer, "image_token", "<|image_pad|>")
    self.video_token, self.video_token_id = _token_attr(tokenizer, "video_token", "<|video_pad|>")
    self.vision_start_token, self.vision_start_token_id = _token_attr(
        tokenizer, "vision_start_token", "<|vision_start|>"
    )
    self.vision_end_token, self.vision_end_token_id = _token_attr(
        tokenizer, "vision_end_token", "<|vision_end|>"
    )
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def video_processor_config(image_processor: Any, model_type: str) -> dict[str, Any]:
    """A ``video_processor`` section the stock processor can build its video processor
    from: the class transformers maps ``model_type`` to, with the image processor's
    patch geometry and normalisation."""
    config: dict[str, Any] = {"video_processor_type": VIDEO_PROCESSOR_TYPES[model_type]}
    for key in _SHARED_VISION_KEYS:
        value = getattr(image_processor, key, None)
        if value is not None:
            config[key] = list(value) if isinstance(value, (list, tuple)) else value
    return config


def _image_only(stock: type[ProcessorMixin], model_type: str) -> type[ProcessorMixin]:
    """``stock`` without its video processor, under the stock class's own name."""

    def to_dict(self: Any) -> dict[str, Any]:
        out = stock.to_dict(self)
        out.setdefault("video_processor", video_processor_config(self.image_processor, model_type))
        return out

    return type(
        stock.__name__,  # saved as processor_class: must be a name AutoProcessor resolves
        (stock,),
        {
            "__init__": _image_only_init,
            "to_dict": to_dict,
            "__module__": __name__,
            "__doc__": f"``{stock.__name__}`` without the video processor (no torchvision).",
        },
    )


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": _image_only(Qwen2VLProcessor, "qwen2_vl"),
    "qwen2_5_vl": _image_only(Qwen2_5_VLProcessor, "qwen2_5_vl"),
    "qwen3_vl": _image_only(Qwen3VLProcessor, "qwen3_vl"),
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


def check_processor(processor: Any, path: str) -> ProcessorMixin:
    """``processor`` if it is a whole Qwen-VL processor (image processor, tokenizer, chat
    template, image token); otherwise a :class:`UserError` saying what is missing."""
    if not isinstance(processor, ProcessorMixin):
        raise UserError(
            f"{path}: transformers returned a {type(processor).__name__}, not a Qwen-VL "
            "processor (the directory needs preprocessor or processor config files next to "
            "the tokenizer)"
        )
    missing = [
        part
        for part, value in (
            ("image processor", getattr(processor, "image_processor", None)),
            ("tokenizer", getattr(processor, "tokenizer", None)),
            ("chat template", getattr(processor, "chat_template", None)),
            ("image token id", getattr(processor, "image_token_id", None)),
        )
        if value is None
    ]
    if missing:
        raise UserError(
            f"{path}: the {type(processor).__name__} loaded from it has no {', '.join(missing)}"
        )
    return processor


def load_vl_processor(path: str, model_type: str, **kwargs: Any) -> ProcessorMixin:
    """The image-only processor of a Qwen-VL directory (ours, or in hub layout), checked."""
    if model_type not in IMAGE_ONLY_PROCESSORS:
        raise UserError(f"{path}: no processor for model type {model_type!r}")
    try:
        processor = IMAGE_ONLY_PROCESSORS[model_type].from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot load its processor: {exc}") from None
    return check_processor(processor, path)
