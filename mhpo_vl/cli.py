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

from mhpo_vl.errors import UserError

EPILOG = """\
examples:
  mhpo-vl train recipes/tiny/mhpo.yaml                      # the embedded default, CPU
  mhpo-vl train recipes/tiny/mhpo.yaml trainer.max_steps=4 trainer.output_dir=runs/try
  mhpo-vl validate recipes/tiny/*.yaml                       # check recipes without running
  mhpo-vl validate recipes/tiny/mhpo.yaml optim.lr=5e-5      # ... with overrides
  mhpo-vl plot runs/tiny_mhpo                                # PNG curves from metrics.jsonl
  mhpo-vl eval score mathvista output.json --out-dir scored  # MathVista-compatible scoring
  mhpo-vl report text_qwen2_5_7b                             # the paper's table beside ours
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from mhpo_vl.validation import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)  # a bad recipe fails before the imports
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
        validate_recipe(path, overrides)
        print(f"ok  {path}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from mhpo_vl.plotting import plot_run

    for path in plot_run(args.run_dir, args.out_dir):
        print(path)
    return 0


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
        "plot",
        help="write PNG curves (reward, accuracy, grad norm, ratio range, entropy, length)",
        description="Read RUN_DIR/metrics.jsonl and write PNG curves to RUN_DIR/plots/.",
    )
    p.add_argument("run_dir")
    p.add_argument("--out-dir", default=None, help="where to write PNGs (RUN_DIR/plots)")
    p.set_defaults(func=_cmd_plot)

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


if __name__ == "__main__":
    raise SystemExit(main())
