"""Checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written atomically, last N kept.

Each holds the model and processor in HF format (safetensors) and
``trainer_state.pt``: optimizer, scheduler, RNG states and data order, so that a
resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mhpo_vl.errors import RunHalted

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
LEFTOVER_RE = re.compile(r"^(\.checkpoint-\d+\.tmp|\.deleting-checkpoint-\d+)$")
STATE_FILE = "trainer_state.pt"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a state file), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = CKPT_RE.match(path.name)
        if m and (path / STATE_FILE).exists():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    processor: Any,
    state: dict[str, Any],
    keep_last: int,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` via a temporary folder and a rename, then prune old ones.

    On a full disk the partial folder is removed, the checkpoints this save would prune
    anyway make room, and the write is tried once more; if there is nothing to prune, a
    :class:`~mhpo_vl.errors.RunHalted` says so, leaving the last good checkpoint intact
    for a rerun to resume from."""
    root = Path(output_dir)
    try:
        path = _write(root, step, model, processor, state, state_dict)
    except Exception as exc:
        if not _disk_full(exc):
            raise
        if not prune(root, keep_last, room_for_one=True):
            last = latest_checkpoint(root)
            kept = f"{last.name} is intact; a rerun resumes from it" if last else "none saved yet"
            raise RunHalted(
                f"no space left on device in {root} while writing checkpoint-{step} ({kept}); "
                "free some space or lower trainer.keep_last"
            ) from None
        return save_checkpoint(root, step, model, processor, state, keep_last, state_dict)
    prune(root, keep_last)
    return path


def _write(
    root: Path,
    step: int,
    model: Any,
    processor: Any,
    state: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
) -> Path:
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        # state_dict: full weights gathered from shards (FSDP); None: the model's own
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if processor is not None:
            processor.save_pretrained(tmp)
        _save_state(state, tmp / STATE_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        _remove(final)
    tmp.rename(final)
    return final


class _Writer:
    """A file that remembers its write errors: ``torch.save`` turns a failed write into a
    ``RuntimeError`` ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save_state(state: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as fh:
        writer = _Writer(fh)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def _disk_full(exc: BaseException) -> bool:
    """A write that failed for want of space (safetensors and torch word it their way)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text


def prune(root: Path, keep_last: int, room_for_one: bool = False) -> bool:
    """Remove all but the newest ``keep_last`` checkpoints (``keep_last - 1`` to make room
    for one more); ``keep_last <= 0`` keeps all. True if something was removed."""
    if keep_last <= 0:
        return False
    keep = max(keep_last - 1, 1) if room_for_one else keep_last  # never the last good one
    ckpts = list_checkpoints(root)
    old = ckpts[: max(0, len(ckpts) - keep)]
    for _, path in old:
        _remove(path)
    return bool(old)


def _remove(path: Path) -> None:
    """Rename, then delete: a kill half-way leaves a ``.deleting-*`` folder that
    :func:`clean_leftovers` removes, never a half-deleted checkpoint."""
    doomed = path.with_name(f".deleting-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_leftovers(output_dir: str | Path) -> list[str]:
    """Remove what an interrupted save or prune left behind; the names removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if LEFTOVER_RE.match(p.name) and p.is_dir()]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in found)


def load_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state, every tensor on the CPU: the optimizer's are moved to where
    its parameters are when it is loaded. (Without ``map_location`` each tensor would go
    back to the device it was saved from, ``cuda:0`` for every rank.)"""
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
