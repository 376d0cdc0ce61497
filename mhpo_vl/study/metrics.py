"""One run's numbers, from its ``metrics.jsonl`` records (pure functions).

Definitions (:data:`DEFINITIONS` holds them as the summary states them):

- held-out accuracy (``eval/accuracy``, greedy) at the start (the first evaluation, step
  0), final (the last), best (the largest), and gain = final - start;
- steps to +10 / +20 points: the first evaluation step whose accuracy is at least the
  start's + 0.10 / + 0.20; None when never reached;
- dip: the last evaluation is more than 0.03 below the one before it;
- collapse: the training reward (everything sampled, see :func:`reward_key`) is 0 at each
  of the last 10 steps, or the final accuracy is more than 0.20 below the start;
- ratio: the run's largest ``ratio_max``, smallest ``ratio_min``, and the means over
  steps of ``ratio_mean``, ``ratio_out_frac`` and ``clip_frac`` (losses that log it);
- gradient norm (``grad_norm``, before clipping, finite values): median, max, and
  spikes (steps above 5x the median); non-finite ones are skipped updates.

Accuracies on N problems are multiples of 1/N; comparisons allow :data:`EPS` for float
rounding, so 0.60 + 0.10 reaches 0.70.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

EPS = 1e-9
GAINS = (0.10, 0.20)
DIP = 0.03
COLLAPSE_DROP = 0.20
TAIL = 10
SPIKE_FACTOR = 5.0
ACC = "eval/accuracy"
SAMPLED_REWARD = "dynamic_sampling/reward_mean_sampled"

DEFINITIONS = {
    "start / final / best": "held-out accuracy (eval/accuracy, greedy) at step 0, at the "
    "last evaluation, and the largest of the run",
    "gain": "final - start",
    "steps to +10 / +20": "the first evaluation step with accuracy >= start + 0.10 / "
    "+ 0.20 (mean over the runs that reached it; k/n: how many did)",
    "dip": f"the last evaluation more than {DIP:g} below the one before it",
    "collapsed": f"training reward (everything sampled) 0 at each of the last {TAIL} steps, "
    f"or final accuracy more than {COLLAPSE_DROP:g} below the start",
    "ratio": "the run's largest ratio_max, smallest ratio_min; mean over steps of "
    "ratio_mean, ratio_out_frac (r < 0.8 or r > 1.28) and clip_frac (where logged)",
    "grad norm": f"grad_norm before clipping, finite values: median, max; spikes = steps "
    f"above {SPIKE_FACTOR:g}x the run's median",
    "wall": "seconds of the study's attempts at the run (study_attempts.jsonl), summed",
}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def series(records: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` for each record that has ``key`` as a number (NaN and inf kept),
    by step."""
    return sorted((int(r["step"]), float(r[key])) for r in records if is_number(r.get(key)))


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def median(values: Sequence[float]) -> float | None:
    s = sorted(values)
    if not s:
        return None
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def steps_to_gain(acc: Sequence[tuple[int, float]], gain: float) -> int | None:
    """The first evaluation step with accuracy >= the first one's + ``gain``."""
    if not acc:
        return None
    target = acc[0][1] + gain - EPS
    return next((step for step, value in acc[1:] if value >= target), None)


def is_dip(acc: Sequence[tuple[int, float]], drop: float = DIP) -> bool:
    """The last evaluation is more than ``drop`` below the one before it."""
    return len(acc) >= 2 and acc[-2][1] - acc[-1][1] > drop + EPS


def reward_key(records: Sequence[dict[str, Any]]) -> str:
    """The column with the mean reward of everything sampled. With dynamic sampling
    (DAPO) ``reward/mean`` is over the kept groups only, which never include an all-0
    group, so the sampled mean is the one to judge a collapse by."""
    return SAMPLED_REWARD if any(SAMPLED_REWARD in r for r in records) else "reward/mean"


def is_collapsed(
    records: Sequence[dict[str, Any]], last: int = TAIL, drop: float = COLLAPSE_DROP
) -> bool:
    """Training reward 0 at each of the last ``last`` steps (all of them when fewer), or
    the final accuracy more than ``drop`` below the first."""
    rewards = [v for _, v in series(records, reward_key(records))][-last:]
    if rewards and all(v == 0 for v in rewards):
        return True
    acc = series(records, ACC)
    return len(acc) >= 2 and acc[0][1] - acc[-1][1] > drop + EPS


def grad_stats(values: Sequence[float], factor: float = SPIKE_FACTOR) -> dict[str, Any]:
    """Median and max of the finite values, how many exceed ``factor`` x the median,
    and how many were not finite."""
    ok = finite(values)
    mid = median(ok)
    return {
        "grad_median": mid,
        "grad_max": max(ok) if ok else None,
        "grad_spikes": sum(v > factor * mid for v in ok) if mid is not None else 0,
        "grad_nonfinite": len(values) - len(ok),
    }


def ratio_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's ratio extremes and per-step means (NaN values ignored)."""

    def values(key: str) -> list[float]:
        return [v for _, v in series(records, key) if not math.isnan(v)]

    highs, lows = values("ratio_max"), values("ratio_min")
    return {
        "ratio_max": max(highs) if highs else None,
        "ratio_min": min(lows) if lows else None,
        "ratio_mean": mean(finite(values("ratio_mean"))),
        "ratio_out_frac": mean(finite(values("ratio_out_frac"))),
        "clip_frac": mean(finite(values("clip_frac"))),
    }


def accuracy_stats(acc: Sequence[tuple[int, float]]) -> dict[str, Any]:
    """Start, final, best, gain, steps to each of :data:`GAINS`, and the final dip."""
    if not acc:
        empty = {"start": None, "final": None, "best": None, "gain": None, "dip": False}
        return {**empty, **{f"steps_to_{round(g * 100)}": None for g in GAINS}}
    start, final = acc[0][1], acc[-1][1]
    return {
        "start": start,
        "final": final,
        "best": max(v for _, v in acc),
        "gain": final - start,
        **{f"steps_to_{round(g * 100)}": steps_to_gain(acc, g) for g in GAINS},
        "dip": is_dip(acc),
    }


def run_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's numbers (see the module docstring)."""
    tail = finite(v for _, v in series(records, reward_key(records)))[-TAIL:]
    return {
        **accuracy_stats(series(records, ACC)),
        "collapsed": is_collapsed(records),
        **ratio_stats(records),
        **grad_stats([v for _, v in series(records, "grad_norm")]),
        "reward_end": mean(tail),
        "skipped_updates": sum(finite(v for _, v in series(records, "skipped_steps"))),
        "steps": max((int(r["step"]) for r in records), default=0),
    }
