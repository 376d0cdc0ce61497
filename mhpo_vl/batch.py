"""The types every rollout engine produces: sampling parameters and a batch of rollouts.

A :class:`RolloutBatch` holds ``B`` sequences laid out as one tensor each::

    input_ids  [B, S] = prompt [B, S - T] (left-padded) | completion [B, T] (right-padded)

so a single forward over ``input_ids`` scores every completion token (the last ``T + 1``
positions' logits), with the same positions the engine generated with. Vision inputs
ride along in ``extra`` exactly as the model's forward takes them; ``pixel_values`` is
the concatenation of every image's patches in row order, so selecting rows also means
selecting the matching patch ranges (:meth:`RolloutBatch.select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# extra entries laid out per token ([B, S]); the completion extends them with zeros
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
# extra entries laid out per image ([num_images, ...]); pixel_values is per patch
PER_IMAGE_KEYS = ("image_grid_thw",)


@dataclass
class SamplingParams:
    """How to sample: ``n`` completions per prompt; ``temperature <= 0`` means greedy;
    ``top_k = 0`` and ``top_p = 1`` switch those filters off."""

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1: {self}")
        if not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError(f"need 0 < top_p <= 1 and top_k >= 0: {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class RolloutBatch:
    """``B`` prompt+completion sequences (rows are prompt-major: ``p * n + j``).

    ``response_mask`` is 1.0 on completion tokens up to and including the EOS token.
    ``sample_logprobs`` are the log-probs of the sampled tokens under the policy at the
    sampling temperature, before top-k/top-p truncation and special-token suppression,
    i.e. what :func:`mhpo_vl.models.token_logprobs` returns for the same model (0 on
    padding). ``images_per_row`` counts each row's images (None for text-only batches);
    it lets :meth:`select` slice ``pixel_values``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    completions: list[str] = field(default_factory=list)
    sample_logprobs: Tensor | None = None
    images_per_row: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        """``S - T``: the (left-padded) prompt width."""
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def prompt_lengths(self) -> Tensor:
        """[B] real prompt tokens per row (the prompt is left-padded)."""
        return self.attention_mask[:, : self.prompt_len].sum(-1).long()

    @property
    def response_lengths(self) -> Tensor:
        """[B] completion tokens per row, EOS included."""
        return self.response_mask.sum(-1).long()

    @property
    def completion_ids(self) -> Tensor:
        """[B, T] the completion tokens (padding after EOS)."""
        return self.input_ids[:, self.prompt_len :]

    def select(self, idx: Sequence[int] | Tensor) -> RolloutBatch:
        """The sub-batch of rows ``idx`` (any order, repeats allowed), images included."""
        idx_t = torch.as_tensor(list(map(int, idx)), dtype=torch.long)
        rows = idx_t.to(self.input_ids.device)
        return RolloutBatch(
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            response_mask=self.response_mask[rows.to(self.response_mask.device)],
            extra=self._select_extra(idx_t),
            completions=[self.completions[i] for i in idx_t.tolist()] if self.completions else [],
            sample_logprobs=None
            if self.sample_logprobs is None
            else self.sample_logprobs[rows.to(self.sample_logprobs.device)],
            images_per_row=None if self.images_per_row is None else self.images_per_row[idx_t],
        )

    def _select_extra(self, idx: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        image_idx, patch_idx = self._image_indices(idx)
        for key, value in self.extra.items():
            if not isinstance(value, Tensor):
                out[key] = value
            elif key == "pixel_values":
                out[key] = value[patch_idx.to(value.device)]
            elif key in PER_IMAGE_KEYS:
                out[key] = value[image_idx.to(value.device)]
            else:
                assert value.shape[0] == len(self), f"extra[{key!r}] is not per row"
                out[key] = value[idx.to(value.device)]
        return out

    def image_spans(self) -> list[tuple[slice, slice]]:
        """Each row's images as ``(slice into image_grid_thw, slice into pixel_values)``
        (empty slices for rows without images or a text-only batch)."""
        grid = self.extra.get("image_grid_thw")
        if grid is None or self.images_per_row is None:
            return [(slice(0, 0), slice(0, 0))] * len(self)
        patches = grid.prod(-1).tolist()
        out, image, patch = [], 0, 0
        for n in self.images_per_row.tolist():
            size = sum(patches[image : image + n])
            out.append((slice(image, image + n), slice(patch, patch + size)))
            image, patch = image + n, patch + size
        return out

    def _image_indices(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Image and patch indices (into image_grid_thw / pixel_values) of rows ``idx``."""
        empty = torch.zeros(0, dtype=torch.long)
        if self.extra.get("image_grid_thw") is None or self.images_per_row is None:
            return empty, empty
        spans = self.image_spans()
        rows = [spans[i] for i in idx.tolist()]
        if not rows:
            return empty, empty
        image_idx = torch.cat([torch.arange(im.start, im.stop) for im, _ in rows])
        patch_idx = torch.cat([torch.arange(px.start, px.stop) for _, px in rows])
        return image_idx, patch_idx

    def trimmed(self) -> RolloutBatch:
        """The same rows without the columns that are padding in every row: the
        prompt's leading ones and the completions' trailing ones (the width a micro-batch
        of short completions would otherwise carry from the step's longest). Positions
        follow the attention mask, so every real token keeps its position; the
        completion keeps its first ``T'`` columns (``response_mask.shape[1]``)."""
        P = self.prompt_len
        real = self.attention_mask[:, :P].bool().any(0)
        left = int(real.float().argmax()) if bool(real.any()) else 0
        T = max(1, int(self.response_mask.sum(-1).max()))
        if left == 0 and T == self.response_mask.shape[1]:
            return self
        cols = slice(left, P + T)
        extra = {
            k: v[:, cols] if k in PER_TOKEN_KEYS and isinstance(v, Tensor) else v
            for k, v in self.extra.items()
        }
        return RolloutBatch(
            input_ids=self.input_ids[:, cols],
            attention_mask=self.attention_mask[:, cols],
            response_mask=self.response_mask[:, :T],
            extra=extra,
            completions=list(self.completions),
            sample_logprobs=None if self.sample_logprobs is None else self.sample_logprobs[:, :T],
            images_per_row=self.images_per_row,
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        def move(x: Any) -> Any:
            return x.to(device) if isinstance(x, Tensor) else x

        return RolloutBatch(
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            response_mask=move(self.response_mask),
            extra={k: move(v) for k, v in self.extra.items()},
            completions=list(self.completions),
            sample_logprobs=move(self.sample_logprobs),
            images_per_row=self.images_per_row,
        )

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the model's forward over the whole sequences."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.extra}


def join(
    prompt: RolloutBatch,
    completion: Tensor,
    response_mask: Tensor,
    completions: list[str],
    sample_logprobs: Tensor | None = None,
) -> RolloutBatch:
    """``prompt`` (a batch with ``T = 0``) followed by ``completion [B, T]``: the mask
    extends the attention mask, per-token extras get zeros (completions are text)."""
    T = completion.shape[1]
    extra = dict(prompt.extra)
    for key in PER_TOKEN_KEYS:
        if key in extra:
            extra[key] = torch.nn.functional.pad(extra[key], (0, T), value=0)
    attention = torch.cat([prompt.attention_mask, response_mask.to(prompt.attention_mask)], 1)
    return RolloutBatch(
        input_ids=torch.cat([prompt.input_ids, completion.to(prompt.input_ids)], dim=1),
        attention_mask=attention,
        response_mask=response_mask,
        extra=extra,
        completions=completions,
        sample_logprobs=sample_logprobs,
        images_per_row=prompt.images_per_row,
    )


def concat_batches(batches: Sequence[RolloutBatch]) -> RolloutBatch:
    """Rows of several batches as one (DAPO's dynamic sampling keeps groups from several
    rollout rounds): prompts are re-left-padded to the widest prompt and completions
    right-padded to the longest, so each row keeps its tokens, mask and positions."""
    if len(batches) == 1:
        return batches[0]
    P = max(b.prompt_len for b in batches)
    T = max(b.response_mask.shape[1] for b in batches)

    def widen(x: Tensor, b: RolloutBatch) -> Tensor:  # [B, S] -> [B, P + T]
        return torch.nn.functional.pad(x, (P - b.prompt_len, T - b.response_mask.shape[1]))

    extra: dict[str, Any] = {}
    for key, first in batches[0].extra.items():
        values = [b.extra[key] for b in batches]
        if not isinstance(first, Tensor):
            extra[key] = first
        elif key in PER_TOKEN_KEYS:
            extra[key] = torch.cat([widen(v, b) for v, b in zip(values, batches, strict=True)])
        else:  # pixel_values (per patch), image_grid_thw (per image), other per-row tensors
            extra[key] = torch.cat(values)
    right = [T - b.response_mask.shape[1] for b in batches]
    has_lp = all(b.sample_logprobs is not None for b in batches)
    has_images = all(b.images_per_row is not None for b in batches)
    return RolloutBatch(
        input_ids=torch.cat([widen(b.input_ids, b) for b in batches]),
        attention_mask=torch.cat([widen(b.attention_mask, b) for b in batches]),
        response_mask=torch.cat(
            [
                torch.nn.functional.pad(b.response_mask, (0, r))
                for b, r in zip(batches, right, strict=True)
            ]
        ),
        extra=extra,
        completions=[c for b in batches for c in b.completions],
        sample_logprobs=torch.cat(
            [
                torch.nn.functional.pad(b.sample_logprobs, (0, r))
                for b, r in zip(batches, right, strict=True)
            ]
        )
        if has_lp
        else None,
        images_per_row=torch.cat([b.images_per_row for b in batches]) if has_images else None,
    )
