"""Recipes: YAML merged over typed dataclasses, ``key=value`` overrides, validation.

A recipe is a YAML mapping whose sections mirror :class:`Recipe`. Unknown keys,
wrong types and unknown names (loss, advantage, reward, template, engine, dataset)
fail with a :class:`~mhpo_vl.errors.UserError` naming the dotted key. Overrides use
dotted keys and YAML values: ``trainer.max_steps=10``, ``algorithm.loss.c=2.0``,
``rewards=[{name: accuracy, weight: 1.0}]``.

Values are checked against :data:`CHECKS`, one table from dotted key to its valid
range or names, then against the few rules that relate two keys (:data:`CROSS_RULES`);
every failure is one line, ``<dotted key>: must be <range>, got <value>``. Recipe files
and override values are read by :class:`~mhpo_vl.recipe_yaml.BoundedLoader`: at most 1 MiB, no YAML anchors
or aliases, nesting at most 32 deep.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.checks import (
    COUNT,
    FRACTION,
    OPTIONAL_COUNT,
    SEED,
    Check,
    Length,
    OneOf,
    Range,
    above,
    at_least,
)
from mhpo_vl.errors import UserError
from mhpo_vl.recipe_yaml import MAX_RECIPE_BYTES, load_yaml
from mhpo_vl.trackers import TRACKER_NAMES


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
    # rows whose prompt (chat template, instructions, question, each image's vision
    # tokens) is longer are dropped at load, counted and named; None: what the engine's
    # max_model_len (else the model's context) leaves after the longest response
    max_prompt_tokens: int | None = None

    def limits(self) -> dict[str, Any]:
        """How every split's images are decoded and how many bad rows it may have
        (keyword arguments of the data and benchmark loaders)."""
        return {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "max_image_pixels": self.max_image_pixels,
            "max_bad_frac": self.max_bad_frac,
        }


@dataclass
class RolloutConfig:
    engine: str = "hf"
    group_size: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # the engine's own arguments, checked by the engine (hf: batch_size, ...; vllm: ...)
    engine_args: dict[str, Any] = field(default_factory=dict)


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
class RolloutCorrectionConfig:
    """Truncated importance sampling for an engine whose log-probs differ from the
    trainer's (vLLM): each token's loss weighted by min(pi_old / pi_engine, cap)."""

    level: str = "none"  # none | token | sequence
    cap: float = 2.0


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "mhpo"})
    agg: str | None = None  # None: the loss's own default aggregation
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)


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
    # tokens per forward (prompt + completion, a shared prompt once), whole prompt groups
    # where they fit: micro-batches sized by what they hold, not by their row count
    micro_batch_tokens: int | None = None
    # forward each group's prompt (and image) once, its G completions packed behind it,
    # and each micro-batch without the columns that are padding in all its rows: the same
    # log-probs and gradients, less compute (off: the plain forward, one row per
    # completion, padded to the step's longest)
    shared_prefix: bool = True
    # where the PPO ratio's old log-probs come from when several updates reuse a step's
    # rollouts: "auto" (the engine's sampling log-probs where the engine declares them
    # exact and the temperature is 1, as the hf engine's are; else a recompute),
    # "recompute" (a no-grad forward, as verl does) or "rollout" (the engine's own)
    old_logprobs: str = "auto"
    save_every: int = 0  # 0: only at the end
    keep_last: int = 2
    # when a checkpoint also holds Hugging Face format weights under parallel.strategy fsdp
    # (whose checkpoints are sharded): "final" (the last step's) or "every" checkpoint;
    # ddp checkpoints always do (that is the format they keep the weights in)
    hf_weights: str = "final"
    # prompt groups written to samples.jsonl per step, each with all its G responses and
    # its image (samples/step-<step>/group-<g>.png); 0: none
    log_samples: int = 1
    resume: bool = True  # resume from the latest checkpoint in output_dir
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    # experiment trackers: any of tensorboard, wandb, trackio, mlflow ([]: none)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "mhpo_vl"  # the W&B / trackio project, the MLflow experiment
    run_name: str | None = None  # the trackers' run name (None: the recipe's name)
    # deprecated, use report_to: true adds tensorboard to it, false removes it
    tensorboard: bool | None = None
    progress_bar: bool = True
    # a step whose loss or gradient norm is not finite is skipped; this many in a row stop
    max_consecutive_skips: int = 3
    # stop when at least this fraction of a step's reward calls fail (1.0: all of them)
    max_reward_fail_frac: float = 1.0
    # seconds all of a step's reward calls may take together (the issue's
    # rewards.step_timeout; here because the recipe's rewards is a list): they run in
    # reward_workers processes, and calls still running at the deadline are cut off,
    # scored 0, counted and logged with their prompt ids
    reward_step_timeout: float = 120.0
    reward_workers: int = 2  # processes that score a step's rewards in parallel
    # seconds a process waits in a collective (all-reduce, barrier, ...) for the others
    # before the run stops naming the one that did not come (the process group's
    # timeout); it must cover the longest one process can be busy alone: a checkpoint
    # written by the main process, an uneven eval share
    collective_timeout: float = 600.0


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
class ParallelConfig:
    """How training is spread over processes (``torchrun`` / ``accelerate launch``)."""

    strategy: str = "ddp"  # ddp: whole replicas | fsdp: FSDP2 (fully_shard) shards
    cpu_offload: bool = False  # fsdp: parameters, gradients, optimizer state on CPU
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward
    # when gradients are reduced over the processes under gradient accumulation:
    # "micro_batch" (reduce-scatter after every micro-batch: each process keeps only its
    # gradient shard), "minibatch" (accumulate full unsharded float32 gradients locally and
    # reduce once per optimizer step: fewer collectives, 4 bytes per trainable parameter
    # more on every GPU under fsdp), "auto" (fsdp: micro_batch; ddp: minibatch)
    grad_sync: str = "auto"


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
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


# ---------------------------------------------------------------- valid values, as a table
#
# Every numeric field of the sections above has one entry in CHECKS (a test keeps it
# that way), and so do the names with a fixed list; names looked up in a registry (loss,
# engine, template, ...) are checked by check_names. Types come from the annotations
# (``_coerce``); the table says which values of that type can work. Keys are dotted paths into :class:`Recipe`;
# ``name[]`` checks every item of a list; a section that is ``None`` (``data.eval``)
# is skipped. Rules that relate two fields are the small functions in CROSS_RULES.


DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Valid ``model.dtype`` / ``model.master_dtype``; ``models.policy.DTYPES`` maps them to torch."""


