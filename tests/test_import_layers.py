"""The package has no import circles: between its subpackages / top-level modules,
counting imports inside functions too (only ``if TYPE_CHECKING:`` blocks are exempt),
and between modules. A circle means two parts cannot be understood, or tested, apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mhpo_vl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``mhpo_vl`` module ``path`` imports, TYPE_CHECKING blocks excluded."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mhpo_vl"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("mhpo_vl"):
                found.update(f"{base}:{a.name}" for a in node.names)
    return found


def _graph(level) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = level(name)
        for target in _imports(path):
            base, _, attr = target.partition(":")
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod
            target = f"{base}.{attr}" if f"{base}.{attr}" in modules else base
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if name.startswith(target + "."):  # a package's own __init__ runs first anyway
                continue
            dst = level(target)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _part(module: str) -> str:
    """``mhpo_vl.rollout.hf`` -> ``mhpo_vl.rollout``; top-level modules are parts."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("level", [_part, lambda m: m], ids=["packages", "modules"])
def test_no_import_circles(level):
    graph = _graph(level)
    if level is _part:
        graph.pop("mhpo_vl", None)  # the package root re-exports; it is nobody's import
        for deps in graph.values():
            deps.discard("mhpo_vl")
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_sees_known_edges():
    """The checker itself works: edges we know of are found (lazy imports too)."""
    graph = _graph(_part)
    assert "mhpo_vl.batch" in graph["mhpo_vl.rollout"]
    assert "mhpo_vl.embedded" not in graph.get("mhpo_vl.models", set())
    assert "mhpo_vl.models" in graph["mhpo_vl.embedded"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
