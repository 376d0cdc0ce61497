"""Loading a policy: the model plus what turns prompts into its inputs.

``path`` is a local Hugging Face directory, a hub id, or ``embedded:<name>`` (a tiny
model built offline by :mod:`mhpo_vl.embedded` and cached on first use).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from mhpo_vl.config import DTYPE_NAMES
from mhpo_vl.errors import UserError, missing_file
from mhpo_vl.models.processors import load_vl_processor
from mhpo_vl.qwen import TEXT_MODEL_TYPES, VL_MODEL_TYPES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
EMBEDDED_PREFIX = "embedded:"


@dataclass
class Policy:
    """A loaded model. ``processor`` is the (image-only) Qwen-VL processor for vision
    models and the tokenizer for text models.

    ``compute_dtype`` is the dtype forwards run in; the parameters may be wider (float32
    master weights under bfloat16 compute). Run every forward under :meth:`autocast`.

    ``device`` is where forwards run and where their inputs must go. It is not always
    where the parameters are: under FSDP2 CPU offload they rest on the CPU and are
    gathered onto this device for each forward. Never derive it from the parameters."""

    model: Any
    processor: Any
    is_vision: bool
    path: str
    compute_dtype: torch.dtype | None = None  # None: the parameters' own dtype
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer if self.is_vision else self.processor

    @property
    def param_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to ``compute_dtype`` on the model's device when the
        parameters are kept in another dtype; a no-op context otherwise."""
        param = next(self.model.parameters())
        if self.compute_dtype is None or self.compute_dtype == param.dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)


