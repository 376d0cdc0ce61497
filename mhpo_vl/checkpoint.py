"""Checkpoints: ``OUTPUT_DIR/checkpoint-<step>/``, written atomically, last N kept.

Each holds the model and processor in HF format (safetensors) and
``trainer_state.pt``: optimizer, scheduler, RNG states and data order, so that a
resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from mhpo_vl.errors import RunHalted

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint: model + optimizer, one file per process
HF_SHARD_BYTES = 5 << 30  # HF-format weight files are split at this size
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


def is_sharded(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds its training state sharded (written under FSDP2)."""
    return (ckpt / SHARDED_DIR).is_dir()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


class Group(Protocol):
    """The processes that write one checkpoint together (a :class:`~mhpo_vl.parallel.
    Parallel` is one): each writes its part, the main one creates and renames the
    folder, and all of them agree on what happened."""

    is_main: bool
    rank: int
    world: int

    def barrier(self) -> None: ...

    def sum(self, value: float) -> float: ...

    def gather(self, item: Any) -> list[Any]: ...


class _Alone:
    is_main, rank, world = True, 0, 1

    def barrier(self) -> None:
        pass

    def sum(self, value: float) -> float:
        return value

    def gather(self, item: Any) -> list[Any]:
        return [item]


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: Any,
    processor: Any,
    state: dict[str, Any],
    keep_last: int,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """One process writes ``checkpoint-<step>``: the model and processor in HF format
    (``state_dict``: weights to save instead of the model's own) and the trainer state.
    See :func:`write_checkpoint`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if processor is not None:
            processor.save_pretrained(tmp)
        save_state(state, tmp / STATE_FILE)

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return write_checkpoint(output_dir, step, write, keep_last)


def write_checkpoint(
    output_dir: str | Path,
    step: int,
    write: Callable[[Path], None],
    keep_last: int,
    group: Group | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` via a temporary folder and a rename, then prune old ones.

    ``write(folder)`` is called on every process of ``group`` (default: this one alone)
    and writes that process's part. On a full disk (on any process) the partial folder
    is removed, the checkpoints this save would prune anyway make room, and the write is
    tried once more; if there is nothing to prune, a :class:`~mhpo_vl.errors.RunHalted`
    says so, leaving the last good checkpoint intact for a rerun to resume from."""
    root, group = Path(output_dir), group or _Alone()
    try:
        path = _attempt(root, step, write, group)
    except _SaveFailed as failed:
        last = latest_checkpoint(root)
        kept = (
            f"{last} is intact, a rerun resumes from it" if last else "no checkpoint to resume from"
        )
        if not failed.disk_full:
            raise RunHalted(
                f"cannot write {root / f'checkpoint-{step}'}: {failed.causes}; {kept}"
            ) from None
        made_room = prune(root, keep_last, room_for_one=True) if group.is_main else False
        if group.sum(float(made_room)) == 0:
            raise RunHalted(
                f"no space left on device in {root} while writing checkpoint-{step} "
                f"({failed.causes}); {kept}; free some space or lower trainer.keep_last"
            ) from None
        return write_checkpoint(root, step, write, keep_last, group)
    if group.is_main:
        prune(root, keep_last)
    group.barrier()
    return path


class _SaveFailed(Exception):
    """Some processes could not write their part: each one's ``(rank, disk full,
    cause)``."""

    def __init__(self, reports: list[tuple[int, bool, str]]) -> None:
        super().__init__(str(reports))
        self.reports = reports
        self.disk_full = all(full for _, full, _ in reports)

    @property
    def causes(self) -> str:
        """``cause``, or ``rank R: cause; rank S: ...`` when several processes write."""
        if len(self.reports) == 1 and self.reports[0][0] < 0:
            return self.reports[0][2]
        return "; ".join(f"rank {rank}: {cause}" for rank, _, cause in self.reports)


