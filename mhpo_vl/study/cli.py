"""``python scripts/reproduce.py tiny-study ...`` (or ``scripts/tiny_study.py``): plan,
train, resume and summarise the tiny study.

    python scripts/reproduce.py tiny-study --dry-run                  # the plan, nothing run
    python scripts/reproduce.py tiny-study --run                      # every pending run
    python scripts/reproduce.py tiny-study --run --settings learn     # one setting
    python scripts/reproduce.py tiny-study --run --max-runs 8         # eight runs, then stop
    python scripts/reproduce.py tiny-study --run --jobs 2             # two runs at a time
    python scripts/reproduce.py tiny-study --run --settings learn --variants mhpo_full --seeds 1
    python scripts/reproduce.py tiny-study --summarize-only           # tables and plots again
    python scripts/reproduce.py tiny-study --run --variants grpo --seeds 0 --steps 2
        --eval-size 20 --runs-root /tmp/study/runs --out /tmp/study/out   # (one line) a check

One of ``--run``, ``--dry-run`` and ``--summarize-only`` is required: the study is hours
of CPU, so it never starts by default.

The plan (``mhpo_vl/study/plan.py``): settings ``learn`` (each tiny recipe as shipped)
and ``hard`` (``optim.lr=6.0e-4 trainer.minibatches=4``), variants grpo, dapo, gspo,
sapo, cispo, mhpo_detached, mhpo_full, mhpo_relu, seeds 0, 1, 2: 48 runs, each in
``<runs root>/<setting>/<variant>/seed<k>``. The 60-step study's settings (default,
mild, stress) and variants are there too, on request only.

Done runs are skipped; an interrupted run resumes from its latest checkpoint (the
trainer does it by itself); a run the trainer stops for non-finite updates is recorded
as halted and not tried again (delete its ``study_halted.json`` to retry); any other
failure stops the study with its exit code (runs already going finish first). The
tiny model does not get faster with a second torch thread, so on a 2-core machine
``--jobs 2`` (two runs side by side, one thread each) trains the study in half the
time; each run's wall time is then measured while sharing the machine, and its
``study_attempts.jsonl`` says so. The summary (``summary.md``,
``summary.json``, PNGs in ``--out``) always covers the whole default plan, plus the
cells selected here; only done runs are aggregated.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mhpo_vl.study import plan as P
from mhpo_vl.study import runs as R
from mhpo_vl.study.metrics import ACC, series
from mhpo_vl.study.plots import plot_setting
from mhpo_vl.study.render import render_json, render_markdown
from mhpo_vl.study.summary import CellResult, collect, summarize

PROG = "reproduce.py tiny-study"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train and summarise the CPU study of MHPO against the baselines.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--run",
        action="store_true",
        help="train the pending runs (at most --max-runs), then write the summary",
    )
    action.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    action.add_argument(
        "--summarize-only",
        action="store_true",
        help="rebuild summary.md, summary.json and the plots from the runs there are",
    )
    add_selection(parser)
    add_places(parser)
    return parser


def add_selection(parser: argparse.ArgumentParser) -> None:
    """--settings, --variants, --seeds, --max-runs: which cells."""
    extra_s = [n for n in P.SETTINGS if n not in P.DEFAULT_SETTINGS]
    extra_v = [n for n in P.VARIANTS if n not in P.DEFAULT_VARIANTS]
    parser.add_argument(
        "--settings",
        default=",".join(P.DEFAULT_SETTINGS),
        help=f"default: {','.join(P.DEFAULT_SETTINGS)}; also (the 60-step "
        f"study): {', '.join(extra_s)}",
    )
    parser.add_argument(
        "--variants",
        default=",".join(P.DEFAULT_VARIANTS),
        help=f"default: {','.join(P.DEFAULT_VARIANTS)}; also (the 60-step "
        f"study): {', '.join(extra_v)}",
    )
    parser.add_argument("--seeds", default=",".join(map(str, P.SEEDS)), help="e.g. 0,1,2")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs side by side, each with (CPU cores // N) torch threads "
        "(default 1: one at a time, with the recipe's threads)",
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help="train at most N pending runs, then stop (run the study in pieces)",
    )


def add_places(parser: argparse.ArgumentParser) -> None:
    """--out, --runs-root, and a quick check's --steps and --eval-size."""
    parser.add_argument(
        "--out",
        default=None,
        help=f"where summary.md, summary.json and the PNGs go (default: {P.DEFAULT_OUT})",
    )
    parser.add_argument(
        "--runs-root",
        default=None,
        help=f"the runs: <root>/<setting>/<variant>/seed<k> (default: {P.DEFAULT_RUNS_ROOT})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per run instead of the recipe's, for a quick check of the "
        "pipeline; needs --runs-root and --out elsewhere than the study's",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        default=None,
        metavar="N",
        help="held-out problems per evaluation instead of the recipe's; "
        "only with --steps (a quick check)",
    )


