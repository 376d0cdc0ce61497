"""The shared-prefix forward against the naive one, at real lengths.

    python scripts/bench_prefix.py [--P 256] [--T 1024] [--G 8] [--repeats 3] [--json]

One group: a P-token prompt and G completions of T tokens, through a random-init tiny
Qwen2.5-VL (hidden 256, 4 layers, 8 heads over 4 key-value heads, vocabulary 512) on
the CPU, float32. For each of the two passes the trainer makes (log-probs and entropies
forward and backward; a no-grad forward, as the old and reference log-probs are),
``mhpo_vl.models.token_logprobs`` with and without ``shared_prefix``, alternating in one
process (the median of ``--repeats``): seconds, and the peak bytes PyTorch's CPU
allocator holds beyond the model and the batch. Then the score-element FLOP model per
layer: naive ``G (P + T)^2``, grouped ``P^2 + G T (P + T)``, the packed dense mask the
shared prefix used before ``(P + G T)^2``. Ratios are shared / naive, measured in this
run; nothing is compared across runs or machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_logprob_memory import allocator_peak  # noqa: E402

from mhpo_vl.batch import RolloutBatch  # noqa: E402
from mhpo_vl.models import token_logprobs  # noqa: E402


def build_model() -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    }  # fmt: skip
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
              "out_hidden_size": 256}  # fmt: skip
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, vocab_size=512,
                              image_token_id=500, video_token_id=501,
                              vision_start_token_id=502)  # fmt: skip
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_batch(P: int, T: int, G: int) -> RolloutBatch:
    """One prompt repeated G times, G random completions (the last ends at 3/4 of T)."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 400, (P,), generator=g)
    completions = torch.randint(3, 400, (G, T), generator=g)
    response = torch.ones(G, T)
    response[-1, (3 * T) // 4 :] = 0
    completions[response == 0] = 0
    ids = torch.cat([prompt.expand(G, P), completions], dim=1)
    mask = torch.cat([torch.ones(G, P, dtype=torch.long), response.long()], dim=1)
    return RolloutBatch(input_ids=ids, attention_mask=mask, response_mask=response)


def _pass(model: Any, batch: RolloutBatch, shared: bool, grad: bool) -> None:
    if grad:
        logp, ent = token_logprobs(model, batch, with_entropy=True, shared_prefix=shared)
        ((logp + 0.1 * ent) * batch.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            token_logprobs(model, batch, shared_prefix=shared)


def measure(model: Any, batch: RolloutBatch, grad: bool, repeats: int) -> dict[str, Any]:
    """Median seconds and peak extra bytes, shared prefix and naive, alternating."""
    times: dict[bool, list[float]] = {True: [], False: []}
    peaks = {}
    for shared in (True, False):  # warm-up, and the memory peak (one run each)
        gc.collect()
        peaks[shared] = allocator_peak(lambda s=shared: _pass(model, batch, s, grad))
    for _ in range(repeats):
        for shared in (True, False):
            gc.collect()
            t0 = time.perf_counter()
            _pass(model, batch, shared, grad)
            times[shared].append(time.perf_counter() - t0)
    shared_s, naive_s = statistics.median(times[True]), statistics.median(times[False])
    return {
        "shared_s": shared_s, "naive_s": naive_s, "time_ratio": shared_s / naive_s,
        "shared_peak_mb": peaks[True] / 2**20, "naive_peak_mb": peaks[False] / 2**20,
        "peak_ratio": peaks[True] / peaks[False],
    }  # fmt: skip


def flop_model(P: int, T: int, G: int) -> dict[str, float]:
    """Attention score elements per layer per group."""
    naive, grouped, dense = G * (P + T) ** 2, P**2 + G * T * (P + T), (P + G * T) ** 2
    return {
        "naive": naive, "grouped": grouped, "packed_dense": dense,
        "grouped_ratio": grouped / naive, "packed_dense_ratio": dense / naive,
        # tokens through every linear layer: the prompt once, not G times
        "token_ratio": (P + G * T) / (G * (P + T)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=int, default=256)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, batch = build_model(), build_batch(args.P, args.T, args.G)
    result = {
        "P": args.P, "T": args.T, "G": args.G, "threads": torch.get_num_threads(),
        "forward_backward": measure(model, batch, True, args.repeats),
        "no_grad": measure(model, batch, False, args.repeats),
        "flop_model": flop_model(args.P, args.T, args.G),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"P={args.P} T={args.T} G={args.G}, {result['threads']} threads, CPU, float32")
    print(f"{'pass':<28}{'shared':>10}{'naive':>10}{'ratio':>8}{'peak MB s/n':>18}{'ratio':>8}")
    for name in ("forward_backward", "no_grad"):
        r = result[name]
        print(
            f"{name:<28}{r['shared_s']:>9.2f}s{r['naive_s']:>9.2f}s{r['time_ratio']:>7.2f}x"
            f"{r['shared_peak_mb']:>9.0f}/{r['naive_peak_mb']:<8.0f}{r['peak_ratio']:>7.2f}x"
        )
    f = result["flop_model"]
    print(
        f"FLOP model (score elements / layer / group): naive {f['naive']:,}, grouped "
        f"{f['grouped']:,} ({f['grouped_ratio']:.2f}x), packed dense {f['packed_dense']:,} "
        f"({f['packed_dense_ratio']:.2f}x); tokens through the linear layers "
        f"{f['token_ratio']:.2f}x"
    )


if __name__ == "__main__":
    main()
