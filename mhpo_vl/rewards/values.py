"""What a reward function may return, read the same in a worker and in-process.

A reward is a finite real number. Users often compute it with torch or numpy, so a
0-d tensor (``torch.tensor(0.5)``, with or without grad) and a numpy scalar or 0-d array
count as the number they hold. Anything else is refused with one line naming the type
(and shape), never sent through the worker's pipe as it is: a tensor pickles through
torch's shared-memory reductions, which a worker process cannot honour, and that broke
the connection and cost a worker restart on every call. A 1-element tensor of shape
``(1,)`` is refused too: it is a batch of one, usually a reward computed for a batch by
mistake, and reading it as a number would hide that.

Duck-typed (``ndim`` and ``item()``), so this module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

REPR_CHARS = 200  # a refused value is shown with this many characters of its repr


def plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of None, str, int, float, bool, lists, tuples and
    str-keyed mappings (at most 4 deep): what may cross the pipe to and from a worker."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if depth > 3:
        return False
    if isinstance(value, (list, tuple)):
        return all(plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and plain(v, depth + 1) for k, v in value.items())
    return False


def unwrap_scalar(value: Any) -> Any:
    """The Python number a 0-d tensor or numpy scalar holds; ``value`` itself otherwise
    (and for a 0-d value whose ``item()`` fails or gives no real number)."""
    if isinstance(value, (int, float)) or getattr(value, "ndim", None) != 0:
        return value
    try:
        held = value.item()
    except Exception:  # a meta tensor, an object array, a broken item(): refused below
        return value
    return held if isinstance(held, numbers.Real) else value


def type_name(value: Any) -> str:
    """``"torch.Tensor of shape (3,)"``, ``"numpy.ndarray of shape (2,)"``, ``"builtins.
    object"``: the type's module and name, with its shape when it has one."""
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    shape = getattr(value, "shape", None)
    try:
        return f"{name} of shape {tuple(shape)}" if shape is not None else name
    except TypeError:
        return name


def short_repr(value: Any) -> str:
    text = repr(value[: REPR_CHARS + 1] if isinstance(value, str) else value)
    return text[:REPR_CHARS]


def to_score(value: Any) -> tuple[float | None, str]:
    """``(score, "")`` for a finite real number (0-d tensors and numpy scalars
    included), else ``(None, why)`` in one line: ``"returned nan"``, ``"returned '1.0'"``
    (a string is a bug worth seeing), ``"returned torch.Tensor of shape (3,); return a
    float"``."""
    value = unwrap_scalar(value)
    if isinstance(value, numbers.Real):
        score = float(value)
        if math.isfinite(score):
            return score, ""
        return None, f"returned {score!r}"
    if plain(value):
        return None, f"returned {short_repr(value)}"
    return None, (
        f"returned {type_name(value)}; return a float (a 0-d tensor or a numpy scalar is "
        "read as one)"
    )


def to_reply(value: Any) -> tuple[str, Any]:
    """What a worker sends back for a target's return value: ``("ok", value)`` for a
    plain value (a 0-d tensor or numpy scalar as its number), else ``("bad", why)``."""
    value = unwrap_scalar(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        value = float(value)  # numpy float32 and the like: a plain float
    if plain(value):
        return "ok", value
    return "bad", to_score(value)[1]
