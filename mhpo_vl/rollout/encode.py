"""Prompts -> model inputs with the model's own chat template, left-padded.

A prompt is ``{"messages": [...], "images": [PIL images]}`` with messages as
:func:`mhpo_vl.data.templates.build_messages` makes them (an ``{"type": "image"}`` part
per image). Vision models go through their processor (which expands each image into its
``<|image_pad|>`` tokens); text models get the parts' text joined, since text-only chat
templates expect string contents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mhpo_vl.batch import RolloutBatch
from mhpo_vl.errors import UserError

if TYPE_CHECKING:
    from mhpo_vl.models import Policy


def _count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if not isinstance(m.get("content"), str)
        for part in m["content"]
        if part.get("type") == "image"
    )


def text_only(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages with list contents flattened to strings (images dropped)."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append({**m, "content": content})
    return out


def chat_texts(policy: Policy, prompts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each prompt rendered by the model's chat template, ending in the assistant turn."""
    if policy.is_vision:
        render = policy.processor.apply_chat_template
        return [render(p["messages"], tokenize=False, add_generation_prompt=True) for p in prompts]
    render = policy.tokenizer.apply_chat_template
    return [
        render(text_only(p["messages"]), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def encode_prompts(policy: Policy, prompts: Sequence[Mapping[str, Any]]) -> RolloutBatch:
    """The prompts as a :class:`RolloutBatch` with an empty completion (``T = 0``)."""
    texts = chat_texts(policy, prompts)
    if not policy.is_vision:
        if any(p.get("images") for p in prompts):
            raise UserError(f"text-only model {policy.path!r} was given images")
        enc = policy.tokenizer(
            texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        )
        return _prompt_batch(enc, None)
    counts = []
    for i, p in enumerate(prompts):
        n_images = len(p.get("images") or [])
        if n_images != _count_images(p["messages"]):
            raise UserError(
                f"prompt {i}: {n_images} images given but its messages have "
                f"{_count_images(p['messages'])} image placeholders"
            )
        counts.append(n_images)
    images = [img.convert("RGB") for p in prompts for img in (p.get("images") or [])]
    enc = policy.processor(
        text=texts,
        images=images or None,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )
    return _prompt_batch(enc, torch.tensor(counts, dtype=torch.long) if images else None)


def _prompt_batch(enc: Mapping[str, Any], images_per_row: torch.Tensor | None) -> RolloutBatch:
    input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=torch.zeros(input_ids.shape[0], 0),
        extra=extra,
        images_per_row=images_per_row,
    )
