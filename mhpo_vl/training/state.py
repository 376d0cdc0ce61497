"""A run's state: everything the loop touches (:class:`Run`), built once by
:func:`setup`, saved by :func:`save` and restored on resume."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mhpo_vl import checkpoint, rng
from mhpo_vl.config import Recipe, dump_recipe, recipe_to_dict
from mhpo_vl.data import BadRowLog, EpochSampler, ProblemSet, load_problems
from mhpo_vl.errors import RunHalted, UserError
from mhpo_vl.models import Policy, load_policy
from mhpo_vl.models.policy import keep_weight_names, vision_tower, weight_names
from mhpo_vl.models.processors import prompt_limit
from mhpo_vl.parallel import Parallel, build_parallel
from mhpo_vl.provenance import record_start
from mhpo_vl.rollout import RolloutEngine, build_engine
from mhpo_vl.tracking import RunLogger
from mhpo_vl.training.evaluation import Suite, eval_suites
from mhpo_vl.training.rundir import RECIPE_FILE, RunLock, check_resume

log = logging.getLogger("mhpo_vl")


@dataclass
class Run:
    """Everything the loop touches."""

    cfg: Recipe
    par: Parallel
    policy: Policy
    model: Any  # the prepared (wrapped or sharded) policy model
    ref: Policy | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: RolloutEngine
    train_set: ProblemSet
    eval_set: ProblemSet | None
    sampler: EpochSampler
    logger: RunLogger
    suites: list[Suite]
    bench_reports: dict[str, BadRowLog]  # bad rows of each eval.benchmarks entry
    scaler: Any = None  # torch.amp.GradScaler; enabled only for float16 compute
    start_step: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "reward": 0.0})
    skips: dict[str, Any] = field(default_factory=lambda: {"consecutive": 0, "total": 0})
    # this step's reward calls and failures: name -> [count, first failure's description]
    reward_calls: int = 0
    reward_failures: dict[str, list] = field(default_factory=dict)
    lock: RunLock | None = None  # on the output directory, held by the main process

    def close(self) -> None:
        """End the run's hold on its outputs: the logger's files, then the lock."""
        self.logger.close()
        if self.lock is not None:
            self.lock.release()

    @property
    def generate_in_step(self) -> bool:
        """Whether every process must call ``engine.generate`` equally often: under FSDP
        each call gathers the weights collectively, and vLLM engines of one
        tensor-parallel group run each other's prompts (``engine.lockstep``)."""
        return self.par.lockstep or getattr(self.engine, "lockstep", False)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Recipe) -> Any:
    """LR multiplier per training step: linear warm-up, then constant/linear/cosine."""
    o, total = cfg.optim, cfg.trainer.max_steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.scheduler == "linear":
            return 1.0 - progress
        if o.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _load_policy(path: str, cfg: Recipe, device: Any, master_dtype: str) -> Policy:
    m = cfg.model
    return load_policy(
        path,
        dtype=m.dtype,
        master_dtype=master_dtype,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=m.gradient_checkpointing,
        freeze_vision=m.freeze_vision,
        device=device,
    )


def may_leave_parameters_unused(policy: Policy, train_set: ProblemSet) -> bool:
    """Whether a step can leave trainable parameters without a gradient: a vision model
    whose vision tower trains, with training rows that have no image (a batch of them
    never runs the tower). DDP must then look for such parameters after each backward."""
    if not policy.is_vision or train_set.text_only == 0:
        return False
    return any(p.requires_grad for p in vision_tower(policy.model).parameters())


def _check_verifiers() -> None:
    """Stop before training if math-verify cannot run here: every math reward would be 0."""
    from mhpo_vl.rewards.mathcheck import VerifierUnavailable, require_math_verify

    try:
        require_math_verify()
    except VerifierUnavailable as exc:
        raise UserError(f"the math answer checker cannot run: {exc}") from None


def setup(cfg: Recipe) -> Run:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the one to watch
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    _check_verifiers()
    par = build_parallel(cfg.parallel, cfg.trainer.collective_timeout)
    out = Path(cfg.trainer.output_dir)
    lock = take_lock(out, par)  # before anything in the directory is touched
    try:
        return _build(cfg, par, lock)
    except BaseException:
        lock.release()
        raise


