"""The ``hf`` rollout engine with and without ``prefill_once``: generation time, one run.

    python scripts/bench_generate.py                       # both models, CPU, float32
    python scripts/bench_generate.py --models tiny --repeats 1 --prompts 2   # smoke test
    python scripts/bench_generate.py --device cuda --dtype bfloat16

``prefill_once: false`` (the old path) repeats every prompt ``--group`` (G, 8) times and
runs ``generate`` on the repeated batch: each prompt, and its image through the vision
tower, is prefilled G times. ``prefill_once: true`` (the default) prefills each prompt
once and decodes its G samples from copies of its KV cache. Both take ``--prompts`` (8)
prompts of the synthetic vision task (``task_rows("vision", "test", ...)``, the
``plain`` template), sample G completions of at most ``--new-tokens`` (64) tokens at
temperature 1 from one seed, in one ``generate`` call each (no ``batch_size``).

Models (``--models``):

- ``tiny``: the embedded default ``embedded:tiny-vl`` (Qwen2.5-VL, hidden 128, 4 layers,
  84 x 84 images: 9 image tokens), warm-started, so it answers in about 2 tokens and
  the prompt is most of the work;
- ``large``: a random-init Qwen2.5-VL built from the same builder with hidden 512, 6
  layers (8 heads, 4 KV heads, MLP 1536) and a 4-layer, 256-wide vision tower, images
  upscaled to 448 x 448 (1,024 patches, 256 image tokens a prompt); random weights rarely
  stop, so completions run to ``--new-tokens``.

Per model: one untimed call of each path, then ``--repeats`` (3) rounds alternating old
and new; medians of the wall time of ``engine.generate`` (prompt encoding included), of
the time spent in the vision tower (forward hooks) and of the tokens embedded by
forwards over more than one position (prefills). The ratio is new / old from the medians
of this one run. The sampled tokens of the two paths are compared too (the same seed:
the same draws, see :class:`mhpo_vl.rollout.hf.HFEngine`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LARGE = (
    "tiny-vl?sft_steps=0&bpe_rows=200&sft_rows=200&sft_val_rows=0&hidden=512&layers=6"
    "&heads=8&kv_heads=4&intermediate=1536&vision_hidden=256&vision_layers=4&image_size=448"
)


def load(name: str, device: str, dtype: str) -> Any:
    """``tiny`` (the cached embedded default) or ``large`` (built into a temporary dir)."""
    from mhpo_vl.embedded.tiny import build_embedded, parse_embedded
    from mhpo_vl.models import load_policy

    if name == "tiny":
        return load_policy("embedded:tiny-vl", dtype=dtype, device=device)
    out = tempfile.mkdtemp(prefix="bench_generate_")
    build_embedded(parse_embedded(LARGE), out)
    return load_policy(out, dtype=dtype, device=device)


def prompts(name: str, count: int) -> list[dict[str, Any]]:
    """``count`` prompts of the vision task; 448 x 448 images for the large model."""
    from mhpo_vl.embedded.tiny import task_rows
    from mhpo_vl.rollout import build_prompts

    out = build_prompts(task_rows("vision", "test", count))
    if name == "large":
        for p in out:
            p["images"] = [img.resize((448, 448)) for img in p["images"]]
    return out


@contextmanager
def probes(model: Any) -> Any:
    """Seconds in the vision tower and tokens through prefill forwards, while inside."""
    from mhpo_vl.models.policy import vision_tower

    seen = {"vision_s": 0.0, "prefill_tokens": 0}
    start: list[float] = []

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def before(*_: Any) -> None:
        sync()
        start.append(time.perf_counter())

    def after(*_: Any) -> None:
        sync()
        seen["vision_s"] += time.perf_counter() - start.pop()

    def embedded(_: Any, args: tuple) -> None:
        b, s = args[0].shape
        seen["prefill_tokens"] += b * s if s > 1 else 0

    tower = vision_tower(model)
    handles = [
        tower.register_forward_pre_hook(before),
        tower.register_forward_hook(after),
        model.get_input_embeddings().register_forward_pre_hook(embedded),
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def timed(engine: Any, batch: list[dict[str, Any]], params: Any) -> tuple[dict[str, Any], Any]:
    """One ``generate`` call from seed 0: its wall time and probes, and the rollouts."""
    torch.manual_seed(0)
    with probes(engine.policy.model) as seen:
        start = time.perf_counter()
        out = engine.generate(batch, params)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seen["wall_s"] = time.perf_counter() - start
    return seen, out


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Old and new path on one model: medians per path and whether the tokens agree."""
    from mhpo_vl.batch import SamplingParams
    from mhpo_vl.rollout import HFEngine

    policy = load(name, args.device, args.dtype)
    batch = prompts(name, args.prompts)
    params = SamplingParams(n=args.group, max_new_tokens=args.new_tokens, temperature=1.0)
    engines = {p: HFEngine(policy, prefill_once=p == "new") for p in ("old", "new")}
    outs = {p: timed(e, batch, params)[1] for p, e in engines.items()}  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for path, engine in engines.items():
            seen, outs[path] = timed(engine, batch, params)
            runs[path].append(seen)
    result: dict[str, Any] = {
        "params_m": sum(p.numel() for p in policy.model.parameters()) / 1e6,
        "prompt_len": outs["new"].prompt_len,
        "completion_tokens": int(outs["new"].response_mask.sum()),
        "same_tokens": torch.equal(outs["old"].input_ids, outs["new"].input_ids),
    }
    for path, rows in runs.items():
        for key in ("wall_s", "vision_s", "prefill_tokens"):
            result[f"{path}_{key}"] = statistics.median(r[key] for r in rows)
    return result


def report(name: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{name}: {r['params_m']:.2f}M parameters, {args.prompts} prompts x G={args.group}, "
        f"prompt width {r['prompt_len']}, {r['completion_tokens']} completion tokens, "
        f"{args.device} {args.dtype}, medians of {args.repeats}"
    )
    print(f"{'':>22} {'old':>10} {'new':>10} {'new/old':>8}")
    for key, unit in (("wall_s", "s"), ("vision_s", "s"), ("prefill_tokens", "")):
        old, new = r[f"old_{key}"], r[f"new_{key}"]
        ratio = f"{new / old:.3f}" if old else "-"
        print(
            f"{key + (' (' + unit + ')' if unit else ''):>22} {old:>10.3f} {new:>10.3f} {ratio:>8}"
        )
    print(f"{'same sampled tokens':>22} {r['same_tokens']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "large"], choices=["tiny", "large"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        report(name, bench(name, args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
