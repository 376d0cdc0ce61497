"""The GPU tier (``pytest -m gpu``): the paths a GPU user takes, on CUDA.

Skipped without CUDA. On a GPU machine: log-prob consistency on the device in float32
and under bfloat16 autocast, the verifiers in that environment (main thread and worker
process), and the tiny recipe end to end in float32 and bfloat16 through the real CLI
(weights move, held-out accuracy rises, the checkpoint reloads and generates).
"""

from __future__ import annotations

import threading

import pytest
import torch
from test_train_e2e import _metrics, _train, _weights

from mhpo_vl.embedded.tiny import build_embedded, parse_embedded, task_rows
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.rewards.mathcheck import math_equal, math_verify_problem
from mhpo_vl.rewards.verifiers import accuracy
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts

pytestmark = pytest.mark.gpu
SMALL = "sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0"


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vl")
    build_embedded(parse_embedded(f"tiny-vl?{SMALL}"), out)
    return out


# generate (KV cache, one token at a time) and a full re-forward run different kernels:
# float32 agrees closely; under bfloat16 autocast, to bfloat16's resolution
TOLERANCE = {"float32": (1e-3, 1e-4), "bfloat16": (0.25, 0.02)}  # (max, mean) |difference|


@pytest.mark.parametrize("dtype, master", [("float32", "float32"), ("bfloat16", "float32")])
def test_sample_logprobs_match_reforward_on_cuda(vl_dir, dtype, master):
    policy = load_policy(str(vl_dir), dtype=dtype, master_dtype=master, device="cuda")
    assert next(policy.model.parameters()).device.type == "cuda"
    torch.manual_seed(0)
    batch = HFEngine(policy).generate(
        build_prompts(task_rows("vision", "test", 6)),
        SamplingParams(n=2, max_new_tokens=8, temperature=1.0),
    )
    assert batch.input_ids.device.type == "cuda" and batch.sample_logprobs.device.type == "cuda"
    with torch.no_grad(), policy.autocast():
        logp, _ = token_logprobs(policy.model, batch)
    mask = batch.response_mask
    assert mask.sum() > len(batch)
    diff = ((logp - batch.sample_logprobs) * mask).abs()
    max_tol, mean_tol = TOLERANCE[dtype]
    assert diff.max() < max_tol and diff.sum() / mask.sum() < mean_tol, (diff.max(), diff.mean())


def test_verifiers_work_in_this_environment():
    assert math_verify_problem() is None
    assert math_equal("\\frac{1}{2}", "0.5")
    found = []
    thread = threading.Thread(target=lambda: found.append(math_equal("\\frac{1}{2}", "0.5")))
    thread.start()
    thread.join()
    assert found == [True]
    assert accuracy("The answer is \\boxed{\\frac{1}{2}}", {"answer": "0.5"}) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_recipe_learns_on_cuda(tmp_path, dtype):
    out = tmp_path / dtype
    _train(
        "recipes/tiny/mhpo.yaml", out, f"model.dtype={dtype}", "trainer.max_steps=40",
        "trainer.prompts_per_step=16", "rollout.group_size=8", "eval.size=200",
        "eval.every=0", "trainer.save_every=20",
    )  # fmt: skip
    records = _metrics(out)
    assert all(r["perf/gpu_memory_gb_max"] > 0 for r in records[1:])  # the step's peak
    first, last = records[0]["eval/accuracy"], records[-1]["eval/accuracy"]
    assert last > first, (first, last)
    a, b = _weights(out / "checkpoint-20"), _weights(out / "checkpoint-40")
    changed = sum(int((a[k] != b[k]).sum()) for k in a) / sum(v.numel() for v in a.values())
    assert changed > 0.9
    policy = load_policy(str(out / "checkpoint-40"), dtype=dtype, device="cuda")
    batch = HFEngine(policy).generate(
        build_prompts(task_rows("vision", "test", 2)), SamplingParams(n=1, max_new_tokens=4)
    )
    assert len(batch.completions) == 2
