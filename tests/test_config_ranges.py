"""Value ranges, cross-field rules, the output directory and bounded YAML, through the CLI.

Every recipe that would pass validation and then fail (or train nothing) must be
answered by ``mhpo-vl validate`` and ``mhpo-vl train`` with exit code 2 and one line
naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import pytest

from mhpo_vl.cli import main
from mhpo_vl.config import (
    CHECKS,
    MAX_RECIPE_BYTES,
    DatasetSpec,
    Length,
    OneOf,
    Range,
    Recipe,
    lookup,
)
from mhpo_vl.validation import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "tiny" / "mhpo.yaml")
SHIPPED = sorted((ROOT / "recipes" / "tiny").rglob("*.yaml"))  # real ones: test_recipes_real.py


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _validate(capsys, tmp_path, *overrides: str, recipe: str = RECIPE) -> tuple[int, str]:
    out = f"trainer.output_dir={tmp_path / 'out'}"
    return _run(capsys, "validate", recipe, out, *overrides)


def _assert_one_line_naming(code: int, err: str, key: str) -> None:
    assert code == 2, err
    assert err.startswith("mhpo-vl: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert key in err, err


# ---------------------------------------------------------------- single values

BAD_VALUES = [
    # optim
    ("optim.lr=0", "optim.lr: must be > 0, got 0"),
    ("optim.lr=-1e-5", "optim.lr: must be > 0"),
    ("optim.lr=.nan", "optim.lr: must be a finite number > 0, got nan"),
    ("optim.lr=.inf", "optim.lr: must be a finite number > 0, got inf"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.betas=[-0.1, 0.99]", "optim.betas[0]: must be in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas: must list exactly 2 values"),
    ("optim.betas=[0.9, 0.99, 0.999]", "optim.betas: must list exactly 2 values"),
    ("optim.betas=[.nan, 0.99]", "optim.betas[0]: must be a finite number in [0, 1)"),
    ("optim.eps=0", "optim.eps: must be > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0"),
    ("optim.max_grad_norm=.nan", "optim.max_grad_norm: must be a finite number > 0"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm: must be > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: must be >= 0"),
    # rollout
    ("rollout.top_k=-1", "rollout.top_k: must be >= 0, got -1"),
    ("rollout.top_p=0", "rollout.top_p: must be in (0, 1], got 0"),
    ("rollout.top_p=1.5", "rollout.top_p: must be in (0, 1]"),
    ("rollout.temperature=-1", "rollout.temperature: must be > 0, got -1"),
    ("rollout.temperature=0", "rollout.temperature: must be > 0, got 0"),
    (
        "rollout.engine_args.batch_size=0",
        "rollout.engine_args.batch_size: must be None or an integer >= 1, got 0",
    ),
    (
        "rollout.engine_args.batch_size=-3",
        "rollout.engine_args.batch_size: must be None or an integer >= 1",
    ),
    (
        "rollout.engine_args.batch_sise=4",
        "rollout.engine_args.batch_sise: unknown engine argument; valid: batch_size",
    ),
    (
        "rollout.engine_args.cache_implementation=paged",
        "rollout.engine_args.cache_implementation: must be one of",
    ),
    ("rollout.batch_size=4", "rollout.batch_size: moved to rollout.engine_args.batch_size"),
    ("parallel.strategy=zero3", "parallel.strategy: unknown 'zero3'; valid: ddp, fsdp"),
    ("parallel.cpu_offload=true", "parallel.cpu_offload: needs parallel.strategy fsdp, got 'ddp'"),
    ("algorithm.rollout_correction.level=seq", "algorithm.rollout_correction.level: unknown 'seq'"),
    ("algorithm.rollout_correction.cap=0.5", "algorithm.rollout_correction.cap: must be >= 1"),
    ("rollout.group_size=1", "rollout.group_size: must be >= 2, got 1"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens: must be >= 1"),
    # trainer
    ("trainer.num_threads=-1", "trainer.num_threads: must be None or >= 1, got -1"),
    ("trainer.num_threads=0", "trainer.num_threads: must be None or >= 1, got 0"),
    ("trainer.micro_batch_size=-1", "trainer.micro_batch_size: must be None or >= 1, got -1"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size: must be None or >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps: must be >= 1"),
    ("trainer.prompts_per_step=0", "trainer.prompts_per_step: must be >= 1"),
    ("trainer.minibatches=0", "trainer.minibatches: must be >= 1"),
    ("trainer.update_epochs=0", "trainer.update_epochs: must be >= 1"),
    ("trainer.save_every=-1", "trainer.save_every: must be >= 0"),
    ("trainer.keep_last=0", "trainer.keep_last: must be >= 1"),
    ("trainer.log_samples=-1", "trainer.log_samples: must be >= 0"),
    ("trainer.max_consecutive_skips=0", "trainer.max_consecutive_skips: must be >= 1"),
    ("trainer.max_reward_fail_frac=0", "trainer.max_reward_fail_frac: must be in (0, 1]"),
    ("trainer.max_reward_fail_frac=1.5", "trainer.max_reward_fail_frac: must be in (0, 1]"),
    # eval
    ("eval.every=-1", "eval.every: must be >= 0"),
    ("eval.size=0", "eval.size: must be None or >= 1"),
    ("eval.temperature=-0.5", "eval.temperature: must be >= 0"),
    ("eval.temperature=.nan", "eval.temperature: must be a finite number >= 0"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens: must be None or >= 1"),
    ("eval.batch_size=0", "eval.batch_size: must be >= 1"),
    # data
    ("data.train.size=0", "data.train.size: must be None or >= 1"),
    ("data.eval.size=-1", "data.eval.size: must be None or >= 1"),
    ("data.train.seed=-1", "data.train.seed: must be in [0, 4294967295]"),
    ("data.min_pixels=0", "data.min_pixels: must be None or >= 1"),
    ("data.max_pixels=-5", "data.max_pixels: must be None or >= 1"),
    ("data.max_image_pixels=0", "data.max_image_pixels: must be >= 1"),
    ("data.max_bad_frac=1.5", "data.max_bad_frac: must be in [0, 1]"),
    ("data.max_bad_frac=-0.1", "data.max_bad_frac: must be in [0, 1]"),
    # algorithm, rewards, model, top level
    ("algorithm.kl_coef=-0.1", "algorithm.kl_coef: must be >= 0"),
    ("algorithm.kl_coef=.inf", "algorithm.kl_coef: must be a finite number >= 0"),
    (
        "algorithm.dynamic_sampling.max_tries=0",
        "algorithm.dynamic_sampling.max_tries: must be >= 1",
    ),
    ("algorithm.overlong.buffer=0", "algorithm.overlong.buffer: must be >= 1"),
    ("algorithm.overlong.factor=-1", "algorithm.overlong.factor: must be >= 0"),
    ("rewards=[]", "rewards: must list at least 1 entry, got []"),
    ("rewards=[{name: accuracy, weight: .nan}]", "rewards[0].weight: must be a finite number"),
    ("rewards=[{name: accuracy, weight: .inf}]", "rewards[0].weight: must be a finite number"),
    ("model.dtype=float8", "model.dtype: unknown 'float8'; valid: float32"),
    ("model.master_dtype=fp32", "model.master_dtype: unknown 'fp32'; valid: float32"),
    ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
    ("seed=18446744073709551616", "seed: must be in [0, 4294967295]"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_exits_2_with_one_line_naming_key_and_range(capsys, tmp_path, override, message):
    code, err = _validate(capsys, tmp_path, override)
    _assert_one_line_naming(code, err, message)


# ---------------------------------------------------------------- cross-field rules

CROSS = [
    (
        ["model.dtype=float16", "model.master_dtype=bfloat16"],
        "model.master_dtype: must be float32 (mixed precision) or the compute dtype 'float16'",
    ),
    (["trainer.minibatches=3"], "trainer.minibatches (3) must divide"),
    (["parallel.strategy=fsdp", "model.dtype=float16"], "model.dtype: float16 needs loss scaling"),
    (
        ["trainer.old_logprobs=rollout", "rollout.temperature=0.7"],
        "trainer.old_logprobs: 'rollout' needs rollout.temperature 1.0",
    ),
    (
        ["algorithm.overlong.enabled=true", "algorithm.overlong.buffer=8"],
        "algorithm.overlong.buffer: must be < rollout.max_new_tokens (8), got 8",
    ),
    (
        ["algorithm.overlong.enabled=true", "algorithm.overlong.buffer=20"],
        "algorithm.overlong.buffer: must be < rollout.max_new_tokens",
    ),
    (
        ["data.min_pixels=4096", "data.max_pixels=1024"],
        "data.min_pixels: must be <= data.max_pixels (1024), got 4096",
    ),
    (["rewards=[{name: accuracy, weight: 0}]"], "rewards: every weight is 0"),
]


@pytest.mark.parametrize(("overrides", "message"), CROSS, ids=[c[1][:40] for c in CROSS])
def test_cross_field_rules(capsys, tmp_path, overrides, message):
    code, err = _validate(capsys, tmp_path, *overrides)
    _assert_one_line_naming(code, err, message)


def test_overlong_buffer_is_only_checked_when_shaping_is_on(capsys, tmp_path):
    code, err = _validate(capsys, tmp_path, "algorithm.overlong.buffer=20")
    assert code == 0, err
    code, err = _validate(
        capsys, tmp_path, "algorithm.overlong.enabled=true", "algorithm.overlong.buffer=7"
    )
    assert code == 0, err


# ---------------------------------------------------------------- the loss's parameters

LOSS_PARAMS = [
    (["algorithm.loss.c=.inf"], "algorithm.loss.c: must be a finite number, got inf"),
    (["algorithm.loss.c=.nan"], "algorithm.loss.c: must be a finite number, got nan"),
    (["algorithm.loss.lam_neg=-.inf"], "algorithm.loss.lam_neg: must be a finite number"),
    (["algorithm.loss.c=abc"], "algorithm.loss.c: expected a number, got 'abc'"),
    (["algorithm.loss.c=true"], "algorithm.loss.c: must be a finite number, got True"),
    (["algorithm.loss.shift=3"], "algorithm.loss.shift: expected str, got 3"),
    # the loss's own checks, run at validate time
    (["algorithm.loss.c=-1"], "algorithm.loss (mhpo): c must be > 0"),
    (["algorithm.loss.k_pos=0"], "algorithm.loss (mhpo): k_pos, k_neg must be > 0"),
    (["algorithm.loss.shift=gelu"], "algorithm.loss (mhpo): unknown shift 'gelu'"),
    (["algorithm.loss.name=grpo", "algorithm.loss.clip_low=2"], "clip_low must be in [0, 1]"),
    (["algorithm.loss.name=grpo", "algorithm.loss.clip_c=.inf"], "algorithm.loss.clip_c"),
    (["algorithm.loss.name=grpo", "algorithm.loss.clip_c=0.5"], "clip_c must be > 1"),
    (["algorithm.loss.name=sapo", "algorithm.loss.tau_neg=0"], "tau_pos, tau_neg must be > 0"),
    (["algorithm.loss.name=cispo", "algorithm.loss.clip_high=.inf"], "algorithm.loss.clip_high"),
]


@pytest.mark.parametrize(
    ("overrides", "message"), LOSS_PARAMS, ids=[" ".join(p[0]) for p in LOSS_PARAMS]
)
def test_loss_parameters_are_checked_at_validation(capsys, tmp_path, overrides, message):
    code, err = _validate(capsys, tmp_path, *overrides)
    _assert_one_line_naming(code, err, message)


def test_loss_parameters_in_yaml_string_form_become_floats(tmp_path):
    recipe = load_recipe(
        RECIPE,
        [
            f"trainer.output_dir={tmp_path}",
            "algorithm.loss.name=gspo",
            "algorithm.loss.clip_high=5e-4",  # YAML 1.1 reads this as a string
            "algorithm.loss.clip_low=3e-4",
        ],
    )
    assert recipe.algorithm.loss == {"name": "gspo", "clip_high": 5e-4, "clip_low": 3e-4}


def test_none_stays_valid_where_the_loss_default_is_none(tmp_path):
    recipe = load_recipe(
        RECIPE,
        [
            f"trainer.output_dir={tmp_path}",
            "algorithm.loss.name=grpo",
            "algorithm.loss.clip_c=null",
        ],
    )
    assert recipe.algorithm.loss["clip_c"] is None


# ---------------------------------------------------------------- recipe files and YAML


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n", "---\n"])
def test_empty_recipe_exits_2(capsys, tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "recipe is empty")


def test_recipe_that_is_not_a_mapping_exits_2(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "a recipe must be a YAML mapping, got list")


def _alias_bomb(walked: bool = False) -> str:
    """Nine levels of nine aliases: 9**9 (387 million) strings once expanded. ``walked``
    puts them under ``name``, which the recipe builder walks (and would print)."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    if walked:
        return "name:\n" + "".join(f"  - {level}\n" for level in levels)
    return "".join(f"{chr(97 + i)}: {level}\n" for i, level in enumerate(levels))


