"""``mhpo-vl eval score|run|list``: argument parsing only; the work is in the modules.

Imports stay light at parse time: no torch or transformers until ``eval run`` runs.
"""

from __future__ import annotations

import argparse
import sys

SCORE_HELP = """\
Score a MathVista output file (pid -> item with 'response', the problem fields, and
maybe 'extraction'), the format of the official repository and leaderboard.

By default answers are extracted from each 'response' with our rule-based extractor
(the same code as the training rewards) and an item without a recognizable answer is
wrong. With --use-extraction the file's own 'extraction' field (e.g. GPT-4's) goes
through the official normalization, edit-distance fallback included, reproducing the
official scorer. Writes OUT_DIR/output.json (the same layout with our 'extraction',
'prediction', 'true_false') and OUT_DIR/scores.json (the official scores layout).
When the file carries its own 'true_false', prints how often our verdict agrees with
it, overall and by question_type, and the pids where they differ.

Each item is checked before it is scored: its keys, the JSON type of each field
('response' a string or null, 'answer' a string or number, 'choices' a list of strings
or numbers, ...) and MathVista's question and answer types. A malformed item is named
by its pid and counted, never scored; more than --max-malformed of them (default 0.05)
exits with code 2. A file nested deeper than 64 levels is refused.
"""

RUN_HELP = """\
Sample K responses per problem from a model on each benchmark, score them with the
benchmark's verifier and write OUT_DIR/<benchmark>/results.json (decoding, k, template,
model path and revision, Avg@k, pass@k, maj@k, breakdowns), samples.jsonl, and
OUT_DIR/summary.json + table.md (the paper's layout). Benchmark data comes from the hub
unless --data NAME=PATH points at a local copy (.parquet/.jsonl/.json or a directory
with one file per split).
"""


def _cmd_score(args: argparse.Namespace) -> int:
    from mhpo_vl.eval.mathvista import score_file

    if args.benchmark != "mathvista":
        from mhpo_vl.errors import UserError

        raise UserError(f"eval score supports 'mathvista' files, not {args.benchmark!r}")
    scores, summary = score_file(
        args.predictions, args.out_dir, args.use_extraction, args.annotations, args.fallback,
        args.max_malformed,
    )  # fmt: skip
    avg = scores["average"]
    print(f"accuracy {avg['accuracy']}% ({avg['correct']}/{avg['total']})")
    if summary.malformed:
        named = "; ".join(summary.malformed[:10])
        more = f"; ... {len(summary.malformed) - 10} more" if len(summary.malformed) > 10 else ""
        print(
            f"malformed items (not scored): {len(summary.malformed)} of {summary.items}: "
            f"{named}{more}"
        )
    refusals = scores.get("refusals")
    if refusals and refusals["count"]:
        print(
            f"refusals (scored wrong, not mapped onto a choice): {refusals['count']} of "
            f"{refusals['total']} ({100 * refusals['fraction']:.1f}%)"
        )
    versus = scores.get("extraction_agreement")
    if versus:
        print(
            f"our extraction vs the file's own: {versus['disagree']} of {versus['compared']} "
            f"differ ({100 * versus['fraction']:.1f}%); review them in "
            f"{args.out_dir}/{versus['file']}"
        )
    if summary.missing_response:
        print(f"items without a response (scored wrong): {len(summary.missing_response)}")
    if args.use_extraction and summary.missing_extraction:
        print(f"items without an extraction: {len(summary.missing_extraction)}")
    _print_agreement(args.predictions, args.out_dir)
    print(f"wrote {args.out_dir}/output.json and {args.out_dir}/scores.json")
    return 0


def _print_agreement(predictions: str, out_dir: str) -> None:
    """When the predictions file carries its own ``true_false``, print how often our
    verdicts (``OUT_DIR/output.json``) agree with it, so a scoring gap shows at once."""
    from pathlib import Path

    from mhpo_vl.eval.agreement import agreement_lines, compare_verdicts
    from mhpo_vl.eval.mathvista import read_json

    output = Path(out_dir) / "output.json"
    found = compare_verdicts(read_json(predictions, "predictions"), read_json(output, "output"))
    for line in agreement_lines(found, str(output)) if found else []:
        print(line)


