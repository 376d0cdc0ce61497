"""Row checks that need no image decoding: text fields and multiple-choice consistency.

Each check returns ``(reason, detail)`` for a row that cannot be used, where ``reason``
is a slug (it becomes a metric key, ``data/bad_rows/<reason>``) and ``detail`` one line
for people. Nothing is coerced silently: a bytes question is rejected rather than
decoded with a guessed encoding, ``choices`` given as the string ``"ABCD"`` is rejected
rather than read as four one-letter choices, and a gold answer that is not one of the
choices (by text, or by letter as MathVision writes it) is rejected because it could
never be scored correct.

Also here: what to tell a user whose local data file does not exist yet
(:func:`prepare_hint`): the command that makes it, taken from the recipe's own
``# Data:`` header line, else from the prepare scripts' naming convention
(``data/prepare_<name>.py --out <dir>/<name>`` writes ``train.parquet`` and
``test.parquet``), else a pointer to ``data/README.md``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.data.templates import LETTERS
from mhpo_vl.rewards.normalize import choice_letter_index

Problem = tuple[str, str]


def _short(value: Any, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _not_utf8(text: str) -> bool:
    """True for a str holding lone surrogates (``"\\udcff"`` from a JSON escape or a
    ``surrogateescape`` decode): tokenizers cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_text(value: Any, field: str) -> Problem | None:
    """A question or answer: a non-blank str (answers may also be numbers or a
    non-empty list of those, as MathVista's list answers are)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing_{field}", f"{field} is blank"
    if isinstance(value, bytes | bytearray):
        return f"{field}_not_text", f"{field} is bytes ({_short(value)}), not text"
    if field == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if field == "answer" and isinstance(value, list | tuple):
        if not value:
            return "missing_answer", "answer is an empty list"
        for item in value:
            problem = check_text(item, field)
            if problem:
                return problem
        return None
    if not isinstance(value, str):
        return f"{field}_not_text", f"{field} is a {type(value).__name__}, not text"
    if _not_utf8(value):
        return "text_not_utf8", f"{field} is not valid UTF-8 ({_short(value)})"
    return None


def check_choices(choices: Any) -> Problem | None:
    """``choices``: None/empty (not multiple choice) or a list of non-blank texts."""
    if choices is None:
        return None
    if isinstance(choices, str | bytes | bytearray):
        return (
            "choices_not_list",
            f"choices is a {type(choices).__name__} ({_short(choices)}), not a list",
        )
    if not isinstance(choices, list | tuple):
        return "choices_not_list", f"choices is a {type(choices).__name__}, not a list"
    if len(choices) > len(LETTERS):
        return "choices_not_list", f"{len(choices)} choices (at most {len(LETTERS)})"
    for c in choices:
        if isinstance(c, int | float) and not isinstance(c, bool):
            continue
        if not isinstance(c, str) or not c.strip():
            return "choices_not_list", f"choice {_short(c)} is not a non-blank text"
        if _not_utf8(c):
            return "text_not_utf8", f"choice is not valid UTF-8 ({_short(c)})"
    return None


def gold_in_choices(answer: Any, choices: list[Any]) -> bool:
    """Whether the gold names a choice: its text, or its ASCII letter (the rule of
    :func:`mhpo_vl.rewards.verifiers.gold_choice`, through the same function)."""
    texts = [str(c) for c in choices]
    gold = str(answer).strip()
    if gold in texts:
        return True
    index = choice_letter_index(gold)
    return index is not None and index < len(texts)


def check_row(row: Mapping[str, Any]) -> Problem | None:
    """The first problem of a row's question, answer and choices, or None."""
    for field in ("question", "answer"):
        problem = check_text(row.get(field), field)
        if problem:
            return problem
    choices = row.get("choices")
    problem = check_choices(choices)
    if problem:
        return problem
    if choices and not isinstance(row.get("answer"), list | tuple):
        if not gold_in_choices(row["answer"], list(choices)):
            return (
                "answer_not_in_choices",
                f"gold answer {_short(row['answer'])} is not one of the choices "
                f"{_short(list(choices), 60)} (by text or letter)",
            )
    return None


