"""Experiment trackers (``trainer.report_to``): TensorBoard, Weights & Biases, trackio,
MLflow, each through ``accelerate.tracking`` (which starts the run and logs scalars and
the config) plus the library's own tables and images where accelerate has none.

:class:`~mhpo_vl.tracking.RunLogger` fans out to these on the main process only;
``metrics.jsonl`` and ``samples.jsonl`` stay the record that the rest of the package
reads. Every tracker gets the resolved recipe as its run config, every metric every
step, an eval table (suite, task, accuracy) at eval steps and the logged rollouts as a
table with their image.

Failures: :func:`start_trackers` runs before the model loads and turns any tracker that
cannot start (package missing, W&B not logged in, no server) into one
:class:`~mhpo_vl.errors.UserError` line naming it and how to switch it off. A tracker
that fails later only logs a warning, and after :data:`MAX_FAILURES` failures in a row
is switched off: training goes on and the JSONL files stay complete.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mhpo_vl.errors import UserError

log = logging.getLogger("mhpo_vl")

TRACKER_NAMES = ("tensorboard", "wandb", "trackio", "mlflow")
"""Valid ``trainer.report_to`` entries."""

MAX_FAILURES = 3  # failures in a row after which a tracker is switched off

_HOW_TO_FIX = {
    "tensorboard": "remove tensorboard from trainer.report_to",
    "wandb": (
        "run 'wandb login', set WANDB_MODE=offline to log locally, or remove wandb from "
        "trainer.report_to"
    ),
    "trackio": (
        "check TRACKIO_DIR (or TRACKIO_SPACE_ID / TRACKIO_SERVER_URL), or remove trackio "
        "from trainer.report_to"
    ),
    "mlflow": (
        "check MLFLOW_TRACKING_URI (unset: ./mlflow.db), or remove mlflow from trainer.report_to"
    ),
}
_OFFLINE_WANDB_MODES = ("offline", "dryrun", "disabled")


def start_failure(name: str, why: str) -> UserError:
    """The one-line stop for a tracker that cannot start."""
    why = " ".join(str(why).split())[:200] or "no reason given"
    return UserError(f"trainer.report_to: {name} could not start ({why}); {_HOW_TO_FIX[name]}")


def check_installed(name: str) -> None:
    """Stop when ``name``'s package is missing, naming the extra that installs it."""
    if importlib.util.find_spec(name) is None:
        raise UserError(
            f"trainer.report_to: {name} is not installed; install it with "
            f'pip install -e ".[{name}]", or remove {name} from trainer.report_to'
        )


def wandb_login_problem() -> str | None:
    """Why W&B cannot log online (no credentials), checked without the network and
    without an interactive prompt; None when it can, or logs offline."""
    import wandb

    settings = wandb.setup().settings
    if settings.mode in _OFFLINE_WANDB_MODES:
        return None
    try:  # wandb's own lookup (env, netrc, identity token): never prompts here
        from wandb.sdk.lib.wbauth import authenticate
    except ImportError:  # another wandb version: wandb.init reports it instead
        return None
    try:
        found = authenticate.authenticate_session(
            host=settings.base_url, source="mhpo-vl", prompt=False, update_session=False
        )
    except Exception as exc:  # a malformed key, two kinds of credentials at once
        return str(exc)
    return None if found else f"not logged in to {settings.base_url}"


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe dict as ``{"trainer.max_steps": 10, ...}``; lists and ``None`` as
    text (what MLflow params and TensorBoard hold)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat_config(value, f"{prefix}{key}."))
        return out
    value = tree if isinstance(tree, bool | int | float | str) else str(tree)
    return {prefix[:-1]: value}


def eval_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """``[suite, task, accuracy]`` per eval accuracy metric (``eval/accuracy``,
    ``eval/accuracy/<task>``, ``eval/<bench>/accuracy[/<task>]``); empty off eval steps."""
    rows = []
    for key, value in metrics.items():
        m = re.fullmatch(r"eval/(?:(.+)/)?accuracy(?:/(.+))?", key)
        if m and isinstance(value, int | float):
            rows.append([m.group(1) or "heldout", m.group(2) or "all", float(value)])
    return rows


EVAL_COLUMNS = ["suite", "task", "accuracy"]


def sample_table(
    records: list[dict[str, Any]], images: dict[int, Path], image: Any
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a step's samples: ``image(path)`` (the tracker's image type)
    for each group's PNG, then the prompt, response, reward, each reward part and the
    advantage."""
    parts = sorted({p for rec in records for p in rec.get("parts", {})})
    columns = ["group", "id", "image", "prompt", "answer", "response", "reward"]
    columns += [f"reward/{p}" for p in parts] + ["advantage"]
    rows = []
    for rec in records:
        path = images.get(rec.get("group", 0))
        row = [rec.get("group", 0), str(rec.get("id", "")), image(path) if path else None]
        row += [str(rec.get(k, "")) for k in ("prompt", "answer", "response")]
        row += [rec.get("reward"), *(rec.get("parts", {}).get(p) for p in parts)]
        rows.append(row + [rec.get("advantage")])
    return columns, rows


def _markdown(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


class Tracker:
    """One started tracker: ``impl`` is accelerate's tracker object."""

    name = ""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        impl.main_process_only = False  # RunLogger runs on the main process only already

    def config(self, recipe: dict[str, Any]) -> None:
        self.impl.store_init_configuration(recipe)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.impl.log(metrics, step=step)

    def eval_table(self, step: int, rows: list[list[Any]]) -> None:
        """The step's eval accuracies as a table (only where the tracker has tables)."""

    def samples(self, step: int, records: list[dict[str, Any]], images: dict[int, Path]) -> None:
        raise NotImplementedError

    def finish(self, failed: bool) -> None:
        self.impl.finish()


