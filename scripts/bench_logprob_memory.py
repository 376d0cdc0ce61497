"""Peak memory of the token log-prob + entropy path against a naive float32 log_softmax.

At Qwen's vocabulary (V = 151,936) the logits dominate the memory of the loss: a naive
full-vocabulary float32 ``log_softmax`` over ``[B, T, V]``, with the entropy computed from
it, keeps several float32 ``[B, T, V]`` tensors alive for the backward pass. This compares

- ``ours``: :func:`mhpo_vl.models.logprobs.logprobs_from_logits` with ``with_entropy=True``
  (chunked over T, each chunk recomputed in the backward), then
  ``(logp.sum() + entropy.sum()).backward()``;
- ``naive``: ``logp_full = log_softmax(logits.float(), -1)``, the target tokens gathered
  from it, entropy ``-(exp(logp_full) * logp_full).sum(-1)``, and the same backward,

on random logits that require grad, in bfloat16 and float32, and prints each one's peak,
the ratio ours / naive, and checks that both give the same log-probs, entropies and
gradients.

    python scripts/bench_logprob_memory.py                     # B=4, T=256, V=151936
    python scripts/bench_logprob_memory.py --dtypes bfloat16 --check-rss

**What is measured**: the peak number of bytes of tensors alive during forward + backward
beyond what existed before it started (the input logits and the targets), i.e. the
activations, the float32 temporaries, and the gradient with respect to the logits (which
both variants produce, one logits-sized tensor; it is printed separately).

- CPU (default): every allocation and free of PyTorch's CPU allocator, in order, from
  ``torch.profiler`` with ``profile_memory=True``; the running sum's maximum is the peak.
  This counts tensors exactly (no allocator caching, no pages of the Python heap, no
  noise from other processes), so it is deterministic and can run in-process.
- ``--check-rss``: a cross-check by the operating system. Each variant runs in a fresh
  subprocess that resets its resident-set high-water mark (``/proc/self/clear_refs``)
  after building the logits and reads ``VmHWM`` after the backward; the difference is
  the peak RSS growth. It agrees with the allocator count up to a few MB (glibc returns
  large blocks to the OS when they are freed).
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` after resetting the peak,
  minus the memory allocated before.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mhpo_vl.models.logprobs import logprobs_from_logits  # noqa: E402

QWEN_VOCAB = 151_936
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
MB = 1 << 20


def make_inputs(
    B: int, T: int, V: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits ``[B, T, V]`` (a leaf that requires grad) and target ids ``[B, T]``.

    Built one row at a time so that no float32 temporary larger than one row exists
    (it would raise the process's RSS high-water mark before the measurement)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.empty(B, T, V, dtype=dtype, device=device)
    for b in range(B):
        logits[b] = (torch.randn(T, V, generator=g) * 2.0).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g).to(device)
    return logits.requires_grad_(True), targets


def ours(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's path: chunked, recomputed float32 log-probs and entropies."""
    logp, ent = logprobs_from_logits(logits, targets, with_entropy=True)
    assert ent is not None
    (logp.sum() + ent.sum()).backward()
    return logp.detach(), ent.detach()


