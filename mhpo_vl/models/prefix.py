"""The shared-prefix forward: each prompt (and its image) encoded once per group.

The G completions of a group share one prompt: system text, question and the image's
vision tokens. The naive forward runs the vision tower and the whole prompt G times.
Here each group becomes one packed sequence::

    [ left padding | prompt (P) | completion 1 (T) | completion 2 (T) | ... | completion G ]

with position ids (mRoPE for the VL models) that continue the prompt's for every
completion, exactly as in the naive layout, and an attention that lets every completion
see the prompt and its own earlier tokens only (:func:`grouped_attention`): the
prompt's causal self-attention once, then each completion's queries against the
prompt's keys and its own, one ``scaled_dot_product_attention`` call for all G
completions with a lower-right causal bias. No mask of the packed length squared is ever
built: score memory is ``P^2 + G T (P + T)`` against the naive ``G (P + T)^2``, and the
prompt goes through every layer once instead of G times. Every completion token sees
the same keys and values, at the same positions, as in its own row of the naive batch,
so the log-probs are the naive ones (up to float summation order), and gradients from
all G completions flow into the one prompt computation. The vision tower runs once per
group. This is the idea of the Prefix Grouper paper (arXiv 2506.05433), written here
for transformers' Qwen models.

The attention plugs in through transformers' attention interface: the text model's
attention becomes :data:`PREFIX_ATTENTION`, which is ``sdpa`` itself (the same function,
the same masks) for every forward that does not carry a :class:`PrefixLayout`:
generation and the naive forward are unchanged, and a gradient-checkpointed layer
recomputed in the backward takes the same path again. Models whose attention is not
``sdpa`` (flash attention, eager) use the naive forward (:func:`supported`). Rows whose
prompt appears once are groups of one: nothing is shared, nothing is lost.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mhpo_vl.batch import RolloutBatch

PREFIX_ATTENTION = "mhpo_prefix_sdpa"
"""The attention implementation name of the grouped attention (``sdpa`` without a layout)."""


@dataclass(frozen=True)
class PrefixLayout:
    """How the rows of a packed batch are laid out: ``starts[n]`` left-padding tokens,
    then row n's prompt up to ``prompt_len``, then ``groups`` completions of
    ``completion_len`` tokens each (right-padded: padding is never a real token's key)."""

    starts: tuple[int, ...]
    prompt_len: int
    groups: int
    completion_len: int


def grouped_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    prefix_layout: PrefixLayout | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention interface: ``query``, ``key``, ``value`` ``[N, H, L, D]``
    (``key``/``value`` with the model's key-value heads) -> ``[N, L, H, D]``. Without
    ``prefix_layout``, ``sdpa``. With it, each packed row's prompt attends causally to
    itself, and each completion to the prompt and to itself causally (the module
    docstring); left-padding positions get zeros (no real token attends them)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if prefix_layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    repeats = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    rows = [
        _grouped_row(query[n], key[n], value[n], start, prefix_layout, scaling, dropout)
        for n, start in enumerate(prefix_layout.starts)
    ]
    return torch.stack(rows).transpose(1, 2).contiguous(), None


def _grouped_row(
    q: Tensor, k: Tensor, v: Tensor, start: int, layout: PrefixLayout, scale: Any, dropout: float
) -> Tensor:
    """One packed row ``[H, L, D]``: left padding (zeros), the prompt, the completions."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    H, _, D = q.shape
    P, G, T = layout.prompt_len - start, layout.groups, layout.completion_len
    q, k, v = q[:, start:], k[:, start:], v[:, start:]
    prompt = sdpa(q[None, :, :P], k[None, :, :P], v[None, :, :P], dropout_p=dropout,
                  is_causal=True, scale=scale)[0]  # fmt: skip

    def per_completion(x: Tensor) -> Tensor:  # [H, G*T, D] -> [G, H, T, D]
        return x[:, P:].reshape(H, G, T, D).transpose(0, 1)

    # each completion's keys: the prompt's (broadcast to every completion) and its own
    keys = torch.cat([k[None, :, :P].expand(G, H, P, D), per_completion(k)], dim=2)
    values = torch.cat([v[None, :, :P].expand(G, H, P, D), per_completion(v)], dim=2)
    # query t of a completion sees the P prompt keys and its own first t + 1: [T, P + T]
    allowed = torch.ones(T, P + T, dtype=torch.bool, device=q.device).tril(diagonal=P)
    out = sdpa(per_completion(q), keys, values, attn_mask=allowed, dropout_p=dropout,
               scale=scale)  # fmt: skip
    completions = out.transpose(0, 1).reshape(H, G * T, D)
    return torch.cat([q.new_zeros(H, start, D), prompt, completions], dim=1)


def _sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PREFIX_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, _sdpa_mask)


def _core(model: Any) -> Any:
    """The transformers model inside a DDP wrapper (FSDP2 modules are the model)."""
    return getattr(model, "module", model)


def _text_config(model: Any) -> Any:
    config = _core(model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def supported(model: Any) -> bool:
    """Whether ``model``'s language model runs ``sdpa`` attention (or the grouped one),
    so that the shared-prefix forward can replace it exactly."""
    return getattr(_text_config(model), "_attn_implementation", None) in ("sdpa", PREFIX_ATTENTION)


def enable(model: Any) -> None:
    """Make the language model's attention :data:`PREFIX_ATTENTION` (``sdpa`` for every
    forward without a layout, so nothing else changes). Idempotent."""
    config = _text_config(model)
    if config._attn_implementation != PREFIX_ATTENTION:
        _register()
        # set on the text config object the attention modules hold, bypassing the
        # setter's checks and its propagation into sub-configs (the vision tower's)
        config._attn_implementation_internal = PREFIX_ATTENTION


SAVING = 0.05
"""The shared-prefix forward is used when it saves at least this fraction of the tokens
the naive forward runs through the model (below, its extra work can cost more)."""


def plan(model: Any, batch: RolloutBatch) -> list[list[int]] | None:
    """The prompt groups to forward packed, or None for the naive forward: where the
    model's attention is not ``sdpa``, or packing would not save :data:`SAVING` of the
    tokens (groups of one; a prompt short against its completions; ragged groups,
    padded with repeats)."""
    if not supported(model):
        return None
    groups = prompt_groups(batch)
    P, T = batch.prompt_len, batch.response_mask.shape[1]
    naive = len(batch) * (P + T)
    packed = len(groups) * (P + max(map(len, groups)) * T)
    return groups if packed <= (1 - SAVING) * naive else None


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


def shared_prefix_logits(model: Any, batch: RolloutBatch, groups: list[list[int]]) -> Tensor:
    """Logits ``[B, T, V]`` predicting each completion token, as
    :func:`~mhpo_vl.models.logprobs.completion_logits` gives, with each group of rows
    (the same prompt; see :func:`prompt_groups`) forwarded as one packed sequence.
    Groups of different sizes are padded with their own first completion, whose
    logits are dropped."""
    enable(model)
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
    positions = torch.cat([head_pos[..., :P]] + [head_pos[..., P:]] * G, dim=-1)
    # prompts are left-padded: each row's real prompt starts after its padding
    starts = (P - head.prompt_lengths).tolist()
    layout = PrefixLayout(tuple(int(s) for s in starts), P, G, T)
    extra = {}
    for key, value in head.extra.items():
        if key in ("mm_token_type_ids", "token_type_ids"):  # per token: completions are text
            value = torch.cat([value[:, :P], value.new_zeros(N, G * T)], dim=1)
        extra[key] = value
    # position P-1 predicts every completion's first token; P+kT+t-1 predicts token t
    keep = [P - 1 + (k * T + t if t else 0) for k in range(G) for t in range(T)]
    # No mask: the layout says it all. Text models get the per-layer-type mapping they
    # take as already made, or they would read the restarting positions as packed
    # sequences and build an [N, 1, L, L] block mask (VL models' mRoPE positions are not
    # read that way, and Qwen3-VL takes no mapping)
    mask = {"full_attention": None, "sliding_attention": None} if positions.dim() == 2 else None
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, **extra,
        prefix_layout=layout, use_cache=False, logits_to_keep=torch.tensor(keep, device=dev),
    )  # fmt: skip
    logits = out.logits.reshape(N * G, T, -1)
    order = {}
    for slot, row in enumerate(flat):
        order.setdefault(row, slot)  # a padded repeat maps to the first occurrence
    return logits[torch.tensor([order[i] for i in range(len(batch))], device=dev)]
