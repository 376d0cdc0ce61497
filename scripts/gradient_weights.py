"""How hard each policy loss pushes a token, as a function of its importance ratio.

    python scripts/gradient_weights.py                 # markdown tables on stdout
    python scripts/gradient_weights.py --out FILE.md   # and into a file

For one token with advantage A = +1 (a response better than its group) and A = -1
(worse), and importance ratio r = exp(logp - old_logp), the script asks the project's own
:func:`mhpo_vl.algorithms.policy_loss` for the loss and takes ``dL/dlogp`` by autograd.
The tables show the **push**, ``-sign(A) * dL/dlogp``: positive moves the token's
log-probability the way its advantage asks (up for A > 0, down for A < 0), 0 stops it,
and negative moves it against the advantage. Where the ratio has already moved the
advantage's way (r > 1 for A > 0, r < 1 for A < 0) a negative push is a restoring force
back towards 1; where it moved the other way (A < 0 and r > 1) a negative push drives
the ratio further from 1. A clipped
loss (GRPO, DAPO, GSPO) pushes ``r`` inside its range and 0 outside it; MHPO with the
detached hazard (``dhp_gradient: detached``) pushes ``exp(psi - zeta) * sech^2(d / c)``,
which never reaches 0 and never turns; with ``dhp_gradient: full`` the push is multiplied
by ``1 - dzeta/dpsi`` and can turn.

Read the tables as the update's trust region. The update epochs after the first see
ratios away from 1: where the push stays large there, the policy keeps moving in the
same direction within one batch of rollouts; where it drops to 0 it stops; where it
turns it is pulled back. With Adam a constant factor over every token washes out, so
the shape across r matters more than the level (the columns divide by the push at
r = 1). The **effective trust region** of a loss is where its push falls below half
its push at r = 1, moving away from 1 in the advantage's direction (clipping: 1.2 and
0.8).

Single-token sequences, so the sequence-level losses (GSPO) see the token's ratio as
the sequence's. Nothing is trained; it runs in a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mhpo_vl.algorithms import policy_loss  # noqa: E402

RATIOS = (0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0)

# (label, registered loss, its parameters): the study's variants and baselines
LOSSES: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("mhpo (softplus shift)", "mhpo", {}),
    ("mhpo, full DHP gradient", "mhpo", {"dhp_gradient": "full"}),
    ("mhpo, relu shift", "mhpo", {"shift": "relu"}),
    ("mhpo, relu shift, full DHP gradient", "mhpo", {"shift": "relu", "dhp_gradient": "full"}),
    ("mhpo, c = 0.5", "mhpo", {"c": 0.5}),
    ("mhpo_lfm_only", "mhpo_lfm_only", {}),
    ("mhpo_dhp_only", "mhpo_dhp_only", {}),
    ("mhpo_symmetric", "mhpo_symmetric", {}),
    ("grpo (clip 0.2)", "grpo", {}),
    ("dapo (clip 0.2 / 0.28)", "dapo", {}),
    ("gspo", "gspo", {}),
    ("sapo", "sapo", {}),
    ("cispo", "cispo", {}),
)


def weight(name: str, ratio: float, advantage: float, **hyper: object) -> float:
    """The push ``-sign(A) * dL/dlogp`` for one token with this ratio and advantage,
    from ``policy_loss`` (negative: a restoring force)."""
    old = torch.zeros(1, 1, dtype=torch.float64)
    logp = torch.full((1, 1), float(torch.log(torch.tensor(ratio, dtype=torch.float64))),
                      dtype=torch.float64, requires_grad=True)  # fmt: skip
    out = policy_loss(
        name,
        logp,
        old,
        torch.tensor([advantage], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        **hyper,
    )
    (grad,) = torch.autograd.grad(out.loss, logp)
    return -float(grad) * (1.0 if advantage > 0 else -1.0) + 0.0  # (+ 0.0: no "-0.00")


def trust_edge(name: str, advantage: float, **hyper: object) -> float | None:
    """The ratio where the push first falls below half its value at r = 1, going away
    from 1 in the advantage's direction (up for A > 0, down for A < 0), on a grid of 1%
    steps out to r = 100 (or 1/100); None if it never does."""
    half = 0.5 * weight(name, 1.0, advantage, **hyper)
    step = 1.01 if advantage > 0 else 1 / 1.01
    r = 1.0
    for _ in range(463):  # 1.01^463 ~ 100
        r *= step
        if weight(name, r, advantage, **hyper) < half:
            return r
    return None


def table(ratios: Sequence[float] = RATIOS) -> dict[str, dict[float, dict[str, float]]]:
    """label -> advantage sign (+1.0 / -1.0) -> ``{r: weight}``."""
    return {
        label: {
            a: {r: weight(name, r, a, **hyper) for r in dict.fromkeys((*ratios, 1.0))}
            for a in (1.0, -1.0)
        }
        for label, name, hyper in LOSSES
    }


def edges() -> dict[str, tuple[float | None, float | None]]:
    """label -> (upper edge for A = +1, lower edge for A = -1): :func:`trust_edge`."""
    return {
        label: (trust_edge(name, 1.0, **hyper), trust_edge(name, -1.0, **hyper))
        for label, name, hyper in LOSSES
    }


def _edge(r: float | None) -> str:
    return "none (to 100)" if r is None else f"{r:.2f}"


def render(weights: dict[str, dict[float, dict[str, float]]], ratios: Sequence[float]) -> str:
    lines = [
        "# Gradient push per token against its importance ratio",
        "",
        "The push `-sign(A) * dL/dlogp` of one token, from `mhpo_vl.algorithms.policy_loss` "
        "by autograd (`python scripts/gradient_weights.py`); each loss at its defaults "
        "unless the row says otherwise. Positive: the token moves the way its advantage "
        "asks; negative: against it, which is a restoring force towards r = 1 where the "
        "ratio moved the advantage's way (r > 1 for A = +1, r < 1 for A = -1) and drives "
        "it further away where it moved the other way. The columns divide by the push at "
        "r = 1. The MHPO rows are the same for both signs (the gradient is linear in A); "
        "the clipped losses' are not (the clip depends on the sign).",
        "",
        "## Effective trust region",
        "",
        "Where the push first falls below half its push at r = 1, moving away from 1 in "
        "the advantage's direction (1% steps; clipping at 0.2 gives 1.2 and 0.8).",
        "",
        "| loss | A = +1: upper edge | A = -1: lower edge |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_edge(up)} | {_edge(down)} |" for label, (up, down) in edges().items()]
    for adv, about in ((1.0, "A = +1 (push the token up)"), (-1.0, "A = -1 (push it down)")):
        lines += [
            "",
            f"## {about}",
            "",
            "| loss | at r = 1 | " + " | ".join(f"r={r:g}" for r in ratios) + " |",
            "|---|---|" + "---|" * len(ratios),
        ]
        for label, by_sign in weights.items():
            row = by_sign[adv]
            at_one = row[1.0]
            rel = [row[r] / at_one if at_one else float("nan") for r in ratios]
            lines.append(
                f"| {label} | {at_one:.3f} | " + " | ".join(f"{v:+.2f}" for v in rel) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the markdown here")
    args = parser.parse_args(argv)
    text = render(table(RATIOS), RATIOS)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
