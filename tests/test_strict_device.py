"""The strict-device tier (``pytest -m strict_device``): the real trainer on a fake
accelerator whose tensors must stay on their device (``tests/fake_accelerator.py``).

Each scenario trains the tiny recipes through ``mhpo_vl.trainer.train`` with the
process's device set to ``fakegpu:N``: rollout (hf generate), log-probs, loss, backward,
clipping, AdamW, checkpoint save and resume. A tensor left on the CPU where a GPU needs
it fails here as it would on the GPU. The tests that reintroduce a known bug show the
tier catches it.
"""

from __future__ import annotations

import math

import fake_accelerator as fake
import pytest
import strict_device as sd

pytestmark = pytest.mark.strict_device
VL, TEXT = "recipes/tiny/mhpo.yaml", "recipes/tiny/mhpo_text.yaml"


def _train(*args, **kwargs):
    return fake.run_isolated(sd.train, *args, **kwargs)


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_vl_recipe_trains_on_the_device_and_resumes_exactly(tmp_path):
    # constant lr: a shorter first run stands in for an interruption (the recipe's
    # cosine decay depends on max_steps)
    const = "optim.scheduler=constant"
    full = _train(VL, str(tmp_path / "full"), ["trainer.max_steps=3", const])
    assert full["device"] == "fakegpu:0"
    assert full["misplaced"] == {"parameters": [], "gradients": [], "optimizer": []}
    assert _finite(full["metrics"]) and full["metrics"]["loss"] == full["metrics"]["loss"]
    assert "eval/accuracy" in full["metrics"]
    # nothing was ever put on the other device of the node
    assert full["allocated"][0] > 0 and full["allocated"][1] == 0

    split = tmp_path / "split"
    _train(VL, str(split), ["trainer.max_steps=2", const])
    resumed = _train(VL, str(split), ["trainer.max_steps=3", const])
    assert resumed["start_step"] == 2
    # the device's generator drives sampling: resumed == uninterrupted needs its state back
    assert resumed["digests"] == full["digests"]


def test_text_recipe_with_micro_batches_on_the_device(tmp_path):
    out = _train(
        TEXT, str(tmp_path / "text"),
        ["trainer.max_steps=2", "trainer.micro_batch_size=3", "trainer.minibatches=2"],
    )  # fmt: skip
    assert out["misplaced"] == {"parameters": [], "gradients": [], "optimizer": []}
    assert _finite(out["metrics"])


def test_dapo_with_reference_model_and_recomputed_old_logprobs(tmp_path):
    out = _train(
        "recipes/tiny/dapo.yaml", str(tmp_path / "dapo"),
        ["trainer.max_steps=2", "algorithm.kl_coef=0.05", "trainer.update_epochs=2",
         "trainer.old_logprobs=recompute", "trainer.micro_batch_size=4"],
    )  # fmt: skip
    assert out["misplaced"] == {"parameters": [], "gradients": [], "optimizer": []}
    assert "kl_mean" in out["metrics"] and _finite(out["metrics"])


def test_offloaded_parameters_with_forwards_on_the_device(tmp_path):
    """Parameters resting on the CPU (FSDP2 offload) while forwards run on the device."""
    out = _train(VL, str(tmp_path / "off"), ["trainer.max_steps=1"], offloaded=True)
    assert out["metrics"]["loss"] == out["metrics"]["loss"]


def test_eval_leaves_the_device_rng_alone(tmp_path):
    state = fake.run_isolated(sd.device_rng_untouched_by_eval, VL, str(tmp_path / "rng"))
    assert state == {"cpu": True, "device": True}


def test_resume_on_another_device_puts_nothing_on_the_first(tmp_path):
    """Rank 1 resuming a checkpoint rank 0 wrote must not touch rank 0's GPU."""
    out = tmp_path / "ranks"
    _train(VL, str(out), ["trainer.max_steps=1", "eval.at_start=false"], device=0)
    resumed = _train(VL, str(out), ["trainer.max_steps=2", "eval.at_start=false"], device=1)
    assert resumed["start_step"] == 1 and resumed["node_gpu"] == 1
    assert resumed["allocated"][0] == 0


# --- the tier catches each of these bugs, reintroduced


@pytest.mark.parametrize(
    ("bug", "offloaded", "message"),
    [
        ("zeros_in_loss", False, "fakegpu:0 and cpu"),
        ("device_from_parameters", True, "fakegpu:0 and cpu"),
    ],
)
def test_the_tier_fails_on_a_reintroduced_bug(tmp_path, bug, offloaded, message):
    with pytest.raises(fake.ScenarioFailed, match=message):
        _train(
            VL, str(tmp_path / bug), ["trainer.max_steps=1", "eval.at_start=false"],
            bug=bug, offloaded=offloaded,
        )  # fmt: skip


def test_the_tier_fails_on_a_resume_without_map_location(tmp_path):
    out = tmp_path / "ranks"
    _train(VL, str(out), ["trainer.max_steps=1", "eval.at_start=false"], device=0)
    with pytest.raises(fake.ScenarioFailed, match="created on fakegpu:0 by a process whose"):
        _train(
            VL, str(out), ["trainer.max_steps=2", "eval.at_start=false"], device=1,
            bug="load_without_map_location",
        )  # fmt: skip