def test_alias_bomb_fails_fast(capsys, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert len(path.read_bytes()) < 500
    start = time.perf_counter()
    code, err = _run(capsys, "validate", str(path))
    assert time.perf_counter() - start < 30.0  # a hang guard with room for a loaded machine
    _assert_one_line_naming(code, err, "anchors and aliases")


def _limit_memory() -> None:  # so that a regression fails with MemoryError, not the machine
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_alias_bomb_under_a_walked_key_fails_fast_in_a_subprocess(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(walked=True))
    assert len(path.read_bytes()) < 500
    res = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,  # the hang guard: walking the 9**9 strings takes many minutes
        cwd=ROOT,
        preexec_fn=_limit_memory,
    )
    _assert_one_line_naming(res.returncode, res.stderr, "anchors and aliases")


@pytest.mark.parametrize(
    "text",
    [
        "base: &base {lr: 1.0e-4}\noptim: *base\n",
        "optim: &o {lr: 1.0e-4}\n",
        "base: &b {max_steps: 3}\ntrainer:\n  <<: *b\n",
    ],
    ids=["alias", "anchor-only", "merge-key"],
)
def test_anchors_and_aliases_are_refused(capsys, tmp_path, text):
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "YAML anchors and aliases")
    assert "line " in err


def test_anchors_in_override_values_are_refused(capsys, tmp_path):
    code, err = _validate(capsys, tmp_path, "eval.benchmarks=&x [synthetic]")
    _assert_one_line_naming(code, err, "override 'eval.benchmarks': line 1: YAML anchors")


