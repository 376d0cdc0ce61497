"""Text math problems (MATH, optionally GSM8K) as problem rows: ``train.parquet``, ``test.parquet``.

Sources (columns as their dataset cards and verl's preprocessing scripts read them):

- ``math``: ``DigitalLearningGmbH/MATH-lighteval`` (the 12,500 MATH competition
  problems: train 7500, test 5000; columns ``problem``, ``level``, ``type``,
  ``solution``). The gold answer is the last ``\\boxed{...}`` of the solution; a
  solution without one is dropped (``no_boxed_answer``). ``task`` is the subject,
  e.g. ``math/algebra``.
- ``gsm8k``: ``openai/gsm8k``, config ``main`` (train 7473, test 1319; columns
  ``question``, ``answer``). The gold is what follows ``####`` in the answer, commas
  removed; without it the row is dropped (``no_final_answer``). ``task`` is ``gsm8k``.

The MATH-500 benchmark (``eval.benchmarks: [math500]``) is a subset of MATH's test
split, so nothing of the test split is trained on. ``test.parquet`` is a seeded random
choice of ``--test-size`` rows per source (default 500), for the in-loop held-out eval.

    python data/prepare_math.py --out data/math                       # MATH
    python data/prepare_math.py --out data/math_gsm8k --sources math,gsm8k
    python data/prepare_math.py --out /tmp/math --from-local DIR      # DIR/<source>/train.jsonl, ...
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep_common import (  # noqa: E402
    Drop,
    Drops,
    PrepError,
    Split,
    check_limit,
    clean_question,
    clean_text,
    convert,
    parser,
    read_hub,
    read_local,
    records_head,
    report,
    require_columns,
    row_id,
    run_main,
    sample,
    write_split,
)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces
    balanced; ``\\boxed 5`` (no braces) gives ``5``; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5) :]
    if rest.startswith(" "):  # "\boxed 5$"
        value = re.split(r"[$\s]", rest.strip(), maxsplit=1)[0]
        return value or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                value = rest[1:i].strip()
                return value or None
    return None  # unbalanced


def gsm8k_final(answer: str) -> str | None:
    """What follows ``####`` in a GSM8K answer, commas and spaces removed."""
    _, sep, tail = answer.rpartition("####")
    if not sep:
        return None
    value = tail.strip().replace(",", "")
    return value or None


def _subject(value: Any) -> str:
    words = re.findall(r"[a-z0-9]+", clean_text(value).lower())
    return "math/" + ("_".join(words) or "unknown")


def convert_math(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    split: str,
    source: str = "DigitalLearningGmbH/MATH-lighteval",
) -> tuple[list[dict[str, Any]], Drops]:
    """MATH records -> problem rows (gold: the solution's last boxed answer); ``task``
    is ``math/<subject>`` from the ``type`` column where there is one."""
    require_columns(columns, ("problem", "solution"), source)

    def to_row(record: Mapping[str, Any], i: int) -> dict[str, Any]:
        question = clean_question(record.get("problem"))
        if not question:
            raise Drop("missing_question")
        answer = last_boxed(clean_text(record.get("solution")))
        if answer is None:
            raise Drop("no_boxed_answer")
        return {
            "id": row_id("math", split, i),
            "question": question,
            "answer": answer,
            "choices": None,
            "subject": _subject(record.get("type")),
        }

    rows, drops = convert(records, to_row, task="math", split=split)
    for row in rows:
        row["task"] = row.pop("subject")
    return rows, drops


def convert_gsm8k(
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    split: str,
    source: str = "openai/gsm8k",
) -> tuple[list[dict[str, Any]], Drops]:
    """GSM8K records -> problem rows (gold: the number after ``####``)."""
    require_columns(columns, ("question", "answer"), source)

    def to_row(record: Mapping[str, Any], i: int) -> dict[str, Any]:
        question = clean_question(record.get("question"))
        if not question:
            raise Drop("missing_question")
        answer = gsm8k_final(clean_text(record.get("answer")))
        if answer is None:
            raise Drop("no_final_answer")
        return {"id": row_id("gsm8k", split, i), "question": question, "answer": answer}

    return convert(records, to_row, task="gsm8k", split=split)


@dataclass(frozen=True)
class Source:
    hub_id: str
    config: str | None
    convert: Callable[..., tuple[list[dict[str, Any]], Drops]]


SOURCES: dict[str, Source] = {
    "math": Source("DigitalLearningGmbH/MATH-lighteval", None, convert_math),
    "gsm8k": Source("openai/gsm8k", "main", convert_gsm8k),
}


def load_split(name: str, split: str, from_local: str | None, limit: int | None) -> Split:
    src = SOURCES[name]
    if from_local:
        return read_local(Path(from_local) / name, split)
    return read_hub(src.hub_id, split, src.config, limit)


def main(argv: Sequence[str] | None = None) -> list[str]:
    p = parser(__doc__.splitlines()[0], "data/math")
    p.add_argument("--sources", default="math", help=f"comma-separated ({','.join(SOURCES)})")
    p.add_argument(
        "--test-size",
        type=int,
        default=500,
        metavar="N",
        help="rows of each source's test split kept for test.parquet (500)",
    )
    p.epilog = "With --from-local DIR, each source is read from DIR/<source>/."
    args = p.parse_args(argv)
    check_limit(args.limit)
    if args.test_size < 1:
        raise PrepError(f"--test-size: must be >= 1, got {args.test_size}")
    names = [n.strip() for n in args.sources.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise PrepError(f"--sources: unknown {unknown or names}; valid: {', '.join(SOURCES)}")
    lines = []
    for split in ("train", "test"):
        rows, drops = [], Drops()
        for name in names:
            src = load_split(name, split, args.from_local, args.limit)
            got, dropped = SOURCES[name].convert(
                records_head(src.records, args.limit), src.columns, split, src.origin
            )
            if split == "test":
                got = sample(got, args.test_size, args.seed)
            rows.extend(got)
            drops.merge(dropped)
        path = write_split(rows, Path(args.out), split, with_image=False)
        lines.append(report(split, path, len(rows), drops))
    return lines


if __name__ == "__main__":
    raise SystemExit(run_main(main, sys.argv[1:]))
