"""Build the embedded tiny models and report held-out accuracy and rollout speed.

    python scripts/build_tiny.py                       # both defaults, into $MHPO_VL_CACHE
    python scripts/build_tiny.py "tiny-vl?sft_target=0&sft_steps=500" --out /tmp/ceiling
        # a longer supervised run: how far the task is learnable (the RL ceiling)

For each model: build time (0 if it was cached), parameters, greedy and sampled (T=1)
exact-match accuracy on the test split, and the time of one rollout of P x G = 8 x 4
(at most 4 new tokens) plus one forward+backward of its token log-probs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mhpo_vl.embedded.tiny import (
    EMBEDDED,
    build_embedded,
    ensure_embedded,
    parse_embedded,
    task_rows,
)
from mhpo_vl.embedded.warmstart import accuracy
from mhpo_vl.models import load_policy, token_logprobs
from mhpo_vl.rollout import HFEngine, SamplingParams, build_prompts


def rollout_seconds(policy, rows, prompts: int = 8, group: int = 4) -> dict[str, float]:
    engine = HFEngine(policy)
    params = SamplingParams(n=group, max_new_tokens=4, temperature=1.0)
    gen, train = [], []
    for i in range(3):
        chunk = build_prompts(rows[i * prompts : (i + 1) * prompts])
        start = time.perf_counter()
        batch = engine.generate(chunk, params)
        gen.append(time.perf_counter() - start)
        start = time.perf_counter()
        logp, _ = token_logprobs(policy.model, batch)
        (logp * batch.response_mask).sum().backward()
        train.append(time.perf_counter() - start)
    policy.model.zero_grad(set_to_none=True)
    return {"generate_s": round(min(gen), 3), "logprobs_fwd_bwd_s": round(min(train), 3)}


def report(name: str, path: str, test_rows: int, build_seconds: float) -> dict:
    policy = load_policy(path)
    cfg = parse_embedded(name)
    rows = task_rows(cfg.task, "test", test_rows)
    info_file = Path(path, "build_info.json")
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    torch.manual_seed(0)
    greedy = accuracy(policy, rows, temperature=0.0)
    sampled = accuracy(policy, rows, temperature=1.0)
    result = {
        "model": name,
        "path": path,
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "build_seconds": round(build_seconds, 1),
        "sft_steps_run": info.get("sft_steps_run"),
        "greedy": {k: round(v, 3) for k, v in greedy.items()},
        "sampled_T1": {k: round(v, 3) for k, v in sampled.items()},
        "rollout_PxG_8x4": rollout_seconds(policy, rows),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", default=list(EMBEDDED), help="embedded names, with ?key=value options"
    )
    parser.add_argument("--out", help="build under this directory instead of the cache")
    parser.add_argument("--test-rows", type=int, default=400)
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for name in args.names:
        start = time.perf_counter()
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            out = tempfile.mkdtemp(prefix=name.partition("?")[0] + "-", dir=args.out)
            build_embedded(parse_embedded(name), out, log=log)
        else:
            out = str(ensure_embedded(name, log=log))
        report(name, out, args.test_rows, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
