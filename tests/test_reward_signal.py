"""Finite but huge rewards never train silently on nothing: advantages are computed in
float64, and a step whose reward differences are lost (to overflow, or to a sum that
rounds them away) stops with one line."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.algorithms import compute_advantages
from mhpo_vl.errors import RunHalted, UserError
from mhpo_vl.training.signal import lost_groups, require_signal


def test_huge_finite_rewards_still_give_the_hand_computed_advantages():
    # [1e30, 0, 0, 1e30]: mean 5e29, Bessel std = 1e30 / sqrt(3) * sqrt(... ) -> +-0.866
    # (centered +-5e29, std = sqrt(4 * 2.5e59 / 3) = 5.7735e29, 5e29 / 5.7735e29 = 0.8660)
    r = torch.tensor([[1e30, 0.0, 0.0, 1e30]], dtype=torch.float32)
    adv = compute_advantages("grpo", r).advantages_PG
    assert adv.dtype == torch.float32
    assert torch.allclose(adv, torch.tensor([[0.8660254, -0.8660254, -0.8660254, 0.8660254]]))


def test_rewards_whose_std_overflows_stop_with_one_line():
    # float64 holds 1e200 but not its square: the std is inf and every advantage 0
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1e200, 0.0, 0.0, 1e200]], dtype=torch.float64)
    with pytest.raises(
        UserError, match=r"too large .*\(group 1: rewards \[1e\+200, 0, 0, 1e\+200\]"
    ):
        compute_advantages("grpo", r)


def test_float32_rewards_whose_advantages_leave_float32_are_caught():
    # RLOO scales R - mean by G / (G - 1) = 4/3: 4/3 * 3.4e38 is beyond float32's 3.4e38
    r = torch.tensor([[3.4e38, -3.4e38, 0.0, 0.0]], dtype=torch.float32)
    with pytest.raises(UserError, match="too large"):
        compute_advantages("rloo", r)
    assert torch.isfinite(compute_advantages("dr_grpo", r).advantages_PG).all()  # fits


def test_a_real_tie_passes_and_a_rounded_away_difference_is_found():
    weights = {"accuracy": 1.0, "format": 1.0, "huge": 1.0}
    # group 0: accuracy 1 + format 0 vs accuracy 0 + format 1: a real tie (exact sums equal)
    # group 1: 1e30 + {0, 1}: the float totals are equal, the exact sums are not
    parts = {
        "accuracy": [1.0, 0.0, 0.0, 1.0],
        "format": [0.0, 1.0, 0.0, 0.0],
        "huge": [0.0, 0.0, 1e30, 1e30],
    }
    totals = [1.0, 1.0, 1e30, 1e30 + 1.0]
    assert totals[2] == totals[3]  # what the float sum gives
    assert lost_groups(totals, parts, weights, group_size=2) == [1]
    with pytest.raises(
        RunHalted, match=r"step 7: the rewards of 1 group\(s\) differ.*huge up to 1e\+30"
    ):
        require_signal(7, totals, parts, weights, group_size=2)
    require_signal(7, totals[:2], {k: v[:2] for k, v in parts.items()}, weights, group_size=2)


def test_a_weighted_part_and_an_unweighted_shaping_part_count_as_the_trainer_sums_them():
    parts = {"accuracy": [1.0, 0.0], "overlong": [-1.0, 0.0]}  # 0.5*1 - 1 vs 0
    assert lost_groups([-0.5, 0.0], parts, {"accuracy": 0.5}, 2) == []  # totals differ
    assert lost_groups([0.0, 0.0], {"accuracy": [1.0, 0.0], "overlong": [-0.5, 0.0]},
                       {"accuracy": 0.5}, 2) == []  # fmt: skip  # 0.5 - 0.5 = 0: a real tie


HUGE = """
def reward(response, row):
    return 1e30  # swamps the accuracy part: 1e30 + 1 == 1e30
"""


@pytest.mark.slow
def test_a_huge_reward_that_swamps_the_others_stops_the_run_at_its_first_step(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "huge.py").write_text(HUGE)
    recipe = yaml.safe_load((root / "recipes/tiny/mhpo.yaml").read_text())
    recipe["rewards"].append({"name": f"{tmp_path}/huge.py:reward", "weight": 1.0})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = subprocess.run(
        [sys.executable, "-m", "mhpo_vl", "train", str(tmp_path / "recipe.yaml"),
         f"trainer.output_dir={tmp_path / 'run'}", "eval.at_start=false", "eval.size=4",
         "trainer.max_steps=2", "trainer.progress_bar=false"],
        capture_output=True, text=True, cwd=root, timeout=600,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "step 1: the rewards of" in line and "huge.py:reward up to 1e+30" in line, line
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # nothing trained on, or saved
