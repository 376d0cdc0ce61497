"""The documentation can be walked: README.md and docs/*.md hold no broken link, and every
command they show exists as shown.

- Links: every relative link and image (markdown, reference definitions, HTML ``src`` /
  ``href``) names a file or folder of the repository, and a ``#anchor`` names a heading
  of the target page by GitHub's slug rules. External ``http(s)`` links are not fetched.
- Paths in inline code that name a repository file (``scripts/x.py``, ``recipes/y/``...)
  exist.
- Commands in fenced ``bash`` / ``sh`` / ``console`` blocks: every ``mhpo-vl`` line (also
  ``.venv/bin/mhpo-vl``, ``python -m mhpo_vl``, ``torchrun ... -m mhpo_vl``) parses with
  the real parser of ``mhpo_vl/cli.py``; repository paths among the arguments exist
  (output paths excepted); ``python scripts/X.py`` and ``python data/X.py`` scripts exist
  and their ``--help`` names every option shown. Commands that run offline in seconds
  (``validate``, ``estimate``, ``report``, ``eval list``, ``--help`` forms, ``--dry-run``
  forms of scripts/reproduce.py) are run and must exit 0. Every other command must be
  listed in :data:`NOT_OFFLINE` with the reason it is not run, so a new command in the
  docs has to be classified here.
- The README stays short, and its first screen keeps the two commands that CI and the
  tests rely on.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import io
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

# The first screen's two commands, byte for byte: CI and the tests rely on them.
FIRST_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/mhpo-vl train recipes/tiny/mhpo.yaml"
    "   # set up, train the embedded default",
    "bash scripts/setup.sh dev && .venv/bin/python -m pytest"
    "                   # set up, run the tests",
)
FIRST_SCREEN_LINES = 20
MAX_README_LINES = 250

# Commands the docs show that are not run here, and why. Keys are command kinds (see
# :func:`kind_of`), shell-style patterns allowed. A command of a kind in neither this
# table nor the runnable ones fails test_every_command_is_classified.
NOT_OFFLINE = {
    "bash scripts/setup.sh": "creates .venv and installs packages from the network",
    "python -m pytest": "the test suite itself (minutes; `-m gpu` needs CUDA)",
    "mhpo-vl train": "trains a model (minutes on the CPU; GPUs for the real recipes)",
    "torchrun": "launches training processes (several GPUs or nodes)",
    "accelerate launch": "launches training processes (several GPUs)",
    "mhpo-vl eval run": "loads a model and generates: a trained checkpoint or hub weights",
    "mhpo-vl eval score": "needs a MathVista predictions file that is not in the repository",
    "mhpo-vl export": "needs a trained checkpoint",
    "mhpo-vl plot": "needs a finished run's metrics.jsonl",
    "mhpo-vl samples": "needs a run's samples.jsonl (tests/test_viewer.py runs it on one)",
    "pip": "installs packages from the network",
    "python scripts/reproduce.py": "trains and evaluates a table's rows (8 GPUs each); "
    "only its --dry-run form is run",
    "python data/prepare_*.py": "downloads a dataset from the Hugging Face hub",
}
# Kinds that run offline in seconds: run, and must exit 0.
RUNNABLE = {"mhpo-vl validate", "mhpo-vl estimate", "mhpo-vl report", "mhpo-vl eval list"}
RUN_BUDGET_S = 45  # per runnable command, on 2 busy cores (imports included)

REPO_PREFIXES = ("recipes/", "scripts/", "data/", "eval/", "tests/", "docs/", "mhpo_vl/")
OUTPUT_OPTIONS = {"--out", "--out-dir", "--output-dir", "--runs-root"}
OUTPUT_KEYS = ("trainer.output_dir=",)
OPERATORS = {"&&", "||", ";", "|"}
COMMAND_BLOCKS = {"bash", "sh", "shell", "console"}


# ------------------------------------------------------------------------------ markdown


def rel(path: Path) -> str:
    """``path`` relative to the repository, for messages."""
    return path.relative_to(ROOT).as_posix()


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, int, list[str]]]]:
    """The lines outside fenced code blocks (numbered from 1), and the blocks as
    (info string, line number of the opening fence, lines)."""
    prose, blocks, fence, info, start, body = [], [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and match:
            fence, info, start, body = match.group(1), match.group(2).lower(), number, []
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)):
            if not line.strip().strip(fence[0]):
                blocks.append((info, start, body))
                fence = None
            else:
                body.append(line)
        elif fence is not None:
            body.append(line)
        else:
            prose.append((number, line))
    assert fence is None, f"a code fence opened at line {start} is never closed"
    return prose, blocks


def strip_code_spans(line: str) -> str:
    """``line`` with each inline code span replaced by ``code`` (links inside code are no
    links)."""
    return re.sub(r"(`+)(.+?)\1", "code", line)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup reduced to its text, lowercase,
    punctuation dropped (letters, digits, ``_``, ``-`` and spaces kept), spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's ATX headings, duplicates numbered as GitHub does."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """Every link and image target outside code: ``[t](x)``, ``![a](x)``, ``[id]: x``,
    ``src="x"`` and ``href="x"``, with its line number."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for number, line in prose:
        line = strip_code_spans(line)
        for match in re.finditer(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            found.append((number, match.group(1)))
        match = re.match(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", line)
        if match:
            found.append((number, match.group(1)))
        for match in re.finditer(r"\b(?:src|href)=\"([^\"]+)\"", line):
            found.append((number, match.group(1)))
    return found


def link_problem(doc: Path, target: str) -> str | None:
    """What is wrong with one link of ``doc``, or None."""
    if re.match(r"^(https?|mailto):", target):
        return None  # external: not fetched
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):
        return f"{target}: an unexpected scheme"
    path_part, _, anchor = target.partition("#")
    file = (doc.parent / path_part).resolve() if path_part else doc
    if ROOT not in file.parents and file != ROOT:
        return f"{target}: points outside the repository"
    if not file.exists():
        return f"{target}: {rel(file)} does not exist"
    if anchor and file.suffix == ".md":
        if anchor not in anchors(file):
            return f"{target}: no heading of {rel(file)} has the anchor #{anchor}"
    elif anchor and not re.fullmatch(r"L\d+(-L\d+)?", anchor):
        return f"{target}: an anchor into {rel(file)}, which is not a markdown page"
    return None


# ------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class Command:
    """One simple command shown in a fenced block (continuations joined, comments cut)."""

    doc: str
    line: int
    words: tuple[str, ...]
    shown_output: tuple[str, ...] = ()  # a console block's lines after the command

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def logical_lines(info: str, lines: list[str]) -> list[tuple[int, str, list[str]]]:
    """A block's command lines with ``\\`` continuations joined, as (offset, text, shown
    output); in a ``console`` block only the ``$ `` lines (and their continuations) are
    commands, and the lines up to the next one are their shown output."""
    out: list[tuple[int, str, list[str]]] = []
    current, start = None, 0
    for offset, line in enumerate(lines, 1):
        if current is None:
            if info == "console":
                if not line.startswith("$ "):
                    if out:
                        out[-1][2].append(line)
                    continue
                line = line[2:]
            current, start = "", offset
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append((start, current + line, []))
        current = None
    if current is not None:
        out.append((start, current, []))
    return out


def commands_of(path: Path, name: str | None = None) -> list[Command]:
    """The simple commands of ``path``'s bash / sh / console blocks, split at ``&&``,
    ``||``, ``;`` and ``|``, without leading ``VAR=value`` assignments; ``name`` names the
    page in messages (default: its repository path)."""
    _, blocks = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for info, fence_line, lines in blocks:
        if info not in COMMAND_BLOCKS:
            continue
        for offset, text, shown in logical_lines(info, lines):
            words: list[str] = []
            for word in [*shlex.split(text, comments=True), ";"]:
                if word not in OPERATORS:
                    words.append(word)
                    continue
                while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    words.pop(0)
                if words:
                    where = (name or rel(path), fence_line + offset)
                    found.append(Command(*where, tuple(words), tuple(shown)))
                words = []
    return found


def is_python(word: str) -> bool:
    return bool(re.fullmatch(r"(.*/)?python3?(\.\d+)?", word))


def cli_args(cmd: Command) -> list[str] | None:
    """The arguments given to the mhpo-vl command line, or None when it is not one."""
    words = list(cmd.words)
    if re.fullmatch(r"(.*/)?mhpo-vl", words[0]):
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "mhpo_vl":
            return words[i + 2 :]
    return None


def script_of(cmd: Command) -> tuple[str, list[str]] | None:
    """(repository path of the script, its arguments) for ``python scripts/X.py ...`` and
    ``python data/X.py ...``; else None."""
    words = list(cmd.words)
    if is_python(words[0]) and len(words) > 1 and words[1].endswith(".py"):
        return words[1], words[2:]
    return None


def kind_of(cmd: Command) -> str:
    """The command's kind: what :data:`NOT_OFFLINE` and :data:`RUNNABLE` are keyed by."""
    words = list(cmd.words)
    if words[0] in ("torchrun", "accelerate"):
        return "accelerate launch" if words[0] == "accelerate" else "torchrun"
    args = cli_args(cmd)
    if args is not None:
        positional = [a for a in args if not a.startswith("-")]
        head = positional[:2] if positional[:1] == ["eval"] else positional[:1]
        return " ".join(["mhpo-vl", *head])
    script = script_of(cmd)
    if script is not None:
        return f"python {script[0]}"
    if is_python(words[0]) and words[1:3] and words[1] == "-m":
        return f"python -m {words[2]}"
    if words[0] in ("bash", "sh") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def is_help(args: list[str]) -> bool:
    return "--help" in args or "-h" in args


def runnable(cmd: Command) -> bool:
    """Whether the command runs offline in seconds, and so is run by the tests."""
    args = cli_args(cmd)
    kind = kind_of(cmd)
    if args is not None and kind not in ("torchrun", "accelerate launch"):
        return is_help(args) or kind in RUNNABLE
    script = script_of(cmd)
    if script is not None:
        return is_help(script[1]) or (
            script[0] == "scripts/reproduce.py" and "--dry-run" in script[1]
        )
    return False


def not_offline_reason(cmd: Command) -> str | None:
    kind = kind_of(cmd)
    for pattern, reason in NOT_OFFLINE.items():
        if fnmatch.fnmatchcase(kind, pattern):
            return reason
    return None


def repo_paths(args: list[str]) -> list[str]:
    """The arguments that name repository paths and are inputs (not output paths),
    including the values of ``KEY=VALUE`` and ``NAME=PATH`` arguments."""
    found = []
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] in OUTPUT_OPTIONS:
            continue
        if arg.startswith(OUTPUT_KEYS) or arg.startswith("-"):
            continue
        value = arg.split("=", 1)[1] if "=" in arg else arg
        if value.startswith(REPO_PREFIXES):
            found.append(value)
    return found