def take_lock(out: Path, par: Parallel) -> RunLock:
    """The main process locks ``out`` for the run; every process stops if it cannot."""
    lock = RunLock(out)
    refused = ""
    if par.is_main:
        try:
            lock.acquire()
        except UserError as exc:
            refused = str(exc)
    refused = par.gather(refused)[0]
    if refused:
        raise UserError(refused)
    return lock


def start_logger(out: Path, cfg: Recipe, par: Parallel) -> RunLogger:
    """The run's logger: the main process starts the trackers of ``trainer.report_to``;
    every process stops, with the main one's line, when one cannot start."""
    t, logger, refused = cfg.trainer, RunLogger(out, enabled=False), ""
    if par.is_main:
        try:
            # (build_recipe already folded the deprecated trainer.tensorboard in)
            logger = RunLogger(
                out, report_to=t.report_to, config=recipe_to_dict(cfg),
                project=t.tracker_project, run_name=t.run_name or cfg.name,
            )  # fmt: skip
        except UserError as exc:
            refused = str(exc)
    refused = par.gather(refused)[0]
    if refused:
        logger.close(failed=True)
        raise UserError(refused)
    return logger


def _start_over(out: Path, par: Parallel) -> None:
    """``trainer.resume=false``: the directory's checkpoints of an earlier run are
    removed, so that neither a later resume nor the pruning of old ones mixes them in."""
    if par.is_main:
        for _, path in checkpoint.list_checkpoints(out):
            checkpoint.remove(path)
            log.info("removed %s (trainer.resume=false: starting over)", path)
    par.barrier()


def _build(cfg: Recipe, par: Parallel, lock: RunLock) -> Run:
    out = Path(cfg.trainer.output_dir)
    if par.is_main:
        for name in checkpoint.clean_leftovers(out):  # of a save or prune that was killed
            log.info("removed %s, left by an interrupted run", out / name)
    par.barrier()
    ckpt = checkpoint.latest_checkpoint(out) if cfg.trainer.resume else None
    if ckpt is not None:  # before loading anything: a mixed resume stops here
        check_resume(ckpt, cfg)
    elif not cfg.trainer.resume:
        _start_over(out, par)
    logger = start_logger(out, cfg, par)  # before the model loads: a tracker may refuse
    # Each process samples its own stream (rollouts of one prompt on two ranks must
    # differ); the weights do not depend on it (loaded, or broadcast from rank 0).
    torch.manual_seed(cfg.seed + par.rank)
    m = cfg.model
    source = str(ckpt) if ckpt else m.path
    # a sharded checkpoint's weights are loaded with its optimizer state (_restore)
    sharded = ckpt is not None and checkpoint.is_sharded(ckpt)
    policy = par.load(lambda dev: _load_policy(source, cfg, dev, m.master_dtype), not sharded)
    # The reference is the starting policy; it is not loaded at all when unused. Frozen,
    # it needs no master weights: its parameters are in the compute dtype.
    ref = None
    if cfg.algorithm.kl_coef > 0:
        ref = par.load(lambda dev: _load_policy(m.path, cfg, dev, m.dtype))
        ref.model.requires_grad_(False).eval()
    limits = {**cfg.data.limits(), "prompt_limit": prompt_limit(policy, cfg)}  # checked at load
    train_set = load_problems(cfg.data.train, "data.train", **limits)
    eval_set = None
    if cfg.data.eval is not None:
        eval_set = load_problems(cfg.data.eval, "data.eval", **limits)
    o = cfg.optim

    def make_optimizer(params: list) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )

    model, optimizer, raw = par.prepare(
        policy.model, make_optimizer, policy.compute_dtype,
        unused_parameters=may_leave_parameters_unused(policy, train_set),
    )  # fmt: skip
    scheduler = make_scheduler(raw, cfg)
    # float16 gradients underflow without loss scaling; bfloat16 and float32 need none
    scaler = torch.amp.GradScaler(
        par.device.type, enabled=m.dtype == "float16" and m.master_dtype == "float32"
    )
    engine = build_engine(cfg.rollout.engine, policy, cfg.rollout.engine_args)
    run = Run(
        cfg, par, policy, model, ref, optimizer, scheduler, engine,
        train_set, eval_set, EpochSampler(len(train_set), cfg.seed),
        logger,
        *eval_suites(cfg, eval_set, limits["prompt_limit"]), scaler, lock=lock,
    )  # fmt: skip
    if ckpt is not None:
        _restore(run, ckpt)
    else:  # a fresh start: records of an earlier attempt that never checkpointed go
        run.logger.truncate_after(-1)
    if par.is_main:
        try:
            dump_recipe(cfg, out / "config.yaml")
            record_start(out, run.start_step)  # run_info.json: the mhpo_vl commit
        except OSError as exc:
            raise checkpoint.write_failure(out / "config.yaml", exc, out) from None
        log.info(
            "training on %d process(es) (%s), device %s, %s compute, %s parameters",
            par.world, par.name, par.device, m.dtype, m.master_dtype,
        )  # fmt: skip
        if m.master_dtype == m.dtype != "float32":
            log.warning(
                "pure %s: parameters and optimizer state are %s (model.master_dtype), so "
                "updates below its resolution are lost (at lr 1e-6 most of them); "
                "model.master_dtype=float32 keeps float32 master weights",
                m.dtype, m.dtype,
            )  # fmt: skip
    return run


