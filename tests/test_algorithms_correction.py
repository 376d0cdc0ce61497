"""Truncated importance sampling against the rollout engine: hand-computed weights and
metrics, properties on random inputs, and the errors users see."""

from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.algorithms.correction import CORRECTION_LEVELS, METRIC_KEYS, rollout_correction
from mhpo_vl.errors import UserError

F64 = torch.float64

# log r = old - rollout:  row 0: [0.5, -1.0, 0.0]   row 1: [-0.1, 0.2, padding]
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, float("nan")]], dtype=F64)
ROLLOUT = torch.tensor([[-1.5, -1.0, -0.5], [-0.9, -1.2, 3.0]], dtype=F64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)


def expect(actual, expected, tol=1e-7):
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), atol=tol, rtol=0
    )


def test_token_level_by_hand():
    # exp(0.5) = 1.64872 is cut to the cap 1.5; the others stay under it
    w, m = rollout_correction(OLD, ROLLOUT, MASK, "token", 1.5)
    expect(w, [[1.5, 0.36787944117, 1.0], [0.90483741804, 1.22140275816, 0.0]])
    assert m["rollout/is_capped_frac"] == pytest.approx(1 / 5)
    # (1.5 + 0.36787944 + 1 + 0.90483742 + 1.22140276) / 5
    assert m["rollout/is_weight_mean"] == pytest.approx(0.998823924, abs=1e-8)
    assert m["rollout/logprob_abs_diff_mean"] == pytest.approx(1.8 / 5)
    assert m["rollout/logprob_abs_diff_max"] == pytest.approx(1.0)
    # k3 = e^x - 1 - x: 0.14872127 + 0.36787944 + 0 + 0.00483742 + 0.02140276 over 5 tokens
    assert m["rollout/kl"] == pytest.approx(0.5428408879 / 5, abs=1e-9)


def test_sequence_level_by_hand():
    # sequence log-ratios: row 0: 0.5 - 1 + 0 = -0.5, row 1: -0.1 + 0.2 = 0.1
    w, m = rollout_correction(OLD, ROLLOUT, MASK, "sequence", 1.5)
    expect(w, [[0.60653065971] * 3, [1.10517091808, 1.10517091808, 0.0]])
    assert m["rollout/is_capped_frac"] == 0.0
    assert m["rollout/is_weight_mean"] == pytest.approx((0.60653065971 + 1.10517091808) / 2)
    # a cap of 1.1 cuts row 1 (e^0.1 = 1.10517) and only row 1
    w, m = rollout_correction(OLD, ROLLOUT, MASK, "sequence", 1.1)
    expect(w, [[0.60653065971] * 3, [1.1, 1.1, 0.0]])
    assert m["rollout/is_capped_frac"] == pytest.approx(0.5)
    assert m["rollout/is_weight_mean"] == pytest.approx((0.60653065971 + 1.1) / 2)
    # the mismatch metrics do not depend on the level
    assert m["rollout/logprob_abs_diff_mean"] == pytest.approx(0.36)
    assert m["rollout/kl"] == pytest.approx(0.5428408879 / 5, abs=1e-9)


def test_level_none_weighs_every_response_token_one_and_still_measures():
    w, m = rollout_correction(OLD, ROLLOUT, MASK, "none", 2.0)
    expect(w, MASK)
    assert m["rollout/is_weight_mean"] == 1.0 and m["rollout/is_capped_frac"] == 0.0
    assert m["rollout/logprob_abs_diff_max"] == pytest.approx(1.0)
    assert set(m) == set(METRIC_KEYS)