def test_deep_nesting_is_refused(capsys, tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 2000 + "]" * 2000 + "\n")
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "nested deeper than 32 levels")


def test_oversized_recipe_is_refused_before_parsing(capsys, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: run\n" + "#" * MAX_RECIPE_BYTES + "\n")
    start = time.perf_counter()
    code, err = _run(capsys, "validate", str(path))
    assert time.perf_counter() - start < 30.0  # a hang guard with room for a loaded machine
    _assert_one_line_naming(code, err, "recipe is larger than 1048576 bytes")


def test_invalid_yaml_is_one_line_with_its_position(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("trainer:\n  max_steps: [1, 2\n")
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "not valid YAML: line ")


def test_huge_integer_literal_is_a_user_error(capsys, tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text("seed: " + "9" * 6000 + "\n")
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, str(path))


def test_binary_recipe_is_a_user_error(capsys, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    code, err = _run(capsys, "validate", str(path))
    _assert_one_line_naming(code, err, "not UTF-8")


# ---------------------------------------------------------------- the output directory


def test_output_dir_under_a_regular_file_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "run"
    code, err = _run(capsys, "validate", RECIPE, f"trainer.output_dir={target}")
    _assert_one_line_naming(code, err, "trainer.output_dir: must be a directory")
    assert str(target) in err and f"{blocker} is a file" in err


def test_output_dir_that_is_a_file_exits_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = _run(capsys, "validate", RECIPE, f"trainer.output_dir={blocker}")
    _assert_one_line_naming(code, err, "trainer.output_dir: must be a directory")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_output_dir_in_a_read_only_directory_exits_2(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = _run(capsys, "validate", RECIPE, f"trainer.output_dir={locked / 'a' / 'b'}")
    finally:
        locked.chmod(0o700)
    _assert_one_line_naming(code, err, "trainer.output_dir: must be a writable directory")


def test_validate_creates_no_directory(capsys, tmp_path):
    target = tmp_path / "not" / "yet"
    code, err = _run(capsys, "validate", RECIPE, f"trainer.output_dir={target}")
    assert code == 0, err
    assert not (tmp_path / "not").exists()


# ---------------------------------------------------------------- the CLI's two commands


def test_train_answers_like_validate(capsys, tmp_path):
    code, err = _run(
        capsys,
        "train",
        RECIPE,
        f"trainer.output_dir={tmp_path / 'o'}",
        "trainer.micro_batch_size=-1",
    )
    _assert_one_line_naming(code, err, "trainer.micro_batch_size: must be None or >= 1, got -1")
    assert not (tmp_path / "o").exists()


def test_train_refuses_an_empty_recipe(capsys, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    code, err = _run(capsys, "train", str(path))
    _assert_one_line_naming(code, err, "recipe is empty")


def test_validate_takes_overrides_positionally_and_with_set(capsys, tmp_path):
    code, err = _run(
        capsys, "validate", RECIPE, "--set", f"trainer.output_dir={tmp_path}", "--set", "optim.lr=0"
    )
    _assert_one_line_naming(code, err, "optim.lr: must be > 0")
    code, err = _run(capsys, "validate", f"trainer.output_dir={tmp_path}", "optim.lr=0")
    _assert_one_line_naming(code, err, "no recipe given")


def test_cli_subprocess_prints_one_line_on_stderr(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "validate", RECIPE, "optim.betas=[0.9, 1.0]",
         f"trainer.output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"mhpo-vl: error: {RECIPE}: optim.betas[1]: must be in [0, 1), got 1.0\n"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_recipe_still_validates(capsys, monkeypatch, path):
    monkeypatch.chdir(ROOT)
    code, err = _run(capsys, "validate", str(path.relative_to(ROOT)))
    assert code == 0, err


# ---------------------------------------------------------------- the table itself


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted CHECKS keys for every int/float field (``[]`` for lists), recursively."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            keys += _numeric_fields(tp, key)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item):
                keys += _numeric_fields(item, f"{key}[]")
            elif item in (int, float):
                keys.append(f"{key}[]")
        elif tp in (int, float):
            keys.append(key)
    return keys


def test_every_numeric_field_has_a_range():
    missing = [k for k in _numeric_fields(Recipe) if k not in CHECKS]
    assert missing == []


def test_every_table_key_names_a_field():
    recipe = Recipe()
    recipe.data.eval = DatasetSpec()
    empty = [k for k in CHECKS if not lookup(recipe, k)]
    assert empty == []


def test_the_defaults_pass_the_table():
    recipe = Recipe()
    recipe.data.eval = DatasetSpec()
    for dotted, check in CHECKS.items():
        for key, value in lookup(recipe, dotted):
            assert check.problem(value) is None, key


@pytest.mark.parametrize(
    ("check", "good", "bad", "text"),
    [
        (Range(low=0, low_open=True), [1e-9, 5], [0, -1, float("nan"), float("inf")], "> 0"),
        (Range(low=1, none_ok=True), [None, 1, 7], [0, -1], "None or >= 1"),
        (Range(0, 1, high_open=True), [0, 0.999], [1, -0.1, float("nan")], "in [0, 1)"),
        (Range(0, 1, low_open=True), [1, 0.5], [0, 1.01], "in (0, 1]"),
        (Range(), [-3.5, 0, 2], [float("nan"), float("-inf"), None, "1"], "a finite number"),
        (OneOf(("a", "b")), ["a", "b"], ["c", None], "one of a, b"),
        (Length(2, 2), [[1, 2]], [[1], [1, 2, 3]], "exactly 2 values"),
        (Length(1), [[1], [1, 2]], [[]], "at least 1 entry"),
    ],
)
def test_checks_accept_and_reject(check, good, bad, text):
    assert check.describe() == text
    for value in good:
        assert check.problem(value) is None, value
    for value in bad:
        assert check.problem(value), value


def test_lookup_expands_lists_and_skips_absent_sections():
    recipe = Recipe()
    assert recipe.data.eval is None
    assert lookup(recipe, "data.eval.size") == []
    assert lookup(recipe, "optim.betas[]") == [("optim.betas[0]", 0.9), ("optim.betas[1]", 0.999)]
    assert lookup(recipe, "rewards[].weight") == [("rewards[0].weight", 1.0)]
