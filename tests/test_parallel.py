"""Training over processes on CPU: real torchrun, gloo, DDP and FSDP2 (``fully_shard``).

The same recipe on 2 processes must give the same weights whether the model is
replicated (DDP) or sharded (FSDP2), and an FSDP2 run stopped after a checkpoint must
resume to exactly the weights of an uninterrupted one.

**The collective rule.** Every FSDP torchrun here runs with
``TORCH_DISTRIBUTED_DEBUG=DETAIL``: before each collective, torch checks that every
process calls the same one, with tensors of the same shapes, dtypes and device types.
A rank-dependent branch, which NCCL would answer with a hang, fails at once with both
collectives named (``test_a_rank_dependent_collective_fails_fast``). FSDP is where the
trainer keeps processes in step by hand; DDP runs go without it, since in torch 2.13
DDP's constructor crashes (SIGSEGV, in its logger) under ``DETAIL``. Which device a collective's tensors
are on (NCCL takes GPU tensors only) cannot differ on CPU processes; the strict-device
tier checks placement, and :func:`mhpo_vl.parallel.backend_for` gives a CPU offloaded
run the gloo half it needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mhpo_vl.training.evaluation import share
from mhpo_vl.training.metrics import reduce_over_processes, rule, summarize

ROOT = Path(__file__).resolve().parents[1]
# 2 processes x (2 prompts x 4) rollouts, 2 minibatches of 4 split 3 + 1 (accumulation),
# eval on 15 rows: 8 + 7, so FSDP pads one process's share to stay in step
SHORT = [
    "trainer.prompts_per_step=4", "rollout.group_size=4", "trainer.minibatches=2",
    "trainer.micro_batch_size=3", "eval.size=15", "eval.every=0", "trainer.max_steps=3",
    "trainer.save_every=2", "trainer.progress_bar=false", "trainer.report_to=[]",
    "trainer.num_threads=1",
]  # fmt: skip


# the collective rule (see the module docstring), on in every FSDP torchrun here
CHECKED = {**os.environ, "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}


def _launch(
    target: list[str], port: int, nproc: int = 2, timeout: float = 900, checked: bool = True
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(port), *target,
    ]  # fmt: skip
    env = CHECKED if checked else os.environ.copy()
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env)


def _torchrun(
    out: Path, *overrides: str, port: int, recipe: str = "recipes/tiny/mhpo.yaml", nproc: int = 2
):
    args = ["-m", "mhpo_vl", "train", recipe, f"trainer.output_dir={out}", *SHORT, *overrides]
    res = _launch(args, port, nproc, checked="parallel.strategy=fsdp" in overrides)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
def test_fsdp2_matches_ddp_on_two_processes_and_resumes_exactly(tmp_path):
    ddp, fsdp, fsdp_mb = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "fsdp_mb"
    res = _torchrun(ddp, "parallel.strategy=ddp", port=29541)
    assert "training on 2 process(es) (ddp)" in res.stderr
    # reducing once per minibatch, as DDP does: the same sums in the same order
    res = _torchrun(fsdp, "parallel.strategy=fsdp", "parallel.grad_sync=minibatch", port=29542)
    assert "training on 2 process(es) (fsdp)" in res.stderr
    # the default: a reduce-scatter after every micro-batch (3 + 1 here)
    _torchrun(fsdp_mb, "parallel.strategy=fsdp", port=29544)

    # logged once, by the main process; eval at the start and the end
    for out in (ddp, fsdp):
        records = _metrics(out)
        assert [r["step"] for r in records] == [0, 1, 2, 3]
        assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
        assert (out / "checkpoint-3" / "model.safetensors").exists()
    # the same weights, replicated or sharded (float32 tolerance; here they are equal)
    a, b = _weights(ddp / "checkpoint-3"), _weights(fsdp / "checkpoint-3")
    assert a.keys() == b.keys()  # tied lm_head saved once, as save_pretrained does
    start = _weights(ddp / "checkpoint-2")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training moved them
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    # per micro-batch reduction adds the same gradients in another order: float32
    # rounding, which AdamW turns into at most lr-sized steps where a gradient is ~0
    c = _weights(fsdp_mb / "checkpoint-3")
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=1e-4, msg=k)
    # eval over 15 rows: FSDP's padded share is not counted twice
    d, f = _metrics(ddp), _metrics(fsdp)
    assert f[0]["eval/accuracy"] == d[0]["eval/accuracy"]
    assert round(d[0]["eval/accuracy"] * 15, 6) == round(d[0]["eval/accuracy"] * 15)
    for m in (f, _metrics(fsdp_mb)):
        for key in ("loss", "grad_norm", "reward/mean"):
            assert m[1][key] == pytest.approx(d[1][key], rel=1e-5, abs=1e-7), key

    # stopped after checkpoint-2, resumed: exactly the uninterrupted weights
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoint-3")
    res = _torchrun(resumed, "parallel.strategy=fsdp", "parallel.grad_sync=minibatch", port=29543)
    assert "resumed from" in res.stderr
    c = _weights(resumed / "checkpoint-3")
    assert all(torch.equal(c[k], b[k]) for k in b)
    assert [r["step"] for r in _metrics(resumed)] == [0, 1, 2, 3]


def test_eval_share_pads_to_equal_counts_only_in_lockstep():
    rows = [{"id": i} for i in range(5)]
    assert share(rows, 1, 2, lockstep=False) == ([{"id": 1}, {"id": 3}], 2)
    mine, counted = share(rows, 1, 2, lockstep=True)
    assert len(mine) == 3 and counted == 2 and mine[:2] == [{"id": 1}, {"id": 3}]
    # more processes than rows: a process with none still runs the same number
    mine, counted = share(rows[:1], 1, 2, lockstep=True)
    assert mine == [{"id": 0}] and counted == 0


def test_metric_reduction_table():
    assert rule("ratio_max").over_processes == "max"
    assert rule("ratio_min").in_step == "min"
    assert rule("reward_failures/accuracy").over_processes == "sum"
    # micro-batch losses add up within an update; updates are averaged
    out = summarize(
        {"loss": [1.0, 2.0, 3.0, 4.0], "grad_norm": [0.5, 0.7], "skipped_steps": [0.0, 1.0]}
    )
    assert out == {"loss": 5.0, "grad_norm": 0.6, "skipped_steps": 1.0}

    class TwoProcesses:
        world = 2

        def gather(self, item):
            return [item, {"ratio_max": 9.0, "loss": 3.0, "reward_failures/x": 2.0}]

    got = reduce_over_processes(
        TwoProcesses(), {"ratio_max": 2.0, "loss": 1.0, "reward_failures/x": 1.0}
    )
    assert got == {"ratio_max": 9.0, "loss": 2.0, "reward_failures/x": 3.0}


@pytest.mark.slow
def test_fsdp2_dapo_mixed_precision_checkpointing_offload_frozen_vision(tmp_path):
    """DAPO with a KL reference, bf16 compute over float32 master shards, activation
    checkpointing, CPU offload and a frozen vision tower together: the language model
    learns, the vision tower stays put, and the checkpoint holds float32 weights.

    Dynamic sampling lets processes keep different numbers of groups and try different
    numbers of times; under FSDP2 every forward is a collective, so a process out of
    step would hang: finishing at all is part of the test (the timeout is the failure)."""
    out = tmp_path / "opts"
    _torchrun(
        out, "parallel.strategy=fsdp", "parallel.cpu_offload=true", "model.dtype=bfloat16",
        "model.gradient_checkpointing=true", "model.freeze_vision=true", "trainer.max_steps=2",
        "trainer.save_every=0", "eval.at_start=false", "eval.size=4", "algorithm.kl_coef=0.01",
        port=29545, recipe="recipes/tiny/dapo.yaml",
    )  # fmt: skip
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["dynamic_sampling/tries"] >= 1 for r in records)
    from mhpo_vl.embedded.tiny import ensure_embedded

    before = _weights(ensure_embedded("tiny-vl"))
    after = _weights(out / "checkpoint-2")
    assert all(t.dtype == torch.float32 for t in after.values())
    vision = [k for k in after if k.startswith(("visual.", "model.visual."))]
    assert vision and all(torch.equal(after[k], before[k]) for k in vision)
    assert any(not torch.equal(after[k], before[k]) for k in after if k not in vision)


@pytest.mark.slow
def test_a_rank_dependent_collective_fails_fast(tmp_path):
    """The collective rule at work: eval rows shared without padding (a bug put back)
    make one process call ``generate`` once more than the other; under FSDP each call
    gathers the weights. NCCL would hang; here the run stops, naming the mismatch."""
    out = tmp_path / "bug"
    args = [
        "tests/run_with_bug.py", "eval_share_unpadded", "train", "recipes/tiny/mhpo.yaml",
        f"trainer.output_dir={out}", *SHORT, "parallel.strategy=fsdp", "eval.batch_size=7",
        "trainer.max_steps=1",
    ]  # fmt: skip
    res = _launch(args, port=29546, timeout=300)
    assert res.returncode != 0
    assert "mismatch" in res.stderr.lower(), res.stderr[-3000:]


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A random Qwen2 of 142M parameters (570 MB in float32): large enough that holding
    it whole or by halves shows in a process's memory. Small vocabulary, so that no
    single tensor is a large part of it."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from mhpo_vl.embedded.tiny import ensure_embedded

    path = tmp_path_factory.mktemp("big") / "qwen2"
    config = Qwen2Config(
        vocab_size=4096, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
        num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(ensure_embedded("tiny-text")).save_pretrained(path)
    return path


@pytest.mark.slow
def test_two_process_checks(tmp_path, big_model):
    """``tests/parallel_checks.py`` under torchrun: loading, gradient sync, generation
    and set-up as the processes see them (one launch for all)."""
    out = tmp_path / "checks.json"
    # unchecked: its set-up check builds a DDP model (see the module docstring)
    target = ["tests/parallel_checks.py", str(out), str(big_model)]
    res = _launch(target, port=29547, checked=False)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads(out.read_text())

    # loading: each process holds its shards (and one tensor in transit), never the model
    load = ranks[1]["load"]
    assert load["local_bytes"] <= 0.55 * load["full_bytes"]
    assert load["growth"] < 0.75 * load["full_bytes"], load

    # micro_batch: a reduce-scatter after each backward, only gradient shards are kept;
    # minibatch: whole gradients wait, inside FSDP, for the last micro-batch
    for rank in ranks:
        mb, whole = rank["grad_sync"]["micro_batch"], rank["grad_sync"]["minibatch"]
        assert mb["with_grad"] == mb["parameters"]
        assert mb["local_grad_elements"] <= 0.55 * mb["elements"]
        assert whole["with_grad"] == 0

    # generate under FSDP: every unit gathered once per call, however many tokens
    for rank in ranks:
        gen = rank["generate"]
        assert gen["all_gathers"]["4"] == gen["all_gathers"]["12"] == gen["units"], gen

    # set-up: per-rank sampling streams, equal weights, no second autocast from the
    # environment, no search for unused parameters (every row has an image)
    a, b = ranks[0]["setup"], ranks[1]["setup"]
    assert a["same_weights"] and not a["same_draws"]
    assert a["mixed_precision"] == "no" and a["wrapped"] == "DistributedDataParallel"
    assert a["find_unused_parameters"] is False and b["find_unused_parameters"] is False


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_process_and_exports(tmp_path):
    """An FSDP checkpoint written by 2 processes: resumed by 1 (resharded as it loads),
    and exported as a stock Hugging Face model equal to what DDP trained."""
    from mhpo_vl import checkpoint
    from mhpo_vl.export import export_checkpoint

    two, ddp = tmp_path / "two", tmp_path / "ddp"
    steps = ["trainer.max_steps=2", "trainer.save_every=1", "eval.at_start=false"]
    _torchrun(two, "parallel.strategy=fsdp", "parallel.grad_sync=minibatch", *steps, port=29548)
    _torchrun(ddp, "parallel.strategy=ddp", *steps, port=29549)
    ckpt = two / "checkpoint-1"
    assert checkpoint.is_sharded(ckpt) and not list(ckpt.glob("model*.safetensors"))
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # each process wrote its own shards
    assert (two / "checkpoint-2" / "model.safetensors").exists()  # the final one: HF too

    exported = export_checkpoint(ckpt, tmp_path / "export")
    a, b = _weights(exported), _weights(ddp / "checkpoint-1")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(exported)
    assert torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)

    shutil.rmtree(two / "checkpoint-2")
    res = _torchrun(two, "parallel.strategy=fsdp", *steps, "trainer.max_steps=3",
                    port=29550, nproc=1)  # fmt: skip
    assert "written by 2 process(es), this run has 1" in res.stderr
    assert [r["step"] for r in _metrics(two)] == [1, 2, 3]


def test_the_process_group_backend_follows_the_device_and_offload():
    from mhpo_vl.parallel import backend_for, resolve_grad_sync

    assert backend_for("cuda", cpu_offload=False) == "nccl"
    # offloaded gradients are CPU tensors some collectives reduce: NCCL alone cannot
    assert backend_for("cuda", cpu_offload=True) == "cuda:nccl,cpu:gloo"
    assert backend_for("cpu", cpu_offload=True) == "gloo"
    assert resolve_grad_sync("auto", "fsdp") == "micro_batch"
    assert resolve_grad_sync("auto", "ddp") == "minibatch"
    assert resolve_grad_sync("minibatch", "fsdp") == "minibatch"


def test_ddp_searches_for_unused_parameters_only_when_some_can_be():
    """A trainable vision tower and training rows without an image: a batch of those
    leaves the tower without gradients. Anything else: no search (a traversal a step)."""
    from types import SimpleNamespace

    from mhpo_vl.models import load_policy
    from mhpo_vl.training.state import may_leave_parameters_unused

    vl, text = load_policy("embedded:tiny-vl"), load_policy("embedded:tiny-text")
    some_text, all_images = SimpleNamespace(text_only=3), SimpleNamespace(text_only=0)
    assert may_leave_parameters_unused(vl, some_text)
    assert not may_leave_parameters_unused(vl, all_images)
    assert not may_leave_parameters_unused(text, some_text)
    frozen = load_policy("embedded:tiny-vl", freeze_vision=True)
    assert not may_leave_parameters_unused(frozen, some_text)