def _restore(run: Run, ckpt: Path) -> None:
    state = checkpoint.load_state(ckpt)
    run.par.load_state(run.model, run.optimizer, ckpt, state.get("optimizer"))
    keep_weight_names(run.par.unwrap(run.model), state.get("weight_names"))
    run.scheduler.load_state_dict(state["scheduler"])
    run.sampler.load_state_dict(state["data_order"])
    saved = state["rng"]
    if len(saved) == run.par.world:
        rng.restore(saved[run.par.rank], run.par.device)
    elif run.par.is_main:  # the weights and optimizer resume exactly; sampling cannot
        log.warning(
            "%s was written by %d process(es), this run has %d: random streams restart "
            "from the seed, so the run continues, but not as the original would have",
            ckpt, len(saved), run.par.world,
        )  # fmt: skip
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.skips.update(state.get("skips", {}))
    run.start_step = state["step"]
    run.logger.truncate_after(run.start_step)
    if run.par.is_main:
        log.info("resumed from %s (step %d)", ckpt, run.start_step)


def save(run: Run, step: int) -> None:
    """Write ``checkpoint-<step>``: every process writes its part of the model and
    optimizer (the strategy says which), the main one the rest of the trainer state."""
    par, t = run.par, run.cfg.trainer
    rng_states = par.gather(rng.state(par.device))
    require_finite_weights(run, step)
    state = {
        "step": step,
        "scheduler": run.scheduler.state_dict(),
        "data_order": run.sampler.state_dict(),
        "rng": rng_states,
        "scaler": run.scaler.state_dict(),
        "skips": dict(run.skips),
        # the checkpoint names the weights were loaded under, for HF exports after resume
        "weight_names": weight_names(par.unwrap(run.model)),
    }
    hf_weights = step == t.max_steps or t.hf_weights == "every"

    def write(folder: Path) -> None:
        optimizer = par.save_state(run.model, run.optimizer, folder, hf_weights)
        if par.is_main:
            if optimizer is not None:
                state["optimizer"] = optimizer
            run.policy.processor.save_pretrained(folder)
            dump_recipe(run.cfg, folder / RECIPE_FILE)  # a resume with another is refused
            checkpoint.save_state(state, folder / checkpoint.STATE_FILE)

    path = checkpoint.write_checkpoint(t.output_dir, step, write, t.keep_last, group=par)
    if par.is_main:
        log.info("saved %s", path)


def require_finite_weights(run: Run, step: int) -> None:
    """Never write a checkpoint with NaN or inf weights (a resume would load them)."""
    bad = run.par.bad_parameters(run.model)
    if run.par.sum(float(len(bad))) > 0:
        where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
        last = checkpoint.latest_checkpoint(run.cfg.trainer.output_dir)
        raise RunHalted(
            f"step {step}: non-finite weights{where}; checkpoint not written. "
            f"Resume from {last or 'the start'} with a lower optim.lr"
        )
