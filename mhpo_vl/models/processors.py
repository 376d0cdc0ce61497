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

import dataclasses
import functools
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from mhpo_vl.data.templates import TEMPLATES, build_messages
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


# ---------------------------------------------------------------- prompt length

# Texts up to this many characters are tokenized whole (exact counts, well under a
# second); a longer one is tokenized only as far as it takes to prove it is over.
EXACT_CHARS = 262_144
# Tokens a cut can change at the end of a tokenized prefix (the last pre-token or two).
CUT_MARGIN = 16


def image_tokens(processor: Any, size: tuple[int, int]) -> int:
    """The tokens one image of ``size`` (width, height, as decoded) becomes in a prompt:
    the processor's own resize (``smart_resize`` within its min/max pixels) gives the
    patch grid, and every ``merge_size**2`` patches are one token. Neither the pixels
    nor the model are needed."""
    ip = processor.image_processor
    width, height = size
    return ip.get_number_of_image_patches(height, width) // ip.merge_size**2


@dataclass(frozen=True)
class PromptCount:
    """A prompt's tokens: ``text`` (chat template, instructions, question) and ``image``
    (vision tokens); ``exact`` False means ``text`` is a lower bound (a huge text counted
    only as far as needed to show it is over the limit)."""

    text: int
    image: int = 0
    exact: bool = True

    @property
    def total(self) -> int:
        return self.text + self.image

    def describe(self) -> str:
        amount = f"{self.total:,}" if self.exact else f"at least {self.total:,}"
        parts = f" ({self.text:,} text + {self.image:,} image)" if self.image else ""
        return f"prompt is {amount} tokens{parts}"