CHECKS: dict[str, Check] = {
    "seed": SEED,
    "model.dtype": OneOf(DTYPE_NAMES),
    "model.master_dtype": OneOf(DTYPE_NAMES),
    "data.train.size": OPTIONAL_COUNT,
    "data.train.seed": SEED,
    "data.eval.size": OPTIONAL_COUNT,
    "data.eval.seed": SEED,
    "data.min_pixels": OPTIONAL_COUNT,
    "data.max_pixels": OPTIONAL_COUNT,
    "data.max_image_pixels": COUNT,
    "data.max_bad_frac": FRACTION,
    "data.max_prompt_tokens": OPTIONAL_COUNT,
    # advantages compare a response with the rest of its group: G = 1 has no baseline
    "rollout.group_size": at_least(2),
    "rollout.max_new_tokens": COUNT,
    # 0 is greedy decoding: every response of a group is the same, so every advantage is 0
    "rollout.temperature": above(0),
    "rollout.top_p": Range(0, 1, low_open=True),
    "rollout.top_k": at_least(0),  # 0: off
    "rewards": Length(1),
    "rewards[].weight": Range(),  # negative weights are penalties
    "algorithm.kl_coef": at_least(0),
    "algorithm.dynamic_sampling.max_tries": COUNT,
    "algorithm.overlong.buffer": COUNT,
    "algorithm.overlong.factor": at_least(0),
    "algorithm.rollout_correction.level": OneOf(("none", "token", "sequence")),
    # a weight below 1 at the cap would shrink every token's loss
    "algorithm.rollout_correction.cap": at_least(1),
    "optim.lr": above(0),
    "optim.weight_decay": at_least(0),
    "optim.betas": Length(2, 2),
    "optim.betas[]": Range(0, 1, high_open=True),
    "optim.eps": above(0),
    "optim.max_grad_norm": above(0),
    "optim.scheduler": OneOf(("constant", "linear", "cosine")),
    "optim.warmup_steps": at_least(0),
    "trainer.max_steps": COUNT,
    "trainer.prompts_per_step": COUNT,
    "trainer.minibatches": COUNT,
    "trainer.update_epochs": COUNT,
    "trainer.micro_batch_size": OPTIONAL_COUNT,
    "trainer.micro_batch_tokens": OPTIONAL_COUNT,
    "trainer.old_logprobs": OneOf(("auto", "recompute", "rollout")),
    "trainer.save_every": at_least(0),  # 0: only at the end
    "trainer.keep_last": COUNT,
    "trainer.hf_weights": OneOf(("final", "every")),
    "trainer.log_samples": at_least(0),
    "trainer.report_to[]": OneOf(TRACKER_NAMES),
    "trainer.num_threads": OPTIONAL_COUNT,
    "trainer.max_consecutive_skips": COUNT,
    "trainer.max_reward_fail_frac": Range(0, 1, low_open=True),
    "trainer.reward_step_timeout": Range(0, low_open=True),
    "trainer.reward_workers": COUNT,
    "trainer.collective_timeout": Range(0, low_open=True),
    "eval.every": at_least(0),  # 0: only at the start and end
    "eval.size": OPTIONAL_COUNT,
    "eval.temperature": at_least(0),  # 0: greedy
    "eval.max_new_tokens": OPTIONAL_COUNT,
    "eval.batch_size": COUNT,
    "parallel.strategy": OneOf(("ddp", "fsdp")),
    "parallel.grad_sync": OneOf(("auto", "micro_batch", "minibatch")),
}
"""Dotted key -> its valid values; ``mhpo-vl validate`` applies every entry."""


