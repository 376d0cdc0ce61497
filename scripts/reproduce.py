"""Reproduce one of the paper's tables: train each row's recipe, then evaluate the final
checkpoint with the paper's protocol.

    python scripts/reproduce.py text_qwen2_5_7b --dry-run        # the plan, nothing run
    python scripts/reproduce.py text_qwen2_5_7b                  # every row, in order
    python scripts/reproduce.py ablations --rows c0_5 c2_0 --nproc 8 --launcher accelerate
    python scripts/reproduce.py tiny-study --dry-run             # the CPU study (mhpo_vl/study/)

TABLE is a file name in ``eval/paper/`` (the paper's numbers, columns, protocol and, per
row, the recipe under ``recipes/paper/`` that reproduces it). For each row, in order:

1. train: the recipe's launch line (``torchrun --nproc-per-node N -m mhpo_vl train
   RECIPE`` or its ``accelerate launch`` twin). Skipped when the final checkpoint
   (``<output_dir>/checkpoint-<max_steps>``) exists; an interrupted run resumes by
   itself from the latest checkpoint in its output folder. Rows without a recipe (the
   base model) are not trained.
2. evaluate: ``mhpo-vl eval run`` on the final checkpoint (or the hub model) with the
   table's protocol (Avg@32, temperature 1.0, its response budget and prompt template),
   written to ``<output_dir>/paper_eval/<benchmark>/results.json``. Benchmarks whose
   results exist (with that protocol, from that checkpoint) are not run again; a row
   with all of them is skipped.

Commands run from the repository root, one after the other; the first failure stops the
script with its exit code (run the same command again to go on). Before anything runs,
each recipe that will train is validated, and if its prepared data files are missing the
script prints the preparation command and stops (exit code 2). ``--dry-run`` prints the
commands, in order, and what would be skipped, runs nothing, and prints the full plan
even where the data are not prepared yet.

Then ``mhpo-vl report TABLE`` shows the paper's numbers beside ours.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mhpo_vl.report import (  # noqa: E402
    benchmarks,
    check_result,
    load_table,
    read_recipe,
    results_path,
    row_eval_model,
    row_output_dir,
    table_names,
)

TINY_STUDY = "tiny-study"
LAUNCHERS = ("torchrun", "accelerate")
CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RowPlan:
    key: str
    label: str
    recipe: str | None
    output_dir: str
    train: list[str] | None = None  # the command, when it must run
    train_note: str = ""
    evaluate: list[str] | None = None
    eval_note: str = ""
    prep: dict[str, list[str]] = field(default_factory=dict)  # prep command -> missing files
    done: bool = False


def _header_value(recipe: str, key: str) -> str | None:
    """A ``# Key: value`` line of the recipe's opening comment block."""
    for line in (ROOT / recipe).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = re.match(rf"#\s*{key}: (.*)$", line)
        if match:
            return match.group(1).strip()
    return None


def _nproc(recipe: str, given: int | None) -> int:
    if given is not None:
        return given
    hardware = _header_value(recipe, "Hardware") or ""
    match = re.match(r"(\d+)x", hardware)
    return int(match.group(1)) if match else 1


def train_command(recipe: str, nproc: int, launcher: str) -> list[str]:
    if launcher == "accelerate":
        head = ["accelerate", "launch", "--num_processes", str(nproc)]
    else:
        head = ["torchrun", "--nproc-per-node", str(nproc)]
    return [*head, "-m", "mhpo_vl", "train", recipe]


def eval_command(
    table: dict[str, Any], model: str, out_dir: str, names: list[str], data: dict[str, str]
) -> list[str]:
    p = table["protocol"]
    cmd = [
        "mhpo-vl", "eval", "run",
        "--model", model,
        "--benchmarks", ",".join(names),
        "--out-dir", f"{out_dir}/paper_eval",
        "--k", str(p["k"]),
        "--temperature", str(p["temperature"]),
        "--top-p", str(p["top_p"]),
        "--max-new-tokens", str(p["max_new_tokens"]),
        "--template", p["template"],
        "--batch-size", str(p["batch_size"]),
    ]  # fmt: skip
    for name in names:
        if name in data:
            cmd += ["--data", f"{name}={data[name]}"]
    return cmd