def _check_path(path: str) -> None:
    """Fail early, naming the path, for a local path that is not a model directory."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UserError(f"model path {path!r} is not a directory")
    if path.startswith((".", "/", "~")) or path.count("/") != 1 or "\\" in path:
        fix = "give a model folder (a checkpoint-<step>/ too), a hub id (org/name) or embedded:tiny-vl"
        raise missing_file("model", path, "model.path or --model", fix)


def _model_type(path: str, trust_remote_code: bool) -> str:
    from transformers import AutoConfig

    _check_path(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model config from {path!r}: {e}") from None
    model_type = config.model_type
    if model_type not in VL_MODEL_TYPES + TEXT_MODEL_TYPES:
        raise UserError(
            f"model {path!r} has type {model_type!r}; supported: "
            f"{', '.join(VL_MODEL_TYPES + TEXT_MODEL_TYPES)}"
        )
    return model_type


def _model_class(model_type: str) -> Any:
    import transformers as tf

    return {
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
    }.get(model_type, tf.AutoModelForCausalLM)


def _load_model(path: str, model_type: str, dtype: torch.dtype, trust_remote_code: bool) -> Any:
    cls = _model_class(model_type)
    return cls.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)


def _empty_model(path: str, model_type: str, dtype: torch.dtype, trust_remote_code: bool) -> Any:
    """The model built from its config with every parameter on the meta device (no
    memory, no weights read) and its buffers real: rotary frequencies are computed in
    the constructor and are not in the checkpoint, so they must be right already."""
    import transformers as tf
    from accelerate import init_empty_weights

    config = tf.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    cls = _model_class(model_type)
    with init_empty_weights(include_buffers=False):
        if cls is tf.AutoModelForCausalLM:
            model = cls.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            model = cls._from_config(config, dtype=dtype)
    model.tie_weights()  # not done on meta parameters: the LM head would train apart
    try:  # stop ids come from it (rollout.hf.stop_token_ids), as from_pretrained reads it
        model.generation_config = tf.GenerationConfig.from_pretrained(path)
    except OSError:
        pass  # no generation_config.json: the one derived from the config stays
    return model


MODEL_SOURCES: dict[str, str] = {EMBEDDED_PREFIX: "mhpo_vl.embedded:resolve"}
"""Path schemes that name a model built rather than stored: ``prefix`` -> the
``module:function`` that turns the rest of the path into a local directory. Resolved by
name when used, so this package imports none of the builders (they import it)."""


def _resolve(path: str) -> str:
    """A directory (or hub id) to load; ``MODEL_SOURCES`` paths are built (once) and cached."""
    for prefix, target in MODEL_SOURCES.items():
        if path.startswith(prefix):
            module, _, fn = target.partition(":")
            return str(getattr(importlib.import_module(module), fn)(path[len(prefix) :]))
    return os.path.expanduser(path)


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing, under the name this transformers has:
    ``activation_checkpointing_enable`` (5.21 and later) or the older
    ``gradient_checkpointing_enable`` (5.20, the version vLLM 0.33.0 installs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_policy(
    path: str,
    *,
    dtype: str = "float32",
    master_dtype: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    freeze_vision: bool = False,
    device: str | torch.device | None = None,
) -> Policy:
    """Load a Qwen2/2.5/3-VL or Qwen2/3 text model and its processor (or tokenizer).

    ``dtype`` is the compute dtype; the parameters are loaded in ``master_dtype``
    (default: ``dtype``, i.e. no autocast). Mixed precision as verl, EasyR1 and TRL do
    it is ``dtype="bfloat16", master_dtype="float32"``: float32 weights (and so float32
    optimizer state), bfloat16 matmuls. ``freeze_vision`` stops gradients into the
    vision tower (patch embed, blocks, merger). Tokenizers are left-padded (prompts
    are left-padded for generation).

    ``device="meta"`` builds the model without its weights (parameters on the meta
    device, see :func:`_empty_model`), for a sharded load: each process materializes
    only its shards (:mod:`mhpo_vl.parallel.fsdp`)."""
    master_dtype = master_dtype or dtype
    for key, name in (("dtype", dtype), ("master_dtype", master_dtype)):
        if name not in DTYPES:
            raise UserError(f"unknown {key} {name!r}; use one of {', '.join(DTYPES)}")
    if master_dtype not in ("float32", dtype):
        raise UserError(
            f"master_dtype {master_dtype!r} must be float32 or the compute dtype {dtype!r}"
        )
    local = _resolve(path)
    model_type = _model_type(local, trust_remote_code)
    empty = device is not None and torch.device(device).type == "meta"
    build = _empty_model if empty else _load_model
    model = build(local, model_type, DTYPES[master_dtype], trust_remote_code)
    is_vision = model_type in VL_MODEL_TYPES
    if is_vision:
        processor = load_vl_processor(local, model_type, trust_remote_code=trust_remote_code)
        tokenizer = processor.tokenizer
    else:
        from transformers import AutoTokenizer

        processor = tokenizer = AutoTokenizer.from_pretrained(
            local, trust_remote_code=trust_remote_code
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if freeze_vision and is_vision:
        for p in vision_tower(model).parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
    if device is not None and not empty:
        model.to(device)
    return Policy(
        model=model,
        processor=processor,
        is_vision=is_vision,
        path=path,
        compute_dtype=DTYPES[dtype],
        device=torch.device(device) if device is not None else torch.device("cpu"),
    )


def vision_tower(model: Any) -> torch.nn.Module:
    inner = getattr(model, "model", model)
    tower = getattr(inner, "visual", None) or getattr(model, "visual", None)
    if tower is None:
        raise AssertionError(f"no vision tower found on {type(model).__name__}")
    return tower


def weight_names(model: Any) -> Any:
    """What ``from_pretrained`` recorded of the checkpoint's own weight names: the
    renamings it applied on load (older Qwen-VL checkpoints say ``visual.*`` and
    ``model.layers.*``), which ``save_pretrained`` undoes so that a saved model keeps
    the names it came with. None for a model built from its config."""
    return getattr(model, "_weight_conversions", None)


def keep_weight_names(model: Any, record: Any) -> None:
    """Give ``model`` (built from its config) the :func:`weight_names` record of the
    checkpoint its weights came from, so that it saves them under the same names."""
    if record is not None and weight_names(model) is None:
        model._weight_conversions = record