def missing_paths(args: list[str]) -> list[str]:
    """The repository paths among ``args`` that match nothing (globs expanded)."""
    return [p for p in repo_paths(args) if not glob.glob(str(ROOT / p))]


ALL_COMMANDS = [cmd for doc in DOCS for cmd in commands_of(doc)]
CLI_COMMANDS = [c for c in ALL_COMMANDS if cli_args(c) is not None]
SCRIPT_COMMANDS = [c for c in ALL_COMMANDS if script_of(c) is not None]


def distinct_runnable(commands: list[Command]) -> list[Command]:
    """Each runnable command (with its shown output) once, where it first appears."""
    seen: dict[tuple, Command] = {}
    for cmd in commands:
        if runnable(cmd):
            seen.setdefault((cmd.words, cmd.shown_output), cmd)
    return list(seen.values())


RUNNABLE_COMMANDS = distinct_runnable(ALL_COMMANDS)


def ids(commands: list[Command]) -> list[str]:
    return [str(c)[:90] for c in commands]


# ------------------------------------------------------------------------------ the tests


def test_the_docs_are_found():
    """The pages exist and the parsing finds what they show (a vacuous pass is a fail)."""
    names = {p.name for p in DOCS}
    expected = {"recipes", "algorithms", "scaling-up", "evaluation", "reliability"}
    expected |= {"results", "troubleshooting"}
    assert {f"{n}.md" for n in expected} <= names
    assert len(ALL_COMMANDS) >= 10 and len(CLI_COMMANDS) >= 5 and RUNNABLE_COMMANDS
    assert any("#" in t for d in DOCS for _, t in links(d))


