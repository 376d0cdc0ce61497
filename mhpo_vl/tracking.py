"""What a run writes as it goes: metrics.jsonl, rollout samples, experiment trackers.

Only the main process writes. ``metrics.jsonl`` holds one JSON object per step
(``step`` plus every metric); ``samples.jsonl`` the logged rollouts of each step, one
line per response (:data:`SAMPLE_KEYS`), with each logged prompt group's image written
once as ``samples/step-<step:06d>/group-<g>.png``. These files are the run's record.
The trackers of ``trainer.report_to`` (:mod:`mhpo_vl.trackers`: TensorBoard events in
``tb/``, W&B, trackio, MLflow) get the same metrics and samples; one that fails
mid-run is warned about and, failing again, switched off, never stopping the run. A
write of the run's own files that fails (the directory made read-only or removed, a
full disk) stops the run with one line naming the file, the cause and the last good
checkpoint (:func:`~mhpo_vl.checkpoint.write_failure`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.checkpoint import write_failure
from mhpo_vl.trackers import MAX_FAILURES, Tracker, eval_rows, start_trackers

log = logging.getLogger("mhpo_vl")

SAMPLE_KEYS = (
    "step", "group", "id", "prompt", "answer", "response", "reward", "parts", "advantage",
    "image",
)  # fmt: skip
"""The keys of each ``samples.jsonl`` line, in order (``image``: a PNG path relative to
the run directory, or null for a text-only row); a multiple-choice row adds ``choices``
(its options, in order) after them."""

SAMPLES_DIR = "samples"


def sample_image_path(step: int, group: int) -> str:
    """Where a logged group's image goes, relative to the run directory."""
    return f"{SAMPLES_DIR}/step-{step:06d}/group-{group}.png"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


SAMPLE_IMAGE_MAX_SIDE = 640
"""Logged images are shrunk to at most this many pixels on their longer side (a real
recipe's 1-megapixel images would otherwise add megabytes per step); smaller ones are
written as they are."""


def _for_viewing(image: Any) -> Any:
    """``image``, or a copy shrunk to :data:`SAMPLE_IMAGE_MAX_SIDE` (aspect kept)."""
    if max(image.size) <= SAMPLE_IMAGE_MAX_SIDE:
        return image
    small = image.copy()
    small.thumbnail((SAMPLE_IMAGE_MAX_SIDE, SAMPLE_IMAGE_MAX_SIDE))
    return small


class RunLogger:
    """The run's files, and the trackers of ``report_to`` (started here: one that cannot
    start raises the one-line :class:`~mhpo_vl.errors.UserError`)."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        enabled: bool = True,
        report_to: Sequence[str] = ("tensorboard",),
        config: dict[str, Any] | None = None,
        project: str = "mhpo_vl",
        run_name: str = "run",
    ) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.trackers: list[Tracker] = []
        self._failures: dict[str, int] = {}
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.trackers = start_trackers(
                list(report_to), self.dir, project, run_name, config or {}
            )

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

    def _fan_out(self, step: int, what: str, call: Any) -> None:
        """``call(tracker)`` for each tracker; a failure is a warning, and
        :data:`~mhpo_vl.trackers.MAX_FAILURES` in a row switch that tracker off."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
                self._failures[tracker.name] = 0
            except Exception as exc:
                n = self._failures[tracker.name] = self._failures.get(tracker.name, 0) + 1
                off = n >= MAX_FAILURES
                if off:
                    self.trackers.remove(tracker)
                log.warning(
                    "trainer.report_to: %s failed to log %s at step %d (%s: %s)%s; training "
                    "goes on, metrics.jsonl and samples.jsonl stay complete",
                    tracker.name, what, step, type(exc).__name__, exc,
                    f"; switched off after {n} failures in a row" if off else "",
                )  # fmt: skip

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._append("metrics.jsonl", [json.dumps(record) + "\n"])
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        self._fan_out(step, "metrics", lambda t: t.log(step, scalars))
        rows = eval_rows(metrics)
        if rows:
            self._fan_out(step, "the eval table", lambda t: t.eval_table(step, rows))

    def samples(self, step: int, records: list[dict[str, Any]], images: Sequence[Any] = ()) -> None:
        """Append ``records`` (one per response, in :data:`SAMPLE_KEYS` order) to
        ``samples.jsonl``. ``images[g]`` is group ``g``'s PIL image (or None): written
        once as a PNG, and each of the group's records names it in ``image``."""
        if not self.enabled or not records:
            return
        paths = self._write_images(step, images)
        for rec in records:
            if rec.get("group") in paths:
                rec["image"] = sample_image_path(step, rec["group"])
        lines = [json.dumps({"step": step, **rec}, default=str) + "\n" for rec in records]
        self._append("samples.jsonl", lines)
        self._fan_out(step, "samples", lambda t: t.samples(step, records, paths))

    def _write_images(self, step: int, images: Sequence[Any]) -> dict[int, Path]:
        """Each group's image as a PNG under ``samples/step-<step>/``: group -> path."""
        paths = {}
        for group, image in enumerate(images):
            if image is None:
                continue
            path = self.dir / sample_image_path(step, group)
            with self._writing(path):
                for folder in (path.parent.parent, path.parent):  # never the run dir itself:
                    folder.mkdir(exist_ok=True)  # one removed mid-run stops the run
                _for_viewing(image).save(path, format="PNG")
            paths[group] = path
        return paths

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone),
        sample images included."""
        if not self.enabled:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if path.exists():
                lines = path.read_text().splitlines()
                kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
                path.write_text("".join(ln + "\n" for ln in kept))
        images = self.dir / SAMPLES_DIR
        if images.is_dir():
            for folder in images.iterdir():
                m = re.fullmatch(r"step-(\d+)", folder.name)
                if m and int(m.group(1)) > step:
                    shutil.rmtree(folder, ignore_errors=True)

    def close(self, failed: bool | None = None) -> None:
        """Finish every tracker; ``failed`` defaults to whether an exception is on its
        way out (a ``close`` in a ``finally``), so a crashed run is marked failed."""
        failed = sys.exc_info()[1] is not None if failed is None else failed
        for tracker in self.trackers:
            try:
                tracker.finish(failed)
            except Exception as exc:  # the run's own files are complete already
                log.warning("trainer.report_to: %s failed to finish (%s)", tracker.name, exc)
        self.trackers = []


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        from mhpo_vl.errors import UserError

        raise UserError(f"no metrics.jsonl in {run_dir} (is it a run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
