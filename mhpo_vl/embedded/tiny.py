"""Tiny models of the real Qwen architectures, built offline from a config.

The embedded default (``embedded:tiny-vl``) is a ``Qwen2_5_VLForConditionalGeneration``
(1.45M parameters) with a 128-wide, 4-layer, 8-head language model and a 128-wide,
2-layer vision tower, and a byte-level BPE trained on the synthetic task's own text plus
the Qwen special tokens (same names, same order, same roles: ``<|im_end|>`` ends a turn,
``<|endoftext|>`` pads) and the Qwen2-VL chat template, so every code path the real
models take (chat template, image-token expansion, mRoPE, left padding) is exercised.
Images are capped at 84 x 84 pixels: 9 vision tokens. ``embedded:tiny-text`` is a
``Qwen2ForCausalLM`` of the same size for the text task.

Both are warm-started (:mod:`mhpo_vl.embedded.warmstart`) and cached under
``$MHPO_VL_CACHE`` (default ``~/.cache/mhpo_vl``) keyed by a hash of their config. Options
override the config: ``embedded:tiny-vl?sft_steps=0`` is the random-init model.
Qwen2-VL, Qwen3-VL and Qwen3 variants can be built too (``arch=...``), for tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mhpo_vl import rng
from mhpo_vl.errors import UserError
from mhpo_vl.qwen import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM,
    QWEN_SPLIT,
    SPECIAL_TOKENS,
    TEXT_MODEL_TYPES,
    VL_MODEL_TYPES,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

VL_ARCHS = VL_MODEL_TYPES
TEXT_ARCHS = TEXT_MODEL_TYPES


@dataclass(frozen=True)
class TinyConfig:
    """Everything that determines an embedded model; its hash keys the cache.

    ``sft_*`` set the warm start (a short supervised pass on the task's train split, see
    :mod:`mhpo_vl.embedded.warmstart`); ``sft_steps=0`` gives the random-init model."""

    arch: str = "qwen2_5_vl"
    task: str = "vision"  # synthetic task: "vision" | "text"
    hidden: int = 128
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 256
    vision_hidden: int = 128
    vision_layers: int = 2
    image_size: int = 84  # max pixels = image_size**2 (9 vision tokens at 84)
    bpe_vocab: int = 384  # byte-level BPE size before the special tokens
    bpe_rows: int = 2000  # train rows whose text trains the BPE
    sft_steps: int = 600  # at most; stops earlier once validation accuracy hits the target
    sft_target: float = 0.6  # greedy accuracy on sft_val_rows train rows; 0 = run all steps
    sft_eval_every: int = 10
    sft_val_rows: int = 200
    sft_batch: int = 32
    sft_lr: float = 2e-3
    sft_rows: int = 4000
    seed: int = 0

    @property
    def is_vision(self) -> bool:
        return self.arch in VL_ARCHS

    def replace(self, **changes: Any) -> TinyConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TinyConfig:
        if self.arch not in VL_ARCHS + TEXT_ARCHS:
            raise UserError(f"unknown tiny-model arch {self.arch!r}; use {VL_ARCHS + TEXT_ARCHS}")
        if self.task not in ("vision", "text") or (self.task == "vision" and not self.is_vision):
            raise UserError(f"tiny model task {self.task!r} does not fit arch {self.arch!r}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 4:
            raise UserError("tiny model: hidden must be a multiple of 4 * heads")
        return self


EMBEDDED: dict[str, TinyConfig] = {
    "tiny-vl": TinyConfig(),
    # the text task's chance level is lower (free-form sums): a lower target, more steps
    "tiny-text": TinyConfig(arch="qwen2", task="text", sft_target=0.35, sft_steps=1500),
}


def parse_embedded(name: str) -> TinyConfig:
    """``tiny-vl`` or ``tiny-vl?sft_steps=0&hidden=64`` (overrides typed by the field)."""
    base, _, query = name.partition("?")
    if base not in EMBEDDED:
        raise UserError(f"unknown embedded model {base!r}; valid names: {', '.join(EMBEDDED)}")
    cfg = EMBEDDED[base]
    fields = {f.name: f for f in dataclasses.fields(TinyConfig)}
    changes: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise UserError(f"unknown tiny-model option {key!r} in {name!r}")
        kind = type(getattr(cfg, key))
        try:
            changes[key] = kind(value)
        except ValueError:
            raise UserError(f"bad value {value!r} for tiny-model option {key!r}") from None
    return cfg.replace(**changes).validate()


# --- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A Qwen2 tokenizer whose BPE is trained on ``texts`` (Qwen's pre-tokenizer, byte
    level, NFC) with the Qwen special tokens appended after the learned vocabulary."""
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(bpe.model.__getstate__())
    vocab, merges = dict(state["vocab"]), [tuple(m) for m in state["merges"]]
    base = len(vocab)
    vocab.update({t: base + i for i, t in enumerate(SPECIAL_TOKENS)})
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=4096,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


