"""One process of the 2-process tensor-parallel check in ``tests/test_rollout_vllm.py``.

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/vllm_tp_worker.py``:
a gloo process group, the vLLM stand-in (``tests/vllm_standin.py``) as ``vllm``, and
one ``VLLMEngine`` per process with ``tensor_parallel_size=2``, i.e. one TP group under
``external_launcher``. Each rank has its own prompts (a different number each); vLLM's
engines of a group must get identical requests (the stand-in raises otherwise), so the
engine must gather the group's prompts, generate them all and keep its own share.
Exits non-zero, with the failed assertion, on any mismatch; prints ``ok rank R``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vllm_standin  # noqa: E402

from mhpo_vl.embedded.tiny import task_rows  # noqa: E402
from mhpo_vl.models import load_policy  # noqa: E402
from mhpo_vl.rollout import SamplingParams, VLLMEngine, build_prompts  # noqa: E402
from mhpo_vl.rollout.encode import encode_prompts  # noqa: E402


def prompt_ids(policy, prompts) -> list[list[int]]:
    enc = encode_prompts(policy, prompts)
    return [enc.input_ids[p][enc.attention_mask[p].bool()].tolist() for p in range(len(prompts))]


def gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def main() -> None:
    sys.modules["vllm"] = vllm_standin
    sys.modules["vllm.config"] = vllm_standin.config
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    policy = load_policy("embedded:tiny-text")
    args = VLLMEngine.check_args(
        {"max_model_len": 512, "tensor_parallel_size": 2, "seed": 7}, "rollout.engine_args"
    )
    engine = VLLMEngine(policy, **args)
    llm = engine.llm
    assert engine.lockstep is True
    assert llm.init_kwargs["distributed_executor_backend"] == "external_launcher"
    assert gather(llm.init_kwargs["seed"]) == [7, 7]  # one TP group: one seed
    assert llm.weight_calls == ["generator"]  # the worker is in this process: streamed

    prompts = build_prompts(task_rows("text", "train", 2 + rank, seed=10 + rank))
    batch = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=4))
    ours = prompt_ids(policy, prompts)
    assert len(batch) == 2 * len(prompts)
    P = batch.prompt_len
    for p, ids in enumerate(ours):  # this rank's own prompts, in order, n rows each
        for j in range(2):
            row = 2 * p + j
            got = batch.input_ids[row, :P][batch.attention_mask[row, :P].bool()].tolist()
            assert got == ids, (rank, p)
    everyone = gather(ours)
    sent = [r["prompt_token_ids"] for r in llm.requests]
    assert sent == everyone[0] + everyone[1]  # vLLM ran the group's prompts, rank 0 first

    # lockstep: a rank with nothing to generate still takes part
    mine = prompts[:1] if rank == 0 else []
    batch = engine.generate(mine, SamplingParams(n=1, max_new_tokens=3, temperature=0.0))
    assert len(batch) == len(mine)
    assert [r["prompt_token_ids"] for r in llm.requests[len(sent) :]] == everyone[0][:1]
    print(f"ok rank {rank}", flush=True)


if __name__ == "__main__":
    from mhpo_vl.parallel import exit_process

    main()
    exit_process(0)  # see there: a plain exit can abort in gloo's threads
