"""Reading recipe YAML with bounds: size, nesting depth, no anchors or aliases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from mhpo_vl.errors import UserError

MAX_RECIPE_BYTES = 1 << 20
"""A recipe or override larger than this (1 MiB) is refused before parsing."""
MAX_YAML_DEPTH = 32
"""Mappings and lists nested deeper than this are refused (recipes use about 4)."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases and deep nesting.

    A recipe has no use for ``&name`` / ``*name`` (or ``<<: *name``), and aliases are how
    a few hundred bytes expand to gigabytes (the "billion laughs"); they are refused at
    the first one, before anything is expanded.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise UserError(
                f"line {line}: YAML anchors and aliases (&name, *name, <<: *name) are not "
                "allowed in a recipe; write the values out"
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise UserError(f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`BoundedLoader`; every failure is a one-line
    ``UserError``."""
    if len(text) > MAX_RECIPE_BYTES:
        raise UserError(f"{len(text)} characters is over the limit of {MAX_RECIPE_BYTES}")
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except UserError:  # refused by BoundedLoader: already one line
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UserError(f"not valid YAML: {where}{exc.problem or exc.context}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. an int of 5000 digits
        raise UserError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def dotted_get(tree: Any, dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"`` in a plain (YAML-loaded) recipe tree;
    ``default`` where a level is missing or not a mapping."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node
