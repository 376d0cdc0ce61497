"""Properties of the policy losses over random and extreme inputs (r from 1e-9 to 1e9):
finiteness, MHPO's gradient bound and sign, masking, micro-batch invariance, and the
on-policy (r = 1) limits the spec states."""

from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.algorithms import AGGREGATIONS, POLICY_LOSSES, policy_loss
from mhpo_vl.algorithms.base import LossInputs
from mhpo_vl.algorithms.entry import loss_metrics
from mhpo_vl.algorithms.mhpo import decoupled_hazard_penalty, log_fidelity_modulator

F64 = torch.float64
NAMES = POLICY_LOSSES.names()
# log-ratios spanning r = 1e-9 ... 1e9 (beyond the +-20 clamp at both ends), and 0
EXTREME_D = torch.cat([torch.linspace(-9, 9, 37) * math.log(10), torch.tensor([0.0, -20.0, 20.0])])


def grad_of(name, logp_BT, old_BT, adv, mask_BT, **kwargs):
    """(output, dL/dlogp) of ``policy_loss`` at ``logp_BT``."""
    logp_BT = logp_BT.detach().clone().requires_grad_(True)
    out = policy_loss(name, logp_BT, old_BT, adv, mask_BT, **kwargs)
    out.loss.backward()
    return out, logp_BT.grad


def extreme_batch(dtype):
    """Rows: A = +3, -3, +1e3, -1e-3; columns: every extreme log-ratio; logp itself far
    from 0 (logp = -60 + d), so CISPO's logp-valued loss is large too."""
    d_T = EXTREME_D.to(dtype)
    old_BT = torch.full((4, d_T.numel()), -60.0, dtype=dtype)
    logp_BT = old_BT + d_T
    adv_B = torch.tensor([3.0, -3.0, 1e3, -1e-3], dtype=dtype)
    return logp_BT, old_BT, adv_B, torch.ones_like(logp_BT)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("name", NAMES)
def test_everything_finite_for_extreme_ratios(name, agg, dtype):
    logp_BT, old_BT, adv_B, mask_BT = extreme_batch(dtype)
    ref_BT = old_BT - 30.0  # the KL's x is clamped too
    out, grad = grad_of(
        name, logp_BT, old_BT, adv_B, mask_BT, agg=agg, ref_logprobs=ref_BT, kl_coef=0.1
    )
    assert torch.isfinite(out.loss) and torch.isfinite(out.loss_BT).all()
    assert torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics


@pytest.mark.parametrize("c", [0.3, 1.0, 1.5, 3.0])
def test_mhpo_lfm_only_gradient_is_bounded_by_e_to_the_c_and_never_changes_sign(c):
    """Theorem 1: |dL/dlogp| <= e^c |A| for every r, with the sign of -A throughout."""
    d_T = torch.cat([EXTREME_D, torch.linspace(-3 * c, 3 * c, 301)]).to(F64)
    old_BT = torch.zeros(2, d_T.numel(), dtype=F64)
    adv_B = torch.tensor([2.5, -0.7], dtype=F64)
    _, grad = grad_of(
        "mhpo_lfm_only",
        old_BT + d_T,
        old_BT,
        adv_B,
        torch.ones_like(old_BT),
        c=c,
        agg="seq-mean-token-sum",
    )
    bound_BT = math.exp(c) * adv_B.abs()[:, None]
    assert (grad.abs() <= bound_BT).all()
    assert (grad[0] <= 0).all() and (grad[1] >= 0).all()  # -A: never reversed
    # and not killed inside the clamp while 1 - tanh^2(d/c) is representable (tanh(x)
    # rounds to 1 for x past ~19)
    alive_T = (d_T.abs() <= 20) & ((d_T / c).abs() < 15)
    assert (grad[:, alive_T] != 0).all()


@pytest.mark.parametrize("name", ["mhpo", "mhpo_symmetric", "mhpo_dhp_only"])
def test_mhpo_family_gradient_never_changes_sign(name):
    logp_BT, old_BT, adv_B, mask_BT = extreme_batch(F64)
    _, grad = grad_of(name, logp_BT, old_BT, adv_B, mask_BT)
    assert ((grad * adv_B[:, None]) <= 0).all()


