"""Training throughput of a recipe: tokens/s per process, generation tokens/s, and the
update's model FLOPs utilisation (MFU), measured over real training steps.

    python scripts/bench_throughput.py recipes/tiny/mhpo.yaml --steps 5
    torchrun --nproc-per-node 8 scripts/bench_throughput.py recipes/qwen2_5_vl_7b/geometry3k_mhpo.yaml \
        --steps 5 --peak-tflops 989

Per step (after ``--warmup`` steps not counted), medians over ``--steps``:

- tokens/s/process: prompt + response tokens of the process's rollouts / step time
  (the figure EasyR1 and verl report per GPU);
- generation tokens/s: response tokens / generation time;
- update MFU: ``6 * parameters * tokens * update_epochs / update time / peak`` (the
  usual training estimate; the old/reference forwards and the attention FLOPs are not
  counted, so it is a lower bound). Needs ``--peak-tflops`` (the device's dense peak at
  the compute dtype: 989 for an H100 SXM in bf16); without it MFU is not printed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()

    from mhpo_vl.trainer import train_step
    from mhpo_vl.training.state import setup
    from mhpo_vl.validation import load_recipe

    logging.basicConfig(level=logging.WARNING)
    out = tempfile.mkdtemp(prefix="bench_throughput_")
    total = args.warmup + args.steps
    cfg = load_recipe(
        args.recipe,
        [*args.overrides, f"trainer.output_dir={out}", f"trainer.max_steps={total}",
         "trainer.resume=false", "trainer.progress_bar=false", "trainer.tensorboard=false",
         "trainer.log_samples=0"],
    )  # fmt: skip
    run = setup(cfg)
    # a sharded parameter (DTensor) reports its full size
    n_params = sum(p.numel() for p in run.par.unwrap(run.model).parameters())
    rows = []
    for step in range(1, total + 1):
        m = train_step(run, step)
        if step > args.warmup:
            rows.append(m)
    if not run.par.is_main:
        return 0

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    B = cfg.trainer.prompts_per_step * cfg.rollout.group_size / run.par.world
    response_tokens = med("response_length/mean") * B
    print(
        f"recipe {args.recipe}: {run.par.world} process(es), {run.par.name}, device "
        f"{run.par.device}, {cfg.model.dtype} compute, {n_params / 1e6:.2f}M parameters"
    )
    print(f"step time (median of {len(rows)})     {med('time/step'):.3f} s")
    print(
        f"  generation / update            {med('time/generate'):.3f} / {med('time/update'):.3f} s"
    )
    print(f"tokens/s/process                 {med('perf/tokens_per_s'):.1f}")
    print(f"generation tokens/s/process      {response_tokens / med('time/generate'):.1f}")
    if args.peak_tflops:
        tokens = med("perf/tokens_per_s") * med("time/step") * cfg.trainer.update_epochs
        mfu = 6 * n_params * tokens / med("time/update") / (args.peak_tflops * 1e12)
        print(f"update MFU                       {100 * mfu:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