def _checkpoints(output_dir: Path) -> list[int]:
    if not output_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in output_dir.iterdir() if (m := CKPT_RE.match(p.name)))


def _local_data(recipe_tree: dict[str, Any]) -> list[str]:
    """The recipe's data files that are local paths (prepared by a data/ script)."""
    found = []
    for split in ("train", "eval"):
        spec = (recipe_tree.get("data") or {}).get(split) or {}
        source = str(spec.get("source", ""))
        if source.startswith("data/"):
            found.append(source)
    return found


def plan_row(
    table: dict[str, Any], key: str, args: argparse.Namespace, runs_root: Path = ROOT
) -> RowPlan:
    """What one row still needs. ``runs_root`` is where the rows' output folders are
    (the repository root, where the commands run; another folder in tests)."""
    row = table["rows"][key]
    out = row_output_dir(row)
    plan = RowPlan(key, str(row.get("label", key)), row.get("recipe"), out)
    model = row_eval_model(row)
    names = benchmarks(table)
    missing = []
    for name in names:
        _, why = check_result(runs_root / results_path(out, name), table, model)
        if why:
            missing.append((name, why))
    if not missing:
        plan.done = True
        plan.eval_note = f"results for all {len(names)} benchmarks in {out}/paper_eval"
        return plan
    if plan.recipe:
        recipe = read_recipe(plan.recipe)
        final = recipe["trainer"]["max_steps"]
        steps = _checkpoints(runs_root / out)
        if final in steps:
            plan.train_note = f"skip: {out}/checkpoint-{final} exists"
        else:
            plan.train = train_command(plan.recipe, _nproc(plan.recipe, args.nproc), args.launcher)
            plan.train_note = (
                f"resumes from {out}/checkpoint-{steps[-1]}" if steps else "from the start"
            )
            prep = _header_value(plan.recipe, "Data") or "(see data/README.md)"
            for source in _local_data(recipe):
                if not (ROOT / source).exists():
                    plan.prep.setdefault(prep, []).append(source)
    else:
        plan.train_note = f"none: {model} is evaluated as it is"
    plan.evaluate = eval_command(table, model, out, [m for m, _ in missing], args.data)
    if len(missing) < len(names):
        done = [n for n in names if n not in dict(missing)]
        plan.eval_note = f"{', '.join(done)} already done"
    elif any(why != "no results" for _, why in missing):
        plan.eval_note = "; ".join(f"{n}: {why}" for n, why in missing if why != "no results")
    return plan


def _validate(recipe: str) -> str | None:
    """None if the recipe validates, else the one-line problem."""
    from mhpo_vl.errors import UserError
    from mhpo_vl.validation import load_recipe

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # relative data and output paths mean the repository's
        load_recipe(recipe)
    except UserError as exc:
        return " ".join(str(exc).split())
    finally:
        os.chdir(cwd)
    return None


def _parse_data(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"reproduce.py: error: --data expects NAME=PATH, got {pair!r}")
        out[name.strip()] = path.strip()
    return out