def test_mhpo_gradient_matches_the_closed_form_per_token_and_through_aggregation():
    """dL/dlogp = -A exp(psi - zeta) sech^2(d/c), before and after seq-mean-token-mean."""
    g = torch.Generator().manual_seed(0)
    old_BT = -torch.rand(3, 5, generator=g, dtype=F64) * 4
    d_BT = torch.randn(3, 5, generator=g, dtype=F64) * 1.5
    adv_BT = torch.randn(3, 5, generator=g, dtype=F64)
    mask_BT = torch.ones(3, 5, dtype=F64)
    mask_BT[1, 2:] = 0
    c, zeta_args = 1.5, {"k_pos": 1.5, "lam_pos": 1.0, "k_neg": 2.0, "lam_neg": 0.8}
    psi_BT = c * torch.tanh(d_BT / c)
    zeta_BT = (torch.log1p(psi_BT.exp()) / 1.0) ** 1.5 + (torch.log1p((-psi_BT).exp()) / 0.8) ** 2
    closed_BT = -adv_BT * torch.exp(psi_BT - zeta_BT) / torch.cosh(d_BT / c) ** 2
    # per token: the per-token losses' gradient (sum of loss_BT)
    logp_BT = (old_BT + d_BT).requires_grad_(True)
    out = policy_loss("mhpo", logp_BT, old_BT, adv_BT, mask_BT, c=c, **zeta_args)
    (out.loss_BT * mask_BT).sum().backward()
    assert torch.allclose(logp_BT.grad, closed_BT * mask_BT, atol=1e-12)
    # through seq-mean-token-mean: token (i, t) weighs 1 / (|y_i| * B)
    _, grad = grad_of("mhpo", old_BT + d_BT, old_BT, adv_BT, mask_BT)
    weight_BT = mask_BT / mask_BT.sum(-1, keepdim=True) / 3
    assert torch.allclose(grad, closed_BT * weight_BT, atol=1e-12)


def test_zeta_never_receives_gradient():
    hazard = {"k_pos": 1.5, "lam_pos": 1.0, "k_neg": 2.0, "lam_neg": 0.8, "shift": "softplus"}
    psi_BT = torch.linspace(-1.4, 1.4, 12, dtype=F64).reshape(2, 6).requires_grad_(True)
    zeta_BT = decoupled_hazard_penalty(psi_BT, **hazard)
    assert not zeta_BT.requires_grad and zeta_BT.grad_fn is None
    # the loss's gradient equals that of -exp(psi - zeta) with zeta a constant ...
    d_BT = torch.linspace(-3, 3, 12, dtype=F64).reshape(1, 12)
    zeros_BT, ones_B = torch.zeros_like(d_BT), torch.ones(1, dtype=F64)
    _, grad = grad_of(
        "mhpo", d_BT, zeros_BT, ones_B, torch.ones_like(d_BT), agg="seq-mean-token-sum"
    )
    for live in (False, True):
        logp_BT = d_BT.clone().requires_grad_(True)
        psi_BT = log_fidelity_modulator(logp_BT, 1.5)
        sp = torch.nn.functional.softplus
        zeta_BT = sp(psi_BT) ** 1.5 + (sp(-psi_BT) / 0.8) ** 2  # differentiable on purpose
        zeta_BT = zeta_BT if live else zeta_BT.detach()
        (-torch.exp(psi_BT - zeta_BT)).sum().backward()
        # ... and not the gradient with zeta differentiated
        assert torch.allclose(grad, logp_BT.grad, atol=1e-14) is not live


