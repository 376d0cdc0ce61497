"""Our trainer against TRL's GRPOTrainer on identical settings: step time per phase, memory.

    pip install '.[bench]'                      # TRL (not a core dependency)
    python scripts/bench_vs_trl.py              # tiny Qwen2.5-VL on CPU, 3 x (ours, TRL)
    python scripts/bench_vs_trl.py --steps 1 --warmup 0 --repeats 1 --prompts 2  # smoke test
    python scripts/bench_vs_trl.py --model-size 3b   # GPU only: a random-init Qwen2.5-VL-3B

**Setting** (the same for both; flags change it). The policy is the embedded tiny
Qwen2.5-VL (``--model``: any local Qwen-VL directory or ``embedded:...``; both frameworks
load the same directory with ``from_pretrained``). Data: the first ``--rows`` (64)
problems of the synthetic vision task's train split (seed 0; the rows
``task_rows("vision", "train", 64)`` gives), written once to a parquet file that our
trainer loads as ``data.train`` and TRL as a ``datasets.Dataset`` (so neither builds
more rows than it uses); each prompt is built by our ``plain`` template as chat messages
with an image part (TRL's conversational VLM format: a ``prompt`` column of messages and
an ``image`` column; both render the same token ids). Per step: ``--prompts``
(8) prompts x ``--group`` (8) completions of at most ``--new-tokens`` (64) tokens,
temperature 1, top-p 1, no top-k; reward: our ``accuracy`` verifier (TRL calls it through
a reward function wrapping :func:`mhpo_vl.rewards.score_rewards`); group-normalised
advantages; GRPO's PPO clip (0.2) with no KL term and one optimizer step per batch
(ours: ``trainer.minibatches=1, update_epochs=1``; TRL: ``num_iterations=1`` and
``gradient_accumulation_steps = steps_per_generation = completions / micro-batch``, so
one generation feeds exactly one optimizer step and no old-log-prob forward is run);
AdamW (``adamw_torch``), the same constant learning rate, grad-norm clip 1.0; float32 on
CPU with ``--threads`` (2) torch threads. No eval, no checkpoints, no logging services,
no vLLM.

**Loss mapping.** Our ``grpo`` loss aggregates ``seq-mean-token-mean`` (each sequence's
token mean, averaged over sequences); TRL's ``loss_type="grpo"`` is the same
(``((loss * mask).sum(-1) / mask.sum(-1)).mean()``, divided by the accumulation steps),
so that is the TRL loss type used. Advantages: ours ``(r - mean) / (std + 1e-6)``, TRL
``scale_rewards="group"``, ``(r - mean) / (std + 1e-4)``.

**Phases.** Ours: ``time/step``, ``time/generate`` (prompt encoding + ``generate``),
``time/reward`` and ``time/update`` (advantages, loss forward/backward, optimizer step)
as :func:`mhpo_vl.trainer.train_step` reports them. TRL: a ``TrainerCallback`` times
``on_step_begin`` -> ``on_step_end``, to which the fetch of the step's batch
(``get_batch_samples``, just before ``on_step_begin``) is added; a subclass of
``GRPOTrainer`` times ``_generate`` (prompt tokenization with images + ``generate`` +
decoding) as generate, ``_calculate_rewards`` as reward, and ``_prepare_inputs`` (the
whole rollout: generation, scoring, the image processing for the training forward,
advantages); update is the step minus the batch fetch and ``_prepare_inputs`` (loss
forward/backward over the micro-batches, clipping, optimizer and scheduler steps).
For both, other = step - generate - reward - update.

**Memory.** Every run is a fresh subprocess (``--child ours|trl``), alternating ours,
TRL, ours, TRL, ... for ``--repeats`` rounds, so each process's peak resident set
(``ru_maxrss``) is one framework's; the RSS after setup (model, optimizer, data loaded,
before the first step) is shown too. On CUDA the peak of
``torch.cuda.max_memory_allocated`` is added. Each child runs ``--warmup`` untimed steps,
then ``--steps`` timed ones; the table shows medians over all timed steps of all rounds
(memory: the median over rounds).

**3B** (``--model-size 3b``, CUDA only): a randomly initialised model of Qwen2.5-VL-3B's
public configuration (hidden 2048, 36 layers, 16 heads / 2 KV heads, MLP 11008, vocab
151,936, tied embeddings; vision tower 32 x 1280, MLP 3420, 16 heads), built once (bf16
weights) into a temporary directory (or ``--model-dir``), with the embedded model's
tokenizer and image processor (so ids past its small vocabulary decode to nothing and
completions run to the token limit); defaults 16 prompts x 8, 256 new tokens, bf16
autocast over float32 master weights, activation checkpointing, micro-batches of 8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRL_VERSION = "1.16.0"  # the TRL this script follows (its GRPOTrainer's private hooks)
INSTALL_HINT = (
    "bench_vs_trl.py needs TRL, which is not a dependency of mhpo_vl: install it with\n"
    f"    pip install '.[bench]'        (trl=={TRL_VERSION})"
)
RESULT_MARK = "BENCH_VS_TRL_RESULT "
PHASES = ("step", "generate", "reward", "update", "other")
ROW_KEYS = ("id", "question", "answer", "choices", "answer_type", "question_type", "task")
RECIPE = ROOT / "recipes" / "tiny" / "grpo.yaml"

# Qwen2.5-VL-3B-Instruct's public config.json (sizes only; token ids come from the tokenizer)
QWEN2_5_VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "max_position_embeddings": 128_000,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
QWEN2_5_VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
    "in_channels": 3,
    "tokens_per_second": 2,
}
SIZE_DEFAULTS = {
    # prompts, new tokens, micro-batch (None: all completions in one forward), lr, dtype, ckpt
    "tiny": {
        "prompts": 8,
        "new_tokens": 64,
        "micro_batch": None,
        "lr": 3e-4,
        "dtype": "float32",
        "grad_ckpt": False,
    },
    "3b": {
        "prompts": 16,
        "new_tokens": 256,
        "micro_batch": 8,
        "lr": 1e-6,
        "dtype": "bfloat16",
        "grad_ckpt": True,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring (top of this file) for what is timed and how.",
    )
    ap.add_argument("--model", default="embedded:tiny-vl", help="policy (tiny setting)")
    ap.add_argument("--model-size", choices=("tiny", "3b"), default="tiny")
    ap.add_argument("--model-dir", help="3b: where to build (or reuse) the random-init model")
    ap.add_argument("--rows", type=int, default=64, help="synthetic train problems used")
    ap.add_argument("--prompts", type=int, help="prompts per step (tiny 8, 3b 16)")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--new-tokens", type=int, help="max new tokens (tiny 64, 3b 256)")
    ap.add_argument(
        "--micro-batch", type=int, help="sequences per forward (tiny: all, 3b: 8); must divide"
    )
    ap.add_argument("--lr", type=float, help="learning rate (tiny 3e-4, 3b 1e-6)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype")
    ap.add_argument(
        "--grad-ckpt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="activation checkpointing (tiny off, 3b on)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (ours, TRL) runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", help="also write every run's records here")
    ap.add_argument("--verbose", action="store_true", help="show the children's stderr")
    ap.add_argument("--child", choices=("ours", "trl", "build"), help=argparse.SUPPRESS)
    ap.add_argument("--resolved-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, value in SIZE_DEFAULTS[args.model_size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    completions = args.prompts * args.group
    if args.micro_batch is not None and completions % args.micro_batch:
        ap.error(f"--micro-batch {args.micro_batch} must divide prompts x group = {completions}")
    if args.group < 2 or args.prompts < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("need --group >= 2, --prompts >= 1, --steps >= 1, --warmup >= 0")
    if args.rows < args.prompts:
        ap.error(f"--rows ({args.rows}) must be at least --prompts ({args.prompts})")
    return args


# ---------------------------------------------------------------- helpers (any process)


def peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except OSError:
        return float("nan")


def trl_import_error() -> str | None:
    """None if TRL imports here, else why not."""
    try:
        import trl  # noqa: F401
    except Exception as exc:  # ImportError, or a TRL that fails on this transformers
        return f"{type(exc).__name__}: {exc}"
    return None


def completions_per_step(args: argparse.Namespace) -> int:
    return args.prompts * args.group


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_type(model_dir: str) -> str:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).model_type


def resolve_model(path: str) -> str:
    """A local directory: ``embedded:<name>`` is built (once) and cached."""
    if path.startswith("embedded:"):
        from mhpo_vl.embedded import resolve

        return str(resolve(path[len("embedded:") :]))
    return os.path.expanduser(path)


# ---------------------------------------------------------------- the 3B model


def build_3b(out_dir: str) -> None:
    """A random-init Qwen2.5-VL of the 3B configuration, with the embedded tiny model's
    tokenizer and processor, saved to ``out_dir`` (bf16 weights). Run on CUDA."""
    import torch
    import transformers as tf

    from mhpo_vl.models.processors import load_vl_processor

    marker = Path(out_dir, "bench_vs_trl_3b.json")
    spec = {"text": QWEN2_5_VL_3B_TEXT, "vision": QWEN2_5_VL_3B_VISION, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    tiny = resolve_model("embedded:tiny-vl")
    processor = load_vl_processor(tiny, "qwen2_5_vl")
    tok = processor.tokenizer
    ids = dict(
        zip(
            ("eos", "pad", "image", "video", "vstart", "vend"),
            tok.convert_tokens_to_ids(
                [
                    "<|im_end|>",
                    "<|endoftext|>",
                    "<|image_pad|>",
                    "<|video_pad|>",
                    "<|vision_start|>",
                    "<|vision_end|>",
                ]
            ),
            strict=True,
        )
    )
    text = {
        **QWEN2_5_VL_3B_TEXT,
        "bos_token_id": ids["pad"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }
    config = tf.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=QWEN2_5_VL_3B_VISION,
        tie_word_embeddings=True,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vstart"],
        vision_end_token_id=ids["vend"],
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"built a random-init Qwen2.5-VL-3B ({n / 1e9:.2f}B parameters) in {out_dir}")
    marker.write_text(json.dumps(spec))


# ---------------------------------------------------------------- ours (child)


def ours_overrides(args: argparse.Namespace, model_dir: str, out_dir: str) -> list[str]:
    micro = "null" if args.micro_batch is None else str(args.micro_batch)
    return [
        f"seed={args.seed}",
        f"model.path={model_dir}",
        f"model.dtype={args.dtype}",
        "model.master_dtype=float32",
        f"model.gradient_checkpointing={str(args.grad_ckpt).lower()}",
        f"data.train={{source: {args.data_file}, split: train}}",
        "data.eval=null",
        "data.template=plain",
        "data.system_prompt=null",
        "rollout.engine=hf",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.new_tokens}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        "rewards=[{name: accuracy, weight: 1.0}]",
        "algorithm.advantage=grpo",
        "algorithm.loss={name: grpo}",
        "algorithm.kl_coef=0.0",
        "algorithm.dynamic_sampling.enabled=false",
        "algorithm.overlong.enabled=false",
        f"optim.lr={args.lr}",
        "optim.scheduler=constant",
        "optim.warmup_steps=0",
        "optim.weight_decay=0.0",
        "optim.max_grad_norm=1.0",
        f"trainer.prompts_per_step={args.prompts}",
        "trainer.minibatches=1",
        "trainer.update_epochs=1",
        f"trainer.micro_batch_size={micro}",
        f"trainer.num_threads={args.threads}",
        f"trainer.output_dir={out_dir}",
        f"trainer.max_steps={args.warmup + args.steps}",
        "trainer.resume=false",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
        "trainer.log_samples=0",
        "trainer.save_every=0",
    ]


def run_ours(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    import logging

    import torch

    from mhpo_vl.trainer import train_step
    from mhpo_vl.training.state import setup
    from mhpo_vl.validation import load_recipe

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="bench_vs_trl_ours_")
    try:
        cfg = load_recipe(RECIPE, ours_overrides(args, model_dir, out))
        run = setup(cfg)
        setup_rss = current_rss_mb()
        steps = []
        for step in range(1, args.warmup + args.steps + 1):
            m = train_step(run, step)
            if step <= args.warmup:
                continue
            rec = {
                "step": m["time/step"],
                "generate": m["time/generate"],
                "reward": m["time/reward"],
                "update": m["time/update"],
                "completion_len": m["response_length/mean"],
                "reward_mean": m["reward/mean"],
            }
            rec["other"] = rec["step"] - rec["generate"] - rec["reward"] - rec["update"]
            steps.append(rec)
        result = {"framework": "ours", "steps": steps, "setup_rss_mb": setup_rss}
        if torch.cuda.is_available():
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / (1 << 20)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- TRL (child)


def trl_dataset(rows: list[dict[str, Any]]) -> Any:
    """TRL's conversational VLM format: ``prompt`` (chat messages with an image part,
    our ``plain`` template), ``image`` (PIL) and the row's fields the verifier reads."""
    from datasets import Dataset

    from mhpo_vl.data.templates import build_messages

    records = []
    for r in rows:
        rec = {"prompt": build_messages(r, "plain"), "image": r["image"]}
        rec.update({k: r.get(k) for k in ROW_KEYS})
        records.append(rec)
    return Dataset.from_list(records)


