"""Resolve ``"pkg.module:function"`` and ``"/path/file.py:function"`` names."""

from __future__ import annotations

from typing import Any


def resolve_target(target: str) -> Any:
    """The function named by ``"pkg.module:fn"`` or ``"/path/file.py:fn"``."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_user_reward_{abs(hash(where))}", where)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {where}")
        folder = str(Path(where).parent)
        if folder not in sys.path:  # so the file can import its sibling modules
            sys.path.append(folder)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)
