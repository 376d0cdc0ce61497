"""The shared-prefix forward: each prompt (and its image) encoded once per group.

The G completions of a group share one prompt: system text, question and the image's
vision tokens. The naive forward runs the vision tower and the whole prompt G times.
Here each group becomes one packed sequence::

    [ prompt (left-padded, P) | completion 1 (T) | completion 2 (T) | ... | completion G ]

with an attention mask that lets every completion see the prompt and its own earlier
tokens only, and position ids (mRoPE for the VL models) that continue the prompt's for
every completion, exactly as in the naive layout. Every completion token then sees the
same keys and values, at the same positions, as in its own row of the naive batch, so
the log-probs are the naive ones (up to float summation order), and gradients from all
G completions flow into the one prompt computation. The vision tower runs once per
group. This is the idea of the Prefix Grouper paper (arXiv 2506.05433), written here
for transformers' Qwen models.

Exact only where the attention takes an arbitrary mask: ``sdpa`` and ``eager``
(:func:`supported`); elsewhere (flash attention) the caller uses the naive forward.
Rows whose prompt appears once are groups of one: nothing is shared, nothing is lost.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mhpo_vl.batch import RolloutBatch

MASKABLE = ("sdpa", "eager")


def _core(model: Any) -> Any:
    """The transformers model inside a DDP wrapper (FSDP2 modules are the model)."""
    return getattr(model, "module", model)


def supported(model: Any) -> bool:
    """Whether ``model``'s attention honours an arbitrary 4D mask (so packing is exact)."""
    return getattr(_core(model).config, "_attn_implementation", None) in MASKABLE


def prompt_groups(batch: RolloutBatch) -> list[list[int]]:
    """Rows with the same prompt (tokens, padding and images), in first-seen order."""
    P = batch.prompt_len
    ids = batch.input_ids[:, :P]
    images = _row_images(batch)
    groups: list[list[int]] = []
    by_key: dict[tuple, list[list[int]]] = {}
    for i, key in enumerate(map(tuple, ids.tolist())):
        for group in by_key.setdefault(key, []):
            if _same(images[i], images[group[0]]):
                group.append(i)
                break
        else:
            group = [i]
            by_key[key].append(group)
            groups.append(group)
    return groups


def _row_images(batch: RolloutBatch) -> list[tuple[tuple, Tensor | None]]:
    """Each row's (image grids, its patches) — views, nothing copied."""
    grid, pixels = batch.extra.get("image_grid_thw"), batch.extra.get("pixel_values")
    if grid is None or pixels is None or batch.images_per_row is None:
        return [((), None)] * len(batch)
    return [
        (tuple(map(tuple, grid[images].tolist())), pixels[patches])
        for images, patches in batch.image_spans()
    ]


def _same(a: tuple[tuple, Tensor | None], b: tuple[tuple, Tensor | None]) -> bool:
    if a[0] != b[0]:
        return False
    return a[1] is None or b[1] is None or torch.equal(a[1], b[1])


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Left-padding-aware positions: 0 at each row's first real token (what generate uses)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _positions(model: Any, batch: RolloutBatch) -> Tensor:
    """The naive forward's position ids: ``[3, B, S]`` (mRoPE) for VL models, ``[B, S]``
    (0 at each row's first real token) for text models."""
    inner = getattr(_core(model), "model", None)
    if "image_grid_thw" not in batch.extra or not hasattr(inner, "get_rope_index"):
        return positions_from_mask(batch.attention_mask)
    args = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **batch.extra}
    accepted = inspect.signature(inner.get_rope_index).parameters
    args = {k: v for k, v in args.items() if k in accepted}
    position_ids, _ = inner.get_rope_index(**args)
    return position_ids


def _packed_mask(prompt_mask: Tensor, response_mask: Tensor, G: int, T: int) -> Tensor:
    """``[N, 1, L, L]`` bool, True where a query may attend a key: the prompt causally,
    each completion the (real) prompt tokens and its own earlier tokens; every position
    sees itself, so no row is empty (an empty row would put NaN into the backward)."""
    N, P = prompt_mask.shape
    L = P + G * T
    device = prompt_mask.device
    segment = torch.cat(
        [torch.zeros(P, dtype=torch.long, device=device),
         torch.arange(1, G + 1, device=device).repeat_interleave(T)]
    )  # fmt: skip
    idx = torch.arange(L, device=device)
    causal = idx[None, :] <= idx[:, None]
    same = segment[:, None] == segment[None, :]
    key_in_prompt = (segment == 0)[None, :].expand(L, L)
    allowed = causal & (same | key_in_prompt)  # [L, L]
    real = torch.cat([prompt_mask.bool(), response_mask.reshape(N, G * T).bool()], dim=1)
    keys = allowed[None] & real[:, None, :]
    keys = keys | torch.eye(L, dtype=torch.bool, device=device)[None]
    return keys[:, None]


def shared_prefix_logits(model: Any, batch: RolloutBatch, groups: list[list[int]]) -> Tensor:
    """Logits ``[B, T, V]`` predicting each completion token, as
    :func:`~mhpo_vl.models.logprobs.completion_logits` gives, with each group of rows
    (the same prompt; see :func:`prompt_groups`) forwarded as one packed sequence.
    Groups of different sizes are padded with their own first completion, whose
    logits are dropped."""
    P, T = batch.prompt_len, batch.response_mask.shape[1]
    G = max(len(g) for g in groups)
    padded = [g + [g[0]] * (G - len(g)) for g in groups]
    flat = [i for g in padded for i in g]
    heads = [g[0] for g in groups]
    head = batch.select(heads)
    # Positions of the naive layout, from each group's first row: a real completion
    # token's position depends only on the prompt and its index (t after the prompt's
    # last), so every member's are its head's (padding positions are never attended).
    # the completion part counted as real in the head: its own EOS must not cut them
    as_real = torch.cat(
        [head.attention_mask[:, :P], torch.ones_like(head.attention_mask[:, P:])], dim=1
    )
    head_pos = _positions(model, replace(head, attention_mask=as_real))  # [.., N, S]
    dev = batch.input_ids.device
    flat_t = torch.tensor(flat, device=dev)
    heads_t = torch.tensor(heads, device=dev)
    N = len(groups)
    completion_ids = batch.input_ids[flat_t, P:].reshape(N, G * T)
    input_ids = torch.cat([batch.input_ids[heads_t, :P], completion_ids], dim=1)
    response = batch.response_mask[flat_t.to(batch.response_mask.device)].reshape(N, G, T)
    positions = torch.cat([head_pos[..., :P]] + [head_pos[..., P:]] * G, dim=-1)
    mask = _packed_mask(batch.attention_mask[heads_t, :P], response, G, T)
    if getattr(_core(model).config, "_attn_implementation", None) == "eager":
        dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
        dtype = dtype or next(_core(model).parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    extra = {}
    for key, value in head.extra.items():
        if key in ("mm_token_type_ids", "token_type_ids"):  # per token: completions are text
            value = torch.cat([value[:, :P], value.new_zeros(N, G * T)], dim=1)
        extra[key] = value
    # position P-1 predicts every completion's first token; P+kT+t-1 predicts token t
    keep = [P - 1 + (k * T + t if t else 0) for k in range(G) for t in range(T)]
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, **extra,
        use_cache=False, logits_to_keep=torch.tensor(keep, device=dev),
    )  # fmt: skip
    logits = out.logits.reshape(N * G, T, -1)
    order = {}
    for slot, row in enumerate(flat):
        order.setdefault(row, slot)  # a padded repeat maps to the first occurrence
    return logits[torch.tensor([order[i] for i in range(len(batch))], device=dev)]
