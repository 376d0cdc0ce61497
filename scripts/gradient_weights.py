"""How hard each policy loss pushes a token, as a function of its importance ratio.

    python scripts/gradient_weights.py                 # markdown table on stdout
    python scripts/gradient_weights.py --out FILE.md   # and into a file

For one token with advantage A = +1 (a response better than its group) and A = -1
(worse), and importance ratio r = exp(logp - old_logp), the script asks the project's own
:func:`mhpo_vl.algorithms.policy_loss` for the loss and takes ``|dL/dlogp|`` by autograd:
the weight the token's log-probability gets in the update. A clipped loss (GRPO, DAPO,
GSPO) gives ``r`` inside its range and 0 outside it; MHPO gives
``exp(psi - zeta) * sech^2(d / c)``, which never reaches 0.

Read the table as the update's trust region. The update epochs after the first see
ratios away from 1: where the weight stays large there, the policy keeps moving in
the same direction within one batch of rollouts; where it drops to 0 it stops. With
Adam a constant factor over every token washes out, so the shape across r matters
more than the level (the columns ``/ r=1`` divide by the weight at r = 1).

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
    ("mhpo, relu shift", "mhpo", {"shift": "relu"}),
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
    """``|dL/dlogp|`` for one token with this ratio and advantage, from ``policy_loss``."""
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
    return abs(float(grad))


def table(ratios: Sequence[float] = RATIOS) -> dict[str, dict[float, dict[str, float]]]:
    """label -> advantage sign (+1.0 / -1.0) -> ``{r: weight}``."""
    return {
        label: {
            a: {r: weight(name, r, a, **hyper) for r in dict.fromkeys((*ratios, 1.0))}
            for a in (1.0, -1.0)
        }
        for label, name, hyper in LOSSES
    }


def render(weights: dict[str, dict[float, dict[str, float]]], ratios: Sequence[float]) -> str:
    lines = [
        "# Gradient weight per token against its importance ratio",
        "",
        "`|dL/dlogp|` of one token, from `mhpo_vl.algorithms.policy_loss` by autograd "
        "(`python scripts/gradient_weights.py`); each loss at its defaults unless the row "
        "says otherwise. The `/ r=1` rows divide by the weight at r = 1.",
    ]
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
                f"| {label} | {at_one:.3f} | " + " | ".join(f"{v:.2f}" for v in rel) + " |"
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
