"""The study's plan as data: settings, variants, seeds, and the cells they make.

A *cell* is one training run: a setting, a variant and a seed. Its command is the real
CLI, ``python -m mhpo_vl train <variant's recipe> <overrides>``, where the overrides are
the study's own (name, seed, output folder, checkpoints for resuming, no progress bar),
then the variant's, then the setting's. Everything else (steps, evaluation schedule and
size, learning rate, schedule) is the shipped recipe's, so a setting follows the recipe
when the recipe changes.

Entries marked ``legacy`` are the first, 60-step study (its results are in
``docs/results/tiny_study_60_steps/``); they are not in the default plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mhpo_vl.recipe_yaml import dotted_get

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNS_ROOT = "runs/tiny_study"
DEFAULT_OUT = "docs/results/tiny_study"
SEEDS = (0, 1, 2)
MHPO_RECIPE = "recipes/tiny/mhpo.yaml"


@dataclass(frozen=True)
class Setting:
    """How every variant is trained: overrides on top of the variant's recipe."""

    name: str
    description: str
    overrides: tuple[str, ...] = ()
    legacy: bool = False


@dataclass(frozen=True)
class Variant:
    """What is trained: a shipped recipe and overrides on it."""

    name: str
    description: str
    recipe: str
    overrides: tuple[str, ...] = ()
    family: str = "mhpo"  # "mhpo" or "baseline": solid or dashed in the plots
    legacy: bool = False


def _table(*entries: Any) -> dict[str, Any]:
    return {e.name: e for e in entries}


_LEGACY_STEPS = ("trainer.max_steps=60", "eval.every=10", "eval.size=100")

SETTINGS: dict[str, Setting] = _table(
    Setting(
        "learn",
        "the tiny recipe exactly as shipped (its steps, evaluation, learning rate and "
        "schedule; 2 optimizer updates per batch of rollouts)",
    ),
    Setting(
        "hard",
        "4 minibatches (4 optimizer updates per batch of rollouts, the later ones further "
        "off-policy) at lr 6e-4 (2x); same rollouts and compute as learn",
        ("optim.lr=6.0e-4", "trainer.minibatches=4"),
    ),
    Setting(
        "default",
        "60-step study: the tiny recipe's optimisation, 60 steps, eval every 10 on 100",
        _LEGACY_STEPS,
        legacy=True,
    ),
    Setting(
        "mild",
        "60-step study: 2 minibatches x 2 epochs = 4 updates per batch at lr 3e-4",
        (*_LEGACY_STEPS, "trainer.update_epochs=2"),
        legacy=True,
    ),
    Setting(
        "stress",
        "60-step study: 4 minibatches x 2 epochs = 8 updates per batch at lr 6e-4",
        (*_LEGACY_STEPS, "trainer.minibatches=4", "trainer.update_epochs=2", "optim.lr=6e-4"),
        legacy=True,
    ),
)


def _baseline(name: str, description: str) -> Variant:
    return Variant(name, description, f"recipes/tiny/{name}.yaml", family="baseline")


def _legacy_mhpo(name: str, description: str, *overrides: str) -> Variant:
    return Variant(name, description, MHPO_RECIPE, overrides, legacy=True)


VARIANTS: dict[str, Variant] = _table(
    _baseline("grpo", "GRPO: PPO clip at the token level, eps 0.2"),
    _baseline("dapo", "DAPO: clip-higher, dynamic sampling, overlong shaping"),
    _baseline("gspo", "GSPO: clip on the sequence-level ratio"),
    _baseline("sapo", "SAPO: soft gate on the ratio"),
    _baseline("cispo", "CISPO: clipped importance weight, gradient through log-prob"),
    Variant(
        "mhpo_detached",
        "MHPO (c=1.5, softplus shift), no gradient through the hazard penalty",
        MHPO_RECIPE,
        ("algorithm.loss.dhp_gradient=detached",),
    ),
    Variant(
        "mhpo_full",
        "MHPO (c=1.5, softplus shift), gradient through the hazard penalty",
        MHPO_RECIPE,
        ("algorithm.loss.dhp_gradient=full",),
    ),
    Variant(
        "mhpo_relu",
        "MHPO with the relu shift, gradient through the hazard penalty",
        MHPO_RECIPE,
        ("algorithm.loss.shift=relu", "algorithm.loss.dhp_gradient=full"),
    ),
    _legacy_mhpo("mhpo", "60-step study: MHPO with the loss's defaults"),
    _legacy_mhpo(
        "mhpo_lfm_only", "60-step study: modulator only", "algorithm.loss.name=mhpo_lfm_only"
    ),
    _legacy_mhpo(
        "mhpo_dhp_only", "60-step study: hazard only", "algorithm.loss.name=mhpo_dhp_only"
    ),
    _legacy_mhpo(
        "mhpo_symmetric",
        "60-step study: one hazard for both sides",
        "algorithm.loss.name=mhpo_symmetric",
    ),
    _legacy_mhpo("mhpo_c0_5", "60-step study: c=0.5", "algorithm.loss.c=0.5"),
    _legacy_mhpo("mhpo_c2_0", "60-step study: c=2.0", "algorithm.loss.c=2.0"),
    _legacy_mhpo(
        "mhpo_relu_detached",
        "60-step study's mhpo_relu: relu shift, hazard gradient detached",
        "algorithm.loss.shift=relu",
    ),
)

