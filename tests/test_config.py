"""Recipes: typed validation, overrides, shipped recipes, and the CLI's answers to mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mhpo_vl.config import Recipe, dump_recipe, parse_overrides
from mhpo_vl.errors import UserError
from mhpo_vl.validation import load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
# the tiny recipes validate as they are; the real ones once their data is prepared
# (tests/test_recipes_real.py prepares fixtures and validates them)
RECIPES = sorted((ROOT / "recipes" / "tiny").rglob("*.yaml"))


def test_there_are_recipes_for_every_tiny_loss():
    names = {p.stem for p in (ROOT / "recipes" / "tiny").glob("*.yaml")}
    assert {"mhpo", "grpo", "dapo", "gspo", "sapo", "cispo", "mhpo_text"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT)) for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.algorithm.loss["name"]
    assert recipe.trainer.output_dir


def test_tiny_recipes_differ_only_where_the_experiment_does():
    mhpo = load_recipe(ROOT / "recipes/tiny/mhpo.yaml")
    grpo = load_recipe(ROOT / "recipes/tiny/grpo.yaml")
    assert mhpo.algorithm.loss == {"name": "mhpo"} and grpo.algorithm.loss == {"name": "grpo"}
    assert mhpo.rollout == grpo.rollout and mhpo.optim == grpo.optim and mhpo.data == grpo.data


def test_overrides_are_yaml_values_at_dotted_keys():
    r = recipe_from_dict(
        {},
        ["trainer.max_steps=7", "algorithm.loss.name=grpo", "algorithm.loss.clip_high=0.28",
         "optim.lr=3e-5", "data.train=synthetic_text", "rewards=[{name: accuracy, weight: 0.5}]"],
    )  # fmt: skip
    assert r.trainer.max_steps == 7
    assert r.algorithm.loss == {"name": "grpo", "clip_high": 0.28}
    assert r.optim.lr == pytest.approx(3e-5)
    assert r.data.train.source == "synthetic_text"
    assert r.rewards[0].weight == 0.5
    assert parse_overrides(["a.b=[1, 2]"]) == [("a.b", [1, 2])]


@pytest.mark.parametrize(
    ("tree", "overrides", "message"),
    [
        ({"trainer": {"max_stepz": 3}}, [], r"unknown key 'trainer.max_stepz'.*max_steps"),
        ({}, ["trainer.max_steps=abc"], r"trainer.max_steps: expected int, got 'abc'"),
        ({}, ["trainer.max_steps=true"], r"trainer.max_steps: expected int"),
        ({}, ["algorithm.loss.name=ppo2"], r"algorithm.loss.name: unknown name 'ppo2'.*mhpo"),
        (
            {},
            ["algorithm.loss.tau=2"],
            r"algorithm.loss: unknown parameter\(s\) 'tau' for policy loss 'mhpo'.*k_pos",
        ),
        ({}, ["algorithm.advantage=gae"], r"algorithm.advantage: unknown name 'gae'.*rloo"),
        ({}, ["rewards=[{name: nope}]"], r"rewards\[0\].name: .*'nope'"),
        ({}, ["data.template=fancy"], r"data.template: unknown name 'fancy'.*think_answer"),
        (
            {},
            ["data.train=/no/such/file.jsonl"],
            r"dataset not found: /no/such/file.jsonl \(data.train.source\); it is neither",
        ),
        ({}, ["trainer.minibatches=3"], r"minibatches \(3\) must divide"),
        ({}, ["optim.scheduler=wsd"], r"optim.scheduler: unknown 'wsd'"),
        ({}, ["trainer.old_logprobs=cached"], r"trainer.old_logprobs: unknown 'cached'"),
        (
            {},
            ["trainer.old_logprobs=rollout", "rollout.temperature=0.7"],
            r"trainer.old_logprobs: 'rollout' needs rollout.temperature 1.0",
        ),
        ({}, ["trainer.max_steps"], r"is not KEY=VALUE"),
        ({"model": "x"}, [], r"model: expected a mapping"),
        (
            {},
            ["eval.benchmarks=[mathvistaa]"],
            r"eval.benchmarks\[0\]: unknown name 'mathvistaa'.*mathvista",
        ),
    ],
)
def test_mistakes_name_the_key(tree, overrides, message):
    with pytest.raises(UserError, match=message):
        recipe_from_dict(tree, overrides)


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(ROOT / "recipes/tiny/mhpo.yaml", ["trainer.max_steps=3"])
    dump_recipe(r, tmp_path / "config.yaml")
    again = recipe_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == r


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "mhpo_vl", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_validate_ok_and_mistakes_exit_2_with_one_line(tmp_path):
    ok = _cli("validate", "recipes/tiny/mhpo.yaml", "recipes/tiny/grpo.yaml")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["ok  recipes/tiny/mhpo.yaml", "ok  recipes/tiny/grpo.yaml"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_steps: 2, learning_rate: 0.1}\n")
    res = _cli("validate", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "unknown key 'trainer.learning_rate'" in res.stderr and str(bad) in res.stderr

    res = _cli("train", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "recipe file not found" in res.stderr

    res = _cli("train", "recipes/tiny/mhpo.yaml", "algorithm.loss.name=ppo2")
    assert (
        res.returncode == 2
        and "unknown name 'ppo2'" in res.stderr
        and "Traceback" not in res.stderr
    )


def test_cli_help_explains_commands():
    res = _cli("--help")
    assert res.returncode == 0
    for word in ("train", "validate", "plot", "eval"):
        assert word in res.stdout
    res = _cli("train", "--help")
    assert "KEY=VALUE" in res.stdout and "resumes" in res.stdout
