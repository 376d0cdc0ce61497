"""The model as the memory model sees it: its config, found without a download, the model
built on the meta device (shapes only, no weights), its parameters counted and its widths
read (:class:`ModelShape`).

A model's config is looked up (:func:`model_config`) in its builder for an ``embedded:``
model, else in a local directory, the local Hugging Face cache, or among the configs
shipped in ``mhpo_vl/model_configs/`` (the models of the committed recipes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError
from mhpo_vl.qwen import TEXT_MODEL_TYPES, VL_MODEL_TYPES


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know of a model, counted on its meta-device build
    (parameters) and read from its config (widths). Parameter counts are elements."""

    name: str
    source: str  # where the config came from
    model_type: str
    params: int  # every parameter once (a tied lm_head is the embedding)
    vision_params: int
    embedding_params: int  # input embeddings plus an untied lm_head
    linear_params: int  # weights and biases of Linear / Conv layers (what autocast casts)
    largest_param: int
    block_params: tuple[int, ...]  # each FSDP unit (decoder / vision block)
    tied: bool
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    qk_norm: bool
    vision_layers: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_heads: int = 0
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch: int = 2
    in_channels: int = 3
    embedded_image_pixels: int | None = None  # embedded models cap their images

    @property
    def is_vision(self) -> bool:
        return self.model_type in VL_MODEL_TYPES

    @property
    def language_params(self) -> int:
        return self.params - self.vision_params - self.embedding_params

    @property
    def root_params(self) -> int:
        """Parameters outside the FSDP block units (embeddings, head, norms, merger)."""
        return self.params - sum(self.block_params)

    def trainable(self, freeze_vision: bool) -> int:
        return self.params - (self.vision_params if freeze_vision else 0)


def _packaged_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "model_configs"


def _hub_cache_config(repo_id: str) -> str | None:
    """``config.json`` of ``repo_id`` in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def _embedded_config(name: str) -> tuple[Any, int]:
    """The config an ``embedded:<name>`` model is built with, without building it, and
    the pixel cap of its images."""
    from mhpo_vl.embedded.tiny import embedded_config, parse_embedded

    cfg = parse_embedded(name)
    return embedded_config(cfg), cfg.image_size**2


def model_config(path: str, trust_remote_code: bool = False) -> tuple[Any, str, int | None]:
    """``(config, where it came from, image pixel cap or None)`` for ``model.path``.

    Looked up, in order: an ``embedded:`` model's own config; a local directory's
    ``config.json``; for a hub id ``org/name``, the local Hugging Face cache, then the
    configs shipped in ``mhpo_vl/model_configs/`` (the models of the committed recipes).
    Nothing is downloaded; a hub id found nowhere is a :class:`UserError` saying how to
    provide its config."""
    from transformers import AutoConfig

    if path.startswith("embedded:"):
        config, pixels = _embedded_config(path[len("embedded:") :])
        return config, "embedded", pixels
    local = os.path.expanduser(path)
    candidates: list[tuple[str, str]] = []
    if os.path.isdir(local):
        candidates.append((local, "local directory"))
    elif os.path.exists(local):
        raise UserError(f"model.path {path!r} is not a directory")
    elif path.count("/") == 1 and not path.startswith((".", "/", "~")):
        cached = _hub_cache_config(path)
        if cached:
            candidates.append((str(Path(cached).parent), "Hugging Face cache"))
        shipped = _packaged_dir() / path
        if (shipped / "config.json").is_file():
            candidates.append((str(shipped), "config shipped in mhpo_vl/model_configs"))
    else:
        raise UserError(f"model path {path!r} does not exist (nor is it a hub id 'org/name')")
    if not candidates:
        raise UserError(
            f"model.path {path!r}: no config.json for this hub id here (not in the Hugging "
            "Face cache, not among mhpo_vl/model_configs); download the model or just its "
            "config.json into a folder and set model.path to that folder"
        )
    where, source = candidates[0]
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config of {path!r}: {exc}") from None
    return config, source, None


def _meta_model(config: Any) -> Any:
    """The model of ``config`` on the meta device: shapes only, no memory, no weights."""
    import torch
    import transformers as tf

    cls = {
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
    }.get(config.model_type)
    with torch.device("meta"):
        if cls is not None:
            return cls._from_config(config)
        return tf.AutoModelForCausalLM.from_config(config)


def _count(params: Any) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


def _parameter_counts(model: Any) -> dict[str, Any]:
    """Counts over the meta model: total, vision tower, embeddings (+ untied head),
    Linear/Conv parameters, the largest parameter and each FSDP block unit."""
    import torch

    from mhpo_vl.models.policy import vision_tower

    params = list(model.parameters())  # unique: a tied head is the embedding
    tower = vision_tower(model) if model.config.model_type in VL_MODEL_TYPES else None
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    embedding = emb.numel() + (0 if tied or head is None else head.weight.numel())
    linear = _count(
        p
        for m in model.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))
        for p in m.parameters(recurse=False)
    )
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    block_params = tuple(_count(m.parameters()) for m in units)
    return {
        "params": _count(params),
        "vision_params": _count(tower.parameters()) if tower is not None else 0,
        "embedding_params": embedding,
        "linear_params": linear,
        "largest_param": max(p.numel() for p in params),
        "block_params": block_params,
        "tied": tied,
    }


def _vision_widths(model_type: str, vision: Any) -> dict[str, int]:
    """The vision tower's block widths: Qwen2-VL names its width ``embed_dim`` and its
    MLP ``mlp_ratio`` x that (``hidden_size`` is the language model's); Qwen2.5-VL and
    Qwen3-VL use ``hidden_size`` and ``intermediate_size``."""
    if model_type == "qwen2_vl":
        width = vision.embed_dim
        inner = int(vision.mlp_ratio * width)
    else:
        width, inner = vision.hidden_size, vision.intermediate_size
    return {
        "vision_layers": vision.depth,
        "vision_hidden": width,
        "vision_intermediate": inner,
        "vision_heads": vision.num_heads,
        "patch_size": vision.patch_size,
        "merge_size": vision.spatial_merge_size,
        "temporal_patch": vision.temporal_patch_size,
        "in_channels": getattr(vision, "in_channels", None) or getattr(vision, "in_chans", 3),
    }


def describe_model(
    config: Any, name: str, source: str = "", image_pixels: int | None = None
) -> ModelShape:
    """:class:`ModelShape` of ``config``: parameters counted on the meta-device model,
    widths from the (text / vision) config."""
    if config.model_type not in VL_MODEL_TYPES + TEXT_MODEL_TYPES:
        raise UserError(
            f"model {name!r} has type {config.model_type!r}; supported: "
            f"{', '.join(VL_MODEL_TYPES + TEXT_MODEL_TYPES)}"
        )
    counts = _parameter_counts(_meta_model(config))
    text = config.get_text_config()
    heads = text.num_attention_heads
    widths: dict[str, Any] = {}
    if config.model_type in VL_MODEL_TYPES:
        widths = _vision_widths(config.model_type, config.vision_config)
    return ModelShape(
        name=name,
        source=source,
        model_type=config.model_type,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        heads=heads,
        kv_heads=text.num_key_value_heads or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
        max_positions=text.max_position_embeddings,
        qk_norm=config.model_type in ("qwen3", "qwen3_vl"),
        embedded_image_pixels=image_pixels,
        **counts,
        **widths,
    )


def load_model_shape(path: str, trust_remote_code: bool = False) -> ModelShape:
    """:func:`model_config` then :func:`describe_model`."""
    config, source, pixels = model_config(path, trust_remote_code)
    return describe_model(config, path, source, pixels)