@dataclass(frozen=True)
class PromptLimit:
    """``data.max_prompt_tokens`` applied to problem rows, checked where rows are loaded.

    Counts a row's prompt as the rollout engines encode it (the model's chat template
    over :func:`~mhpo_vl.data.templates.build_messages`, each image's vision tokens from
    its decoded size) without running the model. Rows far under the limit are not even
    tokenized: a byte-level BPE token is at least one byte, so the rendered prompt's
    UTF-8 length bounds its token count."""

    processor: Any  # the policy's processor (vision models) or tokenizer (text models)
    is_vision: bool
    max_tokens: int
    template: str = "plain"
    system: str | None = None
    key: str = "data.max_prompt_tokens"
    _overhead: dict[bool, int] = field(default_factory=dict, compare=False, repr=False)

    def with_template(self, template: str) -> PromptLimit:
        """The same limit for prompts built with ``template`` (a benchmark's own)."""
        return dataclasses.replace(self, template=template, _overhead={})

    def problem(self, row: Mapping[str, Any], image_size: tuple[int, int] | None) -> str | None:
        """None when the row's prompt fits, else one line: its token count and the limit.
        ``image_size`` is the row's image as decoded (width, height), None for none."""
        sizes = [image_size] if image_size is not None and self.is_vision else []
        vision = sum(image_tokens(self.processor, s) for s in sizes)
        text = TEMPLATES.get(self.template)(row)
        bound = self._overhead_bytes(bool(sizes)) + len(text.encode("utf-8")) + vision
        if bound <= self.max_tokens:
            return None
        count = self.count(row, sizes)
        if count.total <= self.max_tokens:
            return None
        return f"{count.describe()}, over {self.key} {self.max_tokens:,}"

    def count(self, row: Mapping[str, Any], sizes: Sequence[tuple[int, int]]) -> PromptCount:
        """The prompt's tokens for ``row`` with images of ``sizes`` (width, height)."""
        text = self._render({**row, "image": True if sizes else None})
        n, exact = self._text_tokens(text)
        if not self.is_vision:
            return PromptCount(n, 0, exact)
        # each image's one <|image_pad|> placeholder becomes its vision tokens
        vision = sum(image_tokens(self.processor, s) for s in sizes)
        return PromptCount(n - len(sizes), vision, exact)

    def _render(self, row: Mapping[str, Any], text: str | None = None) -> str:
        """The chat-template text of the row's prompt (what ``rollout.encode`` renders),
        its instruction text replaced by ``text`` when given."""
        messages = build_messages(row, self.template, self.system)
        if text is not None:
            messages[-1]["content"][-1]["text"] = text
        if not self.is_vision:
            messages = [{**m, "content": _joined_text(m["content"])} for m in messages]
        render = self.processor.apply_chat_template
        return render(messages, tokenize=False, add_generation_prompt=True)

    def _overhead_bytes(self, has_image: bool) -> int:
        """UTF-8 bytes the chat template adds around the instruction text (system
        prompt, role markers, image placeholder), measured once per template."""
        if has_image not in self._overhead:
            probe = "x"
            row = {"question": probe, "choices": None, "image": True if has_image else None}
            rendered = self._render(row, probe)
            # + 8: room for a tokenizer that is not byte-level (a token per byte, and more)
            self._overhead[has_image] = len(rendered.encode("utf-8")) - len(probe) + 8
        return self._overhead[has_image]

    def _text_tokens(self, text: str) -> tuple[int, bool]:
        """Tokens of ``text`` and whether the count is exact: a text over
        :data:`EXACT_CHARS` is tokenized only as far as needed to show it is over."""
        tokenizer = self.processor.tokenizer if self.is_vision else self.processor
        window = max(EXACT_CHARS, 16 * (self.max_tokens + CUT_MARGIN))

        def tokens(s: str) -> int:
            return len(tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"])

        if len(text) <= window:
            return tokens(text), True
        head = tokens(text[:window]) - CUT_MARGIN
        if head > self.max_tokens:
            return head, False
        return tokens(text), True


def _joined_text(content: Any) -> str:
    """A message's text parts joined (text-only chat templates take string contents)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def prompt_limit(policy: Any, cfg: Any) -> PromptLimit | None:
    """The prompt limit of recipe ``cfg`` (a :class:`~mhpo_vl.config.Recipe`) for
    ``policy``: ``data.max_prompt_tokens``; left unset, what the engine's
    ``max_model_len`` (else the model's context length) leaves after the longest
    response the recipe asks for; None when neither length is known."""
    d = cfg.data
    max_tokens, key = d.max_prompt_tokens, "data.max_prompt_tokens"
    if max_tokens is None:
        max_tokens, key = _derived_budget(cfg, policy.model.config)
        if max_tokens is None:
            return None
    return PromptLimit(
        policy.processor, policy.is_vision, max_tokens, d.template, d.system_prompt, key
    )


def _derived_budget(cfg: Any, model_config: Any) -> tuple[int | None, str]:
    """``(tokens, how)`` a prompt may take when ``data.max_prompt_tokens`` is unset."""
    new, key = cfg.rollout.max_new_tokens, "rollout.max_new_tokens"
    if (cfg.eval.max_new_tokens or 0) > new:
        new, key = cfg.eval.max_new_tokens, "eval.max_new_tokens"
    length = cfg.rollout.engine_args.get("max_model_len")
    if isinstance(length, int):
        return _budget(length, "rollout.engine_args.max_model_len", new, key)
    return context_budget(model_config, new, key)


def context_budget(model_config: Any, new: int, new_key: str) -> tuple[int | None, str]:
    """``(tokens, how)`` the model's context length leaves a prompt after ``new``
    generated tokens (``new_key`` names where that number came from); ``(None, "")``
    when the config gives no length."""
    text = getattr(model_config, "text_config", None) or model_config
    length = getattr(text, "max_position_embeddings", None)
    if not isinstance(length, int):
        return None, ""
    return _budget(length, "the model's context", new, new_key)


def _budget(length: int, name: str, new: int, new_key: str) -> tuple[int, str]:
    if length <= new:
        raise UserError(
            f"{new_key}: {new} new tokens leave no room for a prompt in {name} ({length}); lower it"
        )
    return length - new, f"the prompt budget ({name} {length:,} - {new_key} {new:,})"
