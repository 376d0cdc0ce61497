"""concat_batches (DAPO dynamic sampling joins groups from several rollout rounds)."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.batch import concat_batches
from mhpo_vl.data.synthetic import synthetic_vision
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts


@pytest.fixture(scope="module")
def policy():
    return load_policy("embedded:tiny-vl?sft_steps=0")


def test_concat_keeps_every_rows_tokens_images_and_logprobs(policy):
    torch.manual_seed(0)
    ds = synthetic_vision("train", n=6)
    rows = [dict(ds[i]) for i in range(6)]
    rows[0]["question"] = (
        rows[0]["question"] + " Think about the colours and the positions carefully."
    )
    engine = HFEngine(policy)
    a = engine.generate(build_prompts(rows[:3]), SamplingParams(n=2, max_new_tokens=6))
    b = engine.generate(build_prompts(rows[3:]), SamplingParams(n=2, max_new_tokens=3))
    assert a.prompt_len != b.prompt_len  # the long question widens a's prompts
    both = concat_batches([a.select([0, 1, 4]), b.select([2, 5])])
    assert len(both) == 5 and both.completions == [a.completions[i] for i in (0, 1, 4)] + [
        b.completions[i] for i in (2, 5)
    ]
    with torch.no_grad():
        lp_a, _ = token_logprobs(policy.model, a)
        lp_b, _ = token_logprobs(policy.model, b)
        lp, _ = token_logprobs(policy.model, both)
    T_a, T_b = a.response_mask.shape[1], b.response_mask.shape[1]
    torch.testing.assert_close(
        lp[:3, :T_a] * both.response_mask[:3, :T_a],
        lp_a[[0, 1, 4]] * a.response_mask[[0, 1, 4]],
        atol=2e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        lp[3:, :T_b] * both.response_mask[3:, :T_b],
        lp_b[[2, 5]] * b.response_mask[[2, 5]],
        atol=2e-5,
        rtol=0,
    )
    assert (
        both.response_mask.sum() == a.response_mask[[0, 1, 4]].sum() + b.response_mask[[2, 5]].sum()
    )
    assert both.extra["pixel_values"].shape[0] == (
        a.select([0, 1, 4]).extra["pixel_values"].shape[0]
        + b.select([2, 5]).extra["pixel_values"].shape[0]
    )
