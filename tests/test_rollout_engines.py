"""The rollout-engine protocol: what every engine declares, how its arguments are
checked, and how ``trainer.old_logprobs`` follows from the engine's declaration."""

from __future__ import annotations

import pytest
import torch

from mhpo_vl.batch import SamplingParams
from mhpo_vl.embedded.tiny import task_rows
from mhpo_vl.errors import UserError
from mhpo_vl.models import load_policy
from mhpo_vl.rollout import (
    ENGINES,
    HFEngine,
    RolloutEngine,
    build_engine,
    build_prompts,
    resolve_old_logprobs,
)
from mhpo_vl.rollout.engine import LOGPROB_KINDS


@pytest.fixture(scope="module")
def policy():
    return load_policy("embedded:tiny-vl")


# what a recipe must give an engine (everything else has a default)
REQUIRED_ARGS = {"hf": {}, "vllm": {"max_model_len": 4096}}


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_declares_what_the_trainer_reads(name):
    factory = ENGINES.get(name)
    assert factory.logprobs in LOGPROB_KINDS
    for method in ("generate", "sync_weights", "sleep", "wake", "check_args"):
        assert callable(getattr(factory, method)), f"{name}.{method}"
    required = REQUIRED_ARGS[name]
    args = factory.check_args(required, "rollout.engine_args")  # the defaults fill the rest
    assert isinstance(args, dict) and required.items() <= args.items()


def test_hf_engine_implements_the_protocol(policy):
    engine = build_engine("hf", policy, {"batch_size": 4})
    assert isinstance(engine, RolloutEngine) and engine.batch_size == 4
    assert engine.logprobs == "exact"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"batch_size": 0}, "rollout.engine_args.batch_size: must be None or an integer >= 1"),
        ({"batch_size": True}, "rollout.engine_args.batch_size"),
        ({"bacth_size": 2}, "rollout.engine_args.bacth_size: unknown engine argument"),
        ({"cache_implementation": "paged"}, "rollout.engine_args.cache_implementation"),
        ({"compile": "yes"}, "rollout.engine_args.compile: expected true or false"),
    ],
)
def test_hf_engine_args_errors_name_the_key(args, message):
    with pytest.raises(UserError, match=message):
        HFEngine.check_args(args, "rollout.engine_args")


@pytest.mark.parametrize(
    ("setting", "engine", "temperature", "expected"),
    [
        ("auto", "exact", 1.0, "rollout"),
        ("auto", "exact", 0.7, "recompute"),  # tempered log-probs are another policy's
        ("auto", "approximate", 1.0, "recompute"),
        ("auto", "none", 1.0, "recompute"),
        ("recompute", "exact", 1.0, "recompute"),
        ("rollout", "exact", 1.0, "rollout"),
    ],
)
def test_old_logprobs_follow_from_the_engine(setting, engine, temperature, expected):
    assert resolve_old_logprobs(setting, engine, temperature) == expected


def test_old_logprobs_rollout_that_cannot_be_right_is_refused():
    with pytest.raises(UserError, match="sampling log-probs are exact; this engine's are"):
        resolve_old_logprobs("rollout", "approximate", 1.0)
    with pytest.raises(UserError, match="needs rollout.temperature 1.0"):
        resolve_old_logprobs("rollout", "exact", 0.5)


def test_static_kv_cache_generates_what_the_dynamic_one_does(policy):
    """``engine_args.cache_implementation: static`` (what lets transformers compile the
    decoding step on GPU) changes how, not what: same greedy tokens and log-probs."""
    prompts = build_prompts(task_rows("vision", "test", 3), "plain")
    params = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    torch.manual_seed(0)
    dynamic = HFEngine(policy).generate(prompts, params)
    static = HFEngine(policy, cache_implementation="static", compile=False).generate(
        prompts, params
    )
    assert torch.equal(static.input_ids, dynamic.input_ids)
    assert static.completions == dynamic.completions
    torch.testing.assert_close(
        static.sample_logprobs, dynamic.sample_logprobs, atol=1e-5, rtol=1e-5
    )
