"""Which mhpo_vl trained a run: ``OUTPUT_DIR/run_info.json``, one entry per start.

Each start of ``mhpo-vl train`` (a fresh run or a resume) appends the step it starts
from, the time, the package version and, when the package is imported from a git
checkout, the commit and whether the tree had uncommitted changes. ``mhpo-vl export``
puts the commit(s) that trained the exported steps in the model card; runs from before
this file existed say "unknown".
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

from mhpo_vl import __version__
from mhpo_vl.checkpoint import write_failure

RUN_INFO_FILE = "run_info.json"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds mhpo_vl/


def _git(*args: str) -> subprocess.CompletedProcess | None:
    """``git -C SOURCE_ROOT ARGS`` without optional locks (read-only); None if git fails."""
    try:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(SOURCE_ROOT), *args],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def source_version() -> dict[str, Any]:
    """``{"version", "commit", "dirty"}`` of the mhpo_vl source: ``commit`` is None (and
    ``dirty`` too) unless the package is imported from a git checkout."""
    info: dict[str, Any] = {"version": __version__, "commit": None, "dirty": None}
    if not (SOURCE_ROOT / ".git").exists():
        return info
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return info
    info["commit"] = head.stdout.strip()
    diff = _git("diff", "--quiet", "HEAD", "--", "mhpo_vl")
    info["dirty"] = None if diff is None or diff.returncode > 1 else diff.returncode == 1
    return info


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``run_info.json``, or None where it has none (or an unreadable one)."""
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("starts"), list) else None


def record_start(output_dir: str | Path, start_step: int) -> Path:
    """Append this start (``start_step``: 0 fresh, else the step resumed from) to
    ``OUTPUT_DIR/run_info.json``; a failed write stops the run naming the file."""
    path = Path(output_dir) / RUN_INFO_FILE
    info = read_run_info(output_dir) or {"starts": []}
    # a restart from an earlier step replaces the starts after it, as metrics.jsonl does
    info["starts"] = [s for s in info["starts"] if s.get("start_step", 0) < start_step]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["starts"].append({"start_step": start_step, "started_at": now, **source_version()})
    try:
        path.write_text(json.dumps(info, indent=2) + "\n")
    except OSError as exc:
        raise write_failure(path, exc, output_dir) from None
    return path


def commits_up_to(info: dict[str, Any] | None, step: int | None) -> list[dict[str, Any]]:
    """The starts that trained steps up to ``step`` (all of them when ``step`` is None),
    oldest first; empty for a run without ``run_info.json``."""
    if not info:
        return []
    starts = [s for s in info["starts"] if isinstance(s, dict)]
    return [s for s in starts if step is None or s.get("start_step", 0) < max(step, 1)]
