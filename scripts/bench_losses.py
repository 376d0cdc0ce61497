"""Micro-benchmark (not a test): forward + backward time of every registered policy loss.

Times ``policy_loss(...)`` (per-token loss, aggregation with the loss's default mode, and
the float metrics, as the trainer calls it) plus ``.loss.backward()`` on one batch of
``B x T`` tokens, and prints the median over a few round-robin repeats in ms and relative to ``grpo``
measured in the same run. Defaults: B = T = 1024 (1M tokens), float32, CPU, one thread.

    python scripts/bench_losses.py [--batch 1024] [--tokens 1024] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mhpo_vl.algorithms import POLICY_LOSSES, policy_loss


def make_batch(batch: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random log-probs near on-policy, per-sequence advantages, ragged response masks."""
    g = torch.Generator().manual_seed(seed)
    old_BT = -torch.rand(batch, tokens, generator=g) * 5
    logp_BT = old_BT + torch.randn(batch, tokens, generator=g) * 0.2
    lengths_B = torch.randint(tokens // 4, tokens + 1, (batch,), generator=g)
    mask_BT = (torch.arange(tokens)[None, :] < lengths_B[:, None]).float()
    return {
        "logprobs": logp_BT.requires_grad_(True),
        "old_logprobs": old_BT,
        "advantages": torch.randn(batch, generator=g),
        "mask": mask_BT,
    }


def time_once(name: str, inputs: dict[str, torch.Tensor]) -> float:
    """Wall time in ms of one forward + backward."""
    inputs["logprobs"].grad = None
    start = time.perf_counter()
    policy_loss(name, **inputs).loss.backward()
    return (time.perf_counter() - start) * 1e3


def time_losses(names: list[str], inputs: dict[str, torch.Tensor], repeats: int) -> dict:
    """Median ms per loss. One untimed warm-up round first; then round-robin repeats, so
    that load from other processes and allocator warm-up hit every loss alike."""
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats + 1):
        for name in names:
            ms = time_once(name, inputs)
            if round_:
                samples[name].append(ms)
    return {name: statistics.median(ms) for name, ms in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    inputs = make_batch(args.batch, args.tokens)
    names = ["grpo"] + [n for n in POLICY_LOSSES.names() if n != "grpo"]
    times = time_losses(names, inputs, args.repeats)
    print(
        f"policy losses, forward+backward, B={args.batch} T={args.tokens} "
        f"({args.batch * args.tokens / 1e6:.2f}M tokens), float32, CPU, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(f"| {'loss':<15} | {'ms':>8} | {'x grpo':>6} |")
    print(f"|{'-' * 17}|{'-' * 10}|{'-' * 8}|")
    for name, ms in times.items():
        print(f"| {name:<15} | {ms:8.1f} | {ms / times['grpo']:6.2f} |")


if __name__ == "__main__":
    main()
