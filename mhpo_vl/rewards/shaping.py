"""Reward shaping terms that depend on the response, not on correctness."""

from __future__ import annotations


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), added to the reward.

    0 while ``length <= max_len - buffer``; then falls linearly,
    ``min(-(length - (max_len - buffer)) / buffer, 0) * factor``, reaching ``-factor`` at
    ``length == max_len``; beyond ``max_len`` it stays ``-factor`` (the paper's third case).
    """
    if buffer <= 0 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}], got {buffer}")
    start = max_len - buffer
    if length <= start:
        return 0.0
    return max(min(-(length - start) / buffer, 0.0), -1.0) * factor
