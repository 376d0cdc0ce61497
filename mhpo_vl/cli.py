"""The ``mhpo-vl`` command: parses arguments and calls into the package, nothing else.

User mistakes (:class:`~mhpo_vl.errors.UserError`: unknown keys or names, values out
of range, missing files, unwritable output directories) print one line on stderr and
exit with code 2, from ``validate`` and ``train`` alike. Set ``MHPO_VL_DEBUG=1`` for
full tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys

from mhpo_vl.errors import UserError, missing_file

EPILOG = """\
examples:
  mhpo-vl train recipes/tiny/mhpo.yaml                      # the embedded default, CPU
  mhpo-vl train recipes/tiny/mhpo.yaml trainer.max_steps=4 trainer.output_dir=runs/try
  mhpo-vl validate recipes/tiny/*.yaml                       # check recipes without running
  mhpo-vl validate recipes/tiny/mhpo.yaml optim.lr=5e-5      # ... with overrides
  mhpo-vl estimate recipes/qwen2_5_vl_7b/geometry3k_mhpo.yaml --gpus 4   # will it fit?
  mhpo-vl export runs/tiny_mhpo --out models/tiny_mhpo  # HF model + card (--push-to-hub REPO)
  mhpo-vl plot runs/tiny_mhpo                                # PNG curves from metrics.jsonl
  mhpo-vl samples runs/tiny_mhpo --html rollouts.html       # rollouts with their images
  mhpo-vl eval score mathvista output.json --out-dir scored  # MathVista-compatible scoring
  mhpo-vl report text_qwen2_5_7b                             # the paper's table beside ours
"""


def _recipe_file(path: str) -> str:
    """``path``, a recipe file given on the command line; else the missing-file error."""
    if not os.path.isfile(path):
        fix = "give the path of a recipe YAML, e.g. recipes/tiny/mhpo.yaml"
        raise missing_file("recipe file", path, "the RECIPE argument", fix)
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    from mhpo_vl.validation import load_recipe

    # a bad recipe fails before the imports
    cfg = load_recipe(_recipe_file(args.recipe), args.overrides)
    from mhpo_vl.trainer import train

    train(cfg)
    return 0


def _is_override(arg: str) -> bool:
    """``KEY=VALUE`` rather than a recipe path (a file whose name has ``=`` stays a path)."""
    return "=" in arg and not os.path.exists(arg)


def _cmd_validate(args: argparse.Namespace) -> int:
    from mhpo_vl.validation import load_recipe as validate_recipe

    recipes = [a for a in args.recipes if not _is_override(a)]
    overrides = [a for a in args.recipes if _is_override(a)] + args.overrides
    if not recipes:
        raise UserError("validate: no recipe given (mhpo-vl validate RECIPE [KEY=VALUE ...])")
    for path in recipes:
        validate_recipe(_recipe_file(path), overrides)
        print(f"ok  {path}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from mhpo_vl.estimate import estimate_recipe_file, render_json, render_text

    est = estimate_recipe_file(
        args.recipe, args.overrides, args.gpus, args.gpu_mem, args.prompt_tokens
    )
    print(render_json(est) if args.json else render_text(est, args.recipe), end="")
    return 0 if est.fits else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from mhpo_vl.export import export_model, push_folder, require_hub_token, resolve_source

    if args.private and not args.push_to_hub:
        raise UserError("--private: only with --push-to-hub REPO")
    if args.push_to_hub:
        require_hub_token(args.push_to_hub)  # before any work
    ckpt, _, chosen = resolve_source(args.source)
    print(f"exporting {ckpt} ({chosen})", flush=True)
    done = export_model(ckpt, args.out)
    print(f"wrote {done.out}: {', '.join(done.files)}")
    for problem in done.vllm_problems:
        print(f"warning: vLLM may not serve it: {problem}")
    if args.push_to_hub:
        print(f"pushed to {push_folder(done.out, args.push_to_hub, args.private)}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from mhpo_vl.plotting import plot_run

    for path in plot_run(args.run_dir, args.out_dir):
        print(path)
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from mhpo_vl.viewer import show_samples

    return show_samples(args.run_dir, args.step, args.html, full=args.full)


def _cmd_report(args: argparse.Namespace) -> int:
    from mhpo_vl.report import write_report

    markdown, paths = write_report(args.table, args.results_root, args.out)
    print(markdown, end="")
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mhpo-vl",
        description="Train vision-language reasoners with MHPO and GRPO-family RL; "
        "evaluate them on MathVista-style and text math benchmarks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train from a recipe YAML (resumes if OUTPUT_DIR holds a checkpoint)",
        description="Train from a recipe. Extra KEY=VALUE arguments override recipe keys "
        "(dotted paths, YAML values), e.g. trainer.max_steps=10 algorithm.loss.name=grpo. "
        "If trainer.output_dir already holds a checkpoint-<step>/, training resumes from "
        "the latest one.",
    )
    p.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/tiny/mhpo.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "validate",
        help="check recipes (keys, types, names, files) without running them",
        description="Load and validate each recipe (keys, types, names, value ranges, "
        "files, that trainer.output_dir can be written); print 'ok  PATH' or one line "
        "naming the problem (exit code 2). KEY=VALUE arguments (or --set) override recipe "
        "keys in every recipe, as for train.",
    )
    p.add_argument(
        "recipes",
        nargs="+",
        metavar="RECIPE|KEY=VALUE",
        help="recipe paths, and KEY=VALUE overrides applied to each of them",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable)",
    )
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "estimate",
        help="will it fit? memory per GPU of a recipe, by phase (exit 1 if it does not fit)",
        description="Estimate what one GPU holds while the recipe trains (parameters, "
        "gradients, AdamW state, activations, log-prob working memory, reference model, "
        "vLLM) in each phase (load, engine build, rollout, update), from the model's real "
        "config built on the meta device (nothing downloaded). Exit code 0 when the peak "
        "fits --gpu-mem, 1 when it does not, 2 for a mistake in the arguments or recipe. "
        "The data files need not exist yet.",
    )
    p.add_argument("recipe", help="path to a recipe YAML")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs the job runs on (default: the recipe's '# Hardware: Nx ...' line, else 1)",
    )
    p.add_argument(
        "--gpu-mem",
        type=float,
        default=None,
        metavar="GB",
        help="memory per GPU in GB (default: the recipe's Hardware line, else 80)",
    )
    p.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        help="prompt length in tokens (default: max_model_len - max_new_tokens when "
        "max_model_len is set, else 256 text tokens plus the image tokens)",
    )
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser(
        "plot",
        help="write PNG curves (reward, accuracy, grad norm, ratio range, entropy, length)",
        description="Read RUN_DIR/metrics.jsonl and write PNG curves to RUN_DIR/plots/.",
    )
    p.add_argument("run_dir")
    p.add_argument("--out-dir", default=None, help="where to write PNGs (RUN_DIR/plots)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "samples",
        help="the logged rollouts of a step, by reward, with their images (terminal or HTML)",
        description="Show RUN_DIR/samples.jsonl: for the latest logged step (or --step), "
        "each group's prompt and expected answer, then its responses sorted by reward "
        "(highest first) with reward parts and advantage. --html writes one "
        "self-contained page with the images embedded.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--step", default=None, metavar="N|all", help="the step to show (default: the latest)"
    )
    p.add_argument("--html", default=None, metavar="OUT", help="write an HTML page to OUT")
    p.add_argument(
        "--full", action="store_true", help="terminal: print prompts and responses uncut"
    )
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser(
        "report",
        help="the paper's table beside our numbers (markdown and PNG)",
        description="Render one of the paper's tables (eval/paper/TABLE.yaml) with the "
        "paper's numbers, ours and the difference: markdown (printed and written) and a "
        "PNG. Our numbers are read from RESULTS_ROOT/<row output_dir>/paper_eval/"
        "<benchmark>/results.json, as scripts/reproduce.py writes them; rows without "
        "results show '—'.",
    )
    p.add_argument("table", help="a table name: the file names in eval/paper/")
    p.add_argument(
        "--results-root",
        default=".",
        help="folder the rows' output_dir paths are relative to (default: here)",
    )
    p.add_argument("--out", default="runs/paper_report", help="where TABLE.md and TABLE.png go")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export",
        help="a run or checkpoint as a Hugging Face model with its model card (--push-to-hub)",
        description="Write the model of RUN_OR_CHECKPOINT (a run directory: its latest "
        "complete checkpoint) to OUT as from_pretrained, mhpo-vl eval and vLLM load it: "
        "safetensors weights, config.json, generation_config.json, the processor or "
        "tokenizer files with the chat template, a README.md model card (base model, "
        "algorithm, training length, mhpo_vl commit, the eval table at that step and how "
        "it was scored, the recipe) and training_curves.png; no trainer state. Weights "
        "with NaN or Inf are refused. A checkpoint trained with parallel.strategy fsdp "
        "keeps its weights sharded; they are gathered here one tensor at a time, on the "
        "CPU. --push-to-hub REPO then uploads OUT to the Hugging Face Hub in one commit.",
    )
    p.add_argument(
        "source", metavar="RUN_OR_CHECKPOINT", help="a run directory or a checkpoint-<step>/"
    )
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument(
        "--push-to-hub", metavar="REPO", help="also upload OUT to this Hub repo (user/name)"
    )
    p.add_argument("--private", action="store_true", help="create REPO private")
    p.set_defaults(func=_cmd_export)

    from mhpo_vl.eval.cli import register as register_eval

    register_eval(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        if os.environ.get("MHPO_VL_DEBUG"):
            raise
        print(f"mhpo-vl: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mhpo-vl: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``mhpo-vl`` command and ``python -m mhpo_vl``: :func:`main`, then the exit.
    A process of a torchrun / accelerate group ends through
    :func:`mhpo_vl.parallel.exit_process` (see there why)."""
    code = main()
    from mhpo_vl.parallel import exit_process, in_process_group

    if in_process_group():
        exit_process(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