def test_psi_is_log_r_near_r_equal_one():
    d = torch.tensor([-1e-3, -1e-4, 1e-4, 1e-3], dtype=F64)
    # c tanh(d/c) = d - d^3/(3c^2) + ...: relative error ~ d^2/(3c^2)
    assert torch.allclose(log_fidelity_modulator(d, 1.5), d, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_zero_advantage_gives_zero_gradient(name):
    logp_BT, old_BT, _, mask_BT = extreme_batch(F64)
    g = torch.Generator().manual_seed(1)
    logp_BT = logp_BT + torch.randn(logp_BT.shape, generator=g, dtype=F64)
    _, grad = grad_of(name, logp_BT, old_BT, torch.zeros(4, dtype=F64), mask_BT)
    assert torch.equal(grad, torch.zeros_like(grad))


def _masked_batch(seed):
    g = torch.Generator().manual_seed(seed)
    old_BT = -torch.rand(5, 7, generator=g, dtype=F64) * 3
    logp_BT = old_BT + torch.randn(5, 7, generator=g, dtype=F64) * 0.4
    adv_BT = torch.randn(5, 7, generator=g, dtype=F64)
    mask_BT = (torch.rand(5, 7, generator=g) > 0.3).to(F64)
    mask_BT[:, 0] = 1
    mask_BT[3] = 0  # an all-padding row
    return logp_BT, old_BT, adv_BT, mask_BT


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("name", NAMES)
def test_masked_tokens_change_neither_loss_nor_gradient(name, agg):
    logp_BT, old_BT, adv_BT, mask_BT = _masked_batch(2)
    pad_BT = mask_BT == 0
    ref_BT = old_BT + 0.2
    kwargs = {"agg": agg, "ref_logprobs": ref_BT, "kl_coef": 0.05}
    clean, clean_grad = grad_of(name, logp_BT, old_BT, adv_BT, mask_BT, **kwargs)
    for garbage in (1e30, -1e30, math.nan, math.inf):
        junk = [t.masked_fill(pad_BT, garbage) for t in (logp_BT, old_BT, adv_BT, ref_BT)]
        dirty, dirty_grad = grad_of(
            name, *junk[:3], mask_BT, agg=agg, ref_logprobs=junk[3], kl_coef=0.05
        )
        assert torch.equal(dirty.loss, clean.loss), garbage
        assert torch.equal(dirty_grad, clean_grad), garbage
        assert dirty.metrics == clean.metrics
    assert torch.equal(clean_grad[pad_BT], torch.zeros_like(clean_grad[pad_BT]))
    # dropping the all-padding row changes nothing either (it is not a sequence)
    keep = [0, 1, 2, 4]
    kept, _ = grad_of(
        name,
        logp_BT[keep],
        old_BT[keep],
        adv_BT[keep],
        mask_BT[keep],
        agg=agg,
        ref_logprobs=ref_BT[keep],
        kl_coef=0.05,
        max_len=7,
    )
    assert torch.allclose(kept.loss, clean.loss, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("name", NAMES)
def test_micro_batches_with_global_counts_sum_to_the_full_batch(name, agg):
    """Split rows into micro-batches, each trimmed to its own longest response; with the
    step's num_tokens / num_seqs (and max_len), the micro-batch losses and gradients sum
    to the full batch's."""
    g = torch.Generator().manual_seed(3)
    old_BT = -torch.rand(6, 8, generator=g, dtype=F64) * 3
    logp_BT = old_BT + torch.randn(6, 8, generator=g, dtype=F64) * 0.3
    adv_B = torch.randn(6, generator=g, dtype=F64)
    lengths = torch.tensor([8, 3, 5, 1, 6, 2])
    mask_BT = (torch.arange(8)[None, :] < lengths[:, None]).to(F64)
    counts = {"num_tokens": int(mask_BT.sum()), "num_seqs": 6, "max_len": 8}
    full, full_grad = grad_of(name, logp_BT, old_BT, adv_B, mask_BT, agg=agg, max_len=8)
    total, micro_grad = 0.0, torch.zeros_like(logp_BT)
    for rows in ([0, 1], [2, 3, 4], [5]):
        t_max = int(lengths[rows].max())
        out, grad = grad_of(
            name,
            logp_BT[rows, :t_max],
            old_BT[rows, :t_max],
            adv_B[rows],
            mask_BT[rows, :t_max],
            agg=agg,
            **counts,
        )
        total = total + out.loss
        micro_grad[rows, :t_max] = grad
    assert torch.allclose(total, full.loss, rtol=1e-12, atol=1e-14)
    assert torch.allclose(micro_grad, full_grad, rtol=1e-12, atol=1e-14)


def test_grpo_is_the_plain_policy_gradient_at_r_equal_one():
    old_BT = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -1.0]], dtype=F64)
    adv_BT = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 0.0]], dtype=F64)
    for name in ("grpo", "dapo"):
        out, grad = grad_of(name, old_BT, old_BT, adv_BT, torch.ones_like(old_BT), agg="token-mean")
        assert torch.allclose(grad, -adv_BT / 6) and torch.allclose(out.loss, -adv_BT.mean())
        assert out.metrics["clip_frac"] == 0.0 and out.metrics["ratio_mean"] == 1.0


@pytest.mark.parametrize("taus", [{}, {"tau_pos": 2.0, "tau_neg": 0.3}])
def test_sapo_gate_has_slope_one_at_r_equal_one(taus):
    # d/dr (4/tau) sigma(tau (r - 1)) at r = 1 is 4 sigma'(0) = 1, and dr/dlogp = r = 1,
    # so dL/dlogp = -A for both signs of A.
    old_BT = torch.full((1, 4), -1.0, dtype=F64)
    adv_BT = torch.tensor([[2.0, -1.0, 0.5, -3.0]], dtype=F64)
    _, grad = grad_of(
        "sapo", old_BT, old_BT, adv_BT, torch.ones_like(old_BT), agg="seq-mean-token-sum", **taus
    )
    assert torch.allclose(grad, -adv_BT, atol=1e-15)