def naive(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-vocabulary float32 log_softmax, kept by autograd, and the entropy from it."""
    logp_full = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_full.exp() * logp_full).sum(-1)
    (logp.sum() + ent.sum()).backward()
    return logp.detach(), ent.detach()


VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "ours": ours,
    "naive": naive,
}


def check_agree(B: int = 2, T: int = 16, V: int = 1000, dtype: torch.dtype = torch.float32) -> None:
    """Both variants give the same log-probs, entropies and logits gradients (raises if not)."""
    results = {}
    for name, fn in VARIANTS.items():
        logits, targets = make_inputs(B, T, V, dtype)
        logp, ent = fn(logits, targets)
        results[name] = (logp, ent, logits.grad.float())
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for a, b, what in zip(
        results["ours"], results["naive"], ("log-probs", "entropies", "grads"), strict=True
    ):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, w=what: f"{w} differ: {m}")


class _QuietStderr:
    """Silence file descriptor 2 (the profiler backend prints start/stop lines there)."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)


def allocator_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (net of frees) by PyTorch's CPU allocator while ``fn`` runs,
    from the profiler's memory events in the order they happened."""
    from torch.profiler import ProfilerActivity, profile

    with _QuietStderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    events.sort(key=lambda e: e.start_ns())  # stable: equal stamps keep their order
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def measure_peak(
    variant: str, B: int, T: int, V: int, dtype: torch.dtype, device: str = "cpu"
) -> dict[str, float]:
    """Peak bytes beyond the inputs during one forward + backward of ``variant``.

    Returns ``peak`` (bytes), ``input`` (the logits' bytes) and ``grad`` (the bytes of the
    logits' gradient, part of ``peak``)."""
    fn = VARIANTS[variant]
    logits, targets = make_inputs(B, T, V, dtype, device)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(logits, targets)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = allocator_peak(lambda: fn(logits, targets))
    size = logits.numel() * logits.element_size()
    return {"peak": float(peak), "input": float(size), "grad": float(size)}


# --- the RSS cross-check: one fresh process per variant


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_child(variant: str, B: int, T: int, V: int, dtype: str) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    logits, targets = make_inputs(B, T, V, DTYPES[dtype])
    VARIANTS[variant](logits[:1, :2].detach().clone().requires_grad_(True), targets[:1, :2])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the RSS now
        f.write("5")
    before = _hwm_kb()
    VARIANTS[variant](logits, targets)
    print(json.dumps({"peak": (_hwm_kb() - before) * 1024.0}), flush=True)


def rss_peak(variant: str, B: int, T: int, V: int, dtype: str) -> float | None:
    """Peak RSS growth (bytes) of ``variant`` in a fresh process; None where the
    high-water mark cannot be reset (not Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, __file__, "--rss-child", variant]
    cmd += ["--batch", str(B), "--tokens", str(T), "--vocab", str(V), "--dtypes", dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    ap.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-rss", action="store_true", help="also measure RSS (CPU, Linux)")
    ap.add_argument("--rss-child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child, args.batch, args.tokens, args.vocab, args.dtypes)
        return 0
    torch.set_num_threads(args.threads)
    os.environ["BENCH_THREADS"] = str(args.threads)
    B, T, V = args.batch, args.tokens, args.vocab
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; use {', '.join(DTYPES)}")

    check_agree(B=2, T=8, V=V, dtype=torch.float32)
    print(f"agreement: ours and naive log-probs, entropies and grads match (V={V})")
    how = "cuda.max_memory_allocated" if args.device == "cuda" else "allocator events"
    print(f"peak memory beyond the input logits, B={B} T={T} V={V}, {args.device} ({how})")
    header = f"{'dtype':<9} {'logits':>9} {'ours':>9} {'naive':>9} {'ours/naive':>10}"
    if args.check_rss:
        header += f" {'RSS ours':>9} {'RSS naive':>9}"
    print(header)
    worst = 0.0
    for d in dtypes:
        res = {v: measure_peak(v, B, T, V, DTYPES[d], args.device) for v in VARIANTS}
        ratio = res["ours"]["peak"] / res["naive"]["peak"]
        worst = max(worst, ratio)
        line = (
            f"{d:<9} {res['ours']['input'] / MB:>7.0f}MB {res['ours']['peak'] / MB:>7.0f}MB "
            f"{res['naive']['peak'] / MB:>7.0f}MB {ratio:>10.3f}"
        )
        if args.check_rss and args.device == "cpu":
            rss = {v: rss_peak(v, B, T, V, d) for v in VARIANTS}
            line += "".join(
                f" {'n/a':>9}" if r is None else f" {r / MB:>7.0f}MB" for r in rss.values()
            )
        print(line)
    print("(peaks include the gradient w.r.t. the logits, one logits-sized tensor in both)")
    verdict = "met" if worst <= 0.25 else "NOT met"
    print(f"goal ours <= 1/4 of naive: {verdict} (worst ratio {worst:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