@pytest.mark.parametrize("level", CORRECTION_LEVELS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_properties_on_random_inputs(level, seed):
    g = torch.Generator().manual_seed(seed)
    B, T, cap = 6, 9, 1.7
    old = -torch.rand(B, T, generator=g, dtype=F64) * 4
    rollout = old + torch.randn(B, T, generator=g, dtype=F64) * 0.7
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    w, m = rollout_correction(old, rollout, mask, level, cap)
    assert w.shape == (B, T) and not w.requires_grad
    assert (w <= cap + 1e-12).all() and (w >= 0).all()
    assert (w[mask == 0] == 0).all()
    assert all(math.isfinite(v) for v in m.values()) and set(m) == set(METRIC_KEYS)
    assert m["rollout/kl"] >= 0 and 0 <= m["rollout/is_capped_frac"] <= 1
    # padding never matters, whatever it holds
    junk_old = torch.where(mask.bool(), old, torch.full_like(old, float("inf")))
    junk_roll = torch.where(mask.bool(), rollout, torch.full_like(old, float("nan")))
    w2, m2 = rollout_correction(junk_old, junk_roll, mask, level, cap)
    torch.testing.assert_close(w2, w)
    assert m2 == pytest.approx(m)
    # a bool mask means the same
    w3, _ = rollout_correction(old, rollout, mask.bool(), level, cap)
    torch.testing.assert_close(w3, w)
    # identical log-probs: every response token weighs exactly 1, nothing capped
    w4, m4 = rollout_correction(old, old.clone(), mask, level, cap)
    torch.testing.assert_close(w4, mask)
    assert m4["rollout/is_capped_frac"] == 0.0 and m4["rollout/kl"] == 0.0
    assert m4["rollout/logprob_abs_diff_max"] == 0.0
    if level == "sequence":  # one weight per sequence, on each of its tokens
        for i in range(B):
            row = w[i][mask[i] == 1]
            assert row.numel() == 0 or torch.equal(row, row[:1].expand_as(row))
    if level == "token":  # token weights are the per-token truncated ratios
        expected = torch.clamp(torch.exp(old - rollout), max=cap) * mask
        torch.testing.assert_close(w, expected)


def test_weights_are_detached_and_keep_the_dtype():
    old = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    rollout = torch.tensor([[-1.2, -1.9]], requires_grad=True)
    w, _ = rollout_correction(old, rollout, torch.ones(1, 2), "token", 2.0)
    assert not w.requires_grad and w.dtype == torch.float32
    w, _ = rollout_correction(
        old.detach().to(torch.bfloat16), rollout.detach(), torch.ones(1, 2), "token", 2.0
    )
    assert w.dtype == torch.float32  # at least float32
    w, _ = rollout_correction(OLD, ROLLOUT, MASK, "token", 2.0)
    assert w.dtype == F64


def test_huge_mismatches_do_not_overflow():
    old = torch.tensor([[0.0, 0.0, -500.0]])
    rollout = torch.tensor([[-1000.0, -1000.0, 0.0]])
    for level in ("token", "sequence"):
        w, m = rollout_correction(old, rollout, torch.ones(1, 3), level, 3.0)
        assert torch.isfinite(w).all() and (w <= 3.0).all()
        assert all(math.isfinite(v) for v in m.values())
    w, m = rollout_correction(old, rollout, torch.ones(1, 3), "token", 3.0)
    assert w[0, 0] == 3.0 and w[0, 2] == pytest.approx(math.exp(-20))  # the log-ratio clamp
    assert m["rollout/is_capped_frac"] == pytest.approx(2 / 3)


def test_no_response_tokens_gives_zero_weights_and_metrics():
    w, m = rollout_correction(OLD, ROLLOUT, torch.zeros_like(MASK), "sequence", 2.0)
    assert (w == 0).all() and all(v == 0.0 for v in m.values())


def test_cap_of_one_only_ever_lowers_weights():
    w, m = rollout_correction(OLD, ROLLOUT, MASK, "token", 1.0)
    expect(w, [[1.0, 0.36787944117, 1.0], [0.90483741804, 1.0, 0.0]])
    assert m["rollout/is_capped_frac"] == pytest.approx(2 / 5)  # ratio 1 is not "cut"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "tokens"}, "level must be one of none, token, sequence"),
        ({"level": None}, "level must be one of"),
        ({"cap": 0.5}, "cap must be >= 1"),
        ({"cap": float("nan")}, "cap must be a finite number"),
        ({"cap": True}, "cap must be a finite number"),
        ({"rollout": torch.zeros(2, 4)}, "rollout_logprobs must have the shape"),
        ({"mask": torch.ones(3, 3)}, "mask must have the shape"),
        ({"old": torch.zeros(3), "rollout": torch.zeros(3), "mask": torch.ones(3)}, r"\[B, T\]"),
        ({"old": torch.zeros(2, 3, dtype=torch.long)}, "old_logprobs must be floating point"),
        ({"mask": [[1, 1, 1], [1, 1, 0]]}, "mask must be a tensor"),
    ],
)
def test_argument_errors_name_what_is_wrong(kwargs, message):
    args = {"old": OLD, "rollout": ROLLOUT, "mask": MASK, "level": "token", "cap": 2.0}
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        rollout_correction(args["old"], args["rollout"], args["mask"], args["level"], args["cap"])
