"""One cell on disk: its state, its metrics, and training or resuming it through the CLI.

A cell's folder is the trainer's output folder plus the study's own files:
``study_train.log`` (the CLI's output, appended per attempt), ``study_attempts.jsonl``
(one line per attempt: date, commit, steps trained, exit code, wall seconds) and, for a
run the trainer stopped because its updates went non-finite, ``study_halted.json``.

States: ``done`` (``checkpoint-<final step>`` exists and ``metrics.jsonl`` reached that
step), ``halted`` (not tried again; delete ``study_halted.json`` to retry), ``resume``
(a checkpoint exists: the trainer goes on from the latest one by itself), ``new``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mhpo_vl.study.plan import DEFAULT_OUT, ROOT, Cell

HALTED_FILE = "study_halted.json"
ATTEMPTS_FILE = "study_attempts.jsonl"
LOG_FILE = "study_train.log"
CKPT_RE = re.compile(r"checkpoint-(\d+)")
# the trainer's own stops for updates gone non-finite (mhpo_vl/training/update.py, state.py)
HALT_RE = re.compile(
    r"mhpo-vl: error: (step (\d+): .*(?:optimizer updates in a row skipped|non-finite weights).*)"
)
NON_FINITE = ("nan", "inf", "-inf", "infinity", "-infinity")


@dataclass(frozen=True)
class CellState:
    """Where a cell is: ``state`` (done, halted, resume, new), ``step`` (the final
    checkpoint, the halted step, or the latest checkpoint) and ``logged`` (the last step
    in ``metrics.jsonl``)."""

    state: str
    step: int = 0
    logged: int = 0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def checkpoints(run_dir: Path) -> list[int]:
    """The steps of the ``checkpoint-<step>`` folders, ascending."""
    if not run_dir.is_dir():
        return []
    found = (CKPT_RE.fullmatch(p.name) for p in run_dir.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _number(value: Any) -> Any:
    """The trainer writes non-finite floats as the strings "nan", "inf", "-inf"."""
    if isinstance(value, str) and value.lower() in NON_FINITE:
        return float(value)
    return value


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` of a run folder, read by the trainer's own reader, with the
    non-finite numbers restored (empty when the run has not logged yet)."""
    from mhpo_vl.tracking import read_metrics

    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return []
    return [{k: _number(v) for k, v in rec.items()} for rec in read_metrics(run_dir)]


def last_step(records: Sequence[dict[str, Any]]) -> int:
    return max((int(r["step"]) for r in records), default=0)


def cell_state(
    run_dir: Path, steps: int, records: Sequence[dict[str, Any]] | None = None
) -> CellState:
    """The state of the run in ``run_dir`` whose final step is ``steps``."""
    records = read_records(run_dir) if records is None else records
    logged = last_step(records)
    ckpts = checkpoints(run_dir)
    if steps in ckpts and logged >= steps:
        return CellState("done", steps, logged)
    halted = run_dir / HALTED_FILE
    if halted.is_file():
        step = int(json.loads(halted.read_text(encoding="utf-8")).get("step", 0))
        return CellState("halted", step, logged)
    if ckpts:
        return CellState("resume", ckpts[-1], logged)
    return CellState("new", 0, logged)


def attempts(run_dir: Path) -> list[dict[str, Any]]:
    """The study's attempts at a run (``study_attempts.jsonl``), oldest first."""
    path = run_dir / ATTEMPTS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


def trained_commits(tries: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The commits of the attempts that trained steps, in order, each once."""
    trained = (a for a in tries if a.get("to_step", 0) > a.get("from_step", 0))
    return tuple(dict.fromkeys(str(a.get("commit", "unknown")) for a in trained))


def wall_time(tries: Sequence[dict[str, Any]]) -> float | None:
    """Seconds of all attempts together; None when the study never ran it."""
    total = sum(float(a.get("wall_s", 0.0)) for a in tries)
    return total if tries and math.isfinite(total) else None


def halt_reason(text: str) -> tuple[int, str] | None:
    """(step, message) when the trainer stopped the run for non-finite updates."""
    for line in reversed(text.splitlines()):
        m = HALT_RE.search(line)
        if m:
            return int(m.group(2)), m.group(1)
    return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit_id(ignore: Path | None = None) -> str:
    """``git rev-parse HEAD``, with a note when tracked files have uncommitted changes
    (other than under ``ignore``: the summary's own folder, rewritten each time)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    spec = ["--", "."]
    if ignore is not None and ignore.resolve().is_relative_to(ROOT):
        spec.append(f":(exclude){ignore.resolve().relative_to(ROOT)}")
    if head != "unknown" and _git("status", "--porcelain", "--untracked-files=no", *spec):
        head += " (with uncommitted changes)"
    return head


def command(cell: Cell, threads: int | None = None) -> list[str]:
    """The CLI command that trains (or resumes) ``cell``, run from the repository root
    (``threads``: its torch CPU threads when cells run side by side)."""
    return [sys.executable, "-m", "mhpo_vl", "train", cell.recipe, *cell.overrides(threads=threads)]


def validate(cell: Cell) -> str | None:
    """None when the cell's recipe and overrides validate, else the one-line problem."""
    from mhpo_vl.errors import UserError
    from mhpo_vl.validation import load_recipe

    try:
        load_recipe(ROOT / cell.recipe, cell.overrides(output_dir=str(cell.path)))
    except UserError as exc:
        return " ".join(str(exc).split())
    return None


def _env() -> dict[str, str]:
    """This environment with this interpreter's scripts folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def train(
    cell: Cell, cmd: Sequence[str], display: str, from_step: int, jobs: int = 1
) -> tuple[int, str, float]:
    """Run ``cmd`` (training ``cell``) from the repository root, its output appended to
    ``<run>/study_train.log`` and the attempt to ``<run>/study_attempts.jsonl`` (with
    ``jobs``, how many cells trained side by side: their wall times shared the CPU).
    Returns (exit code, the log's new text, wall seconds)."""
    path = cell.path
    path.mkdir(parents=True, exist_ok=True)
    log = path / LOG_FILE
    start = log.stat().st_size if log.exists() else 0
    t0 = time.monotonic()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"# {now()} $ {display}\n")
        fh.flush()
        try:
            rc = subprocess.run(
                list(cmd), cwd=ROOT, env=_env(), stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        except KeyboardInterrupt:
            rc = 130
    wall = time.monotonic() - t0
    attempt = {
        "date": now(),
        "commit": commit_id(ignore=ROOT / DEFAULT_OUT),  # the summary is rewritten often
        "from_step": from_step,
        "to_step": last_step(read_records(path)),
        "rc": rc,
        "wall_s": round(wall, 2),
        "jobs": jobs,
    }
    with (path / ATTEMPTS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(attempt) + "\n")
    text = log.read_bytes()[start:].decode("utf-8", errors="replace")
    return rc, text, wall


def mark_halted(cell: Cell, step: int, reason: str) -> None:
    """Record that the trainer stopped ``cell`` on purpose (it is not tried again)."""
    record = {"step": step, "reason": reason, "date": now()}
    (cell.path / HALTED_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
