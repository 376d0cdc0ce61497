"""What a run writes as it goes: metrics.jsonl, TensorBoard events, rollout samples.

Only the main process writes. ``metrics.jsonl`` holds one JSON object per step
(``step`` plus every metric); ``samples.jsonl`` a few rollouts per step (prompt,
response, reward parts); ``tb/`` TensorBoard events. A write that fails (the
directory made read-only or removed, a full disk) stops the run with one line naming the
file, the cause and the last good checkpoint
(:func:`~mhpo_vl.checkpoint.write_failure`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mhpo_vl.checkpoint import write_failure


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class RunLogger:
    def __init__(
        self, output_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True
    ) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tb"))

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn a failed write of ``path`` into the run's one-line stop."""
        try:
            yield
        except OSError as exc:
            raise write_failure(path, exc, self.dir) from None

    def _append(self, name: str, lines: list[str]) -> None:
        path = self.dir / name
        with self._writing(path), open(path, "a") as fh:
            fh.write("".join(lines))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._append("metrics.jsonl", [json.dumps(record) + "\n"])
        if self._tb is not None:
            with self._writing(self.dir / "tb"):
                for key, value in metrics.items():
                    if isinstance(value, int | float):
                        self._tb.add_scalar(key, value, step)
                self._tb.flush()

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if not self.enabled or not records:
            return
        lines = [json.dumps({"step": step, **rec}, default=str) + "\n" for rec in records]
        self._append("samples.jsonl", lines)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone)."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if path.exists():
                lines = path.read_text().splitlines()
                kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
                path.write_text("".join(ln + "\n" for ln in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        from mhpo_vl.errors import UserError

        raise UserError(f"no metrics.jsonl in {run_dir} (is it a run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
