"""Aggregation modes and KL estimators: hand values, global counts, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.algorithms import AGGREGATIONS, KL_ESTIMATORS, aggregate, kl_penalty

F64 = torch.float64
# Two sequences: lengths 2 and 4 (T = 4); the 99s are padding and must be ignored.
LOSS_BT = torch.tensor([[1.0, 3.0, 99.0, 99.0], [2.0, 2.0, 4.0, 8.0]], dtype=F64)
MASK_BT = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=F64)


def test_names():
    assert AGGREGATIONS == (
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    )
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 20 / 6),  # (1+3 + 2+2+4+8) / 6 tokens
        ("seq-mean-token-mean", 3.0),  # mean(4/2, 16/4) = mean(2, 4)
        ("seq-mean-token-sum", 10.0),  # mean(4, 16)
        ("seq-mean-token-sum-norm", 2.5),  # 20 / (2 seqs * T_max 4)
    ],
)
def test_hand_values(mode, expected):
    assert aggregate(LOSS_BT, MASK_BT, mode).item() == pytest.approx(expected)


def test_sum_norm_uses_the_configured_max_len():
    # 20 / (2 * 10) = 1
    assert aggregate(LOSS_BT, MASK_BT, "seq-mean-token-sum-norm", max_len=10).item() == 1.0


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_bool_mask_nan_padding_and_empty_rows(mode):
    dirty_BT = LOSS_BT.clone()
    dirty_BT[0, 2:] = math.nan
    padded_BT = torch.cat([dirty_BT, torch.full((1, 4), math.inf, dtype=F64)])
    padded_mask_BT = torch.cat([MASK_BT, torch.zeros(1, 4, dtype=F64)]).bool()
    # an all-padding row is not a sequence: it neither adds nor dilutes
    assert aggregate(padded_BT, padded_mask_BT, mode) == aggregate(LOSS_BT, MASK_BT, mode)
    # an all-padding batch aggregates to 0, not NaN
    assert aggregate(LOSS_BT, torch.zeros_like(MASK_BT), mode).item() == 0.0


def test_global_counts_make_micro_batches_add_up():
    """Split by rows: with the step's counts, the micro-batch values sum to the full one."""
    counts = {"num_tokens": 6, "num_seqs": 2, "max_len": 4}
    for mode in AGGREGATIONS:
        parts = [
            aggregate(LOSS_BT[i : i + 1], MASK_BT[i : i + 1], mode, **counts) for i in range(2)
        ]
        assert (parts[0] + parts[1]).item() == pytest.approx(
            aggregate(LOSS_BT, MASK_BT, mode).item()
        )
    # whereas without them each micro-batch is its own mean: token-mean = 2 + 4 != 2 * 20/6
    local = sum(aggregate(LOSS_BT[i : i + 1], MASK_BT[i : i + 1], "token-mean") for i in range(2))
    assert local.item() == pytest.approx(6.0)


def test_global_count_may_be_a_tensor():
    value = aggregate(LOSS_BT, MASK_BT, "token-mean", num_tokens=torch.tensor(10.0, dtype=F64))
    assert value.item() == pytest.approx(2.0)


def test_aggregation_errors():
    with pytest.raises(ValueError, match=r"'mean'.*token-mean, seq-mean-token-mean"):
        aggregate(LOSS_BT, MASK_BT, "mean")
    with pytest.raises(ValueError, match="num_tokens must be positive"):
        aggregate(LOSS_BT, MASK_BT, "token-mean", num_tokens=0)
    with pytest.raises(ValueError, match="num_seqs must be positive"):
        aggregate(LOSS_BT, MASK_BT, "seq-mean-token-sum", num_seqs=-1)
    with pytest.raises(ValueError, match="one shape"):
        aggregate(LOSS_BT, MASK_BT[:, :3], "token-mean")


def test_kl_hand_values():
    logp_BT = torch.tensor([[-1.0, -2.0, -0.5, 0.0]], dtype=F64)
    ref_BT = torch.tensor([[-1.5, -1.0, -0.5, -30.0]], dtype=F64)
    # x = ref - logp = [-0.5, 1.0, 0.0, -30 -> clamped to -20]
    # k1 = -x = [0.5, -1, 0, 20]
    assert torch.allclose(
        kl_penalty(logp_BT, ref_BT, "k1"), torch.tensor([[0.5, -1.0, 0.0, 20.0]], dtype=F64)
    )
    # k2 = x^2 / 2 = [0.125, 0.5, 0, 200]
    assert torch.allclose(
        kl_penalty(logp_BT, ref_BT, "k2"), torch.tensor([[0.125, 0.5, 0.0, 200.0]], dtype=F64)
    )
    # k3 = e^x - x - 1 = [0.606531 + 0.5 - 1, 2.718282 - 2, 0, e^-20 + 19] = [0.106531, 0.718282, 0, 19]
    k3 = kl_penalty(logp_BT, ref_BT)  # k3 is the default
    assert torch.allclose(k3, torch.tensor([[0.106531, 0.718282, 0.0, 19.0]], dtype=F64), atol=1e-6)


def test_kl_gradient_flows_into_the_policy_only():
    logp_BT = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref_BT = torch.tensor([[-1.5, -1.0]], dtype=F64, requires_grad=True)
    kl_penalty(logp_BT, ref_BT, "k3").sum().backward()
    # d k3 / d logp = 1 - e^x with x = [-0.5, 1]: [0.393469, -1.718282]
    assert torch.allclose(logp_BT.grad, torch.tensor([[0.393469, -1.718282]], dtype=F64), atol=1e-6)
    assert ref_BT.grad is None


def test_kl_errors():
    with pytest.raises(ValueError, match=r"'k4'.*k1, k2, k3"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl_penalty(torch.zeros(1, 2), torch.zeros(1, 3))