def _env() -> dict[str, str]:
    """This environment with this interpreter's scripts folder (torchrun, accelerate,
    mhpo-vl) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(cmd: list[str]) -> int:
    env = _env()
    if shutil.which(cmd[0], path=env["PATH"]) is None:
        print(f"reproduce.py: error: {cmd[0]} not found on PATH", file=sys.stderr)
        return 127
    print(f"$ {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def build_parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproduce.py",
        description="Train and evaluate the rows of one of the paper's tables.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("table", metavar="TABLE", help=f"one of: {', '.join(names)}")
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="ROW", help="only these rows (default: all)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="training processes (GPUs); default: the recipe's Hardware line",
    )
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="evaluate benchmark NAME from local files (passed to mhpo-vl eval run)",
    )
    return parser


def _tiny_study(argv: list[str]) -> int:
    """``reproduce.py tiny-study ...``: the CPU study, its own options (mhpo_vl/study/)."""
    from mhpo_vl.study.cli import main as study_main

    return study_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TINY_STUDY]:
        return _tiny_study(argv[1:])
    names = table_names()
    args = build_parser([*names, TINY_STUDY]).parse_args(argv)
    if args.table == TINY_STUDY:  # options before the name
        return _tiny_study([a for a in argv if a != TINY_STUDY])
    if args.table not in names:
        valid = ", ".join([*names, TINY_STUDY])
        print(
            f"reproduce.py: error: unknown table {args.table!r}; valid names: {valid}",
            file=sys.stderr,
        )
        return 2
    if args.nproc is not None and args.nproc < 1:
        print("reproduce.py: error: --nproc must be >= 1", file=sys.stderr)
        return 2
    args.data = _parse_data(args.data)
    table = load_table(args.table)
    rows = [r for spec in args.rows or list(table["rows"]) for r in spec.split(",") if r]
    unknown = [r for r in rows if r not in table["rows"]]
    if unknown:
        print(
            f"reproduce.py: error: {args.table} has no row {unknown[0]!r}; "
            f"valid rows: {', '.join(table['rows'])}",
            file=sys.stderr,
        )
        return 2
    plans = [plan_row(table, key, args) for key in dict.fromkeys(rows)]

    print(
        f"{args.table}: {table['title']} ({len(plans)} rows; commands run from the repository root)"
    )
    prep: dict[str, list[str]] = {}
    for plan in plans:
        for command, files in plan.prep.items():
            prep.setdefault(command, [])
            prep[command] += [f for f in files if f not in prep[command]]
    for command, files in prep.items():
        print(f"data missing: {', '.join(files)}; prepare it first: {command}")
    problems = []
    if not prep:
        for plan in plans:
            if plan.train and (problem := _validate(plan.recipe)):
                problems.append(problem)
    for problem in problems:
        print(f"invalid recipe: {problem}", file=sys.stderr)

    for i, plan in enumerate(plans, 1):
        where = plan.recipe or "no recipe"
        if plan.done:
            print(f"[{i}/{len(plans)}] {plan.key} ({plan.label}): skip, {plan.eval_note}")
            continue
        print(f"[{i}/{len(plans)}] {plan.key} ({plan.label}): {where}")
        if plan.train:
            print(f"  train ({plan.train_note}): {shlex.join(plan.train)}")
        else:
            print(f"  train: {plan.train_note}")
        note = f" ({plan.eval_note})" if plan.eval_note else ""
        print(f"  eval{note}: {shlex.join(plan.evaluate)}")
    print(f"then: mhpo-vl report {args.table}")

    if args.dry_run:
        print("dry run: nothing was run")
        return 2 if problems else 0
    if prep or problems:
        print("reproduce.py: stopped before running anything (see above)", file=sys.stderr)
        return 2
    for plan in plans:
        if plan.done:
            continue
        if plan.train:
            rc = _run(plan.train)
            if rc:
                print(f"reproduce.py: {plan.key}: training failed (exit {rc})", file=sys.stderr)
                return rc
            final = read_recipe(plan.recipe)["trainer"]["max_steps"]
            if not (ROOT / plan.output_dir / f"checkpoint-{final}").is_dir():
                print(
                    f"reproduce.py: {plan.key}: training ended without "
                    f"{plan.output_dir}/checkpoint-{final}",
                    file=sys.stderr,
                )
                return 1
        rc = _run(plan.evaluate)
        if rc:
            print(f"reproduce.py: {plan.key}: evaluation failed (exit {rc})", file=sys.stderr)
            return rc
    print(f"done; the table: mhpo-vl report {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