def parse_names(given: str, valid: Sequence[str], what: str) -> list[str]:
    """Comma-separated names, each once, in the order given; ValueError names a bad one."""
    names = list(dict.fromkeys(n.strip() for n in given.split(",") if n.strip()))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid names: {', '.join(valid)}")
    if not names:
        raise ValueError(f"no {what} given")
    return names


def parse_seeds(given: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(s) for s in given.split(",") if s.strip()))
    except ValueError:
        raise ValueError(f"--seeds expects integers like 0,1,2, got {given!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds expects integers >= 0, got {given!r}")
    return seeds


def check_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[int]]:
    """The selection; ValueError for a bad argument."""
    settings = parse_names(args.settings, list(P.SETTINGS), "setting")
    variants = parse_names(args.variants, list(P.VARIANTS), "variant")
    seeds = parse_seeds(args.seeds)
    if args.max_runs is not None and args.max_runs < 1:
        raise ValueError("--max-runs must be >= 1")
    if args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    if args.eval_size is not None and (args.steps is None or args.eval_size < 1):
        raise ValueError("--eval-size needs --steps and must be >= 1 (the study's runs "
                         "evaluate as their recipe says)")  # fmt: skip
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError("--steps must be >= 1")
        if args.runs_root is None or args.out is None:
            raise ValueError("--steps needs --runs-root and --out, so that the study's own "
                             "runs and summary stay as they are")  # fmt: skip
    return settings, variants, seeds


def summary_cells(
    selected: Sequence[P.Cell], runs_root: str, steps: int | None, eval_size: int | None
) -> list[P.Cell]:
    """The default plan, then the selected cells it lacks."""
    default = P.plan(P.DEFAULT_SETTINGS, P.DEFAULT_VARIANTS, P.SEEDS, runs_root, steps,
                     eval_size=eval_size)  # fmt: skip
    keys = {c.key for c in default}
    return [*default, *(c for c in selected if c.key not in keys)]


def display(cmd: Sequence[str]) -> str:
    """A command as it can be pasted (``python`` for this interpreter)."""
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else list(cmd))


def write_summary(results: Sequence[CellResult], out: Path, command: str) -> dict[str, Any]:
    """``summary.md``, ``summary.json`` and the PNGs of each setting with a done run."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    meta = {"command": command, "commit": R.commit_id(ignore=out), "date": R.now()}
    (out / "summary.md").write_text(render_markdown(summary, meta), encoding="utf-8")
    (out / "summary.json").write_text(render_json(summary, meta), encoding="utf-8")
    for setting in summary["settings"]:
        plot_setting(results, setting, out)
    return summary


def print_plan(cells: Sequence[P.Cell], states: dict[P.Cell, R.CellState],
               chosen: set[P.Cell], max_runs: int | None,
               threads: int | None = None) -> None:  # fmt: skip
    """One line per cell: skipped, later, or the command that trains it."""
    for i, cell in enumerate(cells, 1):
        st = states[cell]
        head = f"[{i}/{len(cells)}] {cell.key}:"
        if st.state == "done":
            print(f"{head} skip, done ({cell.run_dir}/checkpoint-{st.step})")
        elif st.state == "halted":
            print(f"{head} skip, halted at step {st.step} (delete {cell.run_dir}/"
                  f"{R.HALTED_FILE} to try again)")  # fmt: skip
        elif cell not in chosen:
            print(f"{head} later (beyond --max-runs {max_runs})")
        else:
            how = f"resumes from checkpoint-{st.step}" if st.state == "resume" else "from the start"
            print(f"{head} train ({how}, {cell.steps} steps)")
            print(f"  $ {display(R.command(cell, threads))}")


def validate_all(chosen: Sequence[P.Cell]) -> list[str]:
    """The problems of the chosen cells' recipes, one per setting and variant."""
    problems, seen = [], set()
    for cell in chosen:
        if (cell.setting, cell.variant) not in seen:
            seen.add((cell.setting, cell.variant))
            if problem := R.validate(cell):
                problems.append(f"{cell.setting}/{cell.variant}: {problem}")
    return problems


def threads_per_job(jobs: int) -> int | None:
    """Torch threads for each of ``jobs`` runs side by side (None for one at a time:
    the recipe's own)."""
    return None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)


