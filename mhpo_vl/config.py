"""Recipes: YAML merged over typed dataclasses, ``key=value`` overrides, validation.

A recipe is a YAML mapping whose sections mirror :class:`Recipe`. Unknown keys,
wrong types and unknown names (loss, advantage, reward, template, engine, dataset)
fail with a :class:`~mhpo_vl.errors.UserError` naming the dotted key. Overrides use
dotted keys and YAML values: ``trainer.max_steps=10``, ``algorithm.loss.c=2.0``,
``rewards=[{name: accuracy, weight: 1.0}]``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.errors import UserError


@dataclass
class ModelConfig:
    """The policy: an HF path or hub id, or an embedded tiny model (``embedded:tiny-vl``)."""

    path: str = "embedded:tiny-vl"
    dtype: str = "float32"  # compute dtype (autocast); parameters follow master_dtype
    # parameters and optimizer state; "float32" keeps master weights exact under a bf16/fp16
    # compute dtype. Equal to `dtype` means pure low precision (warned at start).
    master_dtype: str = "float32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    freeze_vision: bool = False


@dataclass
class DatasetSpec:
    """One dataset: a registered name, a hub id, or local files (parquet/jsonl/json/dir)."""

    source: str = "synthetic_vision"
    split: str = "train"
    size: int | None = None  # keep the first `size` rows (after shuffling nothing)
    columns: dict[str, str] = field(default_factory=dict)  # schema key -> source column
    seed: int = 0


@dataclass
class DataConfig:
    train: DatasetSpec = field(default_factory=DatasetSpec)
    eval: DatasetSpec | None = None
    template: str = "plain"
    system_prompt: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    # images with more source pixels than this are rejected (counted, named) before decoding
    max_image_pixels: int = 64_000_000
    # stop when more than this fraction of a split's rows are bad (dropped rows counted)
    max_bad_frac: float = 0.1


@dataclass
class RolloutConfig:
    engine: str = "hf"
    group_size: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int | None = None  # generation micro-batch (None: all at once)


@dataclass
class RewardSpec:
    """A registered verifier name or ``path/to/file.py:function``, with its weight."""

    name: str = "accuracy"
    weight: float = 1.0


@dataclass
class OverlongConfig:
    """DAPO overlong reward shaping (off unless ``enabled``)."""

    enabled: bool = False
    buffer: int = 4
    factor: float = 1.0


@dataclass
class DynamicSamplingConfig:
    """DAPO dynamic sampling: drop groups with equal rewards, refill, bounded tries."""

    enabled: bool = False
    max_tries: int = 3


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "mhpo"})
    agg: str | None = None  # None: the loss's own default aggregation
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)


@dataclass
class OptimConfig:
    lr: float = 1.0e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    max_grad_norm: float = 1.0
    scheduler: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0


@dataclass
class TrainerConfig:
    output_dir: str = "runs/default"
    max_steps: int = 100
    prompts_per_step: int = 8  # P, across all processes
    minibatches: int = 1  # optimizer updates per epoch over the step's rollouts
    update_epochs: int = 1
    micro_batch_size: int | None = None  # sequences per forward (gradient accumulation)
    # where the PPO ratio's old log-probs come from when several updates reuse a step's
    # rollouts: "recompute" (a no-grad forward, as verl does; needed when the engine is
    # not the policy itself, e.g. vLLM) or "rollout" (the engine's own sampling log-probs:
    # exact for the hf engine, which samples from the policy's weights; saves a forward)
    old_logprobs: str = "recompute"
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    log_samples: int = 4  # rollouts written to samples.jsonl per step
    resume: bool = True  # resume from the latest checkpoint in output_dir
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    tensorboard: bool = True
    progress_bar: bool = True
    # a step whose loss or gradient norm is not finite is skipped; this many in a row stop
    max_consecutive_skips: int = 3
    # stop when at least this fraction of a step's reward calls fail (1.0: all of them)
    max_reward_fail_frac: float = 1.0


@dataclass
class EvalConfig:
    every: int = 0  # 0: only at the start and end
    at_start: bool = True
    size: int | None = None
    temperature: float = 0.0  # 0: greedy
    max_new_tokens: int | None = None  # None: rollout.max_new_tokens
    batch_size: int = 64
    benchmarks: list[str] = field(default_factory=list)  # extra eval-module benchmarks


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------- building typed objects


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int -> float allowed), building dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    if dataclasses.is_dataclass(tp):
        if tp is DatasetSpec and isinstance(value, str):
            value = {"source": value}
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise UserError(f"unknown key {key!r}; valid keys here: {', '.join(fields)}")
        default = fields[k].default_factory
        if (
            typing.get_origin(hints[k]) is dict
            and isinstance(v, dict)
            and default is not dataclasses.MISSING
        ):
            v = {**default(), **v}  # a free-form mapping (algorithm.loss) merges over its default
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if isinstance(child, str) and parts[0] == "data":  # data.train: name -> {source: name}
            child = node[part] = {"source": child}
        if not isinstance(child, dict):
            raise UserError(f"override {dotted!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=[x, y]"]`` -> ``[("a.b", 1), ("c", ["x", "y"])]`` (values parsed as YAML)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not KEY=VALUE (e.g. trainer.max_steps=10)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: value is not valid YAML ({exc})") from None
        out.append((key.strip(), value))
    return out


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping, got {type(tree).__name__}")
    return tree


def recipe_from_dict(tree: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Build and validate a :class:`Recipe` from a plain mapping plus overrides."""
    tree = dict(tree)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    recipe = _build(Recipe, tree, "")
    check_names(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge overrides into, and validate a recipe file."""
    try:
        return recipe_from_dict(read_recipe_yaml(path), overrides)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


validate_recipe = load_recipe


def check_names(recipe: Recipe) -> None:
    """Check every registered name the recipe uses, and the loss's parameters."""
    from mhpo_vl import algorithms, rewards
    from mhpo_vl.data import check_dataset_spec
    from mhpo_vl.data.templates import TEMPLATES
    from mhpo_vl.rollout import ENGINES

    loss = dict(recipe.algorithm.loss)
    if "name" not in loss:
        raise UserError("algorithm.loss.name is missing (e.g. mhpo, grpo, dapo)")
    _named("algorithm.loss.name", loss.pop("name"), algorithms.POLICY_LOSSES)
    _check_loss_params(recipe.algorithm.loss["name"], loss)
    _named("algorithm.advantage", recipe.algorithm.advantage, algorithms.ADVANTAGES)
    if recipe.algorithm.agg is not None:
        _one_of("algorithm.agg", recipe.algorithm.agg, algorithms.AGGREGATIONS)
    _one_of("algorithm.kl_estimator", recipe.algorithm.kl_estimator, algorithms.KL_ESTIMATORS)
    _named("data.template", recipe.data.template, TEMPLATES)
    _named("rollout.engine", recipe.rollout.engine, ENGINES)
    for i, spec in enumerate(recipe.rewards):
        try:
            rewards.load_reward(spec.name)
        except UserError as exc:
            raise UserError(f"rewards[{i}].name: {exc}") from None
    from mhpo_vl.eval.benchmarks import BENCHMARKS

    for i, name in enumerate(recipe.eval.benchmarks):
        _named(f"eval.benchmarks[{i}]", name, BENCHMARKS)
    check_dataset_spec(recipe.data.train, "data.train")
    if recipe.data.eval is not None:
        check_dataset_spec(recipe.data.eval, "data.eval")
    _check_ranges(recipe)


def _named(key: str, name: str, registry: Any) -> None:
    if name not in registry:
        raise UserError(f"{key}: unknown name {name!r}; valid: {', '.join(registry.names())}")


def _one_of(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UserError(f"{key}: unknown {value!r}; valid: {', '.join(valid)}")


def _check_loss_params(name: str, params: dict[str, Any]) -> None:
    from mhpo_vl.algorithms import POLICY_LOSSES

    try:
        POLICY_LOSSES.get(name).resolve(params)
    except UserError as exc:
        raise UserError(f"algorithm.loss: {exc}") from None


def _check_ranges(recipe: Recipe) -> None:
    t, r = recipe.trainer, recipe.rollout
    positive = {
        "trainer.max_steps": t.max_steps,
        "trainer.prompts_per_step": t.prompts_per_step,
        "trainer.minibatches": t.minibatches,
        "trainer.update_epochs": t.update_epochs,
        "rollout.group_size": r.group_size,
        "rollout.max_new_tokens": r.max_new_tokens,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key}: must be >= 1, got {value}")
    if t.prompts_per_step * r.group_size % t.minibatches:
        raise UserError(
            f"trainer.minibatches ({t.minibatches}) must divide prompts_per_step * group_size "
            f"({t.prompts_per_step * r.group_size})"
        )
    _one_of("optim.scheduler", recipe.optim.scheduler, ("constant", "linear", "cosine"))
    _one_of("trainer.old_logprobs", t.old_logprobs, ("recompute", "rollout"))
    if t.old_logprobs == "rollout" and r.temperature != 1.0:
        raise UserError(
            "trainer.old_logprobs: 'rollout' needs rollout.temperature 1.0 (the engine's "
            f"log-probs are at the sampling temperature, {r.temperature}); use 'recompute'"
        )
    from mhpo_vl.models.policy import DTYPES

    _one_of("model.dtype", recipe.model.dtype, tuple(DTYPES))
    if not 0 < r.top_p <= 1:
        raise UserError(f"rollout.top_p: must be in (0, 1], got {r.top_p}")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
