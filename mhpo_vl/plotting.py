"""``mhpo-vl plot RUN_DIR``: PNG curves from ``metrics.jsonl``.

One PNG per panel, written to ``RUN_DIR/plots/``: reward (mean and each part),
held-out accuracy (overall and every ``eval/*`` breakdown), pre-clip gradient norm, importance-ratio range (min/mean/max),
token entropy, response length. Panels whose metrics a run did not log are skipped.

:func:`plot_bands` draws mean curves with shaded ranges (the tiny study's plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mhpo_vl.tracking import read_metrics

# panel name -> (title, metric prefixes or names, y label)
PANELS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "reward": ("Training reward", ("reward/",), "reward"),
    "accuracy": ("Held-out accuracy (overall, per task, per benchmark)", ("eval/",), "accuracy"),
    "grad_norm": ("Gradient norm (before clipping)", ("grad_norm",), "norm"),
    "ratio": ("Importance ratio r", ("ratio_min", "ratio_mean", "ratio_max"), "r"),
    "entropy": ("Token entropy", ("entropy",), "nats"),
    "length": ("Response length", ("response_length/",), "tokens"),
}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in records:
        value = rec.get(key)
        if isinstance(value, int | float):
            xs.append(rec["step"])
            ys.append(float(value))
    return xs, ys


def _keys_for(records: list[dict], patterns: tuple[str, ...]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        for key in rec:
            if any(key == p or (p.endswith("/") and key.startswith(p)) for p in patterns):
                seen.setdefault(key, None)
    return [k for k in seen if not k.startswith("reward/std")]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, patterns, ylabel) in PANELS.items():
        keys = _keys_for(records, patterns)
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for key in keys:
            xs, ys = _series(records, key)
            headline = key in ("eval/accuracy", "reward/mean")
            marker = "o" if len(xs) < 30 else None
            ax.plot(xs, ys, marker=marker, ms=3, lw=2.4 if headline else 1.2, label=key)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        if name == "ratio":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- mean and band


@dataclass(frozen=True)
class Band:
    """One curve of :func:`plot_bands`: ``mean`` against ``xs``, with the range
    ``low``-``high`` shaded when given (e.g. min and max over seeds)."""

    label: str
    xs: Sequence[float]
    mean: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel of :func:`plot_bands`."""

    title: str
    ylabel: str
    bands: Sequence[Band]
    log: bool = False


def moving_average(ys: Sequence[float], window: int = 5) -> list[float]:
    """The mean of each value and up to ``window - 1`` values before it."""
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
            for i in range(len(ys))]  # fmt: skip


def plot_bands(panels: Sequence[Panel], path: str | Path, xlabel: str = "step") -> Path:
    """Panels of mean curves with shaded ranges, stacked, one PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, 3.6 * len(panels)), squeeze=False)
    labels = list(dict.fromkeys(b.label for p in panels for b in p.bands))
    cmap = matplotlib.colormaps["tab10"]
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        for band in panel.bands:
            color = cmap(labels.index(band.label) % 10)
            marker = "o" if len(band.xs) < 30 else None
            ax.plot(band.xs, band.mean, color=color, ls="--" if band.dashed else "-",
                    marker=marker, ms=3, lw=1.6, label=band.label)  # fmt: skip
            if band.low is not None and band.high is not None:
                ax.fill_between(band.xs, band.low, band.high, color=color, alpha=0.15, lw=0)
        if panel.log:
            ax.set_yscale("log")
        ax.set(title=panel.title, ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.bands:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xlabel(xlabel)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
