"""The study's numbers: each cell's state and metrics, and per setting and variant the
mean and range (min-max) over the done seeds. Only done runs are aggregated; the others
are counted as halted, partial (a checkpoint before the final step) or not started."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mhpo_vl.study.metrics import GAINS, run_metrics
from mhpo_vl.study.plan import SETTINGS, VARIANTS, Cell
from mhpo_vl.study.runs import attempts, cell_state, read_records, trained_commits, wall_time

# the per-run numbers the summary aggregates as mean [min-max] over done seeds
STAT_KEYS = (
    "start", "final", "best", "gain",
    *(f"steps_to_{round(g * 100)}" for g in GAINS),
    "ratio_max", "ratio_min", "ratio_mean", "ratio_out_frac", "clip_frac",
    "grad_median", "grad_max", "grad_spikes", "reward_end", "skipped_updates", "wall_s",
)  # fmt: skip
FLAG_KEYS = ("collapsed", "dip")


@dataclass
class CellResult:
    """A cell, its state and (for every state) what it has logged so far."""

    cell: Cell
    state: str
    step: int = 0  # final checkpoint, halted step, or latest checkpoint
    logged: int = 0  # last step in metrics.jsonl
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float | None = None
    commits: tuple[str, ...] = ()


def collect(cells: Sequence[Cell]) -> list[CellResult]:
    """Each planned cell's state and records (up to its final step) from its folder."""
    results = []
    for cell in cells:
        records = [r for r in read_records(cell.path) if int(r["step"]) <= cell.steps]
        st = cell_state(cell.path, cell.steps, records)
        tries = attempts(cell.path)
        results.append(
            CellResult(
                cell,
                st.state,
                st.step,
                st.logged,
                records,
                wall_time(tries),
                trained_commits(tries),
            )
        )
    return results


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, min, max and count of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def cell_metrics(result: CellResult) -> dict[str, Any]:
    """A done cell's numbers: :func:`run_metrics` and its wall time."""
    return {**run_metrics(result.records), "wall_s": result.wall_s}


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Over done runs: :func:`spread` of each of :data:`STAT_KEYS`, and how many runs
    have each of :data:`FLAG_KEYS`."""
    return {
        "stats": {k: spread([r.get(k) for r in runs]) for k in STAT_KEYS},
        "flags": {k: sum(bool(r.get(k)) for r in runs) for k in FLAG_KEYS},
    }


def _new_setting(cell: Cell) -> dict[str, Any]:
    s = SETTINGS[cell.setting]
    return {"description": s.description, "overrides": list(s.overrides), "steps": [],
            "variants": {}}  # fmt: skip


def _new_variant(cell: Cell) -> dict[str, Any]:
    v = VARIANTS[cell.variant]
    return {
        "description": v.description,
        "family": v.family,
        "recipe": v.recipe,
        "overrides": list(v.overrides),
        "seeds": [],
        "done": [],
        "halted": {},
        "partial": {},
        "not_started": [],
        "runs": {},
    }


def _place(var: dict[str, Any], res: CellResult) -> str:
    """File one cell under its variant; returns its count key."""
    seed = res.cell.seed
    var["seeds"].append(seed)
    if res.state == "done":
        var["done"].append(seed)
        var["runs"][str(seed)] = cell_metrics(res)
        return "done"
    if res.state == "halted":
        var["halted"][str(seed)] = res.step
        return "halted"
    if res.state == "resume" or res.logged:
        var["partial"][str(seed)] = {"checkpoint": res.step, "logged": res.logged}
        return "partial"
    var["not_started"].append(seed)
    return "not_started"


def summarize(results: Sequence[CellResult]) -> dict[str, Any]:
    """Per setting and variant: seeds done / halted / partial / not started, every done
    run's metrics, and the aggregate over the done ones; counts over the whole plan."""
    settings: dict[str, Any] = {}
    counts = {"planned": len(results), "done": 0, "halted": 0, "partial": 0, "not_started": 0}
    trained_at: dict[str, int] = {}
    for res in results:
        setting = settings.setdefault(res.cell.setting, _new_setting(res.cell))
        if res.cell.steps not in setting["steps"]:
            setting["steps"].append(res.cell.steps)
        var = setting["variants"].setdefault(res.cell.variant, _new_variant(res.cell))
        kind = _place(var, res)
        counts[kind] += 1
        if kind == "done":
            for commit in res.commits or ("unknown",):
                trained_at[commit] = trained_at.get(commit, 0) + 1
    for setting in settings.values():
        for var in setting["variants"].values():
            var.update(aggregate(list(var["runs"].values())))
    return {"counts": counts, "trained_at": trained_at, "settings": settings}
