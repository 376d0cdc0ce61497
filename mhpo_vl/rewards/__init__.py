"""Rewards: answer extraction and normalization, verifiers, user rewards, shaping.

Pure python (plus math-verify); no model, recipe or I/O. The evaluation scorer in
:mod:`mhpo_vl.eval` uses the same :func:`judge`, so rewards and reported accuracy agree.
"""

from mhpo_vl.rewards.extract import extract_answer
from mhpo_vl.rewards.loading import (
    check_section,
    load_reward,
    reward_name,
    reward_stats,
    score_rewards,
)
from mhpo_vl.rewards.mathcheck import math_equal
from mhpo_vl.rewards.normalize import levenshtein, normalize_answer, normalize_row_answer
from mhpo_vl.rewards.shaping import overlong_penalty
from mhpo_vl.rewards.verifiers import REWARDS, Judgement, judge

__all__ = [
    "REWARDS",
    "Judgement",
    "check_section",
    "extract_answer",
    "judge",
    "levenshtein",
    "load_reward",
    "math_equal",
    "normalize_answer",
    "normalize_row_answer",
    "overlong_penalty",
    "reward_name",
    "reward_stats",
    "score_rewards",
]
