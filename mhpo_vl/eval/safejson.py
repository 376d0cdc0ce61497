"""JSON from files we did not write, with bounded nesting.

Python's ``json`` parser recurses once per ``[`` or ``{``: a results file of 100,000
``[`` ends in ``RecursionError`` (or worse, a crash in C). So the nesting depth is
measured first, without recursion (a regular expression skips whole strings, so
brackets inside them do not count), and a document deeper than :data:`MAX_DEPTH` is a
one-line :class:`~mhpo_vl.errors.UserError` naming the file and where the depth is
passed. Results, annotation and benchmark files are a few levels deep.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError, missing_file

MAX_DEPTH = 64
# a whole JSON string (escapes included), or one bracket
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> int | None:
    """The character offset where ``text`` nests deeper than ``max_depth``, or None."""
    depth = 0
    for m in _TOKEN.finditer(text):
        char = m.group()
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return m.start()
        elif char in "]}":
            depth -= 1
    return None


def loads(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` after the depth check; ``where`` (a file, a file and line)
    starts the one-line :class:`UserError` for a document too deep or not JSON."""
    offset = too_deep(text, max_depth)
    if offset is not None:
        raise UserError(
            f"{where}: JSON nested deeper than {max_depth} levels (at character {offset}); "
            "this is not a results or data file"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:  # not reached after the check; never a traceback all the same
        raise UserError(f"{where}: JSON nested too deeply") from None


def read_json(path: str | Path, what: str, where: str, fix: str) -> Any:
    """Parse the JSON file ``path`` (``what`` it is, ``where`` its path came from, and
    the ``fix`` when it is missing, for :func:`~mhpo_vl.errors.missing_file`)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(what, path, where, fix)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (not UTF-8: {exc.reason})") from None
    return loads(text, str(path))
