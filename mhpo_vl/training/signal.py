"""A step must not train on nothing without a word: rewards whose differences the
float arithmetic loses.

A reward part of 1e30 added to an accuracy part of 0 or 1 gives totals that are all
1e30: every group looks uniform, every advantage is 0, the loss is 0, and the run goes
on learning nothing. :func:`lost_groups` finds groups whose exact weighted sums differ
while their float totals are all equal; the trainer stops on them. (Totals that are
equal in exact arithmetic, say accuracy 1 + format 0 against accuracy 0 + format 1,
are a real tie and pass.) Finite rewards whose advantages overflow are caught where
the advantages are computed (:func:`mhpo_vl.algorithms.compute_advantages`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from mhpo_vl.errors import RunHalted


def lost_groups(
    totals: Sequence[float],
    parts: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    group_size: int,
) -> list[int]:
    """Indices of groups whose float totals are all equal although the exact weighted
    sums of their parts differ. ``parts[name]`` and ``totals`` hold one value per
    response, G consecutive responses per group; a part without a weight (shaping such
    as ``overlong``) counts with weight 1."""
    lost = []
    for g in range(len(totals) // group_size):
        rows = range(g * group_size, (g + 1) * group_size)
        if len({totals[i] for i in rows}) > 1:
            continue
        exact = {
            sum(Fraction(weights.get(n, 1.0)) * Fraction(v[i]) for n, v in parts.items())
            for i in rows
        }
        if len(exact) > 1:
            lost.append(g)
    return lost


def require_signal(
    step: int,
    totals: Sequence[float],
    parts: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    group_size: int,
) -> None:
    """Stop the run (:class:`RunHalted`) on groups whose reward differences were lost."""
    lost = lost_groups(totals, parts, weights, group_size)
    if not lost:
        return
    g = lost[0]
    sizes = {
        n: max(abs(v[i]) for i in range(g * group_size, (g + 1) * group_size))
        for n, v in parts.items()
    }
    show = ", ".join(f"{n} up to {x:.3g}" for n, x in sizes.items())
    raise RunHalted(
        f"step {step}: the rewards of {len(lost)} group(s) differ, but their weighted sum "
        f"rounds them all to one value (group {g}: {show}), so every advantage would be 0; "
        "scale the large reward down (rewards[].weight) or return values of similar size"
    )