def _fraction(text: str) -> float:
    """An argument that is a fraction in [0, 1] (argparse reports the error)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def _parse_data(pairs: list[str]) -> dict[str, str]:
    from mhpo_vl.errors import UserError

    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data expects NAME=PATH, got {pair!r}")
        out[name.strip()] = path.strip()
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from mhpo_vl.eval.runner import run_eval

    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    results = run_eval(
        args.model,
        names,
        args.out_dir,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        template=args.template,
        system=args.system,
        dtype=args.dtype,
        revision=args.revision,
        data=_parse_data(args.data),
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    for res in results:
        shown = "  ".join(f"{k} {v:.2f}" for k, v in res["metrics"].items() if "@" in k)
        if "refusals" in res["metrics"]:
            shown += f"  refusals {res['metrics']['refusals']:.1f}% of samples (scored 0)"
        print(f"{res['benchmark']:<22} {shown}")
    print(f"wrote {args.out_dir}/summary.json and {args.out_dir}/table.md")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mhpo_vl.eval.benchmarks import BENCHMARKS

    for name in BENCHMARKS:
        b = BENCHMARKS.get(name)
        print(f"{name:<22} {b.hub_id:<36} {','.join(b.splits)[:40]:<40} {b.scorer}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` with ``score``, ``run`` and ``list`` to the main parser."""
    p = subparsers.add_parser(
        "eval",
        help="score MathVista-format predictions or evaluate a model on benchmarks",
        description="Evaluation: 'score' a MathVista output file, 'run' a model on "
        "benchmarks (Avg@k, pass@k, maj@k), 'list' the known benchmarks.",
    )
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])
    sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    s = sub.add_parser(
        "score",
        help="score a MathVista output file",
        description=SCORE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("benchmark", choices=["mathvista"], help="the file's benchmark")
    s.add_argument("predictions", help="PREDICTIONS.json: pid -> item with 'response'")
    s.add_argument("--out-dir", required=True, help="where output.json and scores.json go")
    s.add_argument(
        "--use-extraction",
        action="store_true",
        help="score the file's own 'extraction' field the official way",
    )
    s.add_argument(
        "--annotations",
        default=None,
        help="testmini.json: gold fields by pid (override the file's)",
    )
    s.add_argument(
        "--fallback",
        choices=["official", "none"],
        default="official",
        help="when our extraction finds no answer: 'official' maps the response's last line "
        "onto the nearest choice as MathVista's scorer does (leaderboard-comparable); "
        "'none' scores it wrong, as the training rewards do",
    )
    s.add_argument(
        "--max-malformed",
        type=_fraction,
        default=0.05,
        metavar="FRAC",
        help="the share of items that may be malformed (named, counted, not scored); more "
        "exits with code 2 (default 0.05; 0: none may be)",
    )
    s.set_defaults(func=_cmd_score)

    r = sub.add_parser(
        "run",
        help="sample from a model and score benchmarks",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--model", required=True, help="model path or hub id")
    r.add_argument("--benchmarks", required=True, help="NAME[,NAME...] (see 'eval list')")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--k", type=int, default=1, help="samples per problem (Avg@k; paper: 32)")
    r.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--max-new-tokens", type=int, default=2048)
    r.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="problems whose prompt (text and vision tokens) is longer are dropped at load, "
        "counted and named (default: the model's context length minus --max-new-tokens)",
    )
    r.add_argument(
        "--template", default=None, help="prompt template (default: the benchmark's own)"
    )
    r.add_argument("--system", default=None, help="system prompt")
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--revision", default=None, help="model revision, recorded in results")
    r.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read benchmark NAME from local files (repeatable)",
    )
    r.add_argument("--limit", type=int, default=None, help="first N problems per split")
    r.add_argument("--batch-size", type=int, default=None, help="prompts per generate call")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_cmd_run)

    ls = sub.add_parser("list", help="list the known benchmarks")
    ls.set_defaults(func=_cmd_list)
