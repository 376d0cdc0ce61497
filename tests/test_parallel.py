"""Training over processes on CPU: real torchrun, gloo, DDP and FSDP2 (``fully_shard``).

The same recipe on 2 processes must give the same weights whether the model is
replicated (DDP) or sharded (FSDP2), and an FSDP2 run stopped after a checkpoint must
resume to exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
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
    "trainer.save_every=2", "trainer.progress_bar=false", "trainer.tensorboard=false",
    "trainer.num_threads=1",
]  # fmt: skip


def _torchrun(out: Path, *overrides: str, port: int, recipe: str = "recipes/tiny/mhpo.yaml"):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), "-m", "mhpo_vl", "train", recipe,
        f"trainer.output_dir={out}", *SHORT, *overrides,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
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
