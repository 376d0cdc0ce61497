"""Advantage estimators over rewards [P, G]: hand values, zero-variance groups, errors."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.algorithms import ADVANTAGES, compute_advantages

F64 = torch.float64


def close(actual, expected, tol=1e-6):
    return torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0)


def test_registry_names():
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "rloo"]


def test_grpo_hand_values():
    rewards_PG = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]], dtype=F64)
    out = compute_advantages("grpo", rewards_PG)
    # group 0: mean 2, Bessel std sqrt((1 + 0 + 1)/2) = 1 -> [-1, 0, 1] / (1 + 1e-6)
    #        = [-0.999999, 0, 0.999999]
    # group 1: mean 1/3, std sqrt(((2/3)^2 + 2*(1/3)^2)/2) = sqrt(1/3) = 0.577350
    #        -> [0.666667, -0.333333, -0.333333] / 0.577351 = [1.154699, -0.577350, -0.577350]
    assert close(out.advantages_PG[0], [-0.999999, 0.0, 0.999999])
    assert close(out.advantages_PG[1], [1.154699, -0.577349, -0.577349])
    assert out.num_zero_var_groups == 0 and out.zero_var_frac == 0.0


def test_grpo_eps_is_a_parameter():
    # [0, 1]: mean 0.5, Bessel std sqrt(2 * 0.25 / 1) = 0.707107; eps = 0.292893 makes it 1
    out = compute_advantages("grpo", torch.tensor([[0.0, 1.0]], dtype=F64), eps=1 - 0.5**0.5)
    assert close(out.advantages_PG, [[-0.5, 0.5]])


def test_dr_grpo_hand_values():
    out = compute_advantages("dr_grpo", torch.tensor([[1.0, 2.0, 6.0]], dtype=F64))
    assert close(out.advantages_PG, [[-2.0, -1.0, 3.0]])  # mean 3, no std


def test_rloo_hand_values():
    # G/(G-1) (R - mean) = 3/2 * [-2, -1, 3] = [-3, -1.5, 4.5]
    # = R_i minus the mean of the others: 1 - (2+6)/2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5
    out = compute_advantages("rloo", torch.tensor([[1.0, 2.0, 6.0]], dtype=F64))
    assert close(out.advantages_PG, [[-3.0, -1.5, 4.5]])


@pytest.mark.parametrize("dtype,value", [(torch.float32, 0.9), (F64, 0.7)])
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_groups_are_exactly_zero_and_counted(name, dtype, value):
    # value chosen so that mean([v, v, v]) != v in this dtype: a naive R - mean leaves a
    # residue (~6e-8 in float32), which grpo's 1/(0 + 1e-6) would blow up to ~0.06.
    rewards_PG = torch.tensor(
        [[value] * 3, [0.0, 1.0, 0.0], [value] * 3, [1.0, 1.0, 0.0]], dtype=dtype
    )
    out = compute_advantages(name, rewards_PG)
    assert torch.equal(out.advantages_PG[[0, 2]], torch.zeros(2, 3, dtype=dtype))
    assert out.num_zero_var_groups == 2 and out.zero_var_frac == 0.5
    assert out.zero_var_P.tolist() == [True, False, True, False]
    assert (out.advantages_PG[[1, 3]] != 0).all()
    assert torch.allclose(out.advantages_PG.sum(-1), torch.zeros(4, dtype=dtype), atol=1e-6)


def test_integer_rewards_are_promoted_and_no_gradient_flows():
    rewards_PG = torch.tensor([[1, 0], [1, 1]])
    out = compute_advantages("dr_grpo", rewards_PG)
    assert out.advantages_PG.dtype == torch.get_default_dtype()
    assert close(out.advantages_PG, [[0.5, -0.5], [0.0, 0.0]])
    learned = torch.tensor([[1.0, 0.0]], requires_grad=True)
    assert not compute_advantages("grpo", learned).advantages_PG.requires_grad


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_size_one_is_a_clear_error(name):
    with pytest.raises(ValueError, match=rf"'{name}' needs a group size G >= 2"):
        compute_advantages(name, torch.ones(4, 1))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match=r"'gae'.*dr_grpo, grpo, rloo"):
        compute_advantages("gae", torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"'std_eps'.*valid parameters: eps"):
        compute_advantages("grpo", torch.ones(2, 2), std_eps=1e-4)
    with pytest.raises(ValueError, match=r"'eps'.*\(none\)"):
        compute_advantages("rloo", torch.ones(2, 2), eps=1e-4)
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        compute_advantages("grpo", torch.ones(8))
    with pytest.raises(ValueError, match="finite"):
        compute_advantages("grpo", torch.tensor([[1.0, float("nan")]]))