DEFAULT_SETTINGS = tuple(name for name, s in SETTINGS.items() if not s.legacy)
DEFAULT_VARIANTS = tuple(name for name, v in VARIANTS.items() if not v.legacy)


@dataclass(frozen=True)
class Cell:
    """One run of the study. ``steps`` is its final step (the recipe's, after the
    overrides); ``save_every`` its checkpoint interval (its evaluation interval)."""

    setting: str
    variant: str
    seed: int
    run_dir: str  # relative to the repository root, or absolute
    steps: int
    save_every: int
    quick: tuple[str, ...] = ()  # --steps / --eval-size: a quick check of the pipeline

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.variant}/seed{self.seed}"

    @property
    def path(self) -> Path:
        return ROOT / self.run_dir  # an absolute run_dir stays as it is

    @property
    def recipe(self) -> str:
        return VARIANTS[self.variant].recipe

    def overrides(self, output_dir: str | None = None, threads: int | None = None) -> list[str]:
        """The study's overrides, then the variant's and the setting's (then a quick
        check's, which win). ``threads``: torch CPU threads, when cells run side by side
        (the recipe's otherwise)."""
        own = [
            f"name=tiny_study_{self.setting}_{self.variant}_seed{self.seed}",
            f"seed={self.seed}",
            f"trainer.output_dir={output_dir or self.run_dir}",
            f"trainer.save_every={self.save_every}",
            "trainer.keep_last=1",
            "trainer.progress_bar=false",
            *([f"trainer.num_threads={threads}"] if threads else []),
        ]
        return [*own, *variant_setting_overrides(self.variant, self.setting), *self.quick]


def variant_setting_overrides(variant: str, setting: str) -> list[str]:
    """The variant's overrides, then the setting's."""
    return [*VARIANTS[variant].overrides, *SETTINGS[setting].overrides]


def resolved(tree: Mapping[str, Any], overrides: Sequence[str], key: str) -> Any:
    """The value of dotted ``key`` in a plain recipe ``tree`` after ``overrides``
    (``KEY=VALUE``, YAML values; the last one wins); None when neither has it."""
    for item in reversed(overrides):
        name, _, value = item.partition("=")
        if name.strip() == key:
            return yaml.safe_load(value)
    return dotted_get(tree, key)


def schedule(tree: Mapping[str, Any], overrides: Sequence[str]) -> tuple[int, int]:
    """(final step, checkpoint interval) of a recipe with ``overrides``: the final step
    is ``trainer.max_steps``; checkpoints go with the evaluations (``eval.every``, at
    most the final step; the final step when 0)."""
    final = int(resolved(tree, overrides, "trainer.max_steps"))
    every = int(resolved(tree, overrides, "eval.every") or 0)
    return final, min(every, final) if every > 0 else final


def read_tree(recipe: str, root: Path = ROOT) -> dict[str, Any]:
    """A recipe file as plain YAML (no validation)."""
    from mhpo_vl.report import read_recipe

    return read_recipe(recipe, root, where="a tiny-study variant's recipe")


def plan(
    settings: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int],
    runs_root: str = DEFAULT_RUNS_ROOT,
    steps: int | None = None,
    trees: Mapping[str, Mapping[str, Any]] | None = None,
    eval_size: int | None = None,
) -> list[Cell]:
    """Every cell, in training order: setting, then seed, then variant (a study cut
    short has whole comparisons first). ``steps`` and ``eval_size`` replace the recipe's
    for a quick check of the pipeline. ``trees``: recipe path -> plain recipe (read
    from the repository when not given)."""
    quick = [f"trainer.max_steps={steps}"] if steps is not None else []
    quick += [f"eval.size={eval_size}"] if eval_size is not None else []
    trees = dict(trees or {})
    for v in variants:
        recipe = VARIANTS[v].recipe
        if recipe not in trees:
            trees[recipe] = read_tree(recipe)
    cells = []
    for s in settings:
        for k in seeds:
            for v in variants:
                over = [*variant_setting_overrides(v, s), *quick]
                final, every = schedule(trees[VARIANTS[v].recipe], over)
                run_dir = f"{runs_root.rstrip('/')}/{s}/{v}/seed{k}"
                cells.append(Cell(s, v, k, run_dir, final, every, tuple(quick)))
    return cells