def test_readme_is_short_and_its_first_screen_holds_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines"
    first = lines[:FIRST_SCREEN_LINES]
    for command in FIRST_COMMANDS:
        assert command in first, f"README's first screen lost the command: {command}"
    opening = first.index(FIRST_COMMANDS[0]) - 1
    assert first[opening] == "```bash" and first[opening + 3] == "```"


def test_every_page_is_linked_from_the_readme():
    targets = {t.split("#")[0] for _, t in links(README)}
    for doc in DOCS:
        assert doc == README or rel(doc) in targets, f"README.md does not link {rel(doc)}"


def test_relative_links_and_anchors_resolve():
    problems = [
        f"{rel(doc)}:{number}: {problem}"
        for doc in DOCS
        for number, target in links(doc)
        if (problem := link_problem(doc, target))
    ]
    assert not problems, "broken links:\n" + "\n".join(problems)


def inline_paths(line: str) -> list[str]:
    """The repository files and folders that a line's inline code names: words starting
    with a repository folder and ending in an extension (``scripts/x.py``) or ``/``
    (``recipes/tiny/``), and test files (``test_faults.py``: under ``tests/``).
    Placeholders (``recipes/<model>/``) and metric names (``data/bad_rows``) are no paths."""
    found = []
    for span in re.findall(r"(`+)(.+?)\1", line):
        for word in span[1].split():
            word = word.strip(",;:()'\"")
            if re.fullmatch(r"(?:tests/)?test_\w+\.py", word):
                found.append(word if word.startswith("tests/") else f"tests/{word}")
            elif word.startswith(REPO_PREFIXES) and re.fullmatch(r"[\w./*-]*(\.\w+|/)", word):
                found.append(word)
    return found