def lookup(recipe: Recipe, dotted: str) -> list[tuple[str, Any]]:
    """``(concrete key, value)`` for a CHECKS key: ``rewards[].weight`` gives one pair per
    reward, and a ``None`` section on the way (``data.eval``) gives none."""
    items: list[tuple[str, Any]] = [("", recipe)]
    for part in dotted.split("."):
        name, each = part.removesuffix("[]"), part.endswith("[]")
        found = []
        for prefix, node in items:
            if node is None:
                continue
            key, value = f"{prefix}.{name}" if prefix else name, getattr(node, name)
            found.extend(
                ((f"{key}[{i}]", v) for i, v in enumerate(value)) if each else [(key, value)]
            )
        items = found
    return items


def check_values(recipe: Recipe) -> None:
    """Apply :data:`CHECKS`; the first bad value is a one-line ``UserError`` naming it."""
    for dotted, check in CHECKS.items():
        for key, value in lookup(recipe, dotted):
            problem = check.problem(value)
            if problem:
                raise UserError(f"{key}: {problem}")


def _minibatches_divide_the_batch(recipe: Recipe) -> str | None:
    t, n = recipe.trainer, recipe.trainer.prompts_per_step * recipe.rollout.group_size
    if n % t.minibatches:
        return (
            f"trainer.minibatches ({t.minibatches}) must divide prompts_per_step * group_size ({n})"
        )
    return None


def _overlong_buffer_fits(recipe: Recipe) -> str | None:
    ov, max_new = recipe.algorithm.overlong, recipe.rollout.max_new_tokens
    if ov.enabled and ov.buffer >= max_new:
        return (
            f"algorithm.overlong.buffer: must be < rollout.max_new_tokens ({max_new}), "
            f"got {ov.buffer}"
        )
    return None


def _pixel_bounds_ordered(recipe: Recipe) -> str | None:
    lo, hi = recipe.data.min_pixels, recipe.data.max_pixels
    if lo is not None and hi is not None and lo > hi:
        return f"data.min_pixels: must be <= data.max_pixels ({hi}), got {lo}"
    return None


def _prompt_and_response_fit(recipe: Recipe) -> str | None:
    """A prompt of ``data.max_prompt_tokens`` and the longest response must fit the
    engine's ``max_model_len`` (when it has one)."""
    limit, length = recipe.data.max_prompt_tokens, recipe.rollout.engine_args.get("max_model_len")
    if limit is None or not isinstance(length, int):
        return None
    new, key = recipe.rollout.max_new_tokens, "rollout.max_new_tokens"
    if (recipe.eval.max_new_tokens or 0) > new:
        new, key = recipe.eval.max_new_tokens, "eval.max_new_tokens"
    if limit + new <= length:
        return None
    return (
        f"data.max_prompt_tokens: must be <= rollout.engine_args.max_model_len ({length}) - "
        f"{key} ({new}) = {length - new}, got {limit}"
    )


def _some_reward_counts(recipe: Recipe) -> str | None:
    if all(spec.weight == 0 for spec in recipe.rewards):
        return "rewards: every weight is 0, so every advantage would be 0; give one a weight"
    return None


