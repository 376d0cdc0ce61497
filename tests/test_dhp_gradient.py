"""The DHP gradient both ways (``dhp_gradient: detached | full``) against hand-derived
formulas, written out below with plain ``math``:

    d = log r,  psi = c tanh(d / c),  dpsi/dd = sech^2(d / c) = 1 - tanh^2(d / c)
    zeta = (s(psi) / lp)^kp + (s(-psi) / ln)^kn
    dzeta/dpsi = kp/lp (s(psi)/lp)^(kp-1) s'(psi) - kn/ln (s(-psi)/ln)^(kn-1) s'(-psi)
    dL/dd = -A exp(psi - zeta) (1 - [full] dzeta/dpsi) sech^2(d / c)

with s' = sigmoid for softplus and the step 1[x > 0] for relu. The loss value is the
same in both modes; only the gradient differs.
"""

from __future__ import annotations

import math

import pytest
import torch

from mhpo_vl.algorithms import policy_loss
from mhpo_vl.errors import UserError

C, KP, LP, KN, LN = 1.5, 1.5, 1.0, 2.0, 0.8  # the paper's defaults


def _shift(x: float, shift: str) -> tuple[float, float]:
    """``(s(x), s'(x))``."""
    if shift == "relu":
        return max(x, 0.0), float(x > 0)
    return math.log1p(math.exp(x)), 1.0 / (1.0 + math.exp(-x))


def hand_gradient(r: float, A: float, mode: str, shift: str) -> tuple[float, float]:
    """``(L, dL/dlogp)`` for one token at ratio ``r`` (the formulas in the docstring)."""
    d = math.log(r)
    t = math.tanh(d / C)
    psi, dpsi = C * t, 1.0 - t * t
    sp, dsp = _shift(psi, shift)
    sn, dsn = _shift(-psi, shift)
    zeta = (sp / LP) ** KP + (sn / LN) ** KN
    dzeta = KP / LP * (sp / LP) ** (KP - 1) * dsp - KN / LN * (sn / LN) ** (KN - 1) * dsn
    through = 1.0 - dzeta if mode == "full" else 1.0
    return -A * math.exp(psi - zeta), -A * math.exp(psi - zeta) * through * dpsi


def autograd(r: float, A: float, mode: str, shift: str, name: str = "mhpo") -> tuple[float, float]:
    logp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    out = policy_loss(
        name, logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([A], dtype=torch.float64),
        torch.ones(1, 1), shift=shift, dhp_gradient=mode,
    )  # fmt: skip
    out.loss.backward()
    return out.loss.item(), logp.grad.item()


@pytest.mark.parametrize("shift", ["softplus", "relu"])
@pytest.mark.parametrize("mode", ["detached", "full"])
@pytest.mark.parametrize("A", [1.0, -1.0])
@pytest.mark.parametrize("r", [0.05, 0.3, 0.8, 1.0, 1.25, 2.0, 3.0, 3.5, 10.0])
def test_value_and_gradient_equal_the_hand_derivation(r, A, mode, shift):
    value, grad = autograd(r, A, mode, shift)
    want_value, want_grad = hand_gradient(r, A, mode, shift)
    assert value == pytest.approx(want_value, rel=1e-12, abs=1e-15)
    assert grad == pytest.approx(want_grad, rel=1e-9, abs=1e-15)


def test_the_reference_values():
    """Rounded values worked out by hand for A = +1 and A = -1 (softplus unless said)."""
    assert hand_gradient(2.0, 1, "full", "softplus")[1] == pytest.approx(-0.1695, abs=5e-4)
    assert hand_gradient(3.0, 1, "full", "softplus")[1] == pytest.approx(-0.0245, abs=5e-4)
    # past r ~ 3.4 the full gradient turns: a restoring force on the expansion side
    assert hand_gradient(3.5, 1, "full", "softplus")[1] == pytest.approx(+0.0057, abs=5e-4)
    assert hand_gradient(2.0, 1, "full", "relu")[1] == pytest.approx(+0.1913, abs=5e-4)
    assert hand_gradient(3.0, 1, "detached", "softplus")[1] == pytest.approx(-0.3150, abs=5e-4)
    # A < 0 at r = 0.3: the full form pushes the ratio down 3.7x harder
    full, detached = hand_gradient(0.3, -1, "full", "softplus")[1], hand_gradient(0.3, -1, "detached", "softplus")[1]  # fmt: skip
    assert full == pytest.approx(0.0441, abs=5e-4) and detached == pytest.approx(0.0117, abs=5e-4)
    assert full / detached == pytest.approx(3.77, abs=0.02)


def test_detached_never_flips_the_sign_and_full_does():
    rs = [1.0 + 0.1 * i for i in range(1, 60)]
    assert all(autograd(r, 1.0, "detached", "softplus")[1] < 0 for r in rs)
    signs = {math.copysign(1, autograd(r, 1.0, "full", "softplus")[1]) for r in rs}
    assert signs == {-1.0, 1.0}


@pytest.mark.parametrize("name", ["mhpo_dhp_only", "mhpo_symmetric"])
def test_the_family_takes_the_mode_and_the_value_does_not_move(name):
    for r in (0.5, 2.0):
        v_det, g_det = autograd(r, 1.0, "detached", "softplus", name)
        v_full, g_full = autograd(r, 1.0, "full", "softplus", name)
        assert v_det == v_full and g_det != g_full


def test_bad_modes_are_one_line_errors():
    with pytest.raises(UserError, match="unknown dhp_gradient 'both'; valid names: detached, full"):
        autograd(2.0, 1.0, "both", "softplus")
    logp = torch.zeros(1, 1, requires_grad=True)
    with pytest.raises(UserError, match="'full' needs k_pos, k_neg >= 1, got 0.5, 2.0"):
        policy_loss(
            "mhpo", logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1),
            k_pos=0.5, dhp_gradient="full",
        )  # fmt: skip