def test_repository_paths_in_inline_code_exist():
    """Every repository path named in inline code exists (globs: at least one match)."""
    problems, checked = [], 0
    for doc in DOCS:
        prose, _ = split_fences(doc.read_text(encoding="utf-8"))
        for number, line in prose:
            for path in inline_paths(line):
                checked += 1
                if not glob.glob(str(ROOT / path)):
                    problems.append(f"{rel(doc)}:{number}: `{path}` does not exist")
    assert checked >= 20, f"only {checked} paths found: is the pattern still right?"
    assert not problems, "\n".join(problems)


def test_a_recipe_shown_is_the_file_it_names():
    """A ``yaml`` block introduced by a line ending in ```recipes/....yaml`:`` holds that
    recipe as committed (comments aside), so the page cannot drift from the file."""
    import yaml

    checked = 0
    for doc in DOCS:
        prose, blocks = split_fences(doc.read_text(encoding="utf-8"))
        for info, fence_line, lines in blocks:
            before = [line for number, line in prose if number < fence_line and line.strip()]
            match = re.search(r"`(recipes/[\w./-]+\.yaml)`:$", before[-1] if before else "")
            if info != "yaml" or not match:
                continue
            file = ROOT / match.group(1)
            assert file.is_file(), f"{rel(doc)}:{fence_line}: {match.group(1)} does not exist"
            shown = yaml.safe_load("\n".join(lines))
            assert shown == yaml.safe_load(file.read_text()), (
                f"{rel(doc)}:{fence_line}: the recipe shown differs from {match.group(1)}"
            )
            checked += 1
    assert checked >= 1


def test_every_command_is_classified():
    """Each command either runs here (offline, seconds) or has a reason not to."""
    unclassified = [
        f"{c}  (kind {kind_of(c)!r})"
        for c in ALL_COMMANDS
        if not runnable(c) and not_offline_reason(c) is None
    ]
    assert not unclassified, (
        "commands in the docs that are neither run nor listed in NOT_OFFLINE "
        "(tests/test_docs.py) with a reason:\n" + "\n".join(unclassified)
    )


@pytest.mark.parametrize("cmd", CLI_COMMANDS, ids=ids(CLI_COMMANDS))
def test_cli_command_parses(cmd):
    from mhpo_vl.cli import build_parser

    args = cli_args(cmd)
    if is_help(args):
        return  # run by test_offline_command_runs
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{cmd}\ndoes not parse (exit {exc.code}): {err.getvalue().strip()}")
    missing = missing_paths(args)
    assert not missing, f"{cmd}\nnames paths that do not exist: {missing}"


_HELP: dict[tuple[str, ...], str] = {}


def script_help(script: str, leading: list[str]) -> str:
    """``python SCRIPT [LEADING...] --help`` (the positionals before the first option pick
    a sub-tool, as ``reproduce.py tiny-study``); else ``SCRIPT --help``."""
    key = (script, *leading)
    if key not in _HELP:
        for argv in ([*leading, "--help"], ["--help"]):
            proc = subprocess.run(
                [sys.executable, str(ROOT / script), *argv],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=RUN_BUDGET_S,
            )
            if proc.returncode == 0:
                break
        assert proc.returncode == 0, f"{script} --help failed: {proc.stderr[-500:]}"
        _HELP[key] = proc.stdout
    return _HELP[key]