def test_mhpo_relu_shift_is_the_plain_policy_gradient_at_r_equal_one():
    old_BT = torch.tensor([[-1.0, -2.0], [-0.3, -4.0]], dtype=F64)
    adv_BT = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=F64)
    for name in ("mhpo", "mhpo_symmetric", "mhpo_dhp_only"):
        out, grad = grad_of(
            name,
            old_BT,
            old_BT,
            adv_BT,
            torch.ones_like(old_BT),
            shift="relu",
            agg="seq-mean-token-sum",
        )
        assert torch.equal(grad, -adv_BT / 2), name  # seq-mean over the 2 rows
        assert out.metrics["survival_weight_mean"] == 1.0


def test_mhpo_softplus_weight_at_r_equal_one():
    old_BT = torch.tensor([[-1.0, -2.0]], dtype=F64)
    adv_BT = torch.tensor([[1.0, -2.0]], dtype=F64)
    out, grad = grad_of(
        "mhpo", old_BT, old_BT, adv_BT, torch.ones_like(old_BT), agg="seq-mean-token-sum"
    )
    weight = math.exp(-(math.log(2) ** 1.5 + (math.log(2) / 0.8) ** 2))  # ~ 0.265062
    assert torch.allclose(grad, -adv_BT * weight, atol=1e-15)
    assert out.metrics["survival_weight_mean"] == pytest.approx(weight, rel=1e-12)


def test_clamp_passes_the_gradient_up_to_the_boundary_and_none_beyond():
    """The documented choice: d in [-20, 20] (boundary included) has its exact gradient;
    beyond, the clamped value is constant, so the gradient of losses reading d is 0."""
    old_BT = torch.zeros(1, 4, dtype=F64)
    d_BT = torch.tensor([[19.5, 20.0, 20.5, -20.5]], dtype=F64)
    # grpo with A < 0 is unclipped for large r: dL/dlogp = -A r
    _, grad = grad_of(
        "grpo",
        old_BT + d_BT,
        old_BT,
        torch.tensor([-1.0], dtype=F64),
        torch.ones_like(d_BT),
        agg="seq-mean-token-sum",
    )
    assert torch.allclose(grad[0, :2], torch.exp(d_BT[0, :2]))
    assert grad[0, 2] == 0 and grad[0, 3] == 0
    # CISPO's gradient flows through logp itself: a far-off token keeps its capped weight
    _, grad = grad_of(
        "cispo",
        old_BT + d_BT,
        old_BT,
        torch.tensor([1.0], dtype=F64),
        torch.ones_like(d_BT),
        agg="seq-mean-token-sum",
    )
    assert torch.allclose(grad, torch.tensor([[-6.0, -6.0, -6.0, -math.exp(-20.0)]], dtype=F64))


def test_all_padding_batch_has_zero_loss_and_nan_metrics():
    zeros = torch.zeros(2, 3, dtype=F64)
    out, grad = grad_of("mhpo", zeros, zeros, torch.ones(2, dtype=F64), zeros)
    assert out.loss == 0 and torch.equal(grad, zeros)
    assert all(math.isnan(v) for v in out.metrics.values())


def test_metrics_count_response_tokens_only():
    # real tokens d = [0.5, 0.3] (r = 1.648721, 1.349859); the padding slot (d = -5) is
    # zeroed to r = 1 internally and must not pull ratio_min down to 1 (or to e^-5)
    old_BT = torch.zeros(1, 3, dtype=F64)
    mask_BT = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    d_BT = torch.tensor([[0.5, 0.3, -5.0]], dtype=F64)
    out, _ = grad_of("grpo", old_BT + d_BT, old_BT, torch.ones(1, dtype=F64), mask_BT)
    assert out.metrics["ratio_min"] == pytest.approx(math.exp(0.3))
    assert out.metrics["ratio_max"] == pytest.approx(math.exp(0.5))
    # diagnostics that are nonzero at padding are still averaged over response tokens only
    inputs = LossInputs.build(old_BT + d_BT, old_BT, torch.ones(1, dtype=F64), mask_BT)
    diagnostics = {
        "flag_frac": torch.ones(1, 3, dtype=torch.bool),
        "x_mean": torch.full((1, 3), 5.0),
    }
    metrics = loss_metrics(inputs, diagnostics, None)
    assert metrics["flag_frac"] == 1.0 and metrics["x_mean"] == 5.0
