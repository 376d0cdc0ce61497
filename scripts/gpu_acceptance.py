"""The GPU acceptance run: what to run, in one go, the first time a GPU is lent.

    python scripts/gpu_acceptance.py [--out DIR] [--skip-tier] [--steps 2]

On one CUDA GPU, in about 8 minutes on an H100:

1. the environment: GPU, driver, torch / transformers / accelerate / vLLM versions;
2. the GPU test tier (``pytest -m gpu``: log-probs and the tiny recipe on CUDA, and the
   real-vLLM test where vLLM is installed);
3. a 3B-size Qwen2.5-VL built from the real Qwen2.5-VL-3B-Instruct config
   (``mhpo_vl/model_configs``) with random weights (no download), trained for a few
   steps of the tiny recipe's task by the real CLI under ``torchrun``: the hf engine,
   FSDP2 on one process, bfloat16 compute over float32 master weights, activation
   checkpointing, 4 prompts x 4 responses of up to 64 tokens;
4. that run's peak GPU memory (``perf/gpu_memory_gb_max``, torch's allocator) against
   ``mhpo-vl estimate`` for the same recipe on one 80 GB GPU, and its throughput.

It writes ``DIR/report.md`` (default ``runs/gpu_acceptance``): paste it into the issue.
Every step is bounded in time and recorded even when it fails; the exit code is 1 if
any failed. The tokenizer and image processor are the embedded tiny model's (no Qwen
vocabulary offline): the token ids in the config are set to theirs, which changes no
shape but the vocabulary's, kept at the real 151,936.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_3B = ROOT / "mhpo_vl" / "model_configs" / "Qwen" / "Qwen2.5-VL-3B-Instruct" / "config.json"
RUN = [
    "model.dtype=bfloat16", "model.master_dtype=float32", "model.gradient_checkpointing=true",
    "parallel.strategy=fsdp", "trainer.prompts_per_step=4", "rollout.group_size=4",
    "rollout.max_new_tokens=64", "trainer.minibatches=1", "trainer.micro_batch_size=4",
    "eval.at_start=false", "eval.size=8", "trainer.save_every=0", "trainer.progress_bar=false",
]  # fmt: skip


def sh(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, last 4000 characters of output, seconds); 124 on a timeout."""
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        code, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        code, text = 124, f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return code, text[-4000:], time.perf_counter() - t0


def environment() -> str:
    import torch

    lines = [f"- python {platform.python_version()}, torch {torch.__version__}"]
    for name in ("transformers", "accelerate", "vllm"):
        try:
            lines.append(f"- {name} {__import__(name).__version__}")
        except ImportError:
            lines.append(f"- {name}: not installed")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {torch.cuda.device_count()} visible"
        )
    else:
        lines.append("- no CUDA device: this is not a GPU machine")
    return "\n".join(lines)


def build_3b(out: Path) -> Path:
    """The 3B model folder: the real config with the tiny tokenizer's token ids, random
    bfloat16 weights made on the GPU, the tiny processor."""
    import torch
    import transformers as tf

    from mhpo_vl.embedded.tiny import ensure_embedded

    tiny = Path(ensure_embedded("tiny-vl"))
    config = tf.AutoConfig.from_pretrained(CONFIG_3B.parent)
    small = tf.AutoConfig.from_pretrained(tiny)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(small, key, None) is not None:
            setattr(config, key, getattr(small, key))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(small.get_text_config(), key, None)
        setattr(config.get_text_config(), key, value)
        setattr(config, key, value)
    with torch.device("cuda"):
        model = tf.Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    for item in tiny.iterdir():
        if item.is_file() and not item.name.startswith(("model", "config.json")):
            shutil.copy2(item, out / item.name)
    return out


def train_3b(model_dir: Path, out: Path, steps: int) -> tuple[int, str, float, list[dict]]:
    run_dir = out / "train_3b"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "mhpo_vl",
        "train", "recipes/tiny/mhpo.yaml", f"model.path={model_dir}", *RUN,
        f"trainer.max_steps={steps}", f"trainer.output_dir={run_dir}",
    ]  # fmt: skip
    code, text, seconds = sh(cmd, timeout=360)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    return code, text, seconds, records


def estimate_3b(model_dir: Path, steps: int) -> tuple[int, dict]:
    cmd = [
        sys.executable, "-m", "mhpo_vl", "estimate", "recipes/tiny/mhpo.yaml",
        f"model.path={model_dir}", *RUN, f"trainer.max_steps={steps}", "--gpus", "1",
        "--gpu-mem", "80", "--json",
    ]  # fmt: skip
    code, text, _ = sh(cmd, timeout=120)
    try:
        return code, json.loads(text[text.index("{") :])
    except ValueError:
        return code, {"error": text}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu_acceptance")
    ap.add_argument("--skip-tier", action="store_true", help="skip pytest -m gpu")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = ["# GPU acceptance run", "", environment(), ""]
    failed = False

    if not args.skip_tier:
        code, text, seconds = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu"], 300)
        failed |= code != 0
        report += [
            f"## GPU tier: exit {code} in {seconds:.0f} s",
            "",
            "```",
            text[-1500:],
            "```",
            "",
        ]

    t0 = time.perf_counter()
    model_dir = build_3b(out / "qwen2_5_vl_3b_random")
    report += [
        f"## 3B-size Qwen2.5-VL, one process, FSDP2 (built in {time.perf_counter() - t0:.0f} s)",
        "",
    ]
    code, text, seconds, records = train_3b(model_dir, out, args.steps)
    failed |= code != 0
    steps = [r for r in records if r.get("step", 0) >= 1 and "loss" in r]
    report.append(f"- training: exit {code}, {len(steps)} step(s) in {seconds:.0f} s")
    if code != 0:
        report += ["", "```", text[-3000:], "```"]
    est_code, est = estimate_3b(model_dir, args.steps)
    predicted = est.get("peak_gb")
    measured = max((r.get("perf/gpu_memory_gb_max", 0.0) for r in steps), default=None)
    report.append(f"- peak GPU memory: measured {measured} GiB, `mhpo-vl estimate` {predicted} GiB")
    if measured and predicted:
        report.append(f"- measured / estimated: {measured / predicted:.2f}")
    for r in steps:
        report.append(
            f"- step {r['step']}: {r.get('time/step', 0):.1f} s (generate "
            f"{r.get('time/generate', 0):.1f} s, update {r.get('time/update', 0):.1f} s), "
            f"{r.get('perf/tokens_per_s', 0):.0f} tokens/s, loss {r.get('loss')}"
        )
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"wrote {out / 'report.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