@pytest.mark.parametrize("cmd", SCRIPT_COMMANDS, ids=ids(SCRIPT_COMMANDS))
def test_script_exists_and_takes_the_options_shown(cmd):
    script, args = script_of(cmd)
    assert script.startswith(REPO_PREFIXES) and (ROOT / script).is_file(), (
        f"{cmd}\n{script} is not a script of the repository"
    )
    missing = missing_paths(args)
    assert not missing, f"{cmd}\nnames paths that do not exist: {missing}"
    leading = []
    for arg in args:
        if arg.startswith("-"):
            break
        leading.append(arg)
    text = script_help(script, leading)
    for flag in {a.split("=")[0] for a in args if a.startswith("--")}:
        if flag != "--help":
            assert re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text), (
                f"{cmd}\n{flag} is not an option of {script} (not in its --help)"
            )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder that looks like the repository (each top-level entry linked) but where
    what a command writes (runs/...) stays out of the repository."""
    here = tmp_path_factory.mktemp("docs_sandbox")
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", ".git"):
            (here / entry.name).symlink_to(entry)
    return here


def expand(args: list[str], cwd: Path) -> list[str]:
    """Globs expanded as the shell would (a pattern matching nothing stays as it is)."""
    out = []
    for arg in args:
        matches = sorted(glob.glob(arg, root_dir=cwd)) if any(c in arg for c in "*?[") else []
        out.extend(matches or [arg])
    return out


def run_cli(args: list[str], cwd: Path) -> tuple[int, str]:
    """``mhpo-vl ARGS`` in this process (the imports are paid once), in ``cwd``."""
    from mhpo_vl.cli import main

    out, previous = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main(expand(args, cwd))
            except SystemExit as exc:  # --help, or a parser error
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(previous)
    return code, out.getvalue()


def run_script(script: str, args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, script, *expand(args, cwd)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_BUDGET_S,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("cmd", RUNNABLE_COMMANDS, ids=ids(RUNNABLE_COMMANDS))
def test_offline_command_runs(cmd, sandbox, monkeypatch):
    """The commands shown that run offline in seconds do run, and exit 0."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = cli_args(cmd)
    start = time.perf_counter()
    if args is not None:
        code, output = run_cli(args, sandbox)
    else:
        script, script_args = script_of(cmd)
        code, output = run_script(script, script_args, sandbox)
    took = time.perf_counter() - start
    assert code == 0, f"{cmd}\nexited {code}:\n{output[-2000:]}"
    assert output.strip(), f"{cmd}\nprinted nothing"
    assert took < RUN_BUDGET_S, f"{cmd}\ntook {took:.0f} s: not a quick offline command"
    lines = [line.rstrip() for line in output.splitlines()]
    for shown in cmd.shown_output:
        if shown.strip() in ("", "..."):
            continue
        if shown.startswith("..."):  # an elided start: the rest ends a line
            ok = any(line.endswith(shown[3:].rstrip()) for line in lines)
        else:
            ok = shown.rstrip() in lines
        assert ok, f"{cmd}\nthe docs show the line\n  {shown}\nwhich the command no longer prints"


# ------------------------------------------------------------------ the checks themselves


def test_slugs_follow_githubs_rules():
    assert github_slug("Will it fit? `mhpo-vl estimate`") == "will-it-fit-mhpo-vl-estimate"
    assert github_slug("Reproducing the paper's tables") == "reproducing-the-papers-tables"
    assert github_slug("Install notes (CPU)") == "install-notes-cpu"
    assert github_slug("What `eval run` writes, and the benchmarks") == (
        "what-eval-run-writes-and-the-benchmarks"
    )
    assert github_slug("A [link](x.md) and_under") == "a-link-and_under"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A broken link, anchor, subcommand, option and path are each reported."""
    page = ROOT / "docs" / "recipes.md"
    assert link_problem(page, "algorithms.md#no-such-heading")
    assert link_problem(page, "no_such_page.md")
    assert link_problem(page, "../../outside.md")
    assert link_problem(page, "algorithms.md") is None
    assert link_problem(page, "https://example.org/never/fetched") is None

    doc = tmp_path / "x.md"
    doc.write_text(
        "```bash\nmhpo-vl train recipes/tiny/mhpo.yaml \\\n    trainer.max_steps=2  # two\n"
        "FOO=1 mhpo-vl frobnicate x && mhpo-vl validate recipes/tiny/nope.yaml\n```\n"
        "```console\n$ mhpo-vl estimate recipes/tiny/mhpo.yaml --no-such-option\noutput\n```\n"
    )
    train, frob, validate, estimate = commands_of(doc, "x.md")
    assert train.words == ("mhpo-vl", "train", "recipes/tiny/mhpo.yaml", "trainer.max_steps=2")
    assert frob.words[:2] == ("mhpo-vl", "frobnicate") and kind_of(frob) == "mhpo-vl frobnicate"
    assert not runnable(frob) and not_offline_reason(frob) is None
    assert missing_paths(cli_args(validate)) == ["recipes/tiny/nope.yaml"]
    from mhpo_vl.cli import build_parser

    for bad in (frob, estimate):
        with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(cli_args(bad))
    assert missing_paths(["--out", "recipes/new/", "trainer.output_dir=data/x"]) == []