def accuracy_reward(completions: list, **columns: Any) -> list[float]:
    """Our ``accuracy`` verifier as a TRL reward function: each completion against its
    row (TRL passes the dataset's columns, repeated per completion, as keyword lists)."""
    from mhpo_vl.rewards import score_rewards

    texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
    rows = [{k: columns[k][i] for k in ROW_KEYS if k in columns} for i in range(len(completions))]
    total, _ = score_rewards([("accuracy", 1.0)], texts, rows)
    return total


class PhaseClock:
    """Seconds spent in named phases since the last :meth:`take`."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def make_trl_trainer_class(clock: PhaseClock) -> type:
    """``GRPOTrainer`` with its generation, scoring, rollout and batch fetch timed."""
    from trl import GRPOTrainer

    hooks = ("_generate", "_calculate_rewards", "_prepare_inputs", "get_batch_samples")
    missing = [h for h in hooks if not hasattr(GRPOTrainer, h)]
    if missing:
        raise SystemExit(
            f"this TRL's GRPOTrainer has no {', '.join(missing)}: the script follows "
            f"trl=={TRL_VERSION}"
        )

    def timed(name: str, method: Any) -> Any:
        def wrapper(self: Any, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(self, *a, **k)
            finally:
                clock.add(name, time.perf_counter() - t0)

        wrapper.__name__ = method.__name__
        return wrapper

    return type(
        "TimedGRPOTrainer",
        (GRPOTrainer,),
        {
            "_generate": timed("generate", GRPOTrainer._generate),
            "_calculate_rewards": timed("reward", GRPOTrainer._calculate_rewards),
            "_prepare_inputs": timed("prepare", GRPOTrainer._prepare_inputs),
            "get_batch_samples": timed("data", GRPOTrainer.get_batch_samples),
        },
    )


def make_step_timer(clock: PhaseClock, warmup: int) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step boundaries (``on_step_begin`` / ``on_step_end``) and RSS after setup."""

        def __init__(self) -> None:
            self.trainer: Any = None
            self.steps: list[dict[str, float]] = []
            self.setup_rss = float("nan")
            self._t0 = 0.0
            self._n = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.setup_rss = current_rss_mb()

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            inner = time.perf_counter() - self._t0
            ph = clock.take()
            self._n += 1
            if self._n <= warmup:
                return
            data, prepare = ph.get("data", 0.0), ph.get("prepare", 0.0)
            rec = {
                "step": data + inner,
                "generate": ph.get("generate", 0.0),
                "reward": ph.get("reward", 0.0),
                "update": inner - prepare,
            }
            rec["other"] = rec["step"] - rec["generate"] - rec["reward"] - rec["update"]
            metrics = self.trainer._metrics["train"] if self.trainer is not None else {}
            for key, name in (
                ("completions/mean_length", "completion_len"),
                ("reward", "reward_mean"),
            ):
                if metrics.get(key):
                    rec[name] = float(metrics[key][-1])
            self.steps.append(rec)

    return StepTimer()


