"""Policy losses: hand-computed values and gradients (float64), an independent per-token
reference for all nine losses in value and gradient, and the errors users see."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

from mhpo_vl.algorithms import AGGREGATIONS, POLICY_LOSSES, aggregate, policy_loss

F64 = torch.float64
NAMES = [
    "grpo",
    "dapo",
    "gspo",
    "sapo",
    "cispo",
    "mhpo",
    "mhpo_lfm_only",
    "mhpo_dhp_only",
    "mhpo_symmetric",
]


def run(name, d_BT, adv, mask_BT=None, old=-1.0, **kwargs):
    """policy_loss on log-ratios ``d_BT`` (logp = old + d); returns (output, dL/dlogp)."""
    d_BT = torch.as_tensor(d_BT, dtype=F64)
    old_BT = torch.full_like(d_BT, old)
    logp_BT = (old_BT + d_BT).requires_grad_(True)
    mask_BT = torch.ones_like(d_BT) if mask_BT is None else torch.as_tensor(mask_BT, dtype=F64)
    out = policy_loss(name, logp_BT, old_BT, torch.as_tensor(adv, dtype=F64), mask_BT, **kwargs)
    out.loss.backward()
    return out, logp_BT.grad


def close(actual, expected, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(actual, dtype=F64), torch.tensor(expected, dtype=F64), atol=tol, rtol=0
    )


def test_registry_holds_exactly_the_nine_losses_with_their_default_aggregations():
    assert sorted(POLICY_LOSSES.names()) == sorted(NAMES)
    token_mean = {"dapo", "cispo"}
    for name in NAMES:
        expected = "token-mean" if name in token_mean else "seq-mean-token-mean"
        assert POLICY_LOSSES.get(name).agg == expected, name


def test_documented_parameter_defaults():
    defaults = {name: dict(POLICY_LOSSES.get(name).defaults) for name in NAMES}
    assert defaults["grpo"] == {"clip_low": 0.2, "clip_high": 0.2, "clip_c": None}
    assert defaults["dapo"] == {"clip_low": 0.2, "clip_high": 0.28, "clip_c": None}
    assert defaults["gspo"] == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert defaults["sapo"] == {"tau_pos": 1.0, "tau_neg": 1.05}
    assert defaults["cispo"] == {"clip_high": 5.0, "clip_low": None}
    mhpo = {"c": 1.5, "k_pos": 1.5, "lam_pos": 1.0, "k_neg": 2.0, "lam_neg": 0.8}
    assert defaults["mhpo"] == {**mhpo, "shift": "softplus", "dhp_gradient": "detached"}
    assert defaults["mhpo_lfm_only"] == {"c": 1.5}
    assert defaults["mhpo_dhp_only"] == {
        **{k: v for k, v in mhpo.items() if k != "c"},
        "shift": "softplus",
        "dhp_gradient": "detached",
    }
    assert defaults["mhpo_symmetric"] == {
        "c": 1.5,
        "k_pos": 1.5,
        "lam_pos": 1.0,
        "shift": "softplus",
        "dhp_gradient": "detached",
    }


# ---------------------------------------------------------------- hand-computed values

# Shared by grpo / dapo: two sequences of three tokens, A = +1 and A = -1, with
# d = [0.5, 0.1, -0.5], so r = [e^0.5, e^0.1, e^-0.5] = [1.648721, 1.105171, 0.606531].
D_PPO = [[0.5, 0.1, -0.5], [0.5, 0.1, -0.5]]
A_PPO = [1.0, -1.0]


def test_grpo_hand_values():
    out, grad = run("grpo", D_PPO, A_PPO)
    # A=+1: r=1.648721 clipped to 1.2 -> L = max(-1.648721, -1.2) = -1.2      (clipped)
    #       r=1.105171 in [0.8, 1.2]  -> L = -1.105171
    #       r=0.606531 clipped to 0.8 -> L = max(-0.606531, -0.8) = -0.606531 (unclipped)
    # A=-1: r=1.648721 -> L = max(1.648721, 1.2) = 1.648721                  (unclipped)
    #       r=1.105171 -> L = 1.105171
    #       r=0.606531 -> L = max(0.606531, 0.8) = 0.8                        (clipped)
    assert close(out.loss_BT, [[-1.2, -1.105171, -0.606531], [1.648721, 1.105171, 0.8]])
    # seq-mean-token-mean: seq0 = -2.911702/3 = -0.970567, seq1 = 3.553892/3 = 1.184631,
    # mean = 0.107032
    assert out.agg == "seq-mean-token-mean"
    assert close(out.loss, 0.107032)
    # dL/dlogp = -A*r where unclipped, 0 where clipped; each token weighs 1/(3*2):
    # [0, -1.105171, -0.606531, 1.648721, 1.105171, 0] / 6
    assert close(grad, [[0.0, -0.184195, -0.101088], [0.274787, 0.184195, 0.0]])
    assert out.metrics["clip_frac"] == pytest.approx(2 / 6)
    # ratios: mean = (2*1.648721 + 2*1.105171 + 2*0.606531)/6 = 1.120141; 4 of 6 outside [0.8, 1.28]
    assert out.metrics["ratio_mean"] == pytest.approx(1.120141, abs=1e-6)
    assert out.metrics["ratio_min"] == pytest.approx(0.606531, abs=1e-6)
    assert out.metrics["ratio_max"] == pytest.approx(1.648721, abs=1e-6)
    assert out.metrics["ratio_out_frac"] == pytest.approx(4 / 6)


def test_dapo_hand_values():
    out, grad = run("dapo", D_PPO, A_PPO)
    # clip-higher: upper bound 1.28, so A=+1, r=1.648721 -> L = -1.28; the rest as in grpo:
    # [-1.28, -1.105171, -0.606531, 1.648721, 1.105171, 0.8], token-mean = 0.562190/6 = 0.093698
    assert out.agg == "token-mean"
    assert close(out.loss, 0.093698)
    assert close(grad, [[0.0, -0.184195, -0.101088], [0.274787, 0.184195, 0.0]])


def test_grpo_dual_clip_hand_values():
    # A=-1, d=[1.5, 0.5]: r = [4.481689, 1.648721]; plain clip: L = [4.481689, 1.648721];
    # dual clip c=3: L = min(L, -A*3 = 3) = [3, 1.648721]; the first token's gradient is cut.
    out, grad = run("grpo", [[1.5, 0.5]], [-1.0], clip_c=3.0, agg="token-mean")
    assert close(out.loss_BT, [[3.0, 1.648721]])
    assert close(grad, [[0.0, 1.648721 / 2]])
    assert out.metrics["dual_clip_frac"] == pytest.approx(0.5)
    assert out.metrics["clip_frac"] == pytest.approx(0.5)


def test_gspo_hand_values():
    # seq0 (A=+1): d = [0.2, -0.1, pad] -> log s = 0.1/2 = 0.05, s = 1.051271 > 1.0004
    #   -> clipped: L = -1.0004 on both tokens, gradient 0.
    # seq1 (A=-2): d = [3e-4, -1e-4, 1e-4] -> log s = 1e-4, s = 1.0001 in [0.9997, 1.0004]
    #   -> L = -A*s = 2.0002 per token; dL/dlogp = -A*s = 2.0002 per token.
    d = [[0.2, -0.1, 9.0], [3e-4, -1e-4, 1e-4]]
    out, grad = run("gspo", d, [1.0, -2.0], mask_BT=[[1, 1, 0], [1, 1, 1]])
    assert close(out.loss_BT, [[-1.0004, -1.0004, 0.0], [2.0002, 2.0002, 2.0002]], tol=1e-6)
    # seq-mean-token-mean: (-1.0004 + 2.0002)/2 = 0.4999
    assert close(out.loss, 0.4999, tol=1e-6)
    # seq1's tokens weigh 1/(3*2): 2.0002/6 = 0.333367
    assert close(grad, [[0.0, 0.0, 0.0], [0.333367, 0.333367, 0.333367]])
    assert out.metrics["clip_frac"] == pytest.approx(2 / 5)
    # token-weighted mean of s: (2*1.051271 + 3*1.0001)/5 = 1.020568
    assert out.metrics["seq_ratio_mean"] == pytest.approx(1.020568, abs=1e-6)


def test_sapo_hand_values():
    # A=+1, r=1.5: tau=1,    gate = 4*sigma(0.5) = 4*0.622459 = 2.489837, L = -2.489837
    # A=-1, r=0.5: tau=1.05, gate = (4/1.05)*sigma(-0.525) = 3.809524*0.371684 = 1.415938, L = 1.415938
    out, _ = run("sapo", [[math.log(1.5)], [math.log(0.5)]], [1.0, -1.0])
    assert close(out.loss_BT, [[-2.489837], [1.415938]])
    assert close(out.loss, (-2.489837 + 1.415938) / 2)


def test_cispo_hand_values():
    # A=+1, r=e^2=7.389 -> w = min(7.389, 6) = 6, logp=-1: L = -6*1*(-1) = 6;   dL/dlogp = -6
    # A=-1, r=0.5       -> w = 0.5,                logp=-2: L = -0.5*(-1)*(-2) = -1; dL/dlogp = 0.5
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-3.0, -2.0 - math.log(0.5)]], dtype=F64)
    adv = torch.tensor([[1.0, -1.0]], dtype=F64)
    out = policy_loss("cispo", logp, old, adv, torch.ones(1, 2))
    out.loss.backward()
    assert close(out.loss_BT, [[6.0, -1.0]])
    assert out.agg == "token-mean"
    assert close(out.loss, 2.5)  # (6 - 1)/2
    assert close(logp.grad, [[-3.0, 0.25]])  # [-6, 0.5] / 2
    assert out.metrics["clip_frac"] == pytest.approx(0.5)
    # with clip_low = 0.2 the second weight is raised to 0.8: L = -0.8*(-1)*(-2) = -1.6
    out = policy_loss("cispo", logp, old, adv, torch.ones(1, 2), clip_low=0.2)
    assert close(out.loss_BT, [[6.0, -1.6]])
    assert out.metrics["clip_frac"] == pytest.approx(1.0)


def test_mhpo_hand_values_softplus():
    # r = 1: psi = 0, zeta = (ln2/1)^1.5 + (ln2/0.8)^2 = 0.577083 + 0.750708 = 1.327791,
    #        L = -exp(-1.327791) * A = -0.265062 (A = 1)
    # d = 0.75: psi = 1.5*tanh(0.5) = 1.5*0.462117 = 0.693176;
    #        zeta = softplus(0.693176)^1.5 + (softplus(-0.693176)/0.8)^2
    #             = 1.098631^1.5 + (0.405456/0.8)^2 = 1.151537 + 0.256866 = 1.408403
    #        L = -exp(0.693176 - 1.408403) * 2 = -0.489081 * 2 = -0.978162 (A = 2)
    #        dL/dlogp = -A exp(psi - zeta) sech^2(d/c) = -2*0.489081*(1 - 0.462117^2) = -0.769273
    out, grad = run("mhpo", [[0.0, 0.75]], [[1.0, 2.0]], agg="token-mean")
    assert close(out.loss_BT, [[-0.265062, -0.978162]])
    assert close(grad * 2, [[-0.265062, -0.769273]])  # token-mean over 2 tokens
    assert out.metrics["psi_mean"] == pytest.approx(0.693176 / 2, abs=1e-6)
    assert out.metrics["zeta_mean"] == pytest.approx((1.327791 + 1.408403) / 2, abs=1e-6)
    # survival weights exp(-1.327791) = 0.265062, exp(-1.408403) = 0.244533
    assert out.metrics["survival_weight_mean"] == pytest.approx((0.265062 + 0.244533) / 2, abs=1e-6)


def test_mhpo_hand_values_relu():
    # relu shift: s(0) = 0, so zeta(r=1) = 0 and L = -A; d = 0.75: zeta = psi^1.5 = 0.693176^1.5
    # = 0.577119, L = -exp(0.693176 - 0.577119) = -1.123060 (A = 1)
    out, _ = run("mhpo", [[0.0, 0.75]], [1.0], shift="relu", agg="token-mean")
    assert close(out.loss_BT, [[-1.0, -1.123060]])


def test_mhpo_ablation_hand_values():
    # lfm_only, d = 3: psi = 1.5*tanh(2) = 1.5*0.964028 = 1.446041, L = -e^1.446041 = -4.246272;
    # dL/dlogp = -e^psi * sech^2(2) = -4.246272*(1 - 0.964028^2) = -0.300003
    out, grad = run("mhpo_lfm_only", [[3.0]], [1.0])
    assert close(out.loss, -4.246272) and close(grad, [[-0.300003]])
    assert out.metrics["zeta_mean"] == 0.0 and out.metrics["survival_weight_mean"] == 1.0
    # dhp_only, d = -0.5: psi = -0.5 (no tanh); zeta = softplus(-0.5)^1.5 + (softplus(0.5)/0.8)^2
    # = 0.474077^1.5 + (0.974077/0.8)^2 = 0.326417 + 1.482541 = 1.808958; L = -exp(-2.308958) = -0.099365
    out, grad = run("mhpo_dhp_only", [[-0.5]], [1.0])
    assert close(out.loss, -0.099365) and close(grad, [[-0.099365]])
    # symmetric, r = 1: zeta = 2*(ln2/1)^1.5 = 1.154166, L = -exp(-1.154166) = -0.315320
    out, _ = run("mhpo_symmetric", [[0.0]], [1.0])
    assert close(out.loss, -0.315320)


# ---------------------------------------------------------------- independent reference


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _softplus(x):
    return math.log1p(math.exp(x))


def _ppo(r, a, lo, hi, dual=None):
    """(value, dL/dlogp) of the PPO clip for one token; the clipped branch has no gradient."""
    value = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
    cut = (a > 0 and r > 1 + hi) or (a < 0 and r < 1 - lo)
    if dual is not None and a < 0 and value > -a * dual:
        return -a * dual, 0.0
    return value, 0.0 if cut else -a * r


def _mhpo(
    d,
    a,
    *,
    c=1.5,
    k_pos=1.5,
    lam_pos=1.0,
    k_neg=2.0,
    lam_neg=0.8,
    shift="softplus",
    tanh=True,
    hazard=True,
):
    """(value, dL/dlogp) of the MHPO family for one token; zeta is a constant (sg)."""
    s = _softplus if shift == "softplus" else (lambda x: max(x, 0.0))
    psi = c * math.tanh(d / c) if tanh else d
    zeta = (s(psi) / lam_pos) ** k_pos + (s(-psi) / lam_neg) ** k_neg if hazard else 0.0
    slope = 1 - math.tanh(d / c) ** 2 if tanh else 1.0  # d psi / d logp = sech^2(d/c)
    return -math.exp(psi - zeta) * a, -a * math.exp(psi - zeta) * slope


def _token(name, d, a, logp, s_seq, hyper):
    """(value, dL/dlogp) of loss ``name`` on one token, written from the spec."""
    r = math.exp(d)
    if name in ("grpo", "dapo"):
        hi = hyper.get("clip_high", 0.28 if name == "dapo" else 0.2)
        return _ppo(r, a, hyper.get("clip_low", 0.2), hi, hyper.get("clip_c"))
    if name == "gspo":
        return _ppo(s_seq, a, hyper.get("clip_low", 3e-4), hyper.get("clip_high", 4e-4))
    if name == "sapo":
        tau = 1.0 if a > 0 else 1.05
        g = _sigmoid(tau * (r - 1))
        return -(4 / tau) * g * a, -a * 4 * g * (1 - g) * r  # d/dlogp = r * d/dr
    if name == "cispo":
        w = min(r, 1 + hyper.get("clip_high", 5.0))
        return -w * a * logp, -w * a
    if name == "mhpo_symmetric":
        return _mhpo(d, a, k_neg=1.5, lam_neg=1.0)
    flags = {"mhpo_lfm_only": {"hazard": False}, "mhpo_dhp_only": {"tanh": False}}
    return _mhpo(d, a, **flags.get(name, {}), **hyper)


def reference(name, logp_BT, old_BT, adv_BT, mask_BT, hyper):
    """Per-token value and gradient of ``name``, token by token in plain floats."""
    value_BT, grad_BT = torch.zeros_like(logp_BT), torch.zeros_like(logp_BT)
    for i in range(logp_BT.shape[0]):
        tokens = [t for t in range(logp_BT.shape[1]) if mask_BT[i, t]]
        d = {t: float(logp_BT[i, t] - old_BT[i, t]) for t in tokens}
        s_seq = math.exp(sum(d.values()) / max(len(tokens), 1))
        for t in tokens:
            value_BT[i, t], grad_BT[i, t] = _token(
                name, d[t], float(adv_BT[i, t]), float(logp_BT[i, t]), s_seq, hyper
            )
    return value_BT, grad_BT


def random_batch(seed, per_token=False, scale=2.5):
    g = torch.Generator().manual_seed(seed)
    old_BT = -torch.rand(4, 6, generator=g, dtype=F64) * 3
    logp_BT = old_BT + (torch.rand(4, 6, generator=g, dtype=F64) * 2 - 1) * scale
    adv = (
        torch.randn(4, 6, generator=g, dtype=F64)
        if per_token
        else torch.tensor([1.3, -0.7, 0.4, -2.0], dtype=F64)
    )
    mask_BT = torch.ones(4, 6, dtype=F64)
    mask_BT[0, 4:] = 0
    mask_BT[2, 1:] = 0
    return logp_BT, old_BT, adv, mask_BT


CASES = [(name, {}) for name in NAMES] + [
    ("grpo", {"clip_c": 3.0}),
    ("gspo", {"clip_low": 0.5, "clip_high": 0.5}),
    ("mhpo", {"shift": "relu", "c": 0.7}),
    ("mhpo", {"k_pos": 3.0, "lam_pos": 0.5, "k_neg": 1.2, "lam_neg": 2.0}),
]


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("name,hyper", CASES)
def test_policy_loss_matches_reference_in_value_and_gradient(name, hyper, per_token, agg):
    logp_BT, old_BT, adv, mask_BT = random_batch(len(name), per_token)
    adv_BT = adv if per_token else adv[:, None].expand(4, 6)
    value_BT, grad_BT = reference(name, logp_BT, old_BT, adv_BT, mask_BT, hyper)
    logp_BT.requires_grad_(True)
    out = policy_loss(name, logp_BT, old_BT, adv, mask_BT, agg=agg, **hyper)
    out.loss.backward()
    assert torch.allclose(out.loss_BT, value_BT, atol=1e-12, rtol=1e-9)
    assert torch.allclose(out.loss, aggregate(value_BT, mask_BT, agg), atol=1e-12, rtol=1e-9)
    # The expected gradient: the per-token closed form, weighted as the aggregation weighs tokens.
    probe_BT = logp_BT.detach().clone().requires_grad_(True)
    aggregate(grad_BT * probe_BT, mask_BT, agg).backward()
    assert torch.allclose(logp_BT.grad, probe_BT.grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize(
    "name,hyper",
    [
        ("grpo", {}),
        ("dapo", {}),
        ("grpo", {"clip_c": 3.0}),
        ("sapo", {}),
        ("mhpo_lfm_only", {}),
        ("gspo", {"clip_low": 0.5, "clip_high": 0.5}),
    ],
)
def test_gradient_is_the_true_gradient_where_no_stop_gradient_enters(name, hyper):
    """Losses without sg in their value: autograd equals finite differences. For GSPO this
    holds with its default seq-mean-token-mean and a per-sequence A: the token form's
    gradient is then exactly that of the sequence-level objective."""
    logp_BT, old_BT, adv, mask_BT = random_batch(7)
    logp_BT.requires_grad_(True)

    def fn(lp):
        return policy_loss(name, lp, old_BT, adv, mask_BT, **hyper).loss

    assert torch.autograd.gradcheck(fn, (logp_BT,), eps=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["cispo", "mhpo", "mhpo_dhp_only", "mhpo_symmetric"])
def test_stop_gradient_losses_differ_from_finite_differences(name):
    """The sg in CISPO's weight and in MHPO's zeta is real: the value's finite-difference
    gradient is not what autograd returns (the reference test pins the latter)."""
    logp_BT, old_BT, adv, mask_BT = random_batch(3, scale=1.0)
    logp_BT.requires_grad_(True)

    def fn(lp):
        return policy_loss(name, lp, old_BT, adv, mask_BT).loss

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(fn, (logp_BT,), eps=1e-7, atol=1e-7)


def test_kl_term_is_added_to_the_per_token_loss():
    logp_BT, old_BT, adv, mask_BT = random_batch(5)
    ref_BT = old_BT + 0.3
    plain = policy_loss("mhpo", logp_BT, old_BT, adv, mask_BT)
    with_kl = policy_loss(
        "mhpo", logp_BT, old_BT, adv, mask_BT, ref_logprobs=ref_BT, kl_coef=0.1, kl_estimator="k2"
    )
    x_BT = ref_BT - logp_BT
    expected_BT = (plain.loss_BT + 0.1 * 0.5 * x_BT**2) * mask_BT
    assert torch.allclose(with_kl.loss_BT * mask_BT, expected_BT)
    assert with_kl.metrics["kl_mean"] == pytest.approx(
        float((0.5 * x_BT**2 * mask_BT).sum() / mask_BT.sum())
    )
    # a reference with kl_coef = 0 only adds the metric
    metric_only = policy_loss("mhpo", logp_BT, old_BT, adv, mask_BT, ref_logprobs=ref_BT)
    assert torch.equal(metric_only.loss, plain.loss) and "kl_mean" in metric_only.metrics
    assert "kl_mean" not in plain.metrics


def test_agg_override_and_global_counts_reach_aggregate():
    logp_BT, old_BT, adv, mask_BT = random_batch(2)
    out = policy_loss(
        "dapo", logp_BT, old_BT, adv, mask_BT, agg="seq-mean-token-sum-norm", max_len=10
    )
    assert out.agg == "seq-mean-token-sum-norm"
    assert torch.allclose(out.loss, (out.loss_BT * mask_BT).sum() / (4 * 10))
    out = policy_loss("dapo", logp_BT, old_BT, adv, mask_BT, num_tokens=100)
    assert torch.allclose(out.loss, (out.loss_BT * mask_BT).sum() / 100)


# ---------------------------------------------------------------- errors users see


def _inputs():
    return torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3)


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'ppo2'.*cispo, dapo, grpo, gspo, mhpo"):
        policy_loss("ppo2", *_inputs())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyper_parameter_is_named_with_the_valid_ones(name):
    valid = ", ".join(POLICY_LOSSES.get(name).defaults)
    with pytest.raises(ValueError, match="'clip_ratio'") as info:
        policy_loss(name, *_inputs(), clip_ratio=0.2)
    assert valid in str(info.value)


def test_symmetric_rejects_negative_side_parameters():
    with pytest.raises(ValueError, match="'k_neg'"):
        policy_loss("mhpo_symmetric", *_inputs(), k_neg=2.0)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"agg": "mean"}, r"'mean'.*token-mean, seq-mean-token-mean"),
        ({"kl_estimator": "k4"}, r"'k4'.*k1, k2, k3"),
        ({"shift": "gelu"}, r"'gelu'.*softplus, relu"),
        ({"c": 0.0}, r"c must be > 0"),
        ({"lam_neg": -1.0}, r"lam_pos, lam_neg must be > 0"),
        ({"kl_coef": 0.1}, r"needs ref_logprobs"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        policy_loss("mhpo", *_inputs(), **kwargs)


def test_bad_shapes_raise_value_error():
    logp, old, adv, mask = _inputs()
    with pytest.raises(ValueError, match="advantages"):
        policy_loss("grpo", logp, old, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss("grpo", logp, torch.zeros(2, 4), adv, mask)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss("grpo", torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.ones(6))
    with pytest.raises(ValueError, match="clip_c"):
        policy_loss("grpo", logp, old, adv, mask, clip_c=0.5)
