"""Checks that need real processes, run under ``torchrun --nproc_per_node 2`` (gloo):

    python -m torch.distributed.run --nproc_per_node 2 tests/parallel_checks.py OUT BIG_MODEL

Each check returns plain data; rank 0 writes every rank's results to ``OUT`` (JSON) for
``tests/test_parallel.py`` to assert on. One launch for all of them: a torchrun start
costs seconds.

- ``load``: the FSDP2 load (meta device, shard, broadcast from rank 0): how much this
  process's memory grew, against the model's size (``BIG_MODEL``, a random model big
  enough to dominate the process's own footprint);
- ``grad_sync``: after a micro-batch that is not the minibatch's last, whether FSDP kept
  only gradient shards (``micro_batch``) or whole gradients (``minibatch``);
- ``generate``: all-gathers during one hf ``generate`` under FSDP, with 4 and 12 new
  tokens (once per unit and call, not per token);
- ``setup``: the trainer's setup under DDP with ``ACCELERATE_MIXED_PRECISION=bf16`` in
  the environment: its random stream (per rank), its weights (equal), accelerate's
  mixed precision (off) and DDP's search for unused parameters (off).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def check_load(big_model: str) -> dict[str, Any]:
    from mhpo_vl.config import ParallelConfig
    from mhpo_vl.models import load_policy
    from mhpo_vl.parallel import build_parallel

    par = build_parallel(ParallelConfig(strategy="fsdp"))
    before = _rss_bytes()
    policy = par.load(lambda device: load_policy(big_model, device=device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    full = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    local = sum(p.to_local().numel() * p.element_size() for p in policy.model.parameters())
    return {"growth": peak - before, "full_bytes": full, "local_bytes": local}


def _tiny_fsdp(grad_sync: str) -> tuple[Any, Any]:
    from mhpo_vl.config import ParallelConfig
    from mhpo_vl.models import load_policy
    from mhpo_vl.parallel import build_parallel

    par = build_parallel(ParallelConfig(strategy="fsdp", grad_sync=grad_sync))
    policy = par.load(lambda device: load_policy("embedded:tiny-text", device=device))
    return par, policy


def _batch(policy: Any, n: int = 2) -> Any:
    from mhpo_vl.batch import SamplingParams
    from mhpo_vl.rollout.hf import HFEngine

    prompts = [{"messages": [{"role": "user", "content": "2+3="}]}] * n
    return HFEngine(policy).generate(prompts, SamplingParams(n=1, max_new_tokens=4))


def check_grad_sync() -> dict[str, Any]:
    from mhpo_vl.models import token_logprobs

    out = {}
    for mode in ("micro_batch", "minibatch"):
        par, policy = _tiny_fsdp(mode)
        batch = _batch(policy)
        with par.accumulate(policy.model, last=False):
            logp, _ = token_logprobs(policy.model, batch)
            par.backward(logp.sum())
        grads = [p.grad for p in policy.model.parameters()]
        out[mode] = {
            "with_grad": sum(g is not None for g in grads),
            "parameters": len(grads),
            "local_grad_elements": sum(g.to_local().numel() for g in grads if g is not None),
            "elements": sum(p.numel() for p in policy.model.parameters()),
        }
    return out


def check_generate() -> dict[str, Any]:
    from torch.distributed.fsdp import FSDPModule

    from mhpo_vl.batch import SamplingParams
    from mhpo_vl.rollout.hf import HFEngine

    _, policy = _tiny_fsdp("micro_batch")
    engine = HFEngine(policy)
    calls = []
    real = dist.all_gather_single

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    dist.all_gather_single = counting
    prompts = [{"messages": [{"role": "user", "content": "1+1="}]}]
    counts = {}
    try:
        for tokens in (4, 12):
            calls.clear()
            engine.generate(prompts, SamplingParams(n=2, max_new_tokens=tokens))
            counts[tokens] = len(calls)
    finally:
        dist.all_gather_single = real
    units = sum(isinstance(m, FSDPModule) for m in policy.model.modules())
    return {"all_gathers": counts, "units": units}


def check_setup(out_dir: str) -> dict[str, Any]:
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    from mhpo_vl.training.state import setup
    from mhpo_vl.validation import load_recipe

    cfg = load_recipe(
        str(ROOT / "recipes/tiny/mhpo.yaml"),
        [f"trainer.output_dir={out_dir}", "trainer.report_to=[]", "eval.size=4"],
    )
    run = setup(cfg)
    weights = torch.cat([p.detach().flatten()[:64] for p in run.model.parameters()])
    draws = torch.rand(4)
    both = run.par.gather({"weights": weights.tolist(), "draws": draws.tolist()})
    return {
        "same_weights": both[0]["weights"] == both[1]["weights"],
        "same_draws": both[0]["draws"] == both[1]["draws"],
        "mixed_precision": str(run.par.accelerator.mixed_precision),
        "find_unused_parameters": bool(getattr(run.model, "find_unused_parameters", None)),
        "wrapped": type(run.model).__name__,
    }


def main() -> None:
    out, big_model = sys.argv[1], sys.argv[2]
    results = {
        "setup": check_setup(str(Path(out).parent / "setup_run")),
        "load": check_load(big_model),
        "grad_sync": check_grad_sync(),
        "generate": check_generate(),
    }
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(gathered, indent=1))


if __name__ == "__main__":
    from mhpo_vl.parallel import exit_process

    main()
    exit_process(0)  # see there: a plain exit can abort in gloo's threads