def trl_config(args: argparse.Namespace, out_dir: str, cuda: bool) -> Any:
    from trl import GRPOConfig

    completions = completions_per_step(args)
    micro = args.micro_batch or completions
    bf16 = args.dtype == "bfloat16"
    return GRPOConfig(
        output_dir=out_dir,
        # one generation of all completions feeds exactly one optimizer step
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        steps_per_generation=completions // micro,
        num_iterations=1,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        # loss: GRPO's clip, per-sequence token mean then mean over sequences, no KL
        loss_type="grpo",
        beta=0.0,
        epsilon=0.2,
        scale_rewards="group",
        mask_truncated_completions=False,
        # optimizer: as ours
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch",
        # precision: float32 master weights; bf16 autocast only when asked
        model_init_kwargs={"dtype": "float32"},
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=args.grad_ckpt,
        gradient_checkpointing_kwargs={"use_reentrant": False} if args.grad_ckpt else None,
        # nothing else
        max_steps=args.warmup + args.steps,
        use_vllm=False,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )


def run_trl(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    import logging
    import warnings

    import torch

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    why = trl_import_error()
    if why is not None:
        print(f"{INSTALL_HINT}\n({why})", file=sys.stderr)
        raise SystemExit(2)
    import trl
    from datasets import Dataset

    from mhpo_vl.models.processors import load_vl_processor

    processor = load_vl_processor(model_dir, _model_type(model_dir))
    processor.tokenizer.padding_side = "left"
    dataset = trl_dataset(list(Dataset.from_parquet(args.data_file)))
    clock = PhaseClock()
    timer = make_step_timer(clock, args.warmup)
    out = tempfile.mkdtemp(prefix="bench_vs_trl_trl_")
    cuda = torch.cuda.is_available()
    try:
        trainer = make_trl_trainer_class(clock)(
            model=model_dir,
            reward_funcs=[accuracy_reward],
            args=trl_config(args, out, cuda),
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[timer],
        )
        timer.trainer = trainer
        trainer.train()
        result = {
            "framework": "trl",
            "trl_version": trl.__version__,
            "steps": timer.steps,
            "setup_rss_mb": timer.setup_rss,
        }
        if cuda:
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / (1 << 20)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def child_main(args: argparse.Namespace) -> int:
    import random

    import numpy as np
    import torch

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.child == "build":
        build_3b(args.resolved_dir)
        return 0
    run = run_ours if args.child == "ours" else run_trl
    result = run(args, args.resolved_dir)
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- parent


def write_rows(n: int, out_dir: str) -> str:
    """The first ``n`` rows of the synthetic vision train split (seed 0) as a parquet file:
    the exact rows ``task_rows("vision", "train", n)`` and the ``synthetic_vision`` source
    give, written once so both frameworks load the same file and only those rows."""
    import datasets

    from mhpo_vl.data.synthetic import synthetic_vision

    datasets.disable_progress_bars()
    path = str(Path(out_dir, f"synthetic_vision_train_{n}.parquet"))
    synthetic_vision("train", n, seed=0).to_parquet(path)
    return path


def child_argv(args: argparse.Namespace, child: str, model_dir: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", child]
    argv += ["--resolved-dir", model_dir, "--model-size", args.model_size]
    argv += ["--data-file", args.data_file or ""]
    argv += ["--rows", str(args.rows), "--prompts", str(args.prompts), "--group", str(args.group)]
    argv += ["--new-tokens", str(args.new_tokens), "--lr", repr(args.lr), "--dtype", args.dtype]
    argv += ["--threads", str(args.threads), "--steps", str(args.steps)]
    argv += ["--warmup", str(args.warmup), "--seed", str(args.seed)]
    argv += ["--grad-ckpt" if args.grad_ckpt else "--no-grad-ckpt"]
    if args.micro_batch is not None:
        argv += ["--micro-batch", str(args.micro_batch)]
    return argv


def spawn(args: argparse.Namespace, child: str, model_dir: str) -> dict[str, Any] | None:
    """Run one child; its result, or None (what it printed goes to stderr)."""
    proc = subprocess.run(
        child_argv(args, child, model_dir),
        stdout=subprocess.PIPE,
        stderr=None if args.verbose else subprocess.PIPE,
        text=True,
        cwd=ROOT,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    print(f"the {child} run failed (exit {proc.returncode}):", file=sys.stderr)
    print((proc.stdout or "")[-3000:], file=sys.stderr)
    if proc.stderr:
        print(proc.stderr[-6000:], file=sys.stderr)
    if proc.returncode == 2 and child == "trl":
        print(INSTALL_HINT, file=sys.stderr)
    return None


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    steps = [s for r in runs for s in r["steps"]]
    out = {p: statistics.median(s[p] for s in steps) for p in PHASES}
    for key in ("completion_len", "reward_mean"):
        values = [s[key] for s in steps if key in s]
        out[key] = statistics.mean(values) if values else float("nan")
    for key in ("peak_rss_mb", "setup_rss_mb", "cuda_peak_mb"):
        values = [r[key] for r in runs if key in r]
        out[key] = statistics.median(values) if values else float("nan")
    # what training adds to the process after set-up (the libraries, model, optimizer and
    # data both frameworks hold before the first step are the same ~0.5 GB on CPU)
    added = [r["peak_rss_mb"] - r["setup_rss_mb"] for r in runs if "setup_rss_mb" in r]
    out["added_rss_mb"] = statistics.median(added) if added else float("nan")
    out["n_steps"] = len(steps)
    return out


def print_table(args: argparse.Namespace, results: dict[str, list], model: str, dev: str) -> None:
    s = {fw: summarize(runs) for fw, runs in results.items()}
    trl_v = results["trl"][0].get("trl_version", "?")
    cuda = dev == "cuda"
    print()
    print(
        f"ours vs TRL {trl_v} GRPOTrainer: {model}, {dev}, {args.dtype}, "
        f"{args.threads} threads, {args.prompts} prompts x {args.group} completions x "
        f"{args.new_tokens} new tokens, micro-batch {args.micro_batch or 'all'}, "
        f"activation checkpointing {'on' if args.grad_ckpt else 'off'}"
    )
    print(
        f"{args.repeats} round(s) of fresh processes (ours, TRL), {args.warmup} warm-up + "
        f"{args.steps} timed step(s) each; medians over {s['ours']['n_steps']} / "
        f"{s['trl']['n_steps']} timed steps; memory: median over rounds"
    )
    cols = [f"{p} s" for p in PHASES] + ["peak RSS", "setup RSS", "added RSS"]
    cols += ["CUDA peak"] if cuda else []
    cols += ["compl len", "reward"]
    print(f"{'':<12}" + "".join(f"{c:>11}" for c in cols))
    for fw, label in (("ours", "ours"), ("trl", "TRL")):
        r = s[fw]
        cells = [f"{r[p]:.3f}" for p in PHASES]
        cells += [f"{r[k]:.0f} MB" for k in ("peak_rss_mb", "setup_rss_mb", "added_rss_mb")]
        cells += [f"{r['cuda_peak_mb']:.0f} MB"] if cuda else []
        cells += [f"{r['completion_len']:.1f}", f"{r['reward_mean']:.3f}"]
        print(f"{label:<12}" + "".join(f"{c:>11}" for c in cells))

    def ratio(key: str) -> str:
        a, b = s["ours"][key], s["trl"][key]
        return f"{a / b:.2f}x" if b and b == b and a == a else "-"

    cells = [ratio(p) for p in PHASES]
    cells += [ratio(k) for k in ("peak_rss_mb", "setup_rss_mb", "added_rss_mb")]
    cells += [ratio("cuda_peak_mb")] if cuda else []
    print(f"{'ours / TRL':<12}" + "".join(f"{c:>11}" for c in cells))
    print(
        f"step time ours / TRL: {ratio('step')}; peak memory ours / TRL: {ratio('peak_rss_mb')}"
        + (f" (RSS), {ratio('cuda_peak_mb')} (CUDA)" if cuda else " (RSS)")
        + f"; memory added by training after set-up: {ratio('added_rss_mb')}"
    )
    print(
        "phases: generate = prompt encoding + generate (+ decoding for TRL); update = loss "
        "forward/backward + optimizer; other = step - generate - reward - update"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    why = trl_import_error()
    if why is not None:
        print(f"{INSTALL_HINT}\n(import trl failed: {why})", file=sys.stderr)
        return 2
    import trl

    if trl.__version__ != TRL_VERSION:
        print(f"note: TRL {trl.__version__} found; this script follows {TRL_VERSION}")
    dev = _device()
    if args.model_size == "3b" and dev != "cuda":
        print(
            "--model-size 3b is a GPU benchmark (a 3.75B-parameter model, 16 x 8 completions of "
            "256 tokens); no CUDA device here. Run it on a GPU machine, or drop --model-size.",
            file=sys.stderr,
        )
        return 2
    scratch = tempfile.mkdtemp(prefix="bench_vs_trl_")  # the data file (and a 3B model)
    try:
        if args.model_size == "3b":
            model_dir = args.model_dir or str(Path(scratch, "qwen2_5_vl_3b_random"))
            print(f"building the random-init 3B model in {model_dir} ...", flush=True)
            if subprocess.run(child_argv(args, "build", model_dir), cwd=ROOT).returncode:
                return 1
            label = "random-init Qwen2.5-VL-3B"
        else:
            model_dir = resolve_model(args.model)
            label = args.model
        args.data_file = write_rows(args.rows, scratch)
        results = run_rounds(args, model_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if results is None:
        return 1
    print_table(args, results, label, dev)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))
    return 0


def run_rounds(args: argparse.Namespace, model_dir: str) -> dict[str, list] | None:
    """Alternate fresh ours / TRL processes for ``--repeats`` rounds."""
    results: dict[str, list] = {"ours": [], "trl": []}
    for rnd in range(1, args.repeats + 1):
        for fw in ("ours", "trl"):
            t0 = time.perf_counter()
            res = spawn(args, fw, model_dir)
            if res is None:
                return None
            med = statistics.median(s["step"] for s in res["steps"])
            print(
                f"round {rnd}/{args.repeats} {fw:<4}: median step {med:.3f} s, peak RSS "
                f"{res['peak_rss_mb']:.0f} MB ({time.perf_counter() - t0:.0f} s wall)",
                flush=True,
            )
            results[fw].append(res)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