def train_cell(cell: P.Cell, st: R.CellState, jobs: int = 1, head: str = "") -> int | None:
    """Train one cell; None when it ended done or halted, else the exit code to stop with.
    ``head`` starts its first line (its place in the queue)."""
    print(f"{head}{cell.key}: training, log in {cell.run_dir}/{R.LOG_FILE}", flush=True)
    cmd = R.command(cell, threads_per_job(jobs))
    code, text, wall = R.train(cell, cmd, display(cmd), st.step, jobs)
    after = R.cell_state(cell.path, cell.steps)
    if code == 0 and after.state == "done":
        acc = series(R.read_records(cell.path), ACC)
        final = f", final accuracy {acc[-1][1]:.3f}" if acc else ""
        print(f"{cell.key}: done in {wall:.0f} s{final}", flush=True)
        return None
    halt = R.halt_reason(text) if code == 2 else None
    if halt is not None:
        R.mark_halted(cell, *halt)
        print(f"{cell.key}: halted at step {halt[0]} after {wall:.0f} s: {halt[1]}", flush=True)
        return None
    if code == 130:
        print(f"{PROG}: interrupted; the same command resumes", file=sys.stderr)
        return 130
    tail = "\n".join(text.splitlines()[-20:])
    why = f"exit {code}" if code else "exit 0 but no final checkpoint"
    print(f"{tail}\n{PROG}: {cell.key}: training failed ({why}); see "
          f"{cell.run_dir}/{R.LOG_FILE}", file=sys.stderr)  # fmt: skip
    return code or 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings, variants, seeds = check_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs_root or P.DEFAULT_RUNS_ROOT
    out = P.ROOT / (args.out or P.DEFAULT_OUT)  # an absolute path stays as it is
    command = shlex.join(["python", "scripts/reproduce.py", "tiny-study", *argv])
    cells = P.plan(settings, variants, seeds, runs_root, args.steps, eval_size=args.eval_size)
    every = summary_cells(cells, runs_root, args.steps, args.eval_size)
    if args.summarize_only:
        return report_counts(write_summary(collect(every), out, command), out)

    states = {cell: R.cell_state(cell.path, cell.steps) for cell in cells}
    pending = [c for c in cells if states[c].state in ("new", "resume")]
    chosen = pending if args.max_runs is None else pending[: args.max_runs]
    n_done = sum(st.state == "done" for st in states.values())
    print(f"tiny-study: {len(settings)} settings x {len(variants)} variants x {len(seeds)} "
          f"seeds = {len(cells)} runs under {runs_root} (commands run from the repository "
          f"root; python is {sys.executable})")  # fmt: skip
    limit = f" (--max-runs {args.max_runs})" if args.max_runs is not None else ""
    print(f"done {n_done}, halted {len(cells) - n_done - len(pending)}, pending "
          f"{len(pending)}; to train now: {len(chosen)}{limit}")  # fmt: skip
    problems = validate_all(chosen)
    for problem in problems:
        print(f"invalid recipe: {problem}", file=sys.stderr)
    print_plan(cells, states, set(chosen), args.max_runs, threads_per_job(args.jobs))
    if args.dry_run:
        print("dry run: nothing was run")
        return 2 if problems else 0
    if problems:
        print(f"{PROG}: stopped before running anything", file=sys.stderr)
        return 2
    rc = train_all(chosen, states, args.jobs)
    report_counts(write_summary(collect(every), out, command), out)
    return rc


def train_all(chosen: Sequence[P.Cell], states: dict[P.Cell, R.CellState], jobs: int = 1) -> int:
    """Train the chosen cells in order, ``jobs`` at a time; after the first failure (or
    Ctrl-C) no new cell starts, the runs going finish, and the exit code is returned
    (0: none)."""
    heads = [f"({i}/{len(chosen)}) " for i in range(1, len(chosen) + 1)]
    if jobs == 1:  # in this thread, where Ctrl-C lands in the run's own handling
        for head, cell in zip(heads, chosen, strict=True):
            stop = train_cell(cell, states[cell], 1, head)
            if stop is not None:
                return stop
        return 0
    failed: list[int] = []
    lock = threading.Lock()

    def one(head: str, cell: P.Cell) -> None:
        with lock:
            if failed:
                return
        stop = train_cell(cell, states[cell], jobs, head)
        if stop is not None:
            with lock:
                failed.append(stop)

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for done in [pool.submit(one, h, c) for h, c in zip(heads, chosen, strict=True)]:
            done.result()
    except KeyboardInterrupt:  # the runs going got the same Ctrl-C; start no other
        with lock:
            failed.insert(0, 130)
        print(f"{PROG}: interrupted; the same command resumes", file=sys.stderr)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed[0] if failed else 0


def report_counts(summary: dict[str, Any], out: Path) -> int:
    """Print the summary's counts and where it is; returns 0."""
    c = summary["counts"]
    print(f"summary: {c['done']} done, {c['halted']} halted, {c['partial']} partial, "
          f"{c['not_started']} not started, of {c['planned']}; {out / 'summary.md'}")  # fmt: skip
    return 0