# ---------------------------------------------------------------- data not prepared yet

PREPARE_SCRIPTS = Path(__file__).resolve().parents[2] / "data"
"""Where a checkout keeps the ``prepare_*.py`` scripts (absent from an installed wheel)."""
PREPARED_FILES = ("train.parquet", "test.parquet")
"""What every ``data/prepare_*.py`` script writes into its ``--out`` folder."""
GENERIC_PREPARE = "see data/README.md for the prepare scripts"
_DATA_LINE = re.compile(r"^#\s*Data:\s*(?P<command>\S.*?)\s*$")


def recipe_data_command(recipe_file: str | Path | None) -> str | None:
    """The command of the ``# Data: <command>`` line in the comment block that opens
    ``recipe_file`` (every real recipe has one), or None (no file, no such line)."""
    if recipe_file is None:
        return None
    try:
        text = Path(recipe_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith("#"):
            return None  # the header ended without a Data: line
        match = _DATA_LINE.match(line)
        if match:
            return match["command"]
    return None


def _out_dir(command: str) -> str | None:
    """The ``--out DIR`` (or ``--out=DIR``) of ``command``, or None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--out" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--out="):
            return word[len("--out=") :]
    return None


def _inside(source: str, folder: str) -> bool:
    """Whether the path ``source`` is ``folder`` or lies under it (both as the process
    sees them: relative to the working directory, ``~`` expanded)."""
    src = os.path.abspath(os.path.expanduser(source))
    top = os.path.abspath(os.path.expanduser(folder))
    return src == top or src.startswith(top.rstrip(os.sep) + os.sep)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, else whole."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _conventional_command(source: str) -> str | None:
    """``python data/prepare_<name>.py --out <dir>`` for a ``<dir>/train.parquet`` or
    ``<dir>/test.parquet`` whose folder ``<dir>`` is named like a prepare script's
    output (``data/geometry3k`` -> ``prepare_geometry3k.py``), where that script exists:
    in the working directory's ``data/`` (a checkout's root) or this checkout's."""
    path = Path(source)
    if path.name not in PREPARED_FILES or not path.parent.name:
        return None
    script_name = f"prepare_{path.parent.name}.py"
    for folder in (Path("data"), PREPARE_SCRIPTS):
        script = folder / script_name
        if script.is_file():
            shown = _shown(script.absolute())
            return f"python {shown} --out {shlex.quote(str(path.parent))}"
    return None


def prepare_command(source: str, recipe_file: str | Path | None = None) -> tuple[str, str] | None:
    """``(command, where it came from)`` that makes the missing local dataset
    ``source``, or None when nothing says.

    First the recipe's ``# Data:`` header line, when its ``--out`` folder holds
    ``source`` (or it names no ``--out``): the recipe's author wrote it, and
    tests/test_recipes_real.py checks it against the scripts. Then the scripts' naming
    convention (:func:`_conventional_command`), which also covers a recipe written by
    hand, or a path given as an override."""
    header = recipe_data_command(recipe_file)
    if header is not None:
        out = _out_dir(header)
        if out is None or _inside(source, out):
            return header, "the recipe's Data: line"
    command = _conventional_command(source)
    if command is not None:
        return command, "the prepare script that writes it"
    return None


def prepare_hint(
    source: str, recipe_file: str | Path | None = None, registered: Sequence[str] = ()
) -> str:
    """The fix clause of a missing local dataset's error (one line): the command that
    makes it (:func:`prepare_command`), else what ``source`` could have been (one of the
    ``registered`` dataset names, a path, a hub id) and a pointer to the prepare scripts."""
    found = prepare_command(source, recipe_file)
    if found is None:
        names = f" ({', '.join(registered)})" if registered else ""
        return (
            f"it is neither a registered dataset{names}, an existing path, nor a hub id "
            f"(owner/name): fix the path, or prepare the data first ({GENERIC_PREPARE})"
        )
    command, origin = found
    where = "; run it from the repository root" if origin.startswith("the recipe") else ""
    return f"make it with: {command} ({origin}{where}), or fix the path"
