"""A whole recipe checked: the structure and value table of :mod:`mhpo_vl.config`, then
each subsystem's own section, then the rules across sections.

:mod:`mhpo_vl.config` knows the recipe's shape and nothing of the registries; each
subsystem checks the names it registers (``algorithms``, ``rollout``, ``rewards``,
``data``, ``eval``). This module is the one place that calls them all, cheapest first,
so ``mhpo-vl validate`` and ``mhpo-vl train`` fail on the same first problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mhpo_vl import algorithms, data, rewards, rollout
from mhpo_vl.config import (
    Recipe,
    build_recipe,
    check_cross_rules,
    check_output_dir,
    check_values,
    read_recipe_yaml,
)
from mhpo_vl.errors import UserError
from mhpo_vl.eval import benchmarks


def check_sections(recipe: Recipe) -> None:
    """Each subsystem's check of its own section (names, engine and loss arguments)."""
    algorithms.check_section(recipe.algorithm)
    data.check_section(recipe.data)
    rollout.check_section(recipe.rollout, recipe.trainer)
    rewards.check_section(recipe.rewards)
    benchmarks.check_section(recipe.eval)


def check_recipe(recipe: Recipe) -> None:
    """Everything ``mhpo-vl validate`` checks, cheapest first: the value table, each
    section's names and arguments, the cross-field rules, the output directory."""
    check_values(recipe)
    check_sections(recipe)
    check_cross_rules(recipe)
    check_output_dir(recipe.trainer.output_dir)


def recipe_from_dict(tree: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Build and validate a :class:`Recipe` from a plain mapping plus overrides."""
    recipe = build_recipe(tree, overrides)
    check_recipe(recipe)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge overrides into, and validate a recipe file."""
    try:
        return recipe_from_dict(read_recipe_yaml(path), overrides)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