def _reports(error: BaseException | None, rank: int) -> list[tuple[int, bool, str]]:
    """``(rank, disk full, cause)`` of each failed write this process knows of: its own,
    or every process's when a collective writer (torch.distributed.checkpoint's
    ``CheckpointException``) gathered them."""
    if error is None:
        return []
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict):
        return [(r, _disk_full(exc), _cause(exc)) for r, (exc, _) in failures.items()]
    return [(rank, _disk_full(error), _cause(error))]


def _cause(exc: BaseException) -> str:
    """A failed write in a few words: ``OSError``'s own text, else the type and text."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}{f' ({exc.filename})' if exc.filename else ''}"
    return f"{type(exc).__name__}: {exc}"[:300]


def _attempt(root: Path, step: int, write: Callable[[Path], None], group: Group) -> Path:
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    error: BaseException | None = None
    if group.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # the run made its output directory: one that is gone was removed
            tmp.mkdir()
        except OSError as exc:  # read-only or removed output directory
            error = exc
    group.barrier()
    try:
        if not group.sum(float(error is not None)):
            write(tmp)
    except Exception as exc:  # every process must still learn of it (below)
        error = exc
    except BaseException as exc:
        if not hasattr(exc, "failures"):  # (a CheckpointException is a BaseException)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        error = exc
    if group.sum(float(error is not None)):
        reports = sorted({r for item in group.gather(_reports(error, group.rank)) for r in item})
        if group.world == 1:  # one process: no rank to name
            reports = [(-1, full, cause) for _, full, cause in reports]
        if group.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        group.barrier()
        raise _SaveFailed(reports)
    if group.is_main:
        if final.exists():
            remove(final)
        tmp.rename(final)
    group.barrier()
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


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` that reports a full disk as the ``OSError`` it is."""
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
        remove(path)
    return bool(old)


def remove(path: Path) -> None:
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


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int = HF_SHARD_BYTES) -> list[list[str]]:
    """Tensor names, in order, grouped into files of at most ``max_bytes`` each (a
    tensor larger than that gets a file of its own)."""
    shards: list[list[str]] = []
    size = 0
    for name, nbytes in sizes:
        if not shards or (size + nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


class SafetensorsWriter:
    """Hugging Face format weights written file by file as their tensors arrive (in the
    order of ``plan``, from :func:`plan_shards`), so at most one file's tensors are in
    memory: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` and the
    ``model.safetensors.index.json`` that maps names to files. ``rename`` maps a file's
    tensors to the names the checkpoint format uses (transformers renames some modules
    on load and back on save)."""

    def __init__(
        self,
        directory: Path,
        plan: list[list[str]],
        rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = dict,
    ) -> None:
        self.directory, self.plan, self.rename = Path(directory), plan, rename
        self.pending: dict[str, torch.Tensor] = {}
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self.written = 0  # files written so far

    def _file(self, i: int) -> str:
        n = len(self.plan)
        return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"

    def add(self, name: str, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        i = self.written
        self.pending[name] = tensor.detach().to("cpu").contiguous()
        if len(self.pending) < len(self.plan[i]):
            return
        assert list(self.pending) == self.plan[i], "tensors arrived out of plan order"
        tensors = self.rename(self.pending)
        save_file(tensors, str(self.directory / self._file(i)), metadata={"format": "pt"})
        for key, value in tensors.items():
            self.weight_map[key] = self._file(i)
            self.total_bytes += value.numel() * value.element_size()
        self.pending = {}
        self.written += 1

    def finish(self) -> None:
        assert self.written == len(self.plan), "tensors missing from the plan"
        if len(self.plan) > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}
            (self.directory / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n"
            )


def write_failure(
    path: str | Path, exc: BaseException, output_dir: str | Path | None = None
) -> RunHalted:
    """A :class:`RunHalted` for a failed write: the path, the cause and the last good
    checkpoint of ``output_dir`` (which a rerun resumes from)."""
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, OSError) and not Path(path).parent.exists():
        cause = f"{cause} (its directory {Path(path).parent} was removed)"
    where = ""
    if output_dir is not None:
        last = latest_checkpoint(output_dir)
        where = (
            f"; {last} is intact, a rerun resumes from it"
            if last
            else "; no checkpoint to resume from"
        )
    return RunHalted(f"cannot write {path}: {cause}{where}")
