"""A whole recipe checked: the structure and value table of :mod:`mhpo_vl.config`, then
each subsystem's own section, then the rules across sections.

:mod:`mhpo_vl.config` knows the recipe's shape and nothing of the registries; each
subsystem checks the names it registers (``algorithms``, ``rollout``, ``rewards``,
``data``, ``eval``). This module is the one place that calls them all, cheapest first,
so ``mhpo-vl validate`` and ``mhpo-vl train`` fail on the same first problem.

A local data file that does not exist yet (a recipe's ``data/<name>/train.parquet``
before ``data/prepare_<name>.py`` has run) stops both, before any model is loaded, with
one line naming the key, the path and the command that makes it
(:func:`check_data_sources`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhpo_vl import algorithms, data, rewards, rollout
from mhpo_vl.config import (
    DataConfig,
    Recipe,
    build_recipe,
    check_cross_rules,
    check_output_dir,
    check_values,
    read_recipe_yaml,
)
from mhpo_vl.data.validate import prepare_hint
from mhpo_vl.errors import UserError, missing_file
from mhpo_vl.eval import benchmarks


def check_sections(recipe: Recipe) -> None:
    """Each subsystem's check of its own section (names, engine and loss arguments)."""
    algorithms.check_section(recipe.algorithm)
    data.check_section(recipe.data)
    rollout.check_section(recipe.rollout, recipe.trainer)
    rewards.check_section(recipe.rewards)
    benchmarks.check_section(recipe.eval)


def check_data_sources(data_cfg: DataConfig, recipe_file: str | Path | None = None) -> None:
    """Each of ``data.train`` / ``data.eval`` names a registered dataset, an existing
    path or a hub id (hub ids are not looked up: validation is offline); otherwise one
    line: ``dataset not found: <path> (data.<split>.source); make it with: <command>``,
    the command from the recipe's ``# Data:`` line or the prepare scripts
    (:func:`mhpo_vl.data.validate.prepare_hint`)."""
    for key, spec in (("data.train", data_cfg.train), ("data.eval", data_cfg.eval)):
        if spec is None:
            continue
        try:
            data.check_dataset_spec(spec, key)
        except UserError:
            fix = prepare_hint(spec.source, recipe_file, data.DATASETS.names())
            raise missing_file("dataset", spec.source, f"{key}.source", fix) from None


def check_recipe(recipe: Recipe, recipe_file: str | Path | None = None) -> None:
    """Everything ``mhpo-vl validate`` checks, cheapest first: the value table, that the
    data exist (``recipe_file``'s header says how to make missing ones), each section's
    names and arguments, the cross-field rules, the output directory."""
    check_values(recipe)
    check_data_sources(recipe.data, recipe_file)
    check_sections(recipe)
    check_cross_rules(recipe)
    check_output_dir(recipe.trainer.output_dir)


def recipe_from_dict(
    tree: dict[str, Any],
    overrides: list[str] | None = None,
    recipe_file: str | Path | None = None,
) -> Recipe:
    """Build and validate a :class:`Recipe` from a plain mapping plus overrides
    (``recipe_file``: the file it was read from, for its ``# Data:`` line)."""
    recipe = build_recipe(tree, overrides)
    check_recipe(recipe, recipe_file)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge overrides into, and validate a recipe file."""
    try:
        return recipe_from_dict(read_recipe_yaml(path), overrides, recipe_file=path)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
