"""policy_loss never moves its inputs: tensors on another device are named, not crashed on
deep inside a loss (the GPU machine saw "found at least two devices, cuda:0 and cpu")."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.algorithms import policy_loss
from mhpo_vl.errors import UserError


def _inputs():
    logp = torch.zeros(2, 3, requires_grad=True)
    return logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3)


@pytest.mark.parametrize("moved", ["old_logprobs", "advantages", "mask", "ref_logprobs"])
def test_inputs_on_another_device_are_named(moved):
    logp, old, adv, mask = _inputs()
    args = {"old_logprobs": old, "advantages": adv, "mask": mask, "ref_logprobs": old.clone()}
    args[moved] = args[moved].to("meta")  # a second device that exists on every machine
    with pytest.raises(UserError, match=rf"logprobs on cpu, {moved} on meta"):
        policy_loss(
            "mhpo", logp, args["old_logprobs"], args["advantages"], args["mask"],
            ref_logprobs=args["ref_logprobs"], kl_coef=0.1,
        )  # fmt: skip


def test_inputs_on_one_device_pass():
    logp, old, adv, mask = _inputs()
    out = policy_loss("mhpo", logp, old, adv, mask)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all()