def _master_weights_hold_the_compute_dtype(recipe: Recipe) -> str | None:
    m = recipe.model
    if m.master_dtype in ("float32", m.dtype):
        return None
    return (
        f"model.master_dtype: must be float32 (mixed precision) or the compute dtype "
        f"{m.dtype!r} (pure), got {m.master_dtype!r}"
    )


def _offload_needs_fsdp(recipe: Recipe) -> str | None:
    p = recipe.parallel
    if p.cpu_offload and p.strategy != "fsdp":
        return f"parallel.cpu_offload: needs parallel.strategy fsdp, got {p.strategy!r}"
    return None


def _fsdp_without_float16(recipe: Recipe) -> str | None:
    if recipe.parallel.strategy == "fsdp" and recipe.model.dtype == "float16":
        return (
            "model.dtype: float16 needs loss scaling, which parallel.strategy fsdp does not "
            "do here; use bfloat16"
        )
    return None


CROSS_RULES: tuple[Callable[[Recipe], str | None], ...] = (
    _master_weights_hold_the_compute_dtype,
    _minibatches_divide_the_batch,
    _offload_needs_fsdp,
    _fsdp_without_float16,
    _overlong_buffer_fits,
    _pixel_bounds_ordered,
    _prompt_and_response_fit,
    _some_reward_counts,
)
"""Rules relating two fields; each returns its one-line error or None."""


def check_cross_rules(recipe: Recipe) -> None:
    for rule in CROSS_RULES:
        problem = rule(recipe)
        if problem:
            raise UserError(problem)


def check_output_dir(path: str, key: str = "trainer.output_dir") -> None:
    """Fail unless ``path`` is, or can be created as, a writable directory. Creates
    nothing: walks up to the nearest existing ancestor and checks it."""
    probe = Path(os.path.abspath(path))
    while not _exists(probe):
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == Path(os.path.abspath(path)) else f" ({probe} is a file)"
        raise UserError(f"{key}: must be a directory, got {path!r}{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"{key}: must be a writable directory, got {path!r} ({probe} is not writable)"
        )


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path == path.parent
    except OSError:  # e.g. a parent we may not search: treat as missing, go up
        return False


# ---------------------------------------------------------------- building typed objects

MOVED = {"rollout.batch_size": "rollout.engine_args.batch_size"}
"""Keys that moved: their old spelling fails with a pointer to the new one."""


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
            if key in MOVED:
                raise UserError(f"{key}: moved to {MOVED[key]}")
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


# ---------------------------------------------------------------- overrides, files, checks


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
            value = load_yaml(raw) if raw.strip() else ""
        except UserError as exc:
            raise UserError(f"override {key.strip()!r}: {exc}") from None
        out.append((key.strip(), value))
    return out


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """The recipe file's mapping (at most :data:`MAX_RECIPE_BYTES`, no aliases)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("recipe file not found")
    with path.open("rb") as f:
        data = f.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise UserError(f"recipe is larger than {MAX_RECIPE_BYTES} bytes (1 MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"recipe is not UTF-8 text (byte {exc.start})") from None
    tree = load_yaml(text)
    if tree is None or tree == {}:
        raise UserError("recipe is empty; start from one in recipes/tiny/")
    if not isinstance(tree, dict):
        raise UserError(f"a recipe must be a YAML mapping, got {type(tree).__name__}")
    return tree


def build_recipe(tree: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """A typed :class:`Recipe` from a plain mapping plus overrides: keys and types are
    checked here; values by :func:`check_values` and the subsystems
    (:func:`mhpo_vl.validation.check_recipe` runs them all)."""
    tree = dict(tree)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    recipe = _build(Recipe, tree, "")
    _fold_tensorboard(recipe.trainer)
    return recipe


def _fold_tensorboard(t: TrainerConfig) -> None:
    """The deprecated ``trainer.tensorboard`` into ``trainer.report_to`` (true adds
    tensorboard, false removes it); the resolved recipe keeps only ``report_to``."""
    if t.tensorboard is None:
        return
    logging.getLogger("mhpo_vl").warning(
        "trainer.tensorboard is deprecated; use trainer.report_to (a list of trackers, "
        "[] for none): read as trainer.report_to=%s",
        "[" + ", ".join(_with_tensorboard(t.report_to, t.tensorboard)) + "]",
    )
    t.report_to, t.tensorboard = _with_tensorboard(t.report_to, t.tensorboard), None


def _with_tensorboard(names: list[str], on: bool) -> list[str]:
    others = [n for n in names if n != "tensorboard"]
    return names if on and "tensorboard" in names else others + (["tensorboard"] if on else [])


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