# --- models


def _token_ids(cfg: TinyConfig, tok: Any = None) -> dict[str, int]:
    """The special tokens' ids in ``tok``; without it, where :func:`train_tokenizer` puts
    them when the BPE learns all of its ``cfg.bpe_vocab`` tokens (right after them)."""
    if tok is None:
        ids = {t: cfg.bpe_vocab + i for i, t in enumerate(SPECIAL_TOKENS)}
    else:
        ids = dict(zip(SPECIAL_TOKENS, tok.convert_tokens_to_ids(SPECIAL_TOKENS), strict=True))
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _text_config(cfg: TinyConfig, vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    head_dim = cfg.hidden // cfg.heads
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
    if cfg.is_vision:  # mRoPE splits head_dim / 2 frequencies over (t, h, w): Qwen's 16:24:24
        half = head_dim // 2
        t = half // 4
        rope["mrope_section"] = [t, (half - t) // 2, half - t - (half - t) // 2]
        if cfg.arch == "qwen3_vl":
            rope["mrope_interleaved"] = True
    text = {
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": 4096,
        "rope_parameters": rope,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
    }
    if cfg.arch in ("qwen3", "qwen3_vl"):
        text["head_dim"] = head_dim
    return text


def _vision_config(cfg: TinyConfig) -> dict[str, Any]:
    h, depth = cfg.vision_hidden, cfg.vision_layers
    if cfg.arch == "qwen2_vl":
        return {"depth": depth, "embed_dim": h, "hidden_size": cfg.hidden, "num_heads": 4}
    if cfg.arch == "qwen2_5_vl":
        return {
            "depth": depth,
            "hidden_size": h,
            "intermediate_size": 2 * h,
            "num_heads": 4,
            "out_hidden_size": cfg.hidden,
            "window_size": 112,
            "fullatt_block_indexes": [depth - 1],
        }
    return {  # qwen3_vl
        "depth": depth,
        "hidden_size": h,
        "intermediate_size": 2 * h,
        "num_heads": 4,
        "out_hidden_size": cfg.hidden,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }


def embedded_config(cfg: TinyConfig, tok: Any = None) -> PretrainedConfig:
    """The transformers config of ``cfg``'s model, without building the model. Its
    vocabulary and special-token ids are ``tok``'s; without a tokenizer, those of one
    whose BPE learned all of its ``cfg.bpe_vocab`` tokens (the shapes, without training
    the BPE)."""
    import transformers as tf

    ids = _token_ids(cfg, tok)
    vocab_size = len(tok) if tok is not None else cfg.bpe_vocab + len(SPECIAL_TOKENS)
    text = _text_config(cfg, vocab_size, ids)
    if not cfg.is_vision:
        config_cls = tf.Qwen2Config if cfg.arch == "qwen2" else tf.Qwen3Config
        return config_cls(**text, tie_word_embeddings=True)
    config_cls = {
        "qwen2_vl": tf.Qwen2VLConfig,
        "qwen2_5_vl": tf.Qwen2_5_VLConfig,
        "qwen3_vl": tf.Qwen3VLConfig,
    }[cfg.arch]
    vision_ids = {k: v for k, v in ids.items() if k.startswith(("image", "video", "vision"))}
    return config_cls(
        text_config=text,
        vision_config=_vision_config(cfg),
        tie_word_embeddings=True,  # top level (Qwen3-VL ignores it inside text_config)
        **vision_ids,
    )


def build_model(cfg: TinyConfig, tok: Any) -> torch.nn.Module:
    """A randomly initialised model of ``cfg.arch`` sized by ``cfg`` (seed it first)."""
    import transformers as tf

    model_cls = {
        "qwen2": tf.Qwen2ForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
        "qwen2_vl": tf.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
    }[cfg.arch]
    return model_cls(embedded_config(cfg, tok))


def build_image_processor(cfg: TinyConfig) -> Any:
    """Qwen's image processor capped at ``image_size**2`` pixels (few vision tokens)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    patch = 16 if cfg.arch == "qwen3_vl" else 14
    unit = 2 * patch
    side = max(unit, cfg.image_size // unit * unit)
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": unit * unit, "longest_edge": side * side},
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )


# --- building and caching the embedded models

BUILD_VERSION = 2  # bump when the builder changes what a config produces (2: processor saved
# under the stock class name with a video processor section)


def task_rows(task: str, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of the synthetic task (PIL images, no dataset round trip)."""
    from mhpo_vl.data.synthetic import text_problems, vision_problems

    if task == "vision":
        return [row for _, row in vision_problems(split, n, seed)]
    return list(text_problems(split, n, seed))


def tokenizer_corpus(rows: list[dict[str, Any]]) -> list[str]:
    """What the tiny BPE learns from: each row as the chat would show it, with its answer."""
    from mhpo_vl.data.synthetic import target_text
    from mhpo_vl.data.templates import TEMPLATES

    plain = TEMPLATES.get("plain")
    return [
        f"system\n{DEFAULT_SYSTEM}\nuser\n{plain(r)}\nassistant\n{target_text(r)} {r['answer']}"
        for r in rows
    ]


def build_embedded(cfg: TinyConfig, out_dir: str | Path, log: Any = None) -> dict[str, Any]:
    """Build ``cfg``'s model, warm-start it, save model + processor to ``out_dir``.

    Deterministic: everything random is seeded by ``cfg.seed`` inside a forked RNG, so
    the caller's RNG state is untouched."""
    from mhpo_vl.embedded.warmstart import sft
    from mhpo_vl.models.policy import Policy
    from mhpo_vl.models.processors import IMAGE_ONLY_PROCESSORS

    start = time.perf_counter()
    n_sft = cfg.sft_rows + cfg.sft_val_rows if cfg.sft_steps > 0 else 0
    rows = task_rows(cfg.task, "train", max(n_sft, cfg.bpe_rows))
    tok = train_tokenizer(tokenizer_corpus(rows[: cfg.bpe_rows]), cfg.bpe_vocab)
    with rng.fork():  # manual_seed reseeds the accelerator's generators too
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tok)
        processor = tok
        if cfg.is_vision:
            processor = IMAGE_ONLY_PROCESSORS[cfg.arch](
                image_processor=build_image_processor(cfg),
                tokenizer=tok,
                chat_template=CHAT_TEMPLATE,
            )
        policy = Policy(model=model, processor=processor, is_vision=cfg.is_vision, path="")
        result = None
        if cfg.sft_steps > 0:
            result = sft(
                policy,
                rows[: cfg.sft_rows],
                steps=cfg.sft_steps,
                batch_size=cfg.sft_batch,
                lr=cfg.sft_lr,
                seed=cfg.seed,
                val_rows=rows[cfg.sft_rows : cfg.sft_rows + cfg.sft_val_rows],
                target_accuracy=cfg.sft_target,
                eval_every=cfg.sft_eval_every,
                log=log,
            )
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info = {
        "config": dataclasses.asdict(cfg),
        "build_version": BUILD_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "sft_steps_run": result.steps if result else 0,
        "final_sft_loss": sum(result.losses[-10:]) / len(result.losses[-10:]) if result else None,
        "val_accuracy": result.val_accuracy[-1][1] if result and result.val_accuracy else None,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    Path(out_dir, "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def cache_root() -> Path:
    return Path(os.environ.get("MHPO_VL_CACHE") or Path.home() / ".cache" / "mhpo_vl")


def cache_dir(name: str, cfg: TinyConfig) -> Path:
    blob = json.dumps([BUILD_VERSION, dataclasses.asdict(cfg)], sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return cache_root() / "embedded" / f"{name.partition('?')[0]}-{key}"


def ensure_embedded(name: str, log: Any = None) -> Path:
    """The cached directory of embedded model ``name``, built first if missing.

    Built in a temporary directory and renamed into place, under a file lock, so
    concurrent first uses build once and a crash never leaves a half-written model."""
    cfg = parse_embedded(name)
    final = cache_dir(name, cfg)
    if (final / "build_info.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_suffix(".lock"), "w") as lock:
        _flock(lock)
        if (final / "build_info.json").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            if log:
                log(f"building embedded model {name!r} into {final} (once)")
            build_embedded(cfg, tmp, log=log)
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover, if any
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _flock(f: Any) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still protects the cache
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
