"""scripts/gradient_weights.py: the per-token gradient weight of each loss against its
importance ratio, checked against hand-computed values."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "gradient_weights", ROOT / "scripts" / "gradient_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["gradient_weights"] = module
    spec.loader.exec_module(module)
    return module


gw = _load()


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_mhpo_weight_is_exp_psi_minus_zeta_times_sech2():
    # r = 1: psi = 0, zeta = (ln 2 / 1.0)^1.5 + (ln 2 / 0.8)^2, sech^2(0) = 1
    zeta1 = math.log(2) ** 1.5 + (math.log(2) / 0.8) ** 2
    assert gw.weight("mhpo", 1.0, 1.0) == pytest.approx(math.exp(-zeta1), rel=1e-9)
    assert gw.weight("mhpo", 1.0, 1.0) == pytest.approx(0.265, abs=5e-4)
    # r = 2 by hand: d = ln 2, psi = 1.5 tanh(d / 1.5)
    d = math.log(2.0)
    psi = 1.5 * math.tanh(d / 1.5)
    zeta = _softplus(psi) ** 1.5 + (_softplus(-psi) / 0.8) ** 2
    expected = math.exp(psi - zeta) / math.cosh(d / 1.5) ** 2
    assert gw.weight("mhpo", 2.0, 1.0) == pytest.approx(expected, rel=1e-9)
    # the weight does not depend on the advantage's sign, and it grows from r = 1 to 2
    assert gw.weight("mhpo", 2.0, -1.0) == pytest.approx(expected, rel=1e-9)
    assert gw.weight("mhpo", 2.0, 1.0) > 1.4 * gw.weight("mhpo", 1.0, 1.0)
    # relu shift: zeta(1) = 0, the plain policy gradient at r = 1
    assert gw.weight("mhpo", 1.0, 1.0, shift="relu") == pytest.approx(1.0)
    # modulator only at r = 3: exp(psi) sech^2(d / c)
    d3 = math.log(3.0)
    lfm = math.exp(1.5 * math.tanh(d3 / 1.5)) / math.cosh(d3 / 1.5) ** 2
    assert gw.weight("mhpo_lfm_only", 3.0, 1.0) == pytest.approx(lfm, rel=1e-9)


def test_clipped_losses_stop_outside_their_range_in_the_advantages_direction():
    assert gw.weight("grpo", 1.1, 1.0) == pytest.approx(1.1)  # inside: dL/dlogp = -A r
    assert gw.weight("grpo", 1.5, 1.0) == 0.0  # pushed up past 1.2: clipped
    assert gw.weight("grpo", 0.5, 1.0) == pytest.approx(0.5)  # below: still pushed up
    assert gw.weight("grpo", 0.5, -1.0) == 0.0  # pushed down past 0.8: clipped
    assert gw.weight("grpo", 2.0, -1.0) == pytest.approx(2.0)
    assert gw.weight("dapo", 1.25, 1.0) == pytest.approx(1.25)  # clip-higher 0.28
    assert gw.weight("dapo", 1.3, 1.0) == 0.0
    assert gw.weight("cispo", 3.0, 1.0) == pytest.approx(3.0)  # the weight is never cut


def test_the_full_dhp_gradient_turns_into_a_restoring_force():
    # the push is signed: positive moves the token the advantage's way
    assert gw.weight("mhpo", 3.0, 1.0, dhp_gradient="full") == pytest.approx(0.0245, abs=5e-4)
    assert gw.weight("mhpo", 3.5, 1.0, dhp_gradient="full") == pytest.approx(-0.0057, abs=5e-4)
    assert gw.weight("mhpo", 2.0, 1.0, shift="relu", dhp_gradient="full") < 0  # already at 2
    # the detached form never turns, at any ratio, for either sign of the advantage
    for r in (0.05, 0.3, 1.0, 3.0, 30.0):
        assert gw.weight("mhpo", r, 1.0) > 0 and gw.weight("mhpo", r, -1.0) > 0


def test_effective_trust_region_edges():
    assert gw.trust_edge("grpo", 1.0) == pytest.approx(1.2, abs=0.013)  # the clip, on a 1% grid
    assert gw.trust_edge("grpo", -1.0) == pytest.approx(0.8, abs=0.01)
    assert gw.trust_edge("cispo", 1.0) is None  # never falls: r itself
    # the detached hazard keeps half its push far past clipping's 1.2; the full one less so
    detached, full = gw.trust_edge("mhpo", 1.0), gw.trust_edge("mhpo", 1.0, dhp_gradient="full")
    assert detached > 5 and 1.5 < full < 2.5


def test_the_table_and_the_file(tmp_path):
    out = tmp_path / "w.md"
    assert gw.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert "## A = +1 (push the token up)" in text and "## A = -1 (push it down)" in text
    assert "## Effective trust region" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| grpo (clip 0.2) |")]
    assert rows[0] == "| grpo (clip 0.2) | 1.21 | 0.80 |"
    # A = +1: r, 0 beyond 1.2; A = -1: 0 below 0.8, then r
    assert rows[1] == (
        "| grpo (clip 0.2) | 1.000 | +0.20 | +0.50 | +0.80 | +1.00 | +1.20 | +0.00 | +0.00 "
        "| +0.00 | +0.00 | +0.00 |"
    )
    assert rows[2].startswith("| grpo (clip 0.2) | 1.000 | +0.00 | +0.00 | +0.80 | +1.00 |")
    full = [ln for ln in text.splitlines() if ln.startswith("| mhpo, full DHP gradient |")]
    assert full[1].endswith("| +0.06 | -0.09 | -0.08 |")  # A = +1, r = 3, 5, 10: pulled back
    assert len([ln for ln in text.splitlines() if ln.startswith("| mhpo")]) == 3 * 8
