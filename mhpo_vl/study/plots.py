"""The study's PNGs, per setting, over the done runs (drawn by :mod:`mhpo_vl.plotting`):

- ``accuracy_<setting>.png``: each variant's mean held-out accuracy against the step,
  the min-max range over its done seeds shaded;
- ``stability_<setting>.png``: the same for ``grad_norm`` and ``ratio_max`` (log scale,
  a moving average over :data:`SMOOTH` steps of each seed first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mhpo_vl.plotting import Band, Panel, moving_average, plot_bands
from mhpo_vl.study.metrics import ACC, series
from mhpo_vl.study.plan import VARIANTS
from mhpo_vl.study.summary import CellResult

SMOOTH = 10


def seed_band(
    runs: Sequence[Mapping[int, float]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run has, and at each the mean, min and max over the runs of their
    finite values (steps with none left out)."""
    if not runs:
        return [], [], [], []
    xs, mean, low, high = [], [], [], []
    for step in sorted(set.intersection(*(set(r) for r in runs))):
        vals = [r[step] for r in runs if math.isfinite(r[step])]
        if vals:
            xs.append(step)
            mean.append(sum(vals) / len(vals))
            low.append(min(vals))
            high.append(max(vals))
    return xs, mean, low, high


def _by_variant(
    results: Sequence[CellResult], setting: str, key: str, smooth: int = 1
) -> dict[str, list[dict[int, float]]]:
    """variant -> per done seed, step -> ``key`` (a moving average when ``smooth`` > 1)."""
    out: dict[str, list[dict[int, float]]] = {}
    for res in results:
        if res.cell.setting != setting or res.state != "done":
            continue
        pts = [(s, v) for s, v in series(res.records, key) if math.isfinite(v)]
        ys = moving_average([v for _, v in pts], smooth) if smooth > 1 else [v for _, v in pts]
        out.setdefault(res.cell.variant, []).append(dict(zip([s for s, _ in pts], ys, strict=True)))
    return out


def _bands(runs: Mapping[str, list[dict[int, float]]]) -> list[Band]:
    bands = []
    for variant, seeds in runs.items():
        xs, mean, low, high = seed_band(seeds)
        if xs:
            label = f"{variant} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"
            dashed = VARIANTS[variant].family == "baseline"
            bands.append(Band(label, xs, mean, low, high, dashed))
    return bands


def plot_setting(results: Sequence[CellResult], setting: str, out: Path) -> list[Path]:
    """The setting's two PNGs in ``out`` (none without a done run)."""
    acc = _bands(_by_variant(results, setting, ACC))
    if not acc:
        return []
    span = "mean over done seeds, min-max shaded"
    title = f"Held-out accuracy, {setting} ({span})"
    written = [plot_bands([Panel(title, "eval/accuracy", acc)], out / f"accuracy_{setting}.png")]
    panels = [
        Panel(
            f"{key}, {setting} ({span}; {SMOOTH}-step moving average)",
            key,
            _bands(_by_variant(results, setting, key, SMOOTH)),
            log=True,
        )
        for key in ("grad_norm", "ratio_max")
    ]
    written.append(plot_bands(panels, out / f"stability_{setting}.png"))
    return written