class TensorBoard(Tracker):
    """Scalars; the config, eval table and samples as markdown text; each group's image."""

    name = "tensorboard"

    def config(self, recipe: dict[str, Any]) -> None:
        import yaml

        text = yaml.safe_dump(recipe, sort_keys=False)
        self.impl.writer.add_text("config", "```\n" + text + "```", 0)

    def eval_table(self, step: int, rows: list[list[Any]]) -> None:
        self.impl.log({"eval/table": _markdown(EVAL_COLUMNS, rows)}, step=step)

    def samples(self, step: int, records: list[dict[str, Any]], images: dict[int, Path]) -> None:
        import numpy as np
        from PIL import Image

        columns, rows = sample_table(records, images, lambda p: p.name)
        self.impl.log({"samples": _markdown(columns, rows)}, step=step)
        for group, path in images.items():
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))[None]
            self.impl.log_images({f"samples/group-{group}": pixels}, step, dataformats="NHWC")
        self.impl.writer.flush()


class WandB(Tracker):
    """``wandb.Table`` with ``wandb.Image`` cells; a failed run is finished as failed."""

    name = "wandb"

    def eval_table(self, step: int, rows: list[list[Any]]) -> None:
        self.impl.log_table("eval/table", columns=EVAL_COLUMNS, data=rows, step=step)

    def samples(self, step: int, records: list[dict[str, Any]], images: dict[int, Path]) -> None:
        import wandb

        columns, rows = sample_table(records, images, lambda p: wandb.Image(str(p)))
        self.impl.log_table("samples", columns=columns, data=rows, step=step)

    def finish(self, failed: bool) -> None:
        self.impl.run.finish(exit_code=1 if failed else 0)


class Trackio(Tracker):
    """``trackio.Table`` with ``trackio.Image`` cells (its local SQLite store or a Space)."""

    name = "trackio"

    def eval_table(self, step: int, rows: list[list[Any]]) -> None:
        import trackio

        self.impl.log({"eval/table": trackio.Table(columns=EVAL_COLUMNS, data=rows)}, step=step)

    def samples(self, step: int, records: list[dict[str, Any]], images: dict[int, Path]) -> None:
        import trackio

        columns, rows = sample_table(records, images, lambda p: trackio.Image(str(p)))
        self.impl.log({"samples": trackio.Table(columns=columns, data=rows)}, step=step)


class MLflow(Tracker):
    """Params (the flattened recipe), metrics, the samples as one table a step
    (``samples/step-<step>.json``, ``mlflow.Image`` cells) and ``eval.json`` (each eval
    step's rows appended)."""

    name = "mlflow"

    def config(self, recipe: dict[str, Any]) -> None:
        self.impl.store_init_configuration(flat_config(recipe))

    def eval_table(self, step: int, rows: list[list[Any]]) -> None:
        import mlflow

        data = {c: [r[i] for r in rows] for i, c in enumerate(EVAL_COLUMNS)}
        mlflow.log_table({"step": [step] * len(rows), **data}, artifact_file="eval.json")

    def samples(self, step: int, records: list[dict[str, Any]], images: dict[int, Path]) -> None:
        import mlflow

        columns, rows = sample_table(records, images, lambda p: mlflow.Image(str(p)))
        data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
        # one file a step: log_table appends to an existing file by rewriting all of it
        mlflow.log_table(
            {"step": [step] * len(rows), **data}, artifact_file=f"samples/step-{step:06d}.json"
        )

    def finish(self, failed: bool) -> None:
        import mlflow

        mlflow.end_run("FAILED" if failed else "FINISHED")


def _make(name: str, out: Path, project: str, run_name: str, recipe: dict[str, Any]) -> Tracker:
    """Build and start tracker ``name`` (accelerate's class) and give it the config."""
    from accelerate import PartialState, tracking

    PartialState()  # accelerate's trackers log through it (training has made it already)
    if name == "tensorboard":
        tracker: Tracker = TensorBoard(tracking.TensorBoardTracker("tb", out))
    elif name == "wandb":
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(out)}
        tracker = WandB(tracking.WandBTracker(project, name=run_name, config=recipe, **where))
    elif name == "trackio":
        tracker = Trackio(tracking.TrackioTracker(project, name=run_name, config=recipe))
    else:
        tracker = MLflow(tracking.MLflowTracker(experiment_name=project, run_name=run_name))
    tracker.impl.start()
    if name not in ("wandb", "trackio"):  # those two took the config at init
        tracker.config(recipe)
    return tracker


def _start(name: str, out: Path, project: str, run_name: str, recipe: dict[str, Any]) -> Tracker:
    """Start one tracker: its package, its credentials (W&B), then the library's own
    start; anything that fails is the one-line stop naming it."""
    check_installed(name)
    try:
        problem = wandb_login_problem() if name == "wandb" else None
        if problem is None:
            return _make(name, out, project, run_name, recipe)
    except Exception as exc:
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    raise start_failure(name, problem)


def start_trackers(
    names: Sequence[str], out: Path, project: str, run_name: str, recipe: dict[str, Any]
) -> list[Tracker]:
    """Start each named tracker, or stop with one line naming the first that cannot
    (finishing, as failed, the ones already started)."""
    started: list[Tracker] = []
    try:
        for name in dict.fromkeys(names):  # each once, in the recipe's order
            started.append(_start(name, out, project, run_name, recipe))
    except UserError:
        for tracker in started:
            tracker.finish(failed=True)
        raise
    return started
